// Our TensorBoard and safetensors files read by the reference Python readers (tensorboard's
// EventAccumulator, safetensors.numpy) through tests/train/read_back.py. Needs the venv made by
// scripts/python_readers.sh, named by DTRAIN_PYREADERS; skipped without it.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>

#include "dtrain/train/safetensors.h"
#include "dtrain/train/summary.h"
#include "train/python_readers.h"
#include "train/scratch_dir.h"

namespace dtrain::train {
namespace {

using testutil::read_bytes;
using testutil::reader_python;
using testutil::ScratchDir;
using testutil::shell_quote;

const std::string kReadBack = std::string(DTRAIN_FIXTURE_DIR) + "/../train/read_back.py";

/// stdout lines of read_back.py; a failure of the script fails the test with its stderr.
std::vector<std::string> read_back(const std::string& python, const std::string& mode,
                                   const std::string& target, const ScratchDir& scratch) {
  const std::string errors = scratch / "read_back.stderr";
  const std::string command = shell_quote(python) + " " + shell_quote(kReadBack) + " " + mode +
                              " " + shell_quote(target) + " 2>" + shell_quote(errors);
  FILE* pipe = ::popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr) << command;
  if (pipe == nullptr) return {};
  std::string output;
  char buffer[4096];
  for (size_t got; (got = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0;)
    output.append(buffer, got);
  const int status = ::pclose(pipe);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << command << " failed:\n"
                                                             << read_bytes(errors);
  std::vector<std::string> lines;
  for (size_t start = 0, end; start < output.size(); start = end + 1) {
    end = output.find('\n', start);
    if (end == std::string::npos) end = output.size();
    if (end > start) lines.push_back(output.substr(start, end - start));
  }
  return lines;
}

// read_back.py prints json.dumps output (", " and ": " separators); these pick single fields.
std::string string_field(const std::string& line, const std::string& key) {
  const std::string marker = "\"" + key + "\": \"";
  const size_t at = line.find(marker);
  if (at == std::string::npos) return "<missing " + key + ">";
  std::string value;
  for (size_t i = at + marker.size(); i < line.size() && line[i] != '"'; ++i) {
    if (line[i] == '\\' && i + 1 < line.size()) ++i;
    value += line[i];
  }
  return value;
}

double number_field(const std::string& line, const std::string& key) {
  const std::string marker = "\"" + key + "\": ";
  const size_t at = line.find(marker);
  if (at == std::string::npos) {
    ADD_FAILURE() << "no " << key << " in " << line;
    return 0;
  }
  return std::strtod(line.c_str() + at + marker.size(), nullptr);
}

std::vector<double> number_list(const std::string& line, const std::string& key) {
  const std::string marker = "\"" + key + "\": [";
  const size_t at = line.find(marker);
  if (at == std::string::npos) {
    ADD_FAILURE() << "no " << key << " list in " << line;
    return {};
  }
  std::vector<double> values;
  const char* cursor = line.c_str() + at + marker.size();
  while (*cursor != ']' && *cursor != '\0') {
    char* end = nullptr;
    values.push_back(std::strtod(cursor, &end));
    if (end == cursor) {
      ADD_FAILURE() << "not a number at '" << cursor << "'";
      break;
    }
    cursor = end;
    while (*cursor == ',' || *cursor == ' ') ++cursor;
  }
  return values;
}

TEST(PythonReaders, TensorBoardEventAccumulatorReadsOurScalars) {
  std::string why;
  const std::string python = reader_python(why);
  if (python.empty()) GTEST_SKIP() << why;

  ScratchDir dir;
  const std::string logdir = dir / "logs";
  struct Scalar {
    std::string tag;
    int64_t step;
    double value;
    double wall_time;
  };
  std::vector<Scalar> written;
  {
    TensorBoardWriter writer(logdir);
    for (int64_t step = 1; step <= 40; ++step) {
      written.push_back({"train/loss", step, 2.0 / static_cast<double>(step), 1.7e9 + step * 0.5});
      if (step % 10 == 0)
        written.push_back({"lr", step, 0.1 * std::pow(0.5, step / 10), 1.7e9 + step});
    }
    written.push_back({"edge", 1, -3.5, 1.7e9});
    written.push_back({"edge", 2, 1e-8, 1.7e9});
    written.push_back({"edge", 3, 0.0, 1.7e9});
    for (const Scalar& s : written) writer.add_scalar(s.tag, s.value, s.step, s.wall_time);
  }

  const std::vector<std::string> lines = read_back(python, "tensorboard", logdir, dir);
  std::map<std::pair<std::string, int64_t>, std::string> read;
  for (const std::string& line : lines) {
    read[{string_field(line, "tag"), static_cast<int64_t>(number_field(line, "step"))}] = line;
  }
  EXPECT_EQ(lines.size(), written.size()) << "reader stderr:\n"
                                          << read_bytes(dir / "read_back.stderr");
  for (const Scalar& s : written) {
    SCOPED_TRACE(s.tag + " step " + std::to_string(s.step));
    const auto found = read.find({s.tag, s.step});
    ASSERT_TRUE(found != read.end()) << "not read back";
    // simple_value is a float32; the reader widens it to a Python float exactly.
    EXPECT_EQ(number_field(found->second, "value"),
              static_cast<double>(static_cast<float>(s.value)));
    EXPECT_EQ(number_field(found->second, "wall_time"), s.wall_time);
  }
}

TEST(PythonReaders, SafetensorsNumpyReadsOurTensors) {
  std::string why;
  const std::string python = reader_python(why);
  if (python.empty()) GTEST_SKIP() << why;

  ScratchDir dir;
  Tensor half({4}, DType::kFloat16);
  const uint16_t half_bits[] = {0x3C00, 0xC000, 0x3555, 0x7BFF};  // 1, -2, 0.333..., 65504
  std::memcpy(half.data_ptr(), half_bits, sizeof(half_bits));
  struct Expected {
    const char* numpy_dtype;
    std::vector<double> shape;
    std::vector<double> values;
  };
  // BF16 is left out: NumPy has no bfloat16, so safetensors.numpy cannot load it.
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"fc.weight", from_vector<float>({0.1f, -2.f, 3.25f, 1e-30f, 7.f, -0.5f}, {2, 3})},
      {"fc.bias", from_vector<double>({1.0 / 3, -1e300})},
      {"steps", from_vector<int64_t>({-5, 1LL << 40, 0, 42}, {2, 2})},
      {"i32", from_vector<int32_t>({-7, 2147483647})},
      {"pixels", from_vector<uint8_t>({0, 128, 255})},
      {"mask", from_vector<bool>({true, false, true})},
      {"half", half},
      {"scalar", scalar_tensor(2.5, DType::kFloat64)},
      {"empty", Tensor({0, 4}, DType::kFloat32)},
  };
  const std::map<std::string, Expected> expected = {
      {"fc.weight", {"float32", {2, 3}, {0.1f, -2.f, 3.25f, 1e-30f, 7.f, -0.5f}}},
      {"fc.bias", {"float64", {2}, {1.0 / 3, -1e300}}},
      {"steps", {"int64", {2, 2}, {-5, 1099511627776.0, 0, 42}}},
      {"i32", {"int32", {2}, {-7, 2147483647}}},
      {"pixels", {"uint8", {3}, {0, 128, 255}}},
      {"mask", {"bool", {3}, {1, 0, 1}}},
      {"half", {"float16", {4}, {1, -2, 0.333251953125, 65504}}},
      {"scalar", {"float64", {}, {2.5}}},
      {"empty", {"float32", {0, 4}, {}}},
  };
  const std::string path = dir / "model.safetensors";
  write_safetensors(path, tensors, {{"format", "pt"}, {"note", "a \"quoted\" value\nline 2"}});

  const std::vector<std::string> lines = read_back(python, "safetensors", path, dir);
  ASSERT_EQ(lines.size(), tensors.size() + 1);
  std::map<std::string, std::string> by_name;
  for (size_t i = 0; i + 1 < lines.size(); ++i) by_name[string_field(lines[i], "name")] = lines[i];
  for (const auto& [name, want] : expected) {
    SCOPED_TRACE(name);
    ASSERT_EQ(by_name.count(name), 1u) << "not read back";
    const std::string& line = by_name.at(name);
    EXPECT_EQ(string_field(line, "dtype"), want.numpy_dtype);
    EXPECT_EQ(number_list(line, "shape"), want.shape);
    EXPECT_EQ(number_list(line, "values"), want.values);
  }
  EXPECT_EQ(lines.back(),
            R"({"metadata": {"format": "pt", "note": "a \"quoted\" value\nline 2"}})");
}

}  // namespace
}  // namespace dtrain::train

namespace dtrain::train {
namespace {

// The other direction: a file written by safetensors.numpy (as Hugging Face tools write them)
// read by dtrain, values and metadata.
TEST(PythonReaders, WeFindTheTensorsThatSafetensorsNumpyWrote) {
  std::string why;
  const std::string python = reader_python(why);
  if (python.empty()) GTEST_SKIP() << why;
  ScratchDir dir;
  const std::string path = dir / "numpy.safetensors";
  const std::string script =
      "import numpy as np, sys\n"
      "from safetensors.numpy import save_file\n"
      "save_file({'w': np.arange(6, dtype=np.float32).reshape(2, 3) / 4,\n"
      "           'b': np.array([-1.5, 2.25], dtype=np.float64),\n"
      "           'ids': np.array([[7], [-9]], dtype=np.int64),\n"
      "           'h': np.array([1, -2], dtype=np.float16)},\n"
      "          sys.argv[1], metadata={'source': 'numpy'})\n";
  const std::string command = shell_quote(python) + " -c " + shell_quote(script) + " " +
                              shell_quote(path) + " 2>" + shell_quote(dir / "stderr");
  ASSERT_EQ(std::system(command.c_str()), 0) << read_bytes(dir / "stderr");
  const SafetensorsFile file = read_safetensors(path);
  std::map<std::string, Tensor> by_name(file.tensors.begin(), file.tensors.end());
  ASSERT_EQ(by_name.size(), 4u);
  EXPECT_EQ(by_name.at("w").shape(), (Shape{2, 3}));
  EXPECT_EQ(by_name.at("w").to_vector<float>(),
            (std::vector<float>{0, 0.25f, 0.5f, 0.75f, 1, 1.25f}));
  EXPECT_EQ(by_name.at("b").to_vector<double>(), (std::vector<double>{-1.5, 2.25}));
  EXPECT_EQ(by_name.at("ids").shape(), (Shape{2, 1}));
  EXPECT_EQ(by_name.at("ids").to_vector<int64_t>(), (std::vector<int64_t>{7, -9}));
  EXPECT_EQ(to_dtype(by_name.at("h"), DType::kFloat32).to_vector<float>(),
            (std::vector<float>{1, -2}));
  EXPECT_EQ(file.metadata.at("source"), "numpy");
}

}  // namespace
}  // namespace dtrain::train
