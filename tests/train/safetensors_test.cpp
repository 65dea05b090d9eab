// safetensors files parsed back byte by byte: header length and alignment, the JSON entries, data
// offsets and bytes, metadata, and the name checks.
#include "dtrain/train/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

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
