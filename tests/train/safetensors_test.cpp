// safetensors files parsed back byte by byte: header length and alignment, the JSON entries, data
// offsets and bytes, metadata, and the name checks.
#include "dtrain/train/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "dtrain/nn/layers.h"
#include "train/scratch_dir.h"

namespace dtrain::train {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testutil::read_bytes;
using testutil::ScratchDir;

struct Parsed {
  uint64_t header_length = 0;
  std::string header;  // without the padding
  std::string padding;
  std::string data;  // everything after the header
};

Parsed parse(const std::string& path) {
  const std::string file = read_bytes(path);
  Parsed parsed;
  EXPECT_GE(file.size(), 8u);
  if (file.size() < 8) return parsed;
  std::memcpy(&parsed.header_length, file.data(), 8);
  EXPECT_LE(8 + parsed.header_length, file.size());
  const std::string header = file.substr(8, parsed.header_length);
  const size_t last = header.find_last_not_of(' ');
  parsed.header = header.substr(0, last + 1);
  parsed.padding = header.substr(last + 1);
  parsed.data = file.substr(8 + parsed.header_length);
  return parsed;
}

std::string bytes_of(const Tensor& t) {
  return std::string(static_cast<const char*>(t.data_ptr()), t.nbytes());
}

Tensor filled(const Shape& shape, DType dtype, unsigned char seed) {
  Tensor t(shape, dtype);
  auto* bytes = static_cast<unsigned char*>(t.data_ptr());
  for (size_t i = 0; i < t.nbytes(); ++i) bytes[i] = static_cast<unsigned char>(seed + i * 7);
  return t;
}

TEST(Safetensors, LayoutOfEveryDType) {
  ScratchDir dir;
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"fc.weight", from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3})},
      {"f64", from_vector<double>({0.5, -0.25})},
      {"f16", filled({3}, DType::kFloat16, 1)},
      {"bf16", filled({1, 1}, DType::kBFloat16, 2)},
      {"i64", from_vector<int64_t>({-1, 1LL << 40})},
      {"i32", from_vector<int32_t>({7, -7, 8})},
      {"u8", from_vector<uint8_t>({0, 255, 3})},
      {"mask", from_vector<bool>({true, false, true, true})},
      {"scalar", scalar_tensor(2.5)},
      {"empty", Tensor({0, 4}, DType::kFloat32)},
  };
  const std::string path = dir / "model.safetensors";
  write_safetensors(path, tensors);
  const Parsed parsed = parse(path);

  EXPECT_EQ(parsed.header_length % 8, 0u) << "data must start 8-byte aligned";
  EXPECT_LT(parsed.padding.size(), 8u);
  EXPECT_EQ(parsed.header.front(), '{');
  EXPECT_EQ(parsed.header.back(), '}');
  EXPECT_THAT(parsed.header, Not(HasSubstr("__metadata__")));

  const char* expected_dtype[] = {"F32", "F64", "F16",  "BF16", "I64",
                                  "I32", "U8",  "BOOL", "F32",  "F32"};
  const char* expected_shape[] = {"[2, 3]", "[2]", "[3]", "[1, 1]", "[2]",
                                  "[3]",    "[3]", "[4]", "[]",     "[0, 4]"};
  size_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, tensor] = tensors[i];
    SCOPED_TRACE(name);
    const size_t end = offset + tensor.nbytes();
    const std::string entry = "\"" + name + "\": {\"dtype\": \"" + expected_dtype[i] +
                              "\", \"shape\": " + expected_shape[i] + ", \"data_offsets\": [" +
                              std::to_string(offset) + ", " + std::to_string(end) + "]}";
    EXPECT_THAT(parsed.header, HasSubstr(entry));
    ASSERT_LE(end, parsed.data.size());
    EXPECT_EQ(parsed.data.substr(offset, end - offset), bytes_of(tensor));
    offset = end;
  }
  EXPECT_EQ(parsed.data.size(), offset) << "tensors must exactly cover the data buffer";
  EXPECT_EQ(
      parsed.data.substr(0, 4 * 6),
      std::string(reinterpret_cast<const char*>(std::vector<float>{1, 2, 3, 4, 5, 6}.data()), 24));
}

TEST(Safetensors, MetadataIsWrittenAndEscaped) {
  ScratchDir dir;
  const std::string path = dir / "m.safetensors";
  write_safetensors(path, {{"w", from_vector<float>({1.f})}},
                    {{"format", "pt"}, {"config", "lr: 0.1\nname: \"mlp\""}});
  const Parsed parsed = parse(path);
  EXPECT_THAT(parsed.header,
              HasSubstr(R"("__metadata__": {"config": "lr: 0.1\nname: \"mlp\"", "format": "pt"})"));
  EXPECT_EQ(parsed.header_length % 8, 0u);
}

TEST(Safetensors, RejectsDuplicateAndQuotedNames) {
  ScratchDir dir;
  const std::string path = dir / "bad.safetensors";
  try {
    write_safetensors(path, {{"w", zeros({2})}, {"b", zeros({1})}, {"w", zeros({3})}});
    FAIL() << "expected an error";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr(path));
    EXPECT_THAT(e.message(), HasSubstr("duplicate tensor name 'w'"));
  }
  try {
    write_safetensors(path, {{"say \"hi\"", zeros({2})}});
    FAIL() << "expected an error";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("contains '\"'"));
  }
  EXPECT_THROW(write_safetensors(path, {{"__metadata__", zeros({2})}}), ValueError);
  EXPECT_THROW(write_safetensors(path, {{"undefined", Tensor()}}), ValueError);
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_TRUE(dir.entries().empty()) << "no temp file may remain";
}

TEST(Safetensors, ReplacesExistingFileAndNamesPathOnFailure) {
  ScratchDir dir;
  const std::string path = dir / "m.safetensors";
  write_safetensors(path, {{"a", zeros({100})}});
  write_safetensors(path, {{"b", ones({2})}});
  EXPECT_THAT(parse(path).header, HasSubstr("\"b\""));
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});

  const std::string unwritable = dir / "missing/m.safetensors";
  try {
    write_safetensors(unwritable, {{"a", zeros({1})}});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), HasSubstr(unwritable));
  }
}

}  // namespace
}  // namespace dtrain::train

// ---------------------------------------------------------------------------------------------
// Reading back, and starting a model from a file of weights.

namespace dtrain::train {
namespace {

TEST(SafetensorsRead, EveryDTypeAndTheMetadataComeBackBitForBit) {
  ScratchDir dir;
  Tensor half({3}, DType::kFloat16), brain({2}, DType::kBFloat16);
  const uint16_t half_bits[] = {0x3C00, 0xC000, 0x7BFF}, brain_bits[] = {0x3F80, 0xC2F7};
  std::memcpy(half.data_ptr(), half_bits, sizeof half_bits);
  std::memcpy(brain.data_ptr(), brain_bits, sizeof brain_bits);
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"fc.weight", from_vector<float>({0.1f, -2.f, 3.25f, 1e-30f, 7.f, -0.5f}, {2, 3})},
      {"fc.bias", from_vector<double>({1.0 / 3, -1e300})},
      {"steps", from_vector<int64_t>({-5, 1LL << 40, 0, 42}, {2, 2})},
      {"i32", from_vector<int32_t>({-7, 2147483647})},
      {"pixels", from_vector<uint8_t>({0, 128, 255})},
      {"mask", from_vector<bool>({true, false, true})},
      {"half", half},
      {"brain", brain},
      {"empty", Tensor({0, 4}, DType::kFloat32)},
  };
  const std::string path = dir / "all.safetensors";
  write_safetensors(path, tensors, {{"format", "pt"}, {"note", "a \"quoted\" value"}});
  const SafetensorsFile back = read_safetensors(path);
  ASSERT_EQ(back.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(back.tensors[i].first, tensors[i].first);
    EXPECT_EQ(back.tensors[i].second.dtype(), tensors[i].second.dtype()) << tensors[i].first;
    EXPECT_EQ(back.tensors[i].second.shape(), tensors[i].second.shape()) << tensors[i].first;
    EXPECT_EQ(bytes_of(back.tensors[i].second), bytes_of(tensors[i].second)) << tensors[i].first;
  }
  EXPECT_EQ(back.metadata.at("note"), "a \"quoted\" value");
  EXPECT_EQ(back.metadata.at("format"), "pt");
}

/// A file of `header` (length-prefixed) followed by `data`.
std::string with_header(const std::string& header, const std::string& data = "") {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i) & 0xff);
  return out + header + data;
}

TEST(SafetensorsRead, MalformedFilesAreNamedWithTheFieldAtFault) {
  ScratchDir dir;
  const std::string path = dir / "bad.safetensors";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"abc", "shorter than the 8-byte header length"},
      {std::string("\xff\xff\xff\xff\x00\x00\x00\x00", 8) + "{}", "does not fit the file"},
      {with_header("{\"a\": "), "the header is not a JSON object"},
      {with_header("[1, 2]"), "the header is not a JSON object"},
      {with_header(R"({"w": {"dtype": "F32", "shape": [2]}})"), "tensor 'w': needs dtype, shape"},
      {with_header(R"({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}})", "12345678"),
       "dtype \"Q4\" is not one of"},
      {with_header(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", "12345678"),
       "not a non-negative integer"},
      {with_header(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}})", "12345678"),
       "are outside the file's 8 bytes of data"},
      {with_header(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})",
                   "1234567812345678"),
       "hold 8 bytes; dtype F32 and shape [3] need 12"},
      {with_header(R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 4],
                      "data_offsets": [0, 8]}})",
                   "12345678"),
       "needs more bytes than the file's 8 of data"},
      {with_header(R"({"__metadata__": {"k": 1}})"), "__metadata__ 'k' is not a string"},
  };
  for (const auto& [content, message] : cases) {
    {
      std::ofstream f(path, std::ios::binary | std::ios::trunc);
      f << content;
    }
    try {
      read_safetensors(path);
      ADD_FAILURE() << "read a malformed file; expected: " << message;
    } catch (const ValueError& e) {
      EXPECT_THAT(e.message(), HasSubstr("safetensors file '" + path + "'")) << message;
      EXPECT_THAT(e.message(), HasSubstr(message));
    }
  }
}

TEST(LoadWeights, EveryMismatchIsListedAndNothingIsLoaded) {
  manual_seed(1);
  nn::Sequential model{std::make_shared<nn::Linear>(4, 3), std::make_shared<nn::BatchNorm1d>(3),
                       std::make_shared<nn::Linear>(3, 2)};
  const std::vector<float> before = model.state_dict()[0].second.to_vector<float>();
  std::vector<std::pair<std::string, Tensor>> file;
  for (const auto& [name, t] : model.state_dict()) file.emplace_back(name, t.clone());
  file[0].second = zeros({3, 5});                   // 0.weight: wrong shape
  file.erase(file.begin() + 1);                     // 0.bias: missing
  file.emplace_back("head.weight", zeros({2, 3}));  // unexpected
  file.back().second.fill_(1.0);
  try {
    load_weights(model, file, "w.safetensors");
    FAIL() << "loaded mismatched weights";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("w.safetensors does not fit the model (3 problems)"));
    EXPECT_THAT(e.message(), HasSubstr("0.weight: [3, 5] in the file, [3, 4] in the model"));
    EXPECT_THAT(e.message(), HasSubstr("missing 0.bias [3]"));
    EXPECT_THAT(e.message(), HasSubstr("unexpected head.weight [2, 3]"));
  }
  EXPECT_EQ(model.state_dict()[0].second.to_vector<float>(), before) << "a refused load changed";
}

TEST(LoadWeights, AFileOfTheSameModelLoadsAndFloat64ConvertsToTheModelsType) {
  manual_seed(2);
  nn::Sequential source{std::make_shared<nn::Linear>(4, 3), std::make_shared<nn::ReLU>(),
                        std::make_shared<nn::Linear>(3, 2)};
  manual_seed(3);
  nn::Sequential target{std::make_shared<nn::Linear>(4, 3), std::make_shared<nn::ReLU>(),
                        std::make_shared<nn::Linear>(3, 2)};
  std::vector<std::pair<std::string, Tensor>> file;
  for (const auto& [name, t] : source.state_dict())
    file.emplace_back(name, to_dtype(t, DType::kFloat64));
  ScratchDir dir;
  write_safetensors(dir / "w.safetensors", file);
  load_weights(target, read_safetensors(dir / "w.safetensors").tensors, "w.safetensors");
  const auto want = source.state_dict(), got = target.state_dict();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].second.dtype(), DType::kFloat32);
    EXPECT_EQ(got[i].second.to_vector<float>(), want[i].second.to_vector<float>()) << got[i].first;
  }
}

}  // namespace
}  // namespace dtrain::train
