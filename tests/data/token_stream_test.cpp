// TokenStreamDataset, CharTokenizer and text_corpus_splits: windows and next-token labels,
// sub-ranges, the loader's int64 batches, token and file errors, and the cached, atomically written
// token files.
#include "dtrain/data/token_stream.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "data/file_util.h"
#include "dtrain/data/loader.h"

namespace dtrain::data {
namespace {

using testing::Bytes;
using testing::expect_error;
using testing::le_bytes;
namespace fs = std::filesystem;

/// Token t at position t (mod 1000), so a window's values are its positions.
std::vector<uint16_t> counting_tokens(size_t n) {
  std::vector<uint16_t> tokens(n);
  for (size_t t = 0; t < n; ++t) tokens[t] = static_cast<uint16_t>(t % 1000);
  return tokens;
}

struct Windows {
  std::vector<int64_t> x, y;
};

Windows fill(const Dataset& dataset, const std::vector<int64_t>& indices) {
  const int64_t b = static_cast<int64_t>(indices.size()), t = dataset.example_shape()[0];
  Tensor x({b, t}, DType::kInt64), y({b, t}, DType::kInt64);
  dataset.fill_batch(indices, x, y);
  return {x.to_vector<int64_t>(), y.to_vector<int64_t>()};
}

std::vector<int64_t> range(int64_t begin, int64_t end) {
  std::vector<int64_t> out(end - begin);
  std::iota(out.begin(), out.end(), begin);
  return out;
}

class TokenStreamTest : public testing::TempDirTest {};

TEST_F(TokenStreamTest, WindowsAndNextTokenLabels) {
  const std::string file = write_plain("tokens.u16", le_bytes(counting_tokens(23)));
  const TokenStreamDataset dataset(file, 2, /*context=*/5, /*vocab_size=*/1000);
  // 23 tokens: windows at 0, 5, 10, 15; the last needs tokens up to 20 (its final target).
  EXPECT_EQ(dataset.size(), 4);
  EXPECT_EQ(dataset.example_shape(), Shape{5});
  EXPECT_EQ(dataset.label_shape(), Shape{5});
  EXPECT_EQ(dataset.example_dtype(), DType::kInt64);
  EXPECT_EQ(dataset.num_classes(), 1000);
  const Windows w = fill(dataset, {3, 0});
  EXPECT_EQ(std::vector<int64_t>(w.x.begin(), w.x.begin() + 5), range(15, 20));
  EXPECT_EQ(std::vector<int64_t>(w.y.begin(), w.y.begin() + 5), range(16, 21));
  EXPECT_EQ(std::vector<int64_t>(w.x.begin() + 5, w.x.end()), range(0, 5));
  EXPECT_EQ(std::vector<int64_t>(w.y.begin() + 5, w.y.end()), range(1, 6));
  // One token more than 4 windows need does not make a fifth.
  EXPECT_EQ(
      TokenStreamDataset(write_plain("t21.u16", le_bytes(counting_tokens(21))), 2, 5, 1000).size(),
      4);
  EXPECT_EQ(
      TokenStreamDataset(write_plain("t20.u16", le_bytes(counting_tokens(20))), 2, 5, 1000).size(),
      3);
}

TEST_F(TokenStreamTest, SubRangesAndUint32Tokens) {
  std::vector<uint32_t> tokens(40);
  for (size_t t = 0; t < tokens.size(); ++t) tokens[t] = static_cast<uint32_t>(100000 + t);
  const std::string file = write_plain("tokens.u32", le_bytes(tokens));
  const TokenStreamDataset tail(file, 4, /*context=*/3, /*vocab_size=*/200000, /*offset=*/30);
  EXPECT_EQ(tail.length_tokens(), 10);
  EXPECT_EQ(tail.size(), 3);
  const Windows w = fill(tail, {0, 2});
  EXPECT_EQ(w.x, (std::vector<int64_t>{100030, 100031, 100032, 100036, 100037, 100038}));
  EXPECT_EQ(w.y, (std::vector<int64_t>{100031, 100032, 100033, 100037, 100038, 100039}));
  const TokenStreamDataset middle(file, 4, 3, 200000, /*offset=*/10, /*length=*/7);
  EXPECT_EQ(middle.size(), 2);
  EXPECT_EQ(fill(middle, {1}).y, (std::vector<int64_t>{100014, 100015, 100016}));
  expect_error([&] { fill(middle, {2}); }, {"index 2", "[0, 2)"});
}

TEST_F(TokenStreamTest, LoaderGivesInt64WindowsWithShiftedLabels) {
  const std::string file = write_plain("tokens.u16", le_bytes(counting_tokens(101)));
  auto dataset = std::make_shared<TokenStreamDataset>(file, 2, 4, 1000);
  DataLoader loader(dataset, DistributedSampler(dataset->size(), 1, 0, /*shuffle=*/true, 3, false),
                    /*batch_size=*/6, /*drop_last=*/false);
  loader.start_epoch(1);
  Batch batch;
  int64_t windows = 0;
  while (loader.next(batch)) {
    ASSERT_EQ(batch.x.dtype(), DType::kInt64);
    ASSERT_EQ(batch.x.dim(), 2);
    EXPECT_EQ(batch.x.size(1), 4);
    EXPECT_EQ(batch.y.shape(), batch.x.shape());
    const auto x = batch.x.to_vector<int64_t>(), y = batch.y.to_vector<int64_t>();
    for (size_t k = 0; k < x.size(); ++k) EXPECT_EQ(y[k], x[k] + 1);
    for (size_t r = 0; r < x.size(); r += 4) EXPECT_EQ(x[r] % 4, 0) << "windows start at i * T";
    windows += batch.x.size(0);
  }
  EXPECT_EQ(windows, 25);
}

TEST_F(TokenStreamTest, TokenOutOfVocabularyNamesFileAndPosition) {
  std::vector<uint16_t> tokens = counting_tokens(30);
  tokens[17] = 65000;
  const std::string file = write_plain("bad.u16", le_bytes(tokens));
  const TokenStreamDataset dataset(file, 2, 4, 100);
  fill(dataset, {0, 1, 2});  // positions 0..12 are fine
  // Window 4 covers positions 16..20, where 17 is bad (as input and as label).
  expect_error([&] { fill(dataset, {4}); },
               {file, "token 65000 at position 17", ">= vocab_size 100"});
}

TEST_F(TokenStreamTest, RejectsBadFilesAndRanges) {
  const std::string odd = write_plain("odd.u16", Bytes(21, 0));
  expect_error([&] { TokenStreamDataset(odd, 2, 4, 10); },
               {odd, "size 21 bytes", "2-byte token (uint16)"});
  const std::string six = write_plain("six.u32", Bytes(4 * 6 + 2, 0));
  expect_error([&] { TokenStreamDataset(six, 4, 4, 10); }, {six, "4-byte token (uint32)"});
  const std::string file = write_plain("ten.u16", le_bytes(counting_tokens(10)));
  expect_error([&] { TokenStreamDataset(file, 2, 4, 10, 8, 5); },
               {file, "[8, 13)", "file's 10 tokens"});
  expect_error([&] { TokenStreamDataset(file, 2, 4, 10, 12); }, {file, "file's 10 tokens"});
  expect_error([&] { TokenStreamDataset(file, 2, 9, 10, 1); },
               {file, "holds 9 tokens", "context 9 needs 10"});
  expect_error([&] { TokenStreamDataset(file, 3, 4, 10); }, {"token_bytes is 3"});
  expect_error([&] { TokenStreamDataset(path("none.u16"), 2, 4, 10); },
               {path("none.u16"), "no such file"});
}

TEST(CharTokenizer, SortedDistinctBytesAndRoundTrip) {
  const CharTokenizer tokenizer = CharTokenizer::from_text("hello world");
  EXPECT_EQ(tokenizer.vocab, (std::vector<uint8_t>{' ', 'd', 'e', 'h', 'l', 'o', 'r', 'w'}));
  EXPECT_EQ(tokenizer.vocab_size(), 8);
  const std::vector<uint32_t> ids = tokenizer.encode("world hello");
  EXPECT_EQ(ids, (std::vector<uint32_t>{7, 5, 6, 4, 1, 0, 3, 2, 4, 4, 5}));
  EXPECT_EQ(tokenizer.decode(ids), "world hello");
  expect_error([&] { tokenizer.encode("held!"); }, {"0x21 '!'", "position 4"});
  expect_error([&] { tokenizer.decode({1, 8}); }, {"token 8 at position 1"});
}

TEST_F(TokenStreamTest, ReadTextFileRefusesMoreThanOneGibibyte) {
  const std::string text = write_text("small.txt", "abcabc");
  EXPECT_EQ(read_text_file(text), "abcabc");
  EXPECT_EQ(CharTokenizer::from_file(write_gzip("small.txt.gz", Bytes{'c', 'a', 'c'})).vocab,
            (std::vector<uint8_t>{'a', 'c'}));
  // A sparse file: refused from its size, before anything is read.
  const std::string big = write_text("big.txt", "x");
  fs::resize_file(big, kMaxTextBytes + 1);
  expect_error([&] { read_text_file(big); },
               {big, "1 GiB (1073741825 bytes) is larger than the 1 GiB (1073741824 bytes)"});
}

TEST_F(TokenStreamTest, WriteTokenFileLeavesOnlyTheFinishedFile) {
  const std::string text = "the quick brown fox jumps over the lazy dog\n";
  const std::string text_path = write_text("fox.txt", text);
  const std::string out = path("fox.u16");
  const CharTokenizer tokenizer = write_token_file(text_path, out);
  std::ifstream in(out, std::ios::binary);
  const Bytes bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(bytes.size(), 2 * text.size());
  std::vector<uint32_t> ids(text.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = bytes[2 * i] | (bytes[2 * i + 1] << 8);
  EXPECT_EQ(ids, tokenizer.encode(text));
  EXPECT_EQ(tokenizer.decode(ids), text);
  for (const auto& entry : fs::directory_iterator(dir_)) {
    EXPECT_EQ(entry.path().string().find(".tmp"), std::string::npos) << entry.path();
  }
  expect_error([&] { write_token_file(path("absent.txt"), out); },
               {path("absent.txt"), "not found"});
}

TEST_F(TokenStreamTest, TextCorpusSplitsCachesAndSplitsTheTokens) {
  std::string text;
  for (int i = 0; i < 50; ++i) text += "line " + std::to_string(i) + ": to be or not to be\n";
  for (const bool gzip : {false, true}) {
    SCOPED_TRACE(gzip ? "gzip" : "plain");
    const std::string text_path = gzip
                                      ? write_gzip("corpus.txt.gz", Bytes(text.begin(), text.end()))
                                      : write_text("corpus.txt", text);
    const std::string cache = path(gzip ? "cache/gz" : "cache/plain");  // created on demand
    CharTokenizer tokenizer;
    const Splits splits =
        text_corpus_splits(text_path, /*context=*/16, /*test_fraction=*/0.1, cache, &tokenizer);
    EXPECT_EQ(tokenizer.vocab, CharTokenizer::from_text(text).vocab);
    const auto& train = dynamic_cast<const TokenStreamDataset&>(*splits.train);
    const auto& test = dynamic_cast<const TokenStreamDataset&>(*splits.test);
    const auto n = static_cast<int64_t>(text.size());
    const auto train_tokens = static_cast<int64_t>(std::floor(0.9 * static_cast<double>(n)));
    EXPECT_EQ(train.offset_tokens(), 0);
    EXPECT_EQ(train.length_tokens(), train_tokens);
    EXPECT_EQ(test.offset_tokens(), train_tokens);
    EXPECT_EQ(test.length_tokens(), n - train_tokens);
    EXPECT_EQ(train.size(), (train_tokens - 1) / 16);
    EXPECT_EQ(train.num_classes(), tokenizer.vocab_size());

    // Window 3 of the test split decodes to the text at its offset, its labels one byte later.
    const Windows w = fill(test, {3});
    const auto decode = [&](const std::vector<int64_t>& ids) {
      return tokenizer.decode(std::vector<uint32_t>(ids.begin(), ids.end()));
    };
    EXPECT_EQ(decode(w.x), text.substr(train_tokens + 48, 16));
    EXPECT_EQ(decode(w.y), text.substr(train_tokens + 49, 16));

    // A second call maps the cached file instead of writing it again.
    std::vector<fs::path> cached;
    for (const auto& entry : fs::directory_iterator(cache)) cached.push_back(entry.path());
    ASSERT_EQ(cached.size(), 2u) << "the token file and its vocabulary, no temporary files";
    const fs::path token_file = cached[0].extension() == ".u16" ? cached[0] : cached[1];
    EXPECT_EQ(token_file.filename().string().rfind("corpus.txt-", 0), 0u) << token_file;
    const auto written = fs::last_write_time(token_file);
    fs::last_write_time(token_file, written - std::chrono::hours(1));
    const Splits again = text_corpus_splits(text_path, 16, 0.1, cache);
    EXPECT_EQ(fs::last_write_time(token_file), written - std::chrono::hours(1));
    EXPECT_EQ(fill(*again.test, {3}).x, w.x);
  }
}

TEST_F(TokenStreamTest, TextCorpusSplitsFollowsAChangedText) {
  const std::string text_path = write_text("a.txt", "abababababababababababababababab");
  const std::string cache = path("cache");
  CharTokenizer first, second;
  text_corpus_splits(text_path, 4, 0.25, cache, &first);
  write_text("a.txt", "xyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyzxyz");
  text_corpus_splits(text_path, 4, 0.25, cache, &second);
  EXPECT_EQ(first.vocab, (std::vector<uint8_t>{'a', 'b'}));
  EXPECT_EQ(second.vocab, (std::vector<uint8_t>{'x', 'y', 'z'}));
}

TEST_F(TokenStreamTest, TextCorpusSplitsRejectsBadArguments) {
  const std::string text_path = write_text("short.txt", "0123456789");
  const std::string cache = path("cache");
  expect_error([&] { text_corpus_splits(text_path, 4, 0.0, cache); }, {"test_fraction is 0"});
  expect_error([&] { text_corpus_splits(text_path, 4, 1.0, cache); }, {"test_fraction is 1"});
  expect_error([&] { text_corpus_splits(text_path, 4, 0.2, cache); },
               {text_path, "10 tokens split 8 (train) / 2 (test", "context + 1 = 5"});
  expect_error([&] { text_corpus_splits(path("none.txt"), 4, 0.2, cache); },
               {path("none.txt"), "not found"});
  // A corrupt gzip stream is refused with the file's name.
  std::string gz_text(4000, 'a');
  const std::string gz = write_gzip("cut.txt.gz", Bytes(gz_text.begin(), gz_text.end()));
  std::ifstream in(gz, std::ios::binary);
  Bytes compressed((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  compressed.resize(compressed.size() - 6);
  const std::string cut = write_plain("cut.txt.gz", compressed);
  expect_error([&] { read_text_file(cut); }, {cut, "truncated or corrupt"});
}

}  // namespace
}  // namespace dtrain::data
