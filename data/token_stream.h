// Token streams for language models: a memory-mapped file of uint16 or uint32 token ids cut into
// windows of T tokens, the byte-level CharTokenizer, and text_corpus_splits, which turns a text
// file (plain or gzip) into cached token files with train and test splits.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dtrain/data/dataset.h"
#include "dtrain/data/mapped_file.h"

namespace dtrain::data {

/// Example i is the window at s = offset + i * T of the token range: x = tokens[s, s + T) and
/// y = tokens[s + 1, s + T + 1) (the next token at each position), both int64 [T]. Windows do not
/// overlap; size() = (length - 1) / T, so the last window's final target is still in the range.
/// Random order comes from the sampler. The file stays mapped; every token of a batch is checked to
/// be < vocab_size as it is filled, and a bad one is reported with the file, its position in the
/// file (in tokens) and its value. Read-only after construction.
class TokenStreamDataset final : public Dataset {
 public:
  /// token_bytes: 2 (uint16) or 4 (uint32), little-endian. [offset_tokens, offset_tokens +
  /// length_tokens) selects a sub-range for train/test splits; length_tokens -1: to the end of the
  /// file. The range must hold at least T + 1 tokens (one window).
  TokenStreamDataset(std::string path, int token_bytes, int64_t context, int64_t vocab_size,
                     int64_t offset_tokens = 0, int64_t length_tokens = -1);
  int64_t size() const override { return windows_; }
  Shape example_shape() const override { return {context_}; }
  DType example_dtype() const override { return DType::kInt64; }
  Shape label_shape() const override { return {context_}; }
  int64_t num_classes() const override { return vocab_; }  // the vocabulary size
  void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const override;
  std::string describe() const override;

  int64_t context() const { return context_; }
  int64_t offset_tokens() const { return offset_; }
  int64_t length_tokens() const { return length_; }

 private:
  std::shared_ptr<const MappedFile> file_;
  int token_bytes_;
  int64_t context_, vocab_, offset_, length_, windows_;
};

/// Byte-level tokenizer: the vocabulary is the distinct bytes of the text it was built from, in
/// ascending order, and a byte's token id is its rank there.
struct CharTokenizer {
  std::vector<uint8_t> vocab;  // token id -> byte, ascending

  /// The vocabulary of `text`'s distinct bytes.
  static CharTokenizer from_text(std::string_view text);
  /// The vocabulary of a text file's distinct bytes (read_text_file: plain or gzip).
  static CharTokenizer from_file(const std::string& path);
  int64_t vocab_size() const { return static_cast<int64_t>(vocab.size()); }
  /// Throws ValueError naming the first byte that is not in the vocabulary and its position.
  std::vector<uint32_t> encode(std::string_view text) const;
  /// Throws ValueError naming the first id >= vocab_size() and its position.
  std::string decode(const std::vector<uint32_t>& tokens) const;
};

/// Text corpora are at most a few hundred MB; larger files (after decompression) are refused.
inline constexpr uint64_t kMaxTextBytes = uint64_t{1} << 30;

/// The whole of a text file, gunzipped when it is gzip (detected by its magic bytes, whatever its
/// name). Throws ValueError naming the file when it is missing, corrupt, or larger than
/// kMaxTextBytes; decompression stops one byte past the limit.
std::string read_text_file(const std::string& path);

/// Tokenizes `text_path` (read_text_file) byte-wise and writes the ids as little-endian uint16 to
/// `out_path`, through a temporary file renamed into place, so a killed process never leaves a
/// partial file there. Returns the tokenizer, whose vocabulary the ids index.
CharTokenizer write_token_file(const std::string& text_path, const std::string& out_path);

/// Train and test TokenStreamDatasets (uint16, context T) over the byte tokens of `text_path`: the
/// first floor((1 - test_fraction) * n) tokens and the rest. The token file and its vocabulary are
/// cached in `cache_dir` (created when missing), named after the text file and keyed by its
/// absolute path, size and modification time, so later runs map the cache instead of tokenizing;
/// both are written atomically. `tokenizer`, when given, receives the vocabulary (for decoding).
/// test_fraction must lie in (0, 1) and each split must hold at least T + 1 tokens.
Splits text_corpus_splits(const std::string& text_path, int64_t context, double test_fraction,
                          const std::string& cache_dir, CharTokenizer* tokenizer = nullptr);

}  // namespace dtrain::data
