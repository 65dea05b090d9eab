// SharedSegment: mapping, the two-flag protocol of the in-place all-reduce, and the checks that
// turn a late or vanished peer into an error naming it.
#include "dtrain/distributed/shared_memory.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/distributed/reduce.h"
#include "dtrain/distributed/socket.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/hash.h"

namespace dtrain::dist {

/// One cache line per rank, so ranks spinning on each other's flags do not share lines.
struct alignas(64) SharedSegment::Flags {
  std::atomic<uint64_t> counter;  // 2 steps per collective: entered it, left it
  std::atomic<uint64_t> call;     // the collective entered last: count | dtype << 48 | op << 56
  int32_t pid;                    // for the liveness check while waiting
};

namespace {

constexpr size_t kPage = 4096;

/// The segment's first cache line: what blocked waiters sleep on. A rank that raises its flag
/// bumps `wake` and, when someone sleeps, wakes them (a futex on shared memory, so it crosses
/// processes).
struct alignas(64) Doorbell {
  std::atomic<uint32_t> wake;
  std::atomic<uint32_t> sleepers;
};

/// Sleeps while *word == expected, at most `limit`; spurious returns are fine.
void futex_wait(std::atomic<uint32_t>& word, uint32_t expected, std::chrono::microseconds limit) {
  timespec ts{static_cast<time_t>(limit.count() / 1000000),
              static_cast<long>(limit.count() % 1000000 * 1000)};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

size_t header_bytes(int ranks) {
  return round_up(sizeof(Doorbell) + static_cast<size_t>(ranks) * sizeof(SharedSegment::Flags),
                  kPage);
}

/// Maps `fd` of `bytes`; nullptr and `why` on failure.
void* map(int fd, size_t bytes, std::string& why) {
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    why = "mmap of " + std::to_string(bytes) + " bytes failed: " + net::errno_text(errno);
    return nullptr;
  }
  return base;
}

std::string namespace_link(const char* which) {
  char target[128] = {};
  const std::string path = std::string("/proc/self/ns/") + which;
  const ssize_t n = readlink(path.c_str(), target, sizeof target - 1);
  return n > 0 ? std::string(target, static_cast<size_t>(n)) : std::string("?");
}

/// What /proc/<who>/stat says of a process: its state letter and start time.
struct ProcStat {
  char state = '?';
  uint64_t start = 0;  // clock ticks after boot (field 22)
};

/// `who`: a pid or "self". nullopt when the file cannot be read (no such process).
std::optional<ProcStat> proc_stat(const std::string& who) {
  std::ifstream in("/proc/" + who + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  // The command name in parentheses may hold spaces and ')': the fields go on after the last ')'.
  const size_t name_end = line.rfind(')');
  if (name_end == std::string::npos) return std::nullopt;
  std::istringstream fields(line.substr(name_end + 1));
  ProcStat st;
  fields >> st.state;  // field 3
  std::string skipped;
  for (int field = 4; field < 22; ++field) fields >> skipped;
  fields >> st.start;
  if (!fields) return std::nullopt;
  return st;
}

bool is_zombie(const ProcStat& st) { return st.state == 'Z' || st.state == 'X'; }

/// True when `pid` has exited: no such process, or a zombie its parent has not reaped yet.
bool process_gone(pid_t pid) {
  if (kill(pid, 0) != 0) return errno == ESRCH;
  const std::optional<ProcStat> st = proc_stat(std::to_string(pid));
  return st && is_zombie(*st);
}

/// True when the process that created `name` is gone (in doubt: false). Only meaningful for
/// names with this process's host tag, whose pids are in this PID namespace.
bool creator_gone(const SegmentName& name) {
  if (name.pid <= 0 || name.pid > INT_MAX) return false;
  const auto pid = static_cast<pid_t>(name.pid);
  if (kill(pid, 0) != 0 && errno == ESRCH) return true;
  const std::optional<ProcStat> st = proc_stat(std::to_string(pid));
  if (!st) return false;
  return is_zombie(*st) || (name.start != 0 && st->start != name.start);
}

uint64_t host_tag() { return fnv1a(host_identity()); }

/// Parses all of `text` as an unsigned number in `base`.
template <class T>
bool parse_number(std::string_view text, int base, T& out) {
  const char* end = text.data() + text.size();
  const auto [at, ec] = std::from_chars(text.data(), end, out, base);
  return !text.empty() && ec == std::errc() && at == end;
}

}  // namespace

SegmentName SegmentName::fresh() {
  SegmentName name;
  name.host = host_tag();
  name.pid = getpid();
  const std::optional<ProcStat> self = proc_stat("self");
  name.start = self ? self->start : 0;
  std::random_device random;
  name.nonce = (uint64_t{random()} << 32 | random()) | 1;
  return name;
}

std::string SegmentName::str() const {
  char text[96];
  std::snprintf(text, sizeof text, "/dtrain-%016llx-%lld-%llu-%016llx",
                static_cast<unsigned long long>(host), static_cast<long long>(pid),
                static_cast<unsigned long long>(start), static_cast<unsigned long long>(nonce));
  return text;
}

std::optional<SegmentName> SegmentName::parse(std::string_view entry) {
  constexpr std::string_view kPrefix = "dtrain-";
  if (entry.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  entry.remove_prefix(kPrefix.size());
  std::string_view parts[4];
  for (int i = 0; i < 4; ++i) {
    const size_t dash = i < 3 ? entry.find('-') : entry.size();
    if (dash == std::string_view::npos) return std::nullopt;
    parts[i] = entry.substr(0, dash);
    entry.remove_prefix(std::min(entry.size(), dash + 1));
  }
  SegmentName name;
  uint64_t pid = 0;
  if (parts[0].size() != 16 || parts[3].size() != 16 || !parse_number(parts[0], 16, name.host) ||
      !parse_number(parts[1], 10, pid) || !parse_number(parts[2], 10, name.start) ||
      !parse_number(parts[3], 16, name.nonce) || pid == 0 || pid > INT_MAX) {
    return std::nullopt;
  }
  name.pid = static_cast<int64_t>(pid);
  return name;
}

std::vector<std::string> remove_abandoned_segments() {
  std::vector<std::string> removed;
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return removed;
  const uint64_t host = host_tag();
  const uid_t uid = geteuid();
  while (const dirent* entry = readdir(dir)) {
    const std::optional<SegmentName> name = SegmentName::parse(entry->d_name);
    if (!name || name->host != host) continue;  // another host's or namespace's pids
    struct stat st {};
    if (fstatat(dirfd(dir), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
        st.st_uid != uid || !creator_gone(*name)) {
      continue;
    }
    const std::string path = std::string("/") + entry->d_name;
    if (shm_unlink(path.c_str()) == 0) removed.push_back(path);
  }
  closedir(dir);
  return removed;
}

SharedSegment::Flags* SharedSegment::flags(int rank) const {
  return reinterpret_cast<Flags*>(static_cast<char*>(base_) + sizeof(Doorbell)) + rank;
}

void SharedSegment::raise_flag() {
  flags(rank_)->counter.store(++counter_, std::memory_order_seq_cst);
  auto& bell = *static_cast<Doorbell*>(base_);
  bell.wake.fetch_add(1, std::memory_order_seq_cst);
  if (bell.sleepers.load(std::memory_order_seq_cst) > 0) futex_wake_all(bell.wake);
}

void SharedSegment::enter(int64_t count, DType dtype, ReduceOp op, const CollectiveInfo& info,
                          Timeout timeout, std::chrono::microseconds spin) {
  const auto pack = [](int64_t n, DType d, ReduceOp o) {
    return static_cast<uint64_t>(n) | static_cast<uint64_t>(d) << 48 |
           static_cast<uint64_t>(o) << 56;
  };
  const uint64_t mine = pack(count, dtype, op);
  flags(rank_)->call.store(mine, std::memory_order_relaxed);  // published by raise_flag
  raise_flag();
  wait_for_all(counter_, "enter", info, timeout, spin);
  bool same = true;
  for (int r = 0; r < ranks_; ++r) same = same && flags(r)->call.load() == mine;
  if (same) return;
  std::ostringstream calls;
  for (int r = 0; r < ranks_; ++r) {
    const uint64_t c = flags(r)->call.load();
    calls << "\n  rank " << name_of(r) << ": "
          << reduce_op_name(static_cast<ReduceOp>(c >> 56 & 0xff)) << " of "
          << (c & ((uint64_t{1} << 48) - 1)) << " "
          << dtype_name(static_cast<DType>(c >> 48 & 0xff));
  }
  DTRAIN_THROW(DistError, "shared memory: rank ", name_of(rank_), " in ", info.describe(),
               ": the ranks issued different collectives:", calls.str(),
               "\nEvery rank must call the same collectives in the same order; "
               "DTRAIN_DISTRIBUTED_DEBUG=1 lists each call");
}

SharedSegment::SharedSegment(std::string name, int ranks, size_t slot_bytes, int rank, void* base,
                             size_t mapped)
    : name_(std::move(name)),
      ranks_(ranks),
      slot_bytes_(slot_bytes),
      rank_(rank),
      base_(base),
      mapped_(mapped),
      slots_(static_cast<char*>(base) + header_bytes(ranks)),
      linked_(rank == 0) {
  flags(rank)->pid = static_cast<int32_t>(getpid());
}

std::shared_ptr<SharedSegment> SharedSegment::create(const std::string& name, int ranks,
                                                     size_t slot_bytes, int rank,
                                                     std::string& why) {
  DTRAIN_CHECK(ranks >= 1 && slot_bytes % 64 == 0, "shared memory: bad segment layout");
  // Before adding a name, remove those that creators killed during their set-up left behind
  // (a crash-looping job would otherwise add one per restart).
  remove_abandoned_segments();
  const size_t bytes = header_bytes(ranks) + static_cast<size_t>(ranks) * slot_bytes;
  const int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) {
    why = "shm_open(" + name + ") failed: " + net::errno_text(errno);
    return nullptr;
  }
  // Reserve the pages now: a /dev/shm too small for the segment fails here instead of killing
  // the process with SIGBUS at its first touch of a missing page.
  const int reserved = posix_fallocate(fd, 0, static_cast<off_t>(bytes));
  void* base = nullptr;
  if (reserved != 0) {
    why = "reserving " + std::to_string(bytes) +
          " bytes in /dev/shm failed: " + net::errno_text(reserved);
  } else {
    base = map(fd, bytes, why);
  }
  close(fd);
  if (base == nullptr) {
    shm_unlink(name.c_str());
    return nullptr;
  }
  return std::shared_ptr<SharedSegment>(
      new SharedSegment(name, ranks, slot_bytes, rank, base, bytes));
}

std::shared_ptr<SharedSegment> SharedSegment::open(const std::string& name, int ranks,
                                                   size_t slot_bytes, int rank, std::string& why) {
  const size_t bytes = header_bytes(ranks) + static_cast<size_t>(ranks) * slot_bytes;
  const int fd = shm_open(name.c_str(), O_RDWR, 0600);
  if (fd < 0) {
    why = "shm_open(" + name + ") failed: " + net::errno_text(errno);
    return nullptr;
  }
  struct stat st {};
  void* base = nullptr;
  if (fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) != bytes) {
    why = name + " is not the expected " + std::to_string(bytes) + "-byte segment";
  } else {
    base = map(fd, bytes, why);
  }
  close(fd);
  if (base == nullptr) return nullptr;
  return std::shared_ptr<SharedSegment>(
      new SharedSegment(name, ranks, slot_bytes, rank, base, bytes));
}

SharedSegment::~SharedSegment() {
  unlink();
  munmap(base_, mapped_);
}

void SharedSegment::unlink() {
  if (linked_) shm_unlink(name_.c_str());
  linked_ = false;
}

bool SharedSegment::holds(int rank, const void* p, size_t bytes) const {
  const char* begin = slot(rank);
  const char* at = static_cast<const char*>(p);
  return at >= begin && at + bytes <= begin + slot_bytes_;
}

void SharedSegment::wait_for_all(uint64_t target, const char* stage, const CollectiveInfo& info,
                                 Timeout timeout, std::chrono::microseconds spin) {
  using Clock = std::chrono::steady_clock;
  const auto all_there = [&] {
    for (int r = 0; r < ranks_; ++r) {
      if (flags(r)->counter.load(std::memory_order_acquire) < target) return false;
    }
    return true;
  };
  // Peers usually arrive within a few microseconds to a millisecond (one backward pass apart).
  // Spin (yielding), then sleep on the doorbell: a waiter that kept spinning would take the core
  // from the compute threads of this and other ranks when cores are few.
  auto& bell = *static_cast<Doorbell*>(base_);
  const auto start = Clock::now();
  const auto spin_until = start + spin;
  const auto deadline = start + timeout;
  auto next_liveness_check = start + std::chrono::milliseconds(20);
  for (;;) {
    const uint32_t rung = bell.wake.load(std::memory_order_seq_cst);
    if (all_there()) return;
    const auto now = Clock::now();
    if (now < spin_until) {
      std::this_thread::yield();
      continue;
    }
    bell.sleepers.fetch_add(1, std::memory_order_seq_cst);
    if (!all_there()) futex_wait(bell.wake, rung, std::chrono::milliseconds(20));
    bell.sleepers.fetch_sub(1, std::memory_order_seq_cst);
    std::vector<int> late;
    for (int r = 0; r < ranks_; ++r) {
      if (flags(r)->counter.load(std::memory_order_acquire) < target) late.push_back(r);
    }
    if (now >= next_liveness_check) {
      next_liveness_check = now + std::chrono::milliseconds(20);
      for (int r : late) {
        const pid_t pid = flags(r)->pid;
        if (process_gone(pid)) {
          DTRAIN_THROW(DistError, "shared memory: rank ", name_of(rank_), " in ", info.describe(),
                       ": rank ", name_of(r), " (pid ", pid, ") exited before it could ", stage,
                       " it; peer lost: that process probably exited or was killed (its own log "
                       "has the cause)");
        }
      }
    }
    if (!late.empty() && now >= deadline) {
      DTRAIN_THROW(TimeoutError, "shared memory: rank ", name_of(rank_), " in ", info.describe(),
                   ": rank(s) ", rank_list(names_of(late)), " did not ", stage, " it within ",
                   timeout.count(),
                   " ms; they are late or stuck in another call (their logs, or "
                   "DTRAIN_DISTRIBUTED_DEBUG=1, show which)");
    }
  }
}

std::vector<int> SharedSegment::names_of(const std::vector<int>& slots) const {
  std::vector<int> out;
  for (int s : slots) out.push_back(name_of(s));
  return out;
}

void SharedSegment::reduce_my_chunk(size_t offset, int64_t count, DType dtype, ReduceOp op,
                                    bool sum_only, bool into_all) {
  const size_t element = dtype_size(dtype);
  // Chunks start on cache lines, so no two ranks write the same line.
  const int64_t per_line = static_cast<int64_t>(64 / element);
  const int64_t share = (count + ranks_ - 1) / ranks_;
  const int64_t chunk = (share + per_line - 1) / per_line * per_line;
  const int64_t begin = std::min<int64_t>(count, chunk * rank_);
  const int64_t end = std::min<int64_t>(count, begin + chunk);
  // Block by block through a buffer that stays in L1: each slot's chunk is read once and
  // written once.
  constexpr size_t kBlockBytes = 16 * 1024;
  alignas(64) char block[kBlockBytes];
  const int64_t per_block = static_cast<int64_t>(kBlockBytes / element);
  const ReduceOp sum_or_op = op == ReduceOp::kAvg ? ReduceOp::kSum : op;
  const int targets = into_all ? ranks_ : 1;
  for (int64_t first = begin; first < end; first += per_block) {
    const int64_t n = std::min(per_block, end - first);
    const size_t at = offset + static_cast<size_t>(first) * element;
    std::memcpy(block, slot(0) + at, static_cast<size_t>(n) * element);
    for (int r = 1; r < ranks_; ++r) reduce_into(block, slot(r) + at, n, dtype, sum_or_op);
    if (op == ReduceOp::kAvg && !sum_only) divide_in_place(block, n, dtype, ranks_);
    for (int r = 0; r < targets; ++r) {
      std::memcpy(slot(r) + at, block, static_cast<size_t>(n) * element);
    }
  }
}

void SharedSegment::all_reduce_across_hosts(size_t offset, int64_t count, DType dtype, ReduceOp op,
                                            int group_size,
                                            const std::function<void()>& across_hosts,
                                            const CollectiveInfo& info, Timeout timeout,
                                            std::chrono::microseconds spin) {
  // 1. every input written; 2. this host's sum in slot 0; 3. slot 0 holds every host's result;
  // 4. every rank copied it (slot 0's owner may then write its next input).
  enter(count, dtype, op, info, timeout, spin);
  if (ranks_ > 1) reduce_my_chunk(offset, count, dtype, op, /*sum_only=*/true, /*into_all=*/false);
  raise_flag();
  wait_for_all(counter_, "reduce its share of", info, timeout, spin);
  const size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
  if (rank_ == 0) {
    across_hosts();
    if (op == ReduceOp::kAvg) divide_in_place(slot(0) + offset, count, dtype, group_size);
  }
  raise_flag();
  wait_for_all(counter_, "combine the hosts' results in", info, timeout, spin);
  if (rank_ != 0) std::memcpy(slot(rank_) + offset, slot(0) + offset, bytes);
  raise_flag();
  wait_for_all(counter_, "finish", info, timeout, spin);
}

void SharedSegment::all_reduce(size_t offset, int64_t count, DType dtype, ReduceOp op,
                               const CollectiveInfo& info, Timeout timeout,
                               std::chrono::microseconds spin) {
  // Protocol, per collective on this segment (every rank runs them in the same order):
  //  1. raise my flag ("entered") and wait for every rank's: all inputs are written;
  //  2. reduce my chunk of the elements over the slots, in rank order, and write the result into
  //     every slot (for buffers up to a few MiB, pushing beats pulling it afterwards: one barrier
  //     less, measured);
  //  3. raise my flag ("left") and wait for every rank's: all chunks are reduced, so each slot
  //     holds the whole result and its owner may use it (and write the next step's input).
  enter(count, dtype, op, info, timeout, spin);

  reduce_my_chunk(offset, count, dtype, op, /*sum_only=*/false, /*into_all=*/true);

  raise_flag();
  wait_for_all(counter_, "finish", info, timeout, spin);
}

std::string host_identity() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string boot_id;
  std::getline(boot, boot_id);
  if (boot_id.empty()) boot_id = "?";
  return std::string(host) + "/" + boot_id + "/" + namespace_link("ipc") + "/" +
         namespace_link("mnt") + "/" + namespace_link("pid");
}

bool shared_memory_enabled_by_env() {
  const char* v = std::getenv("DTRAIN_SHARED_MEMORY");
  return v == nullptr || std::string(v) != "0";
}

double shared_memory_max_bytes(double backend_default) {
  const char* v = std::getenv("DTRAIN_SHARED_MEMORY_MAX_MB");
  if (v == nullptr) return backend_default;
  char* end = nullptr;
  const double mb = std::strtod(v, &end);
  DTRAIN_CHECK(end != v && *end == '\0' && mb >= 0,
               "DTRAIN_SHARED_MEMORY_MAX_MB must be a number of MiB >= 0; got '", v, "'");
  return mb * 1024 * 1024;
}

}  // namespace dtrain::dist
