// A user's own model and dataset, registered by name so that the YAML trainer, the launcher and
// every strategy work with them: a residual MLP (`model.type: spiral_net`) on points drawn from
// interleaved spirals (`data.name: spirals`), each with keys of its own.
#include <cmath>
#include <numbers>

#include "dtrain_example.h"

namespace spirals {

using namespace dtrain;

/// h = relu(in(x)); h = h + relu(block_i(h)) for each block; out(h).
class SpiralNet : public nn::Module {
 public:
  SpiralNet(int64_t inputs, int64_t width, int64_t depth, int64_t classes, Generator& gen) {
    in_ = register_module("in", std::make_shared<nn::Linear>(inputs, width, true, gen));
    for (int64_t i = 0; i < depth; ++i) {
      blocks_.push_back(register_module("block" + std::to_string(i),
                                        std::make_shared<nn::Linear>(width, width, true, gen)));
    }
    out_ = register_module("out", std::make_shared<nn::Linear>(width, classes, true, gen));
  }
  std::string describe() const override { return "SpiralNet"; }
  Tensor forward(const Tensor& x) override {
    Tensor h = relu(in_->forward(x));
    for (const auto& block : blocks_) h = h + relu(block->forward(h));
    return out_->forward(h);
  }

 private:
  std::shared_ptr<nn::Linear> in_, out_;
  std::vector<std::shared_ptr<nn::Linear>> blocks_;
};

/// `points` examples (x, y) on `arms` spiral arms with Gaussian noise; example i is a function of
/// (seed, i) alone, so every replica and every run sees the same set.
class SpiralDataset : public data::Dataset {
 public:
  SpiralDataset(int64_t points, int64_t arms, double noise, uint64_t seed)
      : points_(points), arms_(arms), noise_(noise), seed_(seed) {}
  int64_t size() const override { return points_; }
  Shape example_shape() const override { return {2}; }
  int64_t num_classes() const override { return arms_; }
  std::string describe() const override {
    return "SpiralDataset(" + std::to_string(points_) + " points, " + std::to_string(arms_) +
           " arms)";
  }
  void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const override {
    float* xs = x.data<float>();
    int64_t* ys = y.data<int64_t>();
    for (size_t b = 0; b < indices.size(); ++b) {
      const int64_t i = indices[b];
      DTRAIN_CHECK(i >= 0 && i < points_, describe(), ": index ", i, " is out of range");
      const int64_t arm = i % arms_;
      const double t = 0.1 + 0.9 * uniform(i, 0);  // distance from the centre
      const double angle = 3 * std::numbers::pi * t + 2 * std::numbers::pi * arm / arms_;
      xs[2 * b] = static_cast<float>(t * std::cos(angle) + noise_ * gaussian(i, 1));
      xs[2 * b + 1] = static_cast<float>(t * std::sin(angle) + noise_ * gaussian(i, 3));
      ys[b] = arm;
    }
  }

 private:
  /// A uniform number in [0, 1) from (seed, i, k), by SplitMix64.
  double uniform(int64_t i, uint64_t k) const {
    uint64_t z = seed_ * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i) * 4 + k + 1;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return static_cast<double>((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
  }
  double gaussian(int64_t i, uint64_t k) const {  // Box-Muller over two uniforms
    const double u = std::max(uniform(i, k), 1e-12), v = uniform(i, k + 1);
    return std::sqrt(-2 * std::log(u)) * std::cos(2 * std::numbers::pi * v);
  }
  int64_t points_, arms_;
  double noise_;
  uint64_t seed_;
};

nn::ModulePtr make_spiral_net(const train::ModelContext& c) {
  DTRAIN_CHECK(c.example_shape == Shape{2}, "spiral_net: needs 2-D points, the data gives ",
               shape_str(c.example_shape));
  Generator gen(c.seed, /*stream=*/0);
  return std::make_shared<SpiralNet>(2, c.options().integer("width"), c.options().integer("depth"),
                                     c.num_classes, gen);
}

train::Datasets make_spirals(const train::DataContext& c) {
  const auto& o = c.options();
  const int64_t arms = o.integer("arms");
  const double noise = o.real("noise");
  // Test points come from another seed: the same spirals, other samples.
  return {std::make_shared<SpiralDataset>(o.integer("train_points"), arms, noise, 1),
          std::make_shared<SpiralDataset>(o.integer("test_points"), arms, noise, 2)};
}

}  // namespace spirals

DTRAIN_REGISTER_MODEL("spiral_net", spirals::make_spiral_net,
                      {dtrain::train::OptionKey::integer("width", 64, "hidden width", 1, 4096),
                       dtrain::train::OptionKey::integer("depth", 2, "residual blocks", 0, 64)},
                      "A residual MLP for 2-D points.");
DTRAIN_REGISTER_DATASET(
    "spirals", spirals::make_spirals,
    {dtrain::train::OptionKey::integer("arms", 3, "spiral arms (classes)", 2, 16),
     dtrain::train::OptionKey::real("noise", 0.04, "standard deviation of the noise", 0, 1),
     dtrain::train::OptionKey::integer("train_points", 6000, "training points", 1),
     dtrain::train::OptionKey::integer("test_points", 1500, "test points", 1)},
    "Points on interleaved spiral arms, one class per arm.");
