// `dtrain predict` end to end: a short Fashion-MNIST run's checkpoint predicts the t10k IDX files
// as `dtrain eval` and the C++ API score them; CSV rows are distributions; .npy inputs (uint8 and
// preprocessed float32) predict as the same examples via IDX; bad inputs fail naming the file.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "cli/run_util.h"
#include "dtrain/autograd/functions.h"
#include "dtrain/autograd/grad_mode.h"
#include "dtrain/data/idx.h"
#include "dtrain/train/checkpoint.h"
#include "dtrain/train/config.h"
#include "dtrain/train/factories.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using testutil::CommandResult;
using testutil::run_dtrain;
using testutil::ScratchDir;

constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

/// A .npy (version 1.0) file's bytes: `descr` values of `shape` from `data`.
std::string npy_bytes(const std::string& descr, const std::vector<int64_t>& shape, const void* data,
                      size_t bytes) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (";
  for (const int64_t d : shape) dict += std::to_string(d) + ",";
  dict += "), }";
  // numpy pads the header with spaces and a newline so that the data starts 64-byte aligned.
  while ((10 + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(dict.size() & 0xff);
  out += static_cast<char>(dict.size() >> 8);
  out += dict;
  out.append(static_cast<const char*>(data), bytes);
  return out;
}

/// Lines of `output` that start with `prefix`.
std::vector<std::string> lines_starting(const std::string& output, const std::string& prefix) {
  std::vector<std::string> lines;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix, 0) == 0) lines.push_back(line);
  }
  return lines;
}

/// CSV data rows: lines that start with a digit.
std::vector<std::string> csv_rows(const std::string& output) {
  std::vector<std::string> rows;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line[0] >= '0' && line[0] <= '9') rows.push_back(line);
  }
  return rows;
}

std::vector<std::string> split(const std::string& line, char sep) {
  std::vector<std::string> parts;
  std::istringstream in(line);
  for (std::string part; std::getline(in, part, sep);) parts.push_back(part);
  return parts;
}

/// One short training run shared by the suite: its checkpoint and the t10k files.
class PredictTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::error_code ec;
    if (!std::filesystem::is_directory(kFashionMnistDir, ec)) return;
    files_ = new data::FashionMnistFiles(data::locate_fashion_mnist(kFashionMnistDir));
    dir_ = new ScratchDir;
    const CommandResult r = run_dtrain(
        "train '" + testutil::source_path("configs/fashion_mnist_mlp.yaml") +
            "' train.max_steps=30 train.resume=never train.checkpoint_dir=ckpt log.dir=runs "
            "log.progress=off train.threads=2",
        dir_->path().string());
    train_output_ = new std::string(r.output);
    const std::vector<std::string> all = train::list_checkpoints(*dir_ / "ckpt");
    if (r.exit_code == 0 && !all.empty()) checkpoint_ = new std::string(all.back());
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete files_;
    delete train_output_;
    delete checkpoint_;
    dir_ = nullptr;
    files_ = nullptr;
    train_output_ = checkpoint_ = nullptr;
  }
  void SetUp() override {
    if (files_ == nullptr) {
      GTEST_SKIP() << kFashionMnistDir << " is missing (apt-get install dataset-fashion-mnist)";
    }
    ASSERT_NE(checkpoint_, nullptr) << "training failed:\n" << *train_output_;
  }

  static CommandResult dtrain(const std::string& args) {
    return run_dtrain(args, dir_->path().string());
  }
  static std::string predict_args(const std::string& input, const std::string& more = "") {
    return "predict '" + *checkpoint_ + "' --input '" + input + "' " + more;
  }

  static ScratchDir* dir_;
  static data::FashionMnistFiles* files_;
  static std::string* train_output_;
  static std::string* checkpoint_;
};

ScratchDir* PredictTest::dir_ = nullptr;
data::FashionMnistFiles* PredictTest::files_ = nullptr;
std::string* PredictTest::train_output_ = nullptr;
std::string* PredictTest::checkpoint_ = nullptr;

TEST_F(PredictTest, AccuracyOnTheWholeTestSetEqualsEval) {
  const CommandResult p =
      dtrain(predict_args(files_->test_images, "--labels '" + files_->test_labels + "'"));
  ASSERT_EQ(p.exit_code, 0) << p.output;
  EXPECT_EQ(lines_starting(p.output, "index=").size(), 10000u);
  std::smatch pm;
  ASSERT_TRUE(std::regex_search(
      p.output, pm, std::regex("\npredict: accuracy=([0-9.]+) correct=[0-9]+ examples=10000\n")))
      << p.output.substr(p.output.size() - std::min<size_t>(p.output.size(), 2000));

  const CommandResult e = dtrain("eval '" + *checkpoint_ + "'");
  ASSERT_EQ(e.exit_code, 0) << e.output;
  std::smatch em;
  ASSERT_TRUE(std::regex_search(e.output, em,
                                std::regex("eval: test_accuracy=([0-9.]+) .* examples=10000")))
      << e.output;
  EXPECT_EQ(pm[1].str(), em[1].str());
  // A model after 30 steps is far better than chance (0.1) but not trained out.
  EXPECT_GT(std::stod(pm[1].str()), 0.4);
}

TEST_F(PredictTest, FirstExamplesMatchTheModelThroughTheCppApi) {
  constexpr int64_t kLimit = 500;
  const CommandResult p = dtrain(predict_args(
      files_->test_images, "--labels '" + files_->test_labels + "' --limit 500 --top 3"));
  ASSERT_EQ(p.exit_code, 0) << p.output;

  // The expected predictions: the checkpoint's model on the test split's first examples.
  const train::CheckpointData ckpt = train::load_checkpoint(*checkpoint_);
  const train::Config c = train::parse_config(ckpt.config_yaml, *checkpoint_);
  const train::Datasets sets = train::make_datasets(c.data, c.train.seed);
  nn::ModulePtr model =
      train::make_model(c.model, *sets.train, static_cast<uint64_t>(c.train.seed));
  model->load_state_dict(ckpt.model);
  model->eval();
  std::vector<int64_t> indices(kLimit);
  for (int64_t i = 0; i < kLimit; ++i) indices[i] = i;
  Tensor x = empty({kLimit, 1, 28, 28}), y = empty({kLimit}, DType::kInt64);
  sets.test->fill_batch(indices, x, y);
  std::vector<int64_t> expected;
  {
    NoGradGuard no_grad;
    expected = argmax(model->forward(x), 1).to_vector<int64_t>();
  }
  const std::vector<int64_t> truth = y.to_vector<int64_t>();
  int64_t correct = 0;
  for (int64_t i = 0; i < kLimit; ++i) correct += expected[i] == truth[i];

  const std::vector<std::string> lines = lines_starting(p.output, "index=");
  ASSERT_EQ(lines.size(), static_cast<size_t>(kLimit)) << p.output;
  const std::regex line_re(
      "index=([0-9]+) predicted=([0-9]) p=([0-9.]+) label=([0-9]) "
      "top=([0-9]):([0-9.]+),([0-9]):([0-9.]+),([0-9]):([0-9.]+)");
  for (int64_t i = 0; i < kLimit; ++i) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(lines[i], m, line_re)) << lines[i];
    EXPECT_EQ(std::stoll(m[1]), i);
    EXPECT_EQ(std::stoll(m[2]), expected[i]) << lines[i];
    EXPECT_EQ(std::stoll(m[4]), truth[i]) << lines[i];
    EXPECT_EQ(m[5].str(), m[2].str()) << "the best of the top 3 is the prediction: " << lines[i];
    EXPECT_EQ(m[6].str(), m[3].str()) << lines[i];
    EXPECT_GE(std::stod(m[6]), std::stod(m[8])) << lines[i];
    EXPECT_GE(std::stod(m[8]), std::stod(m[10])) << lines[i];
  }
  char accuracy[128];
  std::snprintf(accuracy, sizeof accuracy, "predict: accuracy=%.4f correct=%lld examples=500\n",
                static_cast<double>(correct) / kLimit, static_cast<long long>(correct));
  EXPECT_NE(p.output.find(accuracy), std::string::npos) << accuracy << " not in\n"
                                                        << p.output.substr(p.output.size() - 500);
}

TEST_F(PredictTest, CsvRowsAreDistributionsOverTheClasses) {
  const CommandResult p = dtrain(predict_args(files_->test_images, "--format csv --limit 100"));
  ASSERT_EQ(p.exit_code, 0) << p.output;
  EXPECT_NE(p.output.find("index,predicted,p0,p1,p2,p3,p4,p5,p6,p7,p8,p9\n"), std::string::npos)
      << p.output;
  const std::vector<std::string> rows = csv_rows(p.output);
  ASSERT_EQ(rows.size(), 100u) << p.output;
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::vector<std::string> f = split(rows[i], ',');
    ASSERT_EQ(f.size(), 12u) << rows[i];
    EXPECT_EQ(f[0], std::to_string(i));
    double sum = 0, best = -1;
    int64_t best_k = -1;
    for (int k = 0; k < 10; ++k) {
      const double p_k = std::stod(f[2 + k]);
      EXPECT_GE(p_k, 0.0);
      sum += p_k;
      if (p_k > best) {
        best = p_k;
        best_k = k;
      }
    }
    EXPECT_NEAR(sum, 1.0, 1e-5) << rows[i];
    EXPECT_EQ(std::stoll(f[1]), best_k) << rows[i];
  }
}

TEST_F(PredictTest, NpyInputsPredictAsTheSameExamplesViaIdx) {
  constexpr int64_t kCount = 300;  // more than one batch of 256
  const data::IdxContents idx = data::read_idx(files_->test_images, 3, "images");
  const data::IdxContents labels = data::read_idx(files_->test_labels, 1, "labels");
  const size_t pixels = kCount * 28 * 28;
  testutil::write_bytes(*dir_ / "bytes.npy",
                        npy_bytes("|u1", {kCount, 28, 28}, idx.bytes.data(), pixels));
  // The checkpoint's config normalises with data.normalize=standard.
  std::vector<float> floats(pixels);
  data::normalize_pixels(idx.bytes.data(), pixels, data::Normalize::kStandard, floats.data());
  testutil::write_bytes(*dir_ / "floats.npy", npy_bytes("<f4", {kCount, 1, 28, 28}, floats.data(),
                                                        floats.size() * sizeof(float)));
  std::vector<int64_t> y(labels.bytes.begin(), labels.bytes.begin() + kCount);
  testutil::write_bytes(*dir_ / "labels.npy",
                        npy_bytes("<i8", {kCount}, y.data(), y.size() * sizeof(int64_t)));

  const CommandResult via_idx = dtrain(predict_args(
      files_->test_images, "--format csv --limit 300 --labels '" + files_->test_labels + "'"));
  ASSERT_EQ(via_idx.exit_code, 0) << via_idx.output;
  ASSERT_EQ(csv_rows(via_idx.output).size(), static_cast<size_t>(kCount));
  for (const char* input : {"bytes.npy", "floats.npy"}) {
    const CommandResult via_npy =
        dtrain(predict_args(*dir_ / input, "--format csv --labels labels.npy"));
    ASSERT_EQ(via_npy.exit_code, 0) << input << ":\n" << via_npy.output;
    // Identical inputs in identical batches: the same rows to the last digit.
    EXPECT_EQ(csv_rows(via_npy.output), csv_rows(via_idx.output)) << input;
    EXPECT_EQ(lines_starting(via_npy.output, "predict: accuracy="),
              lines_starting(via_idx.output, "predict: accuracy="))
        << input;
  }
}

TEST_F(PredictTest, BadInputsFailNamingTheFile) {
  const std::vector<float> flat(4 * 784, 0.5f);
  testutil::write_bytes(*dir_ / "flat.npy",
                        npy_bytes("<f4", {4, 784}, flat.data(), flat.size() * sizeof(float)));
  const std::vector<double> doubles(4 * 784, 0.5);
  testutil::write_bytes(*dir_ / "doubles.npy", npy_bytes("<f8", {4, 1, 28, 28}, doubles.data(),
                                                         doubles.size() * sizeof(double)));
  const std::vector<int64_t> three = {1, 2, 3};
  testutil::write_bytes(*dir_ / "three.npy", npy_bytes("<i8", {3}, three.data(), 3 * 8));
  testutil::write_bytes(*dir_ / "notes.txt", "not an array\n");
  const std::string config = testutil::source_path("configs/fashion_mnist_mlp.yaml");

  struct Case {
    std::string args, file, says, also_says = "";
  };
  const std::vector<Case> cases = {
      {predict_args("missing.npy"), "missing.npy", "does not exist"},
      {predict_args(*dir_ / "notes.txt"), "notes.txt", "bad magic"},
      {predict_args(*dir_ / "flat.npy"), "flat.npy", "[784]", "[1, 28, 28]"},
      {predict_args(*dir_ / "doubles.npy"), "doubles.npy", "'<f8'"},
      {predict_args(files_->test_labels), files_->test_labels, "wrong rank"},
      {predict_args(files_->test_images, "--labels three.npy"), "three.npy", "3 labels"},
      {predict_args(files_->test_images, "--labels missing-labels"), "missing-labels",
       "does not exist"},
      {"predict '" + config + "' --input '" + files_->test_images + "'", config,
       "not a dtrain checkpoint"},
      {"predict missing.dtck --input '" + files_->test_images + "'", "missing.dtck",
       "does not exist"},
  };
  for (const Case& c : cases) {
    const CommandResult r = dtrain(c.args);
    EXPECT_EQ(r.exit_code, 1) << c.args << ":\n" << r.output;
    EXPECT_NE(r.output.find(c.file), std::string::npos) << c.args << ":\n" << r.output;
    EXPECT_NE(r.output.find(c.says), std::string::npos) << c.args << ":\n" << r.output;
    EXPECT_NE(r.output.find(c.also_says), std::string::npos) << c.args << ":\n" << r.output;
    EXPECT_EQ(r.output.find("index="), std::string::npos) << c.args << ":\n" << r.output;
  }

  // Usage errors exit 2, as CLI11 does.
  EXPECT_EQ(dtrain("predict '" + *checkpoint_ + "'").exit_code, 2);
  EXPECT_EQ(dtrain(predict_args(files_->test_images, "--format xml")).exit_code, 2);
  EXPECT_EQ(dtrain(predict_args(files_->test_images, "--top 0")).exit_code, 2);
}

}  // namespace
}  // namespace dtrain
