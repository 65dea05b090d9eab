// TokenStreamDataset over a memory map, the byte tokenizer, and the cached text corpus splits.
#include "dtrain/data/token_stream.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <sstream>

#include "dtrain/data/gzip_reader.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/hash.h"

namespace dtrain::data {
namespace {

static_assert(std::endian::native == std::endian::little,
              "token files are little-endian and are mapped as they are");

namespace fs = std::filesystem;

/// A file written under a temporary name beside `path` and renamed over it by commit(), so readers
/// see either the old file or the complete new one. Destroyed without commit(), it removes the
/// temporary file.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)) {
    static std::atomic<uint64_t> counter{0};
    // pid + counter keep concurrent writers (ranks tokenizing the same corpus) apart; O_EXCL and
    // O_NOFOLLOW refuse a planted file or symlink at the name.
    temp_ = path_ + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    DTRAIN_CHECK(fd_ >= 0, "cannot create '", temp_, "' (to write '", path_,
                 "'): ", std::strerror(errno));
  }
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(temp_.c_str());
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
      const ssize_t done = ::write(fd_, p, n);
      if (done < 0 && errno == EINTR) continue;
      DTRAIN_CHECK(done > 0, "cannot write '", temp_, "' (to write '", path_,
                   "'): ", std::strerror(errno));
      p += done;
      n -= static_cast<size_t>(done);
    }
  }
  void commit() {
    // fsync before rename: after a crash the name must not point at a file whose data is lost.
    DTRAIN_CHECK(::fsync(fd_) == 0, "cannot flush '", temp_, "': ", std::strerror(errno));
    const int fd = fd_;
    fd_ = -1;
    DTRAIN_CHECK(::close(fd) == 0, "cannot close '", temp_, "': ", std::strerror(errno));
    DTRAIN_CHECK(::rename(temp_.c_str(), path_.c_str()) == 0, "cannot rename '", temp_, "' to '",
                 path_, "': ", std::strerror(errno));
    committed_ = true;
  }

 private:
  std::string path_, temp_;
  int fd_ = -1;
  bool committed_ = false;
};

/// id_of[byte] = token id, or -1 for a byte outside the vocabulary.
std::array<int32_t, 256> id_table(const CharTokenizer& tokenizer) {
  std::array<int32_t, 256> id_of;
  id_of.fill(-1);
  for (size_t i = 0; i < tokenizer.vocab.size(); ++i) id_of[tokenizer.vocab[i]] = int32_t(i);
  return id_of;
}

std::string byte_str(uint8_t byte) {
  std::ostringstream os;
  os << "0x" << std::hex << std::setw(2) << std::setfill('0') << int{byte};
  if (byte >= 0x20 && byte < 0x7f) os << " '" << static_cast<char>(byte) << "'";
  return os.str();
}

/// Writes `text`'s token ids as little-endian uint16 to `path`, atomically.
void write_tokens(const std::string& path, const std::string& text,
                  const CharTokenizer& tokenizer) {
  const std::array<int32_t, 256> id_of = id_table(tokenizer);
  AtomicFile out(path);
  std::vector<uint16_t> buffer(size_t{1} << 19);
  for (size_t begin = 0; begin < text.size(); begin += buffer.size()) {
    const size_t n = std::min(buffer.size(), text.size() - begin);
    for (size_t k = 0; k < n; ++k) {
      const int32_t id = id_of[static_cast<uint8_t>(text[begin + k])];
      DTRAIN_CHECK(id >= 0, "write_tokens('", path, "'): byte ",
                   byte_str(static_cast<uint8_t>(text[begin + k])), " at position ", begin + k,
                   " is not in the vocabulary");
      buffer[k] = static_cast<uint16_t>(id);
    }
    out.write(buffer.data(), n * sizeof(uint16_t));
  }
  out.commit();
}

/// The cache name's stem: the text file's name without .gz, restricted to [A-Za-z0-9._-].
std::string cache_stem(const fs::path& text_path) {
  std::string name = text_path.filename().string();
  if (name.size() > 3 && name.ends_with(".gz")) name.resize(name.size() - 3);
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_') c = '_';
  }
  return name.empty() ? "text" : name;
}

}  // namespace

TokenStreamDataset::TokenStreamDataset(std::string path, int token_bytes, int64_t context,
                                       int64_t vocab_size, int64_t offset_tokens,
                                       int64_t length_tokens)
    : token_bytes_(token_bytes),
      context_(context),
      vocab_(vocab_size),
      offset_(offset_tokens),
      length_(length_tokens) {
  DTRAIN_CHECK(token_bytes == 2 || token_bytes == 4, "TokenStreamDataset('", path,
               "'): token_bytes is ", token_bytes, "; expected 2 (uint16) or 4 (uint32)");
  DTRAIN_CHECK(context >= 1, "TokenStreamDataset('", path, "'): context is ", context,
               "; expected >= 1 tokens");
  DTRAIN_CHECK(vocab_size >= 1, "TokenStreamDataset('", path, "'): vocab_size is ", vocab_size,
               "; expected >= 1");
  file_ = std::make_shared<const MappedFile>(path, "token file");
  const uint64_t bytes = file_->size();
  const char* type = token_bytes == 2 ? "uint16" : "uint32";
  DTRAIN_CHECK(bytes % token_bytes == 0, "token file '", path, "': size ", bytes,
               " bytes is not a multiple of the ", token_bytes, "-byte token (", type,
               "); truncated, or written with another token size?");
  const int64_t total = static_cast<int64_t>(bytes / token_bytes);
  if (length_ < 0) length_ = total - std::clamp<int64_t>(offset_, 0, total);
  DTRAIN_CHECK(offset_ >= 0 && length_tokens >= -1 && offset_ + length_ <= total, "token file '",
               path, "': token range [", offset_, ", ", offset_ + length_,
               ") is not inside the file's ", total, " tokens (", bytes, " bytes of ", type, ")");
  DTRAIN_CHECK(length_ >= context + 1, "token file '", path, "': token range [", offset_, ", ",
               offset_ + length_, ") holds ", length_, " tokens; one window of context ", context,
               " needs ", context + 1, " (inputs and the next token)");
  windows_ = (length_ - 1) / context_;
}

void TokenStreamDataset::fill_batch(const std::vector<int64_t>& indices, Tensor& x,
                                    Tensor& y) const {
  detail::check_batch(*this, indices, x, y);
  int64_t* xs = x.data<int64_t>();
  int64_t* ys = y.data<int64_t>();
  const uint8_t* tokens = file_->data();
  std::vector<int64_t> window(static_cast<size_t>(context_ + 1));
  for (size_t b = 0; b < indices.size(); ++b) {
    const int64_t start = offset_ + indices[b] * context_;
    for (int64_t t = 0; t <= context_; ++t) {
      const int64_t pos = start + t;
      int64_t token;
      if (token_bytes_ == 2) {
        uint16_t v;
        std::memcpy(&v, tokens + pos * 2, 2);
        token = v;
      } else {
        uint32_t v;
        std::memcpy(&v, tokens + pos * 4, 4);
        token = v;
      }
      DTRAIN_CHECK(token < vocab_, "token file '", file_->path(), "': token ", token,
                   " at position ", pos, " (byte ", pos * token_bytes_, ") is >= vocab_size ",
                   vocab_, "; wrong vocab_size or token size (", token_bytes_, " bytes)?");
      window[t] = token;
    }
    std::copy(window.begin(), window.end() - 1, xs + b * context_);
    std::copy(window.begin() + 1, window.end(), ys + b * context_);
  }
}

std::string TokenStreamDataset::describe() const {
  return dtrain::detail::concat("TokenStreamDataset('", file_->path(), "' ",
                                token_bytes_ == 2 ? "uint16" : "uint32", " tokens [", offset_, ", ",
                                offset_ + length_, "): ", windows_, " windows of ", context_,
                                ", vocab ", vocab_, ")");
}

CharTokenizer CharTokenizer::from_text(std::string_view text) {
  std::array<bool, 256> seen{};
  for (char c : text) seen[static_cast<uint8_t>(c)] = true;
  CharTokenizer tokenizer;
  for (int b = 0; b < 256; ++b) {
    if (seen[b]) tokenizer.vocab.push_back(static_cast<uint8_t>(b));
  }
  return tokenizer;
}

std::vector<uint32_t> CharTokenizer::encode(std::string_view text) const {
  const std::array<int32_t, 256> id_of = id_table(*this);
  std::vector<uint32_t> tokens(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const int32_t id = id_of[static_cast<uint8_t>(text[i])];
    DTRAIN_CHECK(id >= 0, "CharTokenizer::encode: byte ", byte_str(static_cast<uint8_t>(text[i])),
                 " at position ", i, " is not in the vocabulary of ", vocab.size(), " bytes");
    tokens[i] = static_cast<uint32_t>(id);
  }
  return tokens;
}

std::string CharTokenizer::decode(const std::vector<uint32_t>& tokens) const {
  std::string text(tokens.size(), '\0');
  for (size_t i = 0; i < tokens.size(); ++i) {
    DTRAIN_CHECK(tokens[i] < vocab.size(), "CharTokenizer::decode: token ", tokens[i],
                 " at position ", i, " is >= the vocabulary size ", vocab.size());
    text[i] = static_cast<char>(vocab[tokens[i]]);
  }
  return text;
}

std::string read_text_file(const std::string& path) {
  detail::GzipReader file(path, "text file");
  DTRAIN_CHECK(file.is_gzip() || file.file_size() <= kMaxTextBytes, "text file '", path,
               "': ", detail::bytes_str(file.file_size()), " is larger than the ",
               detail::bytes_str(kMaxTextBytes),
               " a text corpus may have; tokenize it beforehand into a token file "
               "(TokenStreamDataset)");
  std::string text;
  if (!file.is_gzip()) text.reserve(file.file_size());
  // Grow as bytes arrive and stop one byte past the limit, so a gzip bomb cannot exhaust memory.
  constexpr size_t kChunk = size_t{1} << 20;
  for (;;) {
    const size_t used = text.size();
    const size_t want = std::min<uint64_t>(kChunk, kMaxTextBytes + 1 - used);
    text.resize(used + want);
    const size_t got = file.read(text.data() + used, want);
    text.resize(used + got);
    if (got < want || text.size() > kMaxTextBytes) break;
  }
  DTRAIN_CHECK(text.size() <= kMaxTextBytes, "text file '", path, "': gzip stream of ",
               detail::bytes_str(file.file_size()), " inflates to more than ",
               detail::bytes_str(kMaxTextBytes),
               ", the most a text corpus may have; tokenize it beforehand into a token file "
               "(TokenStreamDataset)");
  return text;
}

CharTokenizer CharTokenizer::from_file(const std::string& path) {
  return from_text(read_text_file(path));
}

CharTokenizer write_token_file(const std::string& text_path, const std::string& out_path) {
  const std::string text = read_text_file(text_path);
  CharTokenizer tokenizer = CharTokenizer::from_text(text);
  write_tokens(out_path, text, tokenizer);
  return tokenizer;
}

Splits text_corpus_splits(const std::string& text_path, int64_t context, double test_fraction,
                          const std::string& cache_dir, CharTokenizer* tokenizer) {
  DTRAIN_CHECK(test_fraction > 0 && test_fraction < 1, "text_corpus_splits('", text_path,
               "'): test_fraction is ", test_fraction, "; expected a fraction in (0, 1)");
  DTRAIN_CHECK(context >= 1, "text_corpus_splits('", text_path, "'): context is ", context,
               "; expected >= 1 tokens");
  std::error_code ec;
  DTRAIN_CHECK(fs::is_regular_file(text_path, ec), "text file '", text_path,
               "': not found (or not a regular file)");
  const fs::path absolute = fs::absolute(text_path, ec);
  const uint64_t size = fs::file_size(text_path, ec);
  const auto mtime = fs::last_write_time(text_path, ec).time_since_epoch().count();
  DTRAIN_CHECK(!ec, "text file '", text_path, "': cannot read its size and time: ", ec.message());

  // The key changes whenever the text file does (path, size or time), so a stale cache is never
  // read; the name keeps the text's name so the cache directory stays legible.
  uint64_t key = fnv1a("dtrain byte tokens v1");
  key = fnv1a(absolute.string(), key);
  key = fnv1a(&size, sizeof size, key);
  key = fnv1a(&mtime, sizeof mtime, key);
  std::ostringstream name;
  name << cache_stem(text_path) << '-' << std::hex << std::setw(16) << std::setfill('0') << key;
  fs::create_directories(cache_dir, ec);
  DTRAIN_CHECK(fs::is_directory(cache_dir, ec), "token cache directory '", cache_dir,
               "': cannot create it", ec ? ": " + ec.message() : std::string());
  const std::string token_path = (fs::path(cache_dir) / (name.str() + ".u16")).string();
  const std::string vocab_path = (fs::path(cache_dir) / (name.str() + ".vocab")).string();

  // The vocabulary is written first and the tokens last, so a token file implies its vocabulary.
  CharTokenizer vocab;
  bool cached = fs::is_regular_file(token_path, ec) && fs::is_regular_file(vocab_path, ec);
  if (cached) {
    const std::string bytes = read_text_file(vocab_path);
    vocab.vocab.assign(bytes.begin(), bytes.end());
    cached = !vocab.vocab.empty() && std::is_sorted(vocab.vocab.begin(), vocab.vocab.end()) &&
             std::adjacent_find(vocab.vocab.begin(), vocab.vocab.end()) == vocab.vocab.end();
  }
  if (!cached) {
    const std::string text = read_text_file(text_path);
    vocab = CharTokenizer::from_text(text);
    {
      AtomicFile out(vocab_path);
      out.write(vocab.vocab.data(), vocab.vocab.size());
      out.commit();
    }
    write_tokens(token_path, text, vocab);
  }

  const int64_t tokens = static_cast<int64_t>(fs::file_size(token_path, ec) / sizeof(uint16_t));
  DTRAIN_CHECK(!ec, "token file '", token_path, "': cannot read its size: ", ec.message());
  const auto train_tokens =
      static_cast<int64_t>(std::floor((1.0 - test_fraction) * static_cast<double>(tokens)));
  const int64_t test_tokens = tokens - train_tokens;
  DTRAIN_CHECK(std::min(train_tokens, test_tokens) >= context + 1, "text_corpus_splits('",
               text_path, "'): ", tokens, " tokens split ", train_tokens, " (train) / ",
               test_tokens, " (test, test_fraction ", test_fraction,
               "); each split needs at least context + 1 = ", context + 1,
               " tokens. Use a longer text, a smaller context or another test_fraction");
  const int64_t vocab_size = vocab.vocab_size();
  Splits splits;
  splits.train =
      std::make_shared<TokenStreamDataset>(token_path, 2, context, vocab_size, 0, train_tokens);
  splits.test = std::make_shared<TokenStreamDataset>(token_path, 2, context, vocab_size,
                                                     train_tokens, test_tokens);
  if (tokenizer != nullptr) *tokenizer = std::move(vocab);
  return splits;
}

}  // namespace dtrain::data
