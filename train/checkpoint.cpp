// Checkpoint files: a 20-byte header (magic, version, payload length, CRC-32C) and a serialised
// dtrain.proto.Checkpoint, written atomically; plus listing, pruning and recovery of checkpoints.
#include "dtrain/train/checkpoint.h"

#include <fcntl.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/printable.h"
#include "dtrain/train/encoding.h"
#include "train/checkpoint.pb.h"

namespace dtrain::train {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the checkpoint header and tensor bytes are little-endian, copied as in memory");

constexpr char kMagic[4] = {'D', 'T', 'C', 'K'};
constexpr uint32_t kFormatVersion = 1;
// magic, version, payload length, payload CRC-32C.
constexpr size_t kHeaderBytes = 4 + sizeof(uint32_t) + sizeof(uint64_t) + sizeof(uint32_t);

constexpr DType kAllDTypes[] = {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16,
                                DType::kInt64,   DType::kInt32,   DType::kUInt8,   DType::kBool};

/// Throws with `path`, `what` and the current errno's text; removes `temp` first when given.
[[noreturn]] void throw_system_error(const std::string& path, const std::string& what,
                                     const std::string& temp = "") {
  const int saved_errno = errno;
  if (!temp.empty()) ::unlink(temp.c_str());
  DTRAIN_THROW(ValueError, "cannot write ", path, ": ", what, ": ", std::strerror(saved_errno));
}

void write_all(int fd, std::string_view bytes, const std::string& path, const std::string& temp) {
  while (!bytes.empty()) {
    const ssize_t written = ::write(fd, bytes.data(), bytes.size());
    if (written < 0) {
      if (errno == EINTR) continue;
      const int saved_errno = errno;
      ::close(fd);
      errno = saved_errno;
      throw_system_error(path, "writing temp file " + temp, temp);
    }
    bytes.remove_prefix(static_cast<size_t>(written));
  }
}

void tensor_to_proto(const std::string& name, const Tensor& tensor, proto::TensorData* out) {
  DTRAIN_CHECK(tensor.defined(), "save_checkpoint: tensor '", name, "' is undefined");
  const Tensor host = to_device(tensor, Device::cpu());
  out->set_name(name);
  for (const int64_t extent : host.shape()) out->add_shape(extent);
  out->set_dtype(std::string(dtype_name(host.dtype())));
  if (host.nbytes() > 0) out->set_data(host.data_ptr(), host.nbytes());
}

Tensor tensor_from_proto(const proto::TensorData& in, const std::string& where) {
  const auto* dtype = std::find_if(std::begin(kAllDTypes), std::end(kAllDTypes),
                                   [&](DType t) { return dtype_name(t) == in.dtype(); });
  // Names and dtypes come from the file: printed escaped.
  const std::string name = printable(in.name());
  DTRAIN_CHECK(dtype != std::end(kAllDTypes), where, ": tensor '", name, "' has unknown dtype '",
               printable(in.dtype()), "'");
  const Shape shape(in.shape().begin(), in.shape().end());
  uint64_t expected_bytes = dtype_size(*dtype);
  for (const int64_t extent : shape) {
    DTRAIN_CHECK(extent >= 0, where, ": tensor '", name, "' has negative extent in shape ",
                 shape_str(shape));
    DTRAIN_CHECK(extent == 0 || expected_bytes <= UINT64_MAX / static_cast<uint64_t>(extent), where,
                 ": tensor '", name, "' shape ", shape_str(shape), " overflows");
    expected_bytes *= static_cast<uint64_t>(extent);
  }
  DTRAIN_CHECK(expected_bytes == in.data().size(), where, ": tensor '", name, "' ", in.dtype(),
               shape_str(shape), " needs ", expected_bytes, " bytes, payload has ",
               in.data().size());
  Tensor out(shape, *dtype);
  if (expected_bytes > 0) std::memcpy(out.data_ptr(), in.data().data(), expected_bytes);
  return out;
}

/// Throws unless `name` (a tensor name or map key of the file) is free of control characters.
/// dtrain never writes such names, and refusing them here keeps every later message that prints a
/// name from carrying terminal escapes out of a crafted file.
void check_name(std::string_view name, const char* what, const std::string& where) {
  for (size_t i = 0; i < name.size(); ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    const bool c1 = c == 0xC2 && i + 1 < name.size() &&
                    static_cast<unsigned char>(name[i + 1]) >= 0x80 &&
                    static_cast<unsigned char>(name[i + 1]) <= 0x9F;
    DTRAIN_CHECK(c >= 0x20 && c != 0x7F && !c1, where, ": ", what, " '", printable(name),
                 "' holds control characters; dtrain never writes such names, so the file was "
                 "made or altered by something else");
  }
}

/// Reads up to n bytes, fewer only at end of file; throws naming `where` on a read error.
size_t read_up_to(int fd, char* dst, size_t n, const std::string& where) {
  size_t done = 0;
  while (done < n) {
    const ssize_t got = ::read(fd, dst + done, n - done);
    if (got < 0 && errno == EINTR) continue;
    DTRAIN_CHECK(got >= 0, where, ": read failed: ", std::strerror(errno));
    if (got == 0) break;
    done += static_cast<size_t>(got);
  }
  return done;
}

/// Closes a descriptor when it goes out of scope.
struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

std::string hex32(uint32_t value) {
  char text[16];
  std::snprintf(text, sizeof(text), "0x%08x", value);
  return text;
}

/// The step in "ckpt-<digits>.dtck", or -1 for any other name (temp files included).
int64_t step_from_name(const std::string& name) {
  constexpr std::string_view kPrefix = "ckpt-", kSuffix = ".dtck";
  if (name.size() <= kPrefix.size() + kSuffix.size() || !name.starts_with(kPrefix) ||
      !name.ends_with(kSuffix)) {
    return -1;
  }
  const std::string_view digits(name.data() + kPrefix.size(),
                                name.size() - kPrefix.size() - kSuffix.size());
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return -1;
  }
  int64_t step = -1;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  return ec == std::errc() && end == digits.data() + digits.size() ? step : -1;
}

/// The writer's pid in a temp file name of write_file_atomic, "<name>.tmp.<pid>.<16 hex digits>"
/// (or "<name>.tmp.<pid>", as earlier versions named them); 0 for any other name.
pid_t temp_file_writer(const std::string& name) {
  const size_t tmp = name.rfind(".tmp.");
  if (tmp == std::string::npos) return 0;
  std::string_view rest = std::string_view(name).substr(tmp + 5);
  pid_t pid = 0;
  const auto [end, parse] = std::from_chars(rest.data(), rest.data() + rest.size(), pid);
  if (parse != std::errc() || pid <= 0) return 0;
  rest.remove_prefix(static_cast<size_t>(end - rest.data()));
  if (rest.empty()) return pid;
  const bool random_suffix =
      rest.size() == 17 && rest[0] == '.' && std::all_of(rest.begin() + 1, rest.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
      });
  return random_suffix ? pid : 0;
}

}  // namespace

void write_file_atomic(const std::string& path, const std::vector<std::string_view>& pieces) {
  // An unpredictable name, created only where nothing exists (a link included): in a directory
  // others may write to, a link planted at a name they could guess would redirect the write.
  // The pid stays in the name so that remove_stale_temp_files can tell whose file it is.
  std::string temp;
  int fd = -1;
  for (int attempt = 0; attempt < 8 && fd < 0; ++attempt) {
    uint64_t random = 0;
    if (::getrandom(&random, sizeof random, 0) != static_cast<ssize_t>(sizeof random)) {
      throw_system_error(path, "getrandom for a temp file name");
    }
    char suffix[17];
    std::snprintf(suffix, sizeof suffix, "%016llx", static_cast<unsigned long long>(random));
    temp = path + ".tmp." + std::to_string(::getpid()) + "." + suffix;
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) throw_system_error(path, "cannot create temp file " + temp);
  for (const std::string_view piece : pieces) write_all(fd, piece, path, temp);
  // The data must be on disk before the rename makes it visible under `path`; otherwise a crash
  // could leave `path` naming an empty or partial file.
  if (::fsync(fd) != 0) {
    const int saved_errno = errno;
    ::close(fd);
    errno = saved_errno;
    throw_system_error(path, "fsync of " + temp, temp);
  }
  if (::close(fd) != 0) throw_system_error(path, "closing " + temp, temp);
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    throw_system_error(path, "renaming " + temp + " over it", temp);
  }
  // The rename itself lives in the directory; syncing it makes the new name survive a crash.
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) throw_system_error(path, "opening directory " + dir + " to fsync it");
  // EINVAL: the file system does not sync directories; nothing more can be done there.
  if (::fsync(dir_fd) != 0 && errno != EINVAL) {
    const int saved_errno = errno;
    ::close(dir_fd);
    errno = saved_errno;
    throw_system_error(path, "fsync of directory " + dir);
  }
  ::close(dir_fd);
}

void save_checkpoint(const std::string& path, const CheckpointData& data) {
  proto::Checkpoint message;
  message.set_step(data.step);
  message.set_epoch(data.epoch);
  message.set_batch_in_epoch(data.batch_in_epoch);
  message.set_world_size(data.world_size);
  message.set_config_yaml(data.config_yaml);
  for (const auto& [name, tensor] : data.model) tensor_to_proto(name, tensor, message.add_model());
  for (const auto& [name, tensor] : data.optimizer_tensors) {
    tensor_to_proto(name, tensor, message.add_optimizer_tensors());
  }
  message.mutable_optimizer_scalars()->insert(data.optimizer_scalars.begin(),
                                              data.optimizer_scalars.end());
  message.set_schedule_step(data.schedule_step);
  message.mutable_rng_offsets()->insert(data.rng_offsets.begin(), data.rng_offsets.end());
  message.mutable_metrics()->insert(data.metrics.begin(), data.metrics.end());

  const size_t payload_bytes = message.ByteSizeLong();
  DTRAIN_CHECK(payload_bytes <= static_cast<size_t>(INT_MAX), "save_checkpoint ", path,
               ": payload is ", payload_bytes,
               " bytes; a protobuf message holds at most 2 GiB. Export weights with "
               "write_safetensors instead?");
  std::string payload;
  {
    google::protobuf::io::StringOutputStream stream(&payload);
    google::protobuf::io::CodedOutputStream coded(&stream);
    // Map order is otherwise unspecified; deterministic output makes equal states equal files.
    coded.SetSerializationDeterministic(true);
    DTRAIN_CHECK(message.SerializeToCodedStream(&coded), "save_checkpoint ", path,
                 ": protobuf serialisation failed");
  }

  char header[kHeaderBytes];
  const uint64_t length = payload.size();
  const uint32_t checksum = crc32c(payload.data(), payload.size());
  std::memcpy(header, kMagic, 4);
  std::memcpy(header + 4, &kFormatVersion, sizeof(kFormatVersion));
  std::memcpy(header + 8, &length, sizeof(length));
  std::memcpy(header + 16, &checksum, sizeof(checksum));
  write_file_atomic(path, {std::string_view(header, kHeaderBytes), payload});
}

CheckpointData load_checkpoint(const std::string& path) {
  const std::string where = "checkpoint " + path;
  // 1. Open without blocking (a FIFO would wait for a writer) and require a regular file, so a
  //    FIFO or a device such as /dev/zero is refused before anything is read from it.
  // 2. Check the header against the file's size, then read exactly the payload it announces.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  DTRAIN_CHECK(fd >= 0, where, ": cannot open: ", std::strerror(errno));
  const FdCloser closer{fd};
  struct stat st {};
  DTRAIN_CHECK(::fstat(fd, &st) == 0, where, ": cannot stat: ", std::strerror(errno));
  DTRAIN_CHECK(S_ISREG(st.st_mode), where, ": not a regular file (",
               S_ISDIR(st.st_mode)    ? "a directory"
               : S_ISFIFO(st.st_mode) ? "a FIFO"
               : S_ISCHR(st.st_mode)  ? "a character device"
                                      : "a special file",
               "); a checkpoint is a file written by dtrain, e.g. ckpt-0000000100.dtck");
  const uint64_t file_bytes = static_cast<uint64_t>(st.st_size);
  char header[kHeaderBytes];
  const size_t got = read_up_to(fd, header, kHeaderBytes, where);
  DTRAIN_CHECK(got == kHeaderBytes, where, ": truncated: file has ", got, " bytes, less than the ",
               kHeaderBytes, "-byte header");
  DTRAIN_CHECK(std::memcmp(header, kMagic, 4) == 0, where,
               ": bad magic: expected \"DTCK\", found bytes ",
               hex32(static_cast<uint32_t>(static_cast<unsigned char>(header[0])) << 24 |
                     static_cast<uint32_t>(static_cast<unsigned char>(header[1])) << 16 |
                     static_cast<uint32_t>(static_cast<unsigned char>(header[2])) << 8 |
                     static_cast<uint32_t>(static_cast<unsigned char>(header[3]))),
               "; not a dtrain checkpoint");
  uint32_t version = 0, stored_checksum = 0;
  uint64_t length = 0;
  std::memcpy(&version, header + 4, sizeof(version));
  std::memcpy(&length, header + 8, sizeof(length));
  std::memcpy(&stored_checksum, header + 16, sizeof(stored_checksum));
  DTRAIN_CHECK(version == kFormatVersion, where, ": unsupported format version ", version,
               " (this build reads version ", kFormatVersion, ")");
  const uint64_t available = file_bytes >= kHeaderBytes ? file_bytes - kHeaderBytes : 0;
  DTRAIN_CHECK(available >= length, where, ": truncated: header says ", length,
               " payload bytes, file has ", available);
  DTRAIN_CHECK(available == length, where, ": header says ", length, " payload bytes, file has ",
               available, " (trailing data)");
  DTRAIN_CHECK(length <= static_cast<uint64_t>(INT_MAX), where, ": header says ", length,
               " payload bytes, more than the 2 GiB a checkpoint can hold");
  std::string bytes(length, '\0');
  const size_t read = read_up_to(fd, bytes.data(), length, where);
  DTRAIN_CHECK(read == length, where, ": truncated while reading: header says ", length,
               " payload bytes, got ", read, "; is another process writing it?");
  const std::string_view payload(bytes);
  const uint32_t actual_checksum = crc32c(payload.data(), payload.size());
  DTRAIN_CHECK(actual_checksum == stored_checksum, where,
               ": checksum mismatch: header says CRC-32C ", hex32(stored_checksum),
               ", payload has ", hex32(actual_checksum), "; the file is corrupted");

  proto::Checkpoint message;
  DTRAIN_CHECK(message.ParseFromArray(payload.data(), static_cast<int>(payload.size())), where,
               ": payload does not parse as dtrain.proto.Checkpoint");

  CheckpointData data;
  data.step = message.step();
  data.epoch = message.epoch();
  data.batch_in_epoch = message.batch_in_epoch();
  data.world_size = message.world_size();
  data.config_yaml = message.config_yaml();
  for (const proto::TensorData& t : message.model()) check_name(t.name(), "tensor", where);
  for (const proto::TensorData& t : message.optimizer_tensors()) {
    check_name(t.name(), "optimizer tensor", where);
  }
  for (const auto& [key, value] : message.optimizer_scalars()) {
    check_name(key, "optimizer scalar", where);
  }
  for (const auto& [key, value] : message.rng_offsets()) check_name(key, "RNG stream", where);
  for (const auto& [key, value] : message.metrics()) check_name(key, "metric", where);
  for (const proto::TensorData& t : message.model()) {
    data.model.emplace_back(t.name(), tensor_from_proto(t, where));
  }
  for (const proto::TensorData& t : message.optimizer_tensors()) {
    const bool inserted =
        data.optimizer_tensors.emplace(t.name(), tensor_from_proto(t, where)).second;
    DTRAIN_CHECK(inserted, where, ": optimizer tensor '", printable(t.name()), "' appears twice");
  }
  data.optimizer_scalars.insert(message.optimizer_scalars().begin(),
                                message.optimizer_scalars().end());
  data.schedule_step = message.schedule_step();
  data.rng_offsets.insert(message.rng_offsets().begin(), message.rng_offsets().end());
  data.metrics.insert(message.metrics().begin(), message.metrics().end());
  return data;
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    const int64_t step = step_from_name(it->path().filename().string());
    if (step >= 0) found.emplace_back(step, it->path().string());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second > b.second;
  });
  std::vector<std::string> paths;
  paths.reserve(found.size());
  for (auto& entry : found) paths.push_back(std::move(entry.second));
  return paths;
}

std::string checkpoint_path(const std::string& dir, int64_t step) {
  DTRAIN_CHECK(step >= 0, "checkpoint_path: step must be >= 0, got ", step);
  char name[40];
  std::snprintf(name, sizeof(name), "ckpt-%010lld.dtck", static_cast<long long>(step));
  return (std::filesystem::path(dir) / name).string();
}

std::vector<std::string> remove_stale_temp_files(const std::string& dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const pid_t pid = temp_file_writer(it->path().filename().string());
    if (pid <= 0 || !it->is_regular_file(ec)) continue;
    // A writer that still runs (another job sharing the directory) keeps its file.
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;
    std::error_code rm;
    if (std::filesystem::remove(it->path(), rm)) removed.push_back(it->path().string());
  }
  return removed;
}

void prune_checkpoints(const std::string& dir, int keep, int64_t up_to_step) {
  DTRAIN_CHECK(keep >= 0, "prune_checkpoints(", dir, "): keep must be >= 0, got ", keep);
  std::vector<std::string> paths;
  for (std::string& path : list_checkpoints(dir)) {
    if (step_from_name(std::filesystem::path(path).filename().string()) <= up_to_step) {
      paths.push_back(std::move(path));
    }
  }
  // Everything older than the keep-th valid checkpoint goes; newer files that do not load stay.
  size_t first_old = 0;
  for (int valid = 0; first_old < paths.size() && valid < keep; ++first_old) {
    try {
      load_checkpoint(paths[first_old]);
      ++valid;
    } catch (const Error&) {
    }
  }
  for (size_t i = first_old; i < paths.size(); ++i) {
    std::error_code ec;
    std::filesystem::remove(paths[i], ec);
    DTRAIN_CHECK(!ec, "prune_checkpoints: cannot remove ", paths[i], ": ", ec.message());
  }
}

std::optional<LoadedCheckpoint> load_latest_valid(
    const std::string& dir, void (*warn)(const std::string&),
    const std::function<std::string(const CheckpointData&)>& fits) {
  for (const std::string& path : list_checkpoints(dir)) {
    try {
      LoadedCheckpoint found{path, load_checkpoint(path)};
      const std::string why = fits ? fits(found.data) : "";
      if (why.empty()) return found;
      if (warn) warn("skipping checkpoint " + path + ": " + why);
      continue;
    } catch (const Error& e) {
      if (warn) warn("skipping invalid " + e.message());
    } catch (const std::exception& e) {
      if (warn) warn("skipping invalid checkpoint " + path + ": " + e.what());
    }
  }
  return std::nullopt;
}

}  // namespace dtrain::train
