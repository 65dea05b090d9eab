// ONNX exports checked by the reference implementation: each file passes onnx's checker (with
// shape inference) and onnxruntime's outputs match dtrain's eval-mode forward to 1e-5. Needs the
// venv of scripts/python_readers.sh (onnx, onnxruntime), named by DTRAIN_PYREADERS; those cases
// skip without it. The refusals need no Python.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "dtrain/autograd/grad_mode.h"
#include "dtrain/nn/attention.h"
#include "dtrain/nn/layers.h"
#include "dtrain/train/checkpoint.h"
#include "dtrain/train/config.h"
#include "dtrain/train/factories.h"
#include "dtrain/train/onnx_export.h"
#include "train/python_readers.h"
#include "train/scratch_dir.h"

namespace dtrain::train {
namespace {

using ::testing::HasSubstr;
using testutil::reader_python;
using testutil::run_onnxruntime;
using testutil::ScratchDir;

/// Exports `model` and checks onnxruntime against dtrain's eval-mode output on `input`.
void expect_onnxruntime_matches(nn::Module& model, const Tensor& input, const std::string& name) {
  std::string why;
  const std::string python = reader_python(why);
  if (python.empty()) GTEST_SKIP() << why;
  ScratchDir dir;
  model.eval();
  Tensor expected;
  {
    NoGradGuard no_grad;
    expected = model(input);
  }
  Shape example(input.shape().begin() + 1, input.shape().end());
  OnnxExportOptions options;
  options.input_dtype = input.dtype();
  const std::string path = dir / (name + ".onnx");
  write_onnx(path, model, example, options);
  std::string report;
  const Tensor got = run_onnxruntime(python, path, input, dir.path().string(), report);
  ASSERT_TRUE(got.defined());
  const std::vector<float> want = expected.to_vector<float>(), have = got.to_vector<float>();
  ASSERT_EQ(have.size(), want.size()) << report;
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err =
        std::abs(double(have[i]) - want[i]) / std::max(1.0, std::abs(double(want[i])));
    worst = std::max(worst, err);
  }
  EXPECT_LE(worst, 1e-5) << name << ": onnxruntime differs from dtrain; " << report;
  // Every parameter and buffer the graph uses keeps its state-dict name.
  for (const auto& [param, t] : model.named_parameters()) {
    EXPECT_THAT(report, HasSubstr("\"" + param + "\"")) << name;
  }
}

/// Running statistics that are not the initial 0 and 1, so eval mode is really tested.
void give_running_statistics(nn::Module& model, const Tensor& input) {
  model.train();
  NoGradGuard no_grad;
  for (int i = 0; i < 20; ++i) model(input);
}

TEST(OnnxExport, MlpMatchesOnnxruntime) {
  manual_seed(1);
  nn::Sequential model{std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(784, 32),
                       std::make_shared<nn::ReLU>(), std::make_shared<nn::Dropout>(0.5),
                       std::make_shared<nn::Linear>(32, 10)};
  expect_onnxruntime_matches(model, randn({16, 1, 28, 28}), "mlp");
}

TEST(OnnxExport, ConvolutionsBatchNormPoolingAndActivationsMatchOnnxruntime) {
  manual_seed(2);
  nn::Sequential model{std::make_shared<nn::Conv2d>(1, 4, 3, 1, 1),
                       std::make_shared<nn::BatchNorm2d>(4),
                       std::make_shared<nn::ReLU>(),
                       std::make_shared<nn::MaxPool2d>(2),
                       std::make_shared<nn::Conv2d>(4, 8, 3, 2, 1, /*bias=*/false),
                       std::make_shared<nn::BatchNorm2d>(8),
                       std::make_shared<nn::GELU>(),
                       std::make_shared<nn::AvgPool2d>(3, 2, 1),
                       std::make_shared<nn::Flatten>(),
                       std::make_shared<nn::Linear>(8 * 2 * 2, 16),
                       std::make_shared<nn::BatchNorm1d>(16),
                       std::make_shared<nn::Sigmoid>(),
                       std::make_shared<nn::Linear>(16, 16),
                       std::make_shared<nn::Tanh>(),
                       std::make_shared<nn::Linear>(16, 10)};
  // Small activations: batch norm's epsilon and running statistics matter at this scale.
  const Tensor x = randn({8, 1, 12, 12}) * 0.01;
  give_running_statistics(model, x);
  expect_onnxruntime_matches(model, x, "cnn");
}

TEST(OnnxExport, ResidualLayerNormConv1dAndGlobalPoolMatchOnnxruntime) {
  manual_seed(3);
  auto body = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Conv1d>(6, 6, 3, 1, 1), std::make_shared<nn::GELU>()});
  nn::Sequential model{std::make_shared<nn::Conv1d>(3, 6, 5, 2, 2),
                       std::make_shared<nn::Residual>(body), std::make_shared<nn::GlobalAvgPool>(),
                       std::make_shared<nn::LayerNorm>(Shape{6}),
                       std::make_shared<nn::Linear>(6, 4)};
  expect_onnxruntime_matches(model, randn({5, 3, 20}), "residual");
}

TEST(OnnxExport, EmbeddingOfTokenIdsMatchesOnnxruntime) {
  manual_seed(4);
  nn::Sequential model{std::make_shared<nn::Embedding>(50, 12), std::make_shared<nn::Flatten>(),
                       std::make_shared<nn::Linear>(8 * 12, 5)};
  expect_onnxruntime_matches(model, randint(0, 50, {6, 8}), "embedding");
}

TEST(OnnxExport, ACharacterTransformerMatchesOnnxruntime) {
  manual_seed(6);
  nn::Sequential model{std::make_shared<nn::Embedding>(40, 16),
                       std::make_shared<nn::PositionalEmbedding>(12, 16),
                       std::make_shared<nn::TransformerBlock>(16, 4, 2, /*dropout=*/0.1),
                       std::make_shared<nn::TransformerBlock>(16, 4, 2, /*dropout=*/0.1),
                       std::make_shared<nn::LayerNorm>(Shape{16}),
                       std::make_shared<nn::Linear>(16, 40)};
  expect_onnxruntime_matches(model, randint(0, 40, {3, 10}), "transformer");
}

/// A program's own module, which the exporter cannot know.
class Doubler : public nn::Module {
 public:
  std::string describe() const override { return "Doubler"; }
  Tensor forward(const Tensor& x) override { return x * 2.0; }

 protected:
  std::shared_ptr<nn::Module> make_empty() const override { return std::make_shared<Doubler>(); }
};

TEST(OnnxExport, AModuleWithoutAnOnnxFormIsNamedWithItsPath) {
  manual_seed(5);
  nn::Sequential model{std::make_shared<nn::Linear>(4, 4), std::make_shared<Doubler>()};
  ScratchDir dir;
  const std::string path = dir / "own.onnx";
  try {
    write_onnx(path, model, {4});
    FAIL() << "exported a module the exporter does not know";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("module '1' (Doubler): it has no ONNX form"));
    EXPECT_THAT(e.message(), HasSubstr("exportable: Sequential, Residual, Linear"));
  }
  EXPECT_FALSE(std::filesystem::exists(path)) << "a refused export left a file";
  EXPECT_TRUE(dir.entries().empty());
}

}  // namespace
}  // namespace dtrain::train
