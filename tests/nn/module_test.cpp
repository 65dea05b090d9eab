// Module: parameter/buffer naming and order, train/eval, state dicts (strict errors, identity),
// clone(), zero_grad() and parameter counts.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "dtrain/nn/layers.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "testutil.h"

namespace dtrain {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testutil::all_close;
using testutil::bit_equal;

std::vector<std::string> names_of(const nn::NamedTensors& named) {
  std::vector<std::string> out;
  for (const auto& [name, t] : named) out.push_back(name);
  return out;
}

/// fc1 -> ReLU -> fc2 -> ReLU -> fc3, with make_empty so it can be cloned.
class Mlp : public nn::Module {
 public:
  Mlp(int64_t in, int64_t h1, int64_t h2, int64_t out) : dims_{in, h1, h2, out} {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(in, h1));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(h1, h2));
    fc3 = register_module("fc3", std::make_shared<nn::Linear>(h2, out));
  }
  std::string describe() const override { return "Mlp"; }
  Tensor forward(const Tensor& x) override {
    return fc3->forward(relu(fc2->forward(relu(fc1->forward(x)))));
  }
  std::shared_ptr<nn::Linear> fc1, fc2, fc3;

 protected:
  std::shared_ptr<Module> make_empty() const override {
    return std::make_shared<Mlp>(dims_[0], dims_[1], dims_[2], dims_[3]);
  }

 private:
  std::vector<int64_t> dims_;
};

/// A child Sequential registered before an own parameter: own parameters still come first.
class Nested : public nn::Module {
 public:
  Nested() {
    features = register_module(
        "features", std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
                        std::make_shared<nn::Linear>(4, 3), std::make_shared<nn::ReLU>(),
                        std::make_shared<nn::Linear>(3, 2)}));
    scale = register_parameter("scale", ones({2}));
    head = register_module("head", std::make_shared<nn::Linear>(2, 1));
  }
  std::string describe() const override { return "Nested"; }
  Tensor forward(const Tensor& x) override { return head->forward(features->forward(x) * scale); }
  std::shared_ptr<nn::Sequential> features;
  std::shared_ptr<nn::Linear> head;
  Tensor scale;
};

/// No make_empty override: clone() must refuse.
class NotClonable : public nn::Module {
 public:
  NotClonable() { fc = register_module("fc", std::make_shared<nn::Linear>(2, 2)); }
  std::string describe() const override { return "NotClonable"; }
  Tensor forward(const Tensor& x) override { return fc->forward(x); }
  std::shared_ptr<nn::Linear> fc;
};

TEST(Module, SequentialParametersAreNamedByIndexInOrder) {
  nn::Sequential seq{std::make_shared<nn::Linear>(4, 3), std::make_shared<nn::ReLU>(),
                     std::make_shared<nn::Linear>(3, 2, /*bias=*/false)};
  EXPECT_THAT(names_of(seq.named_parameters()), ElementsAre("0.weight", "0.bias", "2.weight"));
}

TEST(Module, NestedNamesAreDottedOwnParametersFirst) {
  Nested net;
  EXPECT_THAT(names_of(net.named_parameters()),
              ElementsAre("scale", "features.0.weight", "features.0.bias", "features.2.weight",
                          "features.2.bias", "head.weight", "head.bias"));
  Mlp mlp(5, 4, 3, 2);
  EXPECT_THAT(names_of(mlp.named_parameters()), ElementsAre("fc1.weight", "fc1.bias", "fc2.weight",
                                                            "fc2.bias", "fc3.weight", "fc3.bias"));
}

TEST(Module, NamedParametersAreTheLayersOwnTensors) {
  Mlp mlp(5, 4, 3, 2);
  const auto named = mlp.named_parameters();
  ASSERT_EQ(named.size(), 6u);
  EXPECT_EQ(named[0].second.impl_ptr(), mlp.fc1->weight.impl_ptr());
  EXPECT_EQ(named[5].second.impl_ptr(), mlp.fc3->bias.impl_ptr());
  const auto params = mlp.parameters();
  ASSERT_EQ(params.size(), named.size());
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_EQ(params[i].impl_ptr(), named[i].second.impl_ptr());
}

TEST(Module, ParametersRequireGradAndCarryTheirLocalNames) {
  Nested net;
  for (const auto& [name, p] : net.named_parameters()) {
    EXPECT_TRUE(p.requires_grad()) << name;
    EXPECT_TRUE(p.is_leaf()) << name;
    // The tensor carries the name it was registered under (the last component).
    EXPECT_FALSE(p.name().empty()) << name;
    EXPECT_TRUE(name == p.name() || name.ends_with("." + p.name())) << name << " vs " << p.name();
  }
  EXPECT_EQ(net.head->weight.name(), "weight");
  EXPECT_EQ(net.scale.name(), "scale");
}

TEST(Module, BatchNormBuffersAreNamedAndNotParameters) {
  nn::Sequential seq{std::make_shared<nn::Linear>(3, 4), std::make_shared<nn::BatchNorm1d>(4)};
  EXPECT_THAT(names_of(seq.named_buffers()),
              ElementsAre("1.running_mean", "1.running_var", "1.num_batches_tracked"));
  EXPECT_THAT(names_of(seq.named_parameters()),
              ElementsAre("0.weight", "0.bias", "1.weight", "1.bias"));
  for (const auto& [name, b] : seq.named_buffers()) EXPECT_FALSE(b.requires_grad()) << name;
  const auto buffers = seq.named_buffers();
  EXPECT_EQ(buffers[0].second.shape(), Shape({4}));
  EXPECT_EQ(buffers[2].second.dtype(), DType::kInt64);
  EXPECT_EQ(buffers[2].second.dim(), 0);
}

TEST(Module, TrainAndEvalPropagateToEveryDescendant) {
  Nested net;
  const auto all_modes = [&](bool expected) {
    bool ok = net.is_training() == expected && net.head->is_training() == expected &&
              net.features->is_training() == expected;
    for (const auto& [name, child] : net.features->named_children()) {
      ok = ok && child->is_training() == expected;
    }
    return ok;
  };
  EXPECT_TRUE(all_modes(true));
  net.eval();
  EXPECT_TRUE(all_modes(false));
  net.train();
  EXPECT_TRUE(all_modes(true));
  net.train(false);
  EXPECT_TRUE(all_modes(false));
}

TEST(Module, StateDictHasParametersThenBuffersAsCopies) {
  nn::Sequential seq{std::make_shared<nn::Linear>(3, 4), std::make_shared<nn::BatchNorm1d>(4)};
  const auto state = seq.state_dict();
  EXPECT_THAT(names_of(state),
              ElementsAre("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                          "1.running_var", "1.num_batches_tracked"));
  // Copies: changing the model afterwards leaves the state dict alone.
  const Tensor before = state[0].second.clone();
  auto linear = std::static_pointer_cast<nn::Linear>(seq[0]);
  EXPECT_FALSE(state[0].second.shares_storage(linear->weight));
  EXPECT_FALSE(state[0].second.requires_grad());
  linear->weight.detach().fill_(3.0);
  EXPECT_TRUE(bit_equal(state[0].second, before));
}

TEST(Module, StateDictRoundTripIntoFreshModelGivesIdenticalOutputs) {
  manual_seed(11);
  Mlp a(6, 5, 4, 3);
  Mlp b(6, 5, 4, 3);  // different initialisation from the advancing default generator
  Generator gen(3);
  const Tensor x = randn({8, 6}, gen);
  ASSERT_FALSE(bit_equal(a.forward(x), b.forward(x)));
  b.load_state_dict(a.state_dict());
  EXPECT_TRUE(bit_equal(a.forward(x), b.forward(x)));
  for (size_t i = 0; i < a.parameters().size(); ++i) {
    EXPECT_TRUE(bit_equal(a.parameters()[i], b.parameters()[i])) << i;
    EXPECT_FALSE(a.parameters()[i].shares_storage(b.parameters()[i])) << i;
  }
}

TEST(Module, StateDictRoundTripCarriesBatchNormBuffers) {
  Generator gen(5);
  nn::BatchNorm2d a(3), b(3);
  a.forward(randn({4, 3, 2, 2}, gen));
  a.forward(randn({4, 3, 2, 2}, gen));
  b.load_state_dict(a.state_dict());
  EXPECT_TRUE(bit_equal(b.running_mean, a.running_mean));
  EXPECT_TRUE(bit_equal(b.running_var, a.running_var));
  EXPECT_EQ(b.num_batches_tracked.item<int64_t>(), 2);
  a.eval();
  b.eval();
  const Tensor x = randn({2, 3, 2, 2}, gen);
  EXPECT_TRUE(bit_equal(a.forward(x), b.forward(x)));
}

TEST(Module, StrictLoadListsAllMissingUnexpectedAndMisshapedKeys) {
  Mlp mlp(5, 4, 3, 2);
  nn::NamedTensors state;
  for (auto& [name, t] : mlp.state_dict()) {
    if (name == "fc1.bias" || name == "fc3.weight") continue;  // missing
    if (name == "fc2.weight") {
      state.emplace_back(name, zeros({3, 5}));  // expected [3, 4]
      continue;
    }
    state.emplace_back(name, t);
  }
  state.emplace_back("fc9.weight", zeros({1}));
  state.emplace_back("extra", zeros({2}));
  try {
    mlp.load_state_dict(state);
    FAIL() << "strict load accepted a bad state dict";
  } catch (const ValueError& e) {
    const std::string msg = e.what();
    EXPECT_THAT(msg, HasSubstr("Mlp"));
    EXPECT_THAT(msg, HasSubstr("fc1.bias"));
    EXPECT_THAT(msg, HasSubstr("fc3.weight"));
    EXPECT_THAT(msg, HasSubstr("fc9.weight"));
    EXPECT_THAT(msg, HasSubstr("extra"));
    EXPECT_THAT(msg, HasSubstr("fc2.weight"));
    EXPECT_THAT(msg, HasSubstr("[3, 4]"));
    EXPECT_THAT(msg, HasSubstr("[3, 5]"));
    EXPECT_THAT(msg, HasSubstr("missing"));
    EXPECT_THAT(msg, HasSubstr("unexpected"));
  }
}

TEST(Module, StrictLoadErrorsPrintNamesWithControlCharactersEscaped) {
  Mlp mlp(5, 4, 3, 2);
  auto state = mlp.state_dict();
  state.emplace_back("fc1.\x1b]0;title\x07\nweight", zeros({1}));
  for (auto& [name, t] : state) {
    if (name == "fc2.weight") name = "fc2.\x1b[31mweight";  // missing, and unexpected in red
  }
  try {
    mlp.load_state_dict(state);
    FAIL() << "strict load accepted a bad state dict";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("fc1.\\x1b]0;title\\x07\\nweight"));
    EXPECT_THAT(e.message(), HasSubstr("fc2.\\x1b[31mweight"));
    EXPECT_EQ(e.message().find('\x1b'), std::string::npos) << "a raw escape reached the message";
    EXPECT_EQ(e.message().find('\n'), std::string::npos);
  }
}

TEST(Module, FailedStrictLoadLeavesTheModelUnchanged) {
  Mlp mlp(5, 4, 3, 2);
  const auto before = mlp.state_dict();
  auto state = mlp.state_dict();
  for (auto& [name, t] : state) t.fill_(7.0);
  state.emplace_back("unexpected", zeros({1}));
  EXPECT_THROW(mlp.load_state_dict(state), ValueError);
  const auto after = mlp.state_dict();
  for (size_t i = 0; i < before.size(); ++i)
    EXPECT_TRUE(bit_equal(after[i].second, before[i].second));
}

TEST(Module, NonStrictLoadIgnoresMissingAndUnexpectedKeys) {
  Mlp a(5, 4, 3, 2), b(5, 4, 3, 2);
  nn::NamedTensors partial;
  for (auto& [name, t] : a.state_dict()) {
    if (name.starts_with("fc1.")) partial.emplace_back(name, t);
  }
  partial.emplace_back("not.a.key", zeros({3}));
  const Tensor fc2_before = b.fc2->weight.clone();
  b.load_state_dict(partial, /*strict=*/false);
  EXPECT_TRUE(bit_equal(b.fc1->weight, a.fc1->weight));
  EXPECT_TRUE(bit_equal(b.fc1->bias, a.fc1->bias));
  EXPECT_TRUE(bit_equal(b.fc2->weight, fc2_before));
  // A shape mismatch is an error even when not strict.
  nn::NamedTensors bad{{"fc1.weight", zeros({2, 2})}};
  EXPECT_THROW(b.load_state_dict(bad, /*strict=*/false), ValueError);
}

TEST(Module, LoadCopiesIntoExistingTensors) {
  Mlp a(5, 4, 3, 2), b(5, 4, 3, 2);
  const Tensor handle = b.fc2->weight;  // taken before the load
  const void* ptr = handle.data_ptr();
  b.load_state_dict(a.state_dict());
  EXPECT_EQ(b.fc2->weight.impl_ptr(), handle.impl_ptr());
  EXPECT_EQ(handle.data_ptr(), ptr);
  EXPECT_TRUE(bit_equal(handle, a.fc2->weight));
  EXPECT_TRUE(handle.requires_grad());
  EXPECT_TRUE(handle.is_leaf());
}

TEST(Module, CloneIsAnIndependentDeepCopy) {
  Mlp original(6, 5, 4, 3);
  Generator gen(9);
  const Tensor x = randn({4, 6}, gen);
  auto copy = std::dynamic_pointer_cast<Mlp>(original.clone());
  ASSERT_NE(copy, nullptr);
  EXPECT_TRUE(bit_equal(copy->forward(x), original.forward(x)));
  const auto po = original.named_parameters(), pc = copy->named_parameters();
  ASSERT_EQ(names_of(po), names_of(pc));
  for (size_t i = 0; i < po.size(); ++i) {
    EXPECT_FALSE(pc[i].second.shares_storage(po[i].second)) << po[i].first;
    EXPECT_TRUE(pc[i].second.requires_grad()) << po[i].first;
  }
  const Tensor reference = original.forward(x).detach().clone();
  for (auto& p : copy->parameters()) p.detach().fill_(0.5);
  EXPECT_TRUE(bit_equal(original.forward(x), reference));
  EXPECT_FALSE(bit_equal(copy->forward(x), reference));
}

TEST(Module, CloneOfSequentialCopiesBuffersAndTrainingMode) {
  Generator gen(2);
  nn::Sequential seq{std::make_shared<nn::Linear>(3, 4), std::make_shared<nn::BatchNorm1d>(4),
                     std::make_shared<nn::ReLU>()};
  seq.forward(randn({8, 3}, gen));  // moves the running statistics away from 0 / 1
  seq.eval();
  auto copy = seq.clone();
  EXPECT_FALSE(copy->is_training());
  EXPECT_FALSE((*std::static_pointer_cast<nn::Sequential>(copy))[1]->is_training());
  const auto bo = seq.named_buffers(), bc = copy->named_buffers();
  ASSERT_EQ(names_of(bo), names_of(bc));
  for (size_t i = 0; i < bo.size(); ++i) {
    EXPECT_TRUE(bit_equal(bc[i].second, bo[i].second)) << bo[i].first;
    EXPECT_FALSE(bc[i].second.shares_storage(bo[i].second)) << bo[i].first;
  }
  const Tensor x = randn({5, 3}, gen);
  EXPECT_TRUE(bit_equal(copy->forward(x), seq.forward(x)));
}

TEST(Module, CloneWithoutMakeEmptyThrowsNamingTheModule) {
  auto m = std::make_shared<NotClonable>();
  try {
    m->clone();
    FAIL() << "clone() of a module without make_empty() succeeded";
  } catch (const UnsupportedError& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("NotClonable"));
    EXPECT_THAT(std::string(e.what()), HasSubstr("make_empty"));
  }
  // Also when it sits inside a Sequential.
  nn::Sequential seq{std::make_shared<nn::Linear>(2, 2), m};
  EXPECT_THROW(seq.clone(), UnsupportedError);
}

TEST(Module, ZeroGradInPlaceKeepsGradientStorage) {
  Mlp mlp(5, 4, 3, 2);
  Generator gen(4);
  sum(mlp.forward(randn({3, 5}, gen))).backward();
  std::vector<const void*> ptrs;
  for (const auto& p : mlp.parameters()) {
    ASSERT_TRUE(p.grad().defined());
    ptrs.push_back(p.grad().data_ptr());
  }
  // At least one gradient is non-zero, so zeroing is observable.
  double total = 0;
  for (const auto& p : mlp.parameters()) {
    for (float v : p.grad().to_vector<float>()) total += std::fabs(v);
  }
  ASSERT_GT(total, 0);
  mlp.zero_grad();
  const auto params = mlp.parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    ASSERT_TRUE(params[i].grad().defined()) << i;
    EXPECT_EQ(params[i].grad().data_ptr(), ptrs[i]) << i;
    for (float v : params[i].grad().to_vector<float>()) EXPECT_EQ(v, 0.0f) << i;
  }
  // The next backward accumulates into the same memory, starting from zero.
  Tensor x = randn({3, 5}, gen);
  sum(mlp.forward(x)).backward();
  Mlp reference(5, 4, 3, 2);
  reference.load_state_dict(mlp.state_dict());
  sum(reference.forward(x)).backward();
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(params[i].grad().data_ptr(), ptrs[i]) << i;
    EXPECT_TRUE(all_close(params[i].grad(), reference.parameters()[i].grad())) << i;
  }
}

TEST(Module, ZeroGradSetToNoneDropsGradients) {
  Mlp mlp(5, 4, 3, 2);
  Generator gen(4);
  sum(mlp.forward(randn({3, 5}, gen))).backward();
  mlp.zero_grad(/*set_to_none=*/true);
  for (const auto& [name, p] : mlp.named_parameters()) EXPECT_FALSE(p.grad().defined()) << name;
}

TEST(Module, NumParametersCountsEveryElement) {
  Mlp mlp(784, 256, 128, 10);
  EXPECT_EQ(mlp.num_parameters(), 235146);
  nn::Linear no_bias(10, 3, /*bias=*/false);
  EXPECT_EQ(no_bias.num_parameters(), 30);
  nn::BatchNorm2d bn(8);  // buffers are not parameters
  EXPECT_EQ(bn.num_parameters(), 16);
}

}  // namespace
}  // namespace dtrain

namespace dtrain {
namespace {

TEST(ModuleDevice, ToSameDeviceKeepsStorageAndCudaNeedsAGpu) {
  nn::Linear layer(3, 2);
  const void* before = layer.weight.data_ptr();
  layer.to(Device::cpu());
  EXPECT_EQ(layer.weight.data_ptr(), before);
  EXPECT_EQ(layer.device(), Device::cpu());
  if (!cuda::available()) {
    EXPECT_THROW(layer.to(Device::cuda(0)), Error);
    GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  }
  auto replica = layer.clone(Device::cuda(0));
  EXPECT_EQ(replica->device(), Device::cuda(0));
  EXPECT_EQ(replica->named_parameters()[0].second.to_vector<float>(),
            layer.weight.to_vector<float>());
}

}  // namespace
}  // namespace dtrain
