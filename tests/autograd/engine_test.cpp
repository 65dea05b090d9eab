// The backward engine: accumulation, hooks, retain_graph, grad mode, anomaly mode, gradcheck's
// own failure reporting, and misuse errors.
#include "dtrain/autograd/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/autograd/functions.h"
#include "dtrain/autograd/grad_mode.h"
#include "dtrain/autograd/gradcheck.h"
#include "dtrain/autograd/hooks.h"
#include "dtrain/autograd/node.h"
#include "testutil.h"

namespace dtrain {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testutil::all_close;

/// The message of the dtrain::Error `body` throws ("" when it throws nothing).
template <class Body>
std::string error_message(Body&& body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<float> values(const Tensor& t) { return t.to_vector<float>(); }

TEST(Engine, GradientOfSharedLeafAccumulates) {
  Tensor x = from_vector<float>({1, 2, 3}).set_requires_grad();
  Tensor y = sum(x * x + x * 3.0);  // dy/dx = 2x + 3
  y.backward();
  EXPECT_EQ(x.grad().to_vector<float>(), (std::vector<float>{5, 7, 9}));
}

TEST(Engine, GradientsAccumulateAcrossTwoBackwardCalls) {
  Tensor x = from_vector<float>({1, 2, 3}).set_requires_grad();
  sum(x * x).backward();    // 2x
  sum(x * 4.0).backward();  // + 4, a separate graph
  EXPECT_EQ(values(x.grad()), (std::vector<float>{6, 8, 10}));
}

TEST(Engine, LeafBackwardAccumulatesLikeAnyOther) {
  // A leaf as the root: its gradient is the seed, added to what is there.
  Tensor x = from_vector<float>({1.5f}).set_requires_grad();
  x.backward();
  x.backward();
  EXPECT_EQ(values(x.grad()), (std::vector<float>{2}));
}

TEST(Engine, RetainGraphAllowsSecondBackwardAndDoublesGrads) {
  Tensor x = from_vector<float>({1, 2}).set_requires_grad();
  Tensor w = from_vector<float>({3, -1}).set_requires_grad();
  Tensor y = sum(exp(x) * w);
  y.backward(Tensor(), /*retain_graph=*/true);
  const std::vector<float> gx1 = values(x.grad()), gw1 = values(w.grad());
  y.backward();
  EXPECT_TRUE(all_close(x.grad(), from_vector<float>({2 * gx1[0], 2 * gx1[1]})));
  EXPECT_TRUE(all_close(w.grad(), from_vector<float>({2 * gw1[0], 2 * gw1[1]})));
  EXPECT_TRUE(all_close(w.grad(), from_vector<float>({2 * std::exp(1.f), 2 * std::exp(2.f)})));
}

TEST(Engine, SecondBackwardWithoutRetainGraphThrows) {
  Tensor x = from_vector<float>({1, 2}).set_requires_grad();
  Tensor y = sum(x * x);
  y.backward();
  const std::string msg = error_message([&] { y.backward(); });
  EXPECT_THAT(msg, AllOf(HasSubstr("second time"), HasSubstr("retain_graph")));
  // The first backward's gradient is intact.
  EXPECT_EQ(values(x.grad()), (std::vector<float>{2, 4}));
}

TEST(Engine, NonScalarBackwardWithoutGradThrows) {
  Tensor x = from_vector<float>({1, 2}).set_requires_grad();
  Tensor y = x * 2.0;
  EXPECT_THAT(error_message([&] { y.backward(); }), HasSubstr("scalar"));
  // The engine entry point checks the same thing.
  EXPECT_THAT(error_message([&] { autograd::backward(y); }), HasSubstr("scalar"));
}

TEST(Engine, NonScalarBackwardWithExplicitGradWorks) {
  Tensor x = from_vector<float>({1, 2}).set_requires_grad();
  Tensor y = x * x;
  y.backward(from_vector<float>({1, 10}));
  EXPECT_EQ(values(x.grad()), (std::vector<float>{2, 40}));
}

TEST(Engine, BackwardWithMismatchedGradShapeThrows) {
  Tensor x = from_vector<float>({1, 2}).set_requires_grad();
  Tensor y = x * x;
  EXPECT_THAT(error_message([&] {
                y.backward(from_vector<float>({1, 2, 3}));
              }),
              AllOf(HasSubstr("[3]"), HasSubstr("[2]")));
}

TEST(Engine, BackwardOnTensorNotRequiringGradThrows) {
  Tensor x = from_vector<float>({1, 2});
  Tensor y = sum(x * x);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_THAT(error_message([&] { y.backward(); }), HasSubstr("does not require grad"));
  EXPECT_THAT(error_message([&] { autograd::backward(y); }), HasSubstr("does not require grad"));
}

TEST(Engine, NoGradGuardRecordsNothing) {
  Tensor x = from_vector<float>({1, 2}).set_requires_grad();
  {
    NoGradGuard no_grad;
    EXPECT_FALSE(autograd::grad_enabled());
    Tensor y = exp(x * 2.0) + x;
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(autograd::grad_fn(y), nullptr);
    { NoGradGuard nested; }
    EXPECT_FALSE(autograd::grad_enabled()) << "a nested guard restores the outer state";
  }
  EXPECT_TRUE(autograd::grad_enabled());
  EXPECT_TRUE((x * 2.0).requires_grad());
}

TEST(Engine, DetachCutsTheGraph) {
  Tensor x = from_vector<float>({2, 3}).set_requires_grad();
  Tensor y = x * x;
  Tensor d = y.detach();
  EXPECT_FALSE(d.requires_grad());
  EXPECT_TRUE(d.is_leaf());
  EXPECT_TRUE(d.shares_storage(y));
  // z = x * stop_gradient(x^2): dz/dx = x^2, not 3x^2.
  sum(x * d).backward();
  EXPECT_EQ(values(x.grad()), (std::vector<float>{4, 9}));
}

TEST(Engine, RequiresGradPropagates) {
  Tensor a = from_vector<float>({1, 2}).set_requires_grad();
  Tensor b = from_vector<float>({3, 4});
  EXPECT_TRUE((a * b).requires_grad());
  EXPECT_TRUE((b * a).requires_grad());
  EXPECT_TRUE(matmul(reshape(b, {1, 2}), reshape(a, {2, 1})).requires_grad());
  EXPECT_FALSE(a.view({2, 1}).requires_grad()) << "Tensor::view has no autograd link";
  EXPECT_TRUE(cat({b, a}).requires_grad());
  EXPECT_FALSE((b * b).requires_grad());
  EXPECT_FALSE(sum(exp(b)).requires_grad());
  // Only the input that requires grad receives one.
  sum(a * b).backward();
  EXPECT_EQ(values(a.grad()), (std::vector<float>{3, 4}));
  EXPECT_FALSE(b.grad().defined());
}

TEST(Engine, IsLeafSemantics) {
  Tensor a = from_vector<float>({1, 2});
  EXPECT_TRUE(a.is_leaf());
  a.set_requires_grad();
  EXPECT_TRUE(a.is_leaf());
  Tensor y = a * 2.0;
  EXPECT_FALSE(y.is_leaf());
  EXPECT_NE(autograd::grad_fn(y), nullptr);
  EXPECT_EQ(autograd::grad_fn(y)->name(), "MulBackward");
  EXPECT_TRUE(y.detach().is_leaf());
  // Multi-word ops get PyTorch-style CamelCase node names.
  Tensor img = ones({1, 1, 2, 2}).set_requires_grad();
  EXPECT_EQ(autograd::grad_fn(max_pool2d(img, 2, 2))->name(), "MaxPool2dBackward");
  EXPECT_EQ(autograd::grad_fn(log_softmax(a, 0))->name(), "LogSoftmaxBackward");
  Tensor c = from_vector<float>({1, 2}) * 2.0;  // no input requires grad: a leaf
  EXPECT_TRUE(c.is_leaf());
  // A non-leaf cannot opt out; detach() is the way.
  EXPECT_THAT(error_message([&] { y.set_requires_grad(false); }), HasSubstr("detach"));
  // Non-leaves do not keep their gradient unless asked to.
  sum(y).backward();
  EXPECT_FALSE(y.grad().defined());
  EXPECT_TRUE(a.grad().defined());
}

TEST(Engine, ReshapeOutputHasItsOwnGraphLink) {
  // reshape shares storage with its input; recording must not turn the input into a non-leaf.
  Tensor x = from_vector<float>({1, 2, 3, 4}).set_requires_grad();
  Tensor y = reshape(x, {2, 2});
  EXPECT_TRUE(x.is_leaf());
  EXPECT_FALSE(y.is_leaf());
  EXPECT_TRUE(y.shares_storage(x));
  sum(y * y).backward();
  EXPECT_EQ(values(x.grad()), (std::vector<float>{2, 4, 6, 8}));
}

TEST(Engine, HookOnNonLeafScalesTheGradientFlowingBack) {
  Tensor x = from_vector<float>({1, 2}).set_requires_grad();
  Tensor y = x * 2.0;
  int calls = 0;
  Tensor seen;
  autograd::register_hook(y, [&](const Tensor& g) {
    ++calls;
    seen = g.clone();
    return g * 3.0;
  });
  sum(y * y).backward();  // dL/dy = 2y = [4, 8]; scaled by 3, then times dy/dx = 2
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(values(seen), (std::vector<float>{4, 8}));
  EXPECT_EQ(values(x.grad()), (std::vector<float>{24, 48}));
}

TEST(Engine, HookReturningUndefinedKeepsTheGradient) {
  Tensor x = from_vector<float>({1, 2}).set_requires_grad();
  Tensor y = x * 2.0;
  autograd::register_hook(y, [](const Tensor&) { return Tensor(); });
  sum(y).backward();
  EXPECT_EQ(values(x.grad()), (std::vector<float>{2, 2}));
}

TEST(Engine, RegisterHookOnTensorNotRequiringGradThrows) {
  Tensor x = from_vector<float>({1, 2});
  EXPECT_THAT(error_message([&] { autograd::register_hook(x, [](const Tensor& g) { return g; }); }),
              HasSubstr("does not require grad"));
}

TEST(Engine, HookOnLeafRunsBeforeAccumulation) {
  Tensor x = from_vector<float>({1, 2}).set_requires_grad();
  std::vector<std::vector<float>> grad_before_hook_ran, incoming;
  autograd::register_hook(x, [&](const Tensor& g) {
    grad_before_hook_ran.push_back(x.grad().defined() ? values(x.grad()) : std::vector<float>{});
    incoming.push_back(values(g));
    return g * 10.0;
  });
  sum(x * x).backward();
  sum(x * x).backward();
  ASSERT_EQ(incoming.size(), 2u);
  // The hook sees this backward's gradient, not the accumulated one, and runs before .grad changes.
  EXPECT_EQ(incoming[0], (std::vector<float>{2, 4}));
  EXPECT_EQ(incoming[1], (std::vector<float>{2, 4}));
  EXPECT_TRUE(grad_before_hook_ran[0].empty());
  EXPECT_EQ(grad_before_hook_ran[1], (std::vector<float>{20, 40}));
  EXPECT_EQ(values(x.grad()), (std::vector<float>{40, 80}));
}

TEST(Engine, PostAccumulateHookFiresOncePerBackwardForALeafUsedThreeTimes) {
  Tensor x = from_vector<float>({0.5f, -1.f}).set_requires_grad();
  int calls = 0;
  std::vector<std::vector<float>> seen;
  autograd::register_post_accumulate_grad_hook(x, [&](Tensor& leaf) {
    ++calls;
    seen.push_back(values(leaf.grad()));
  });
  auto loss = [&] {
    // x enters at three depths: x * x (twice through one node), exp(x) and sigmoid(x * 3).
    return sum(x * x + exp(x) + sigmoid(x * 3.0) * 2.0);
  };
  auto expected = [&](float v) {  // d/dx of one loss
    const float s = 1.f / (1.f + std::exp(-3.f * v));
    return 2 * v + std::exp(v) + 2 * 3 * s * (1 - s);
  };
  loss().backward();
  EXPECT_EQ(calls, 1);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_NEAR(seen[0][0], expected(0.5f), 1e-5);
  EXPECT_NEAR(seen[0][1], expected(-1.f), 1e-5);
  loss().backward();
  EXPECT_EQ(calls, 2);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_NEAR(seen[1][0], 2 * expected(0.5f), 1e-5) << "sees the accumulated gradient";
  EXPECT_NEAR(seen[1][1], 2 * expected(-1.f), 1e-5);
}

TEST(Engine, PostAccumulateHookOnNonLeafThrows) {
  Tensor x = from_vector<float>({1, 2}).set_requires_grad();
  Tensor y = x * 2.0;
  EXPECT_THAT(
      error_message([&] { autograd::register_post_accumulate_grad_hook(y, [](Tensor&) {}); }),
      HasSubstr("not a leaf"));
}

TEST(Engine, RetainGradKeepsANonLeafGradient) {
  Tensor x = from_vector<float>({1, 2}).set_requires_grad();
  Tensor y = x * 3.0;
  Tensor z = y * y;
  autograd::retain_grad(y);
  sum(z).backward();
  ASSERT_TRUE(y.grad().defined());
  EXPECT_EQ(values(y.grad()), (std::vector<float>{6, 12}));  // 2y
  EXPECT_EQ(values(x.grad()), (std::vector<float>{18, 36}));
  EXPECT_FALSE(z.grad().defined());
}

TEST(Engine, AccumulatorsRunAsSoonAsTheirGradientIsComplete) {
  // y = tanh(w2 * tanh(w1 * x)): w2's gradient is complete once the outer mul has run, before the
  // inner tanh's backward; DDP relies on this to start communicating early.
  Tensor x = from_vector<float>({0.3f, -0.7f});
  Tensor w1 = from_vector<float>({1.2f, 0.4f}).set_requires_grad();
  Tensor w2 = from_vector<float>({-0.5f, 2.f}).set_requires_grad();
  std::vector<std::string> order;
  autograd::register_post_accumulate_grad_hook(w1, [&](Tensor&) { order.push_back("w1"); });
  autograd::register_post_accumulate_grad_hook(w2, [&](Tensor&) { order.push_back("w2"); });
  Tensor h = tanh(w1 * x);
  autograd::register_hook(h, [&](const Tensor&) {
    order.push_back("h");  // runs when the inner tanh's backward starts
    return Tensor();
  });
  sum(tanh(w2 * h)).backward();
  EXPECT_EQ(order, (std::vector<std::string>{"w2", "h", "w1"}));
}

TEST(Engine, AccumulatorOfALeafUsedEarlyAndLateWaitsForAllContributions) {
  // w feeds both the first and the last op; its hook must see the complete gradient, once.
  Tensor w = from_vector<float>({0.5f}).set_requires_grad();
  Tensor x = from_vector<float>({2.f});
  std::vector<float> seen;
  autograd::register_post_accumulate_grad_hook(
      w, [&](Tensor& leaf) { seen.push_back(values(leaf.grad())[0]); });
  Tensor h = exp(w * x);  // first use
  sum(h * w).backward();  // last use: L = w exp(wx), dL/dw = exp(wx) (1 + wx)
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_NEAR(seen[0], std::exp(1.f) * 2.f, 1e-5);
}

TEST(Engine, AnomalyModeNamesTheBackwardNodeAndForwardOp) {
  Tensor x = from_vector<float>({0.f, 1.f, 4.f}).set_requires_grad();
  AnomalyGuard anomaly;
  Tensor y = sum(sqrt(x));  // d sqrt / dx = inf at 0
  const std::string msg = error_message([&] { y.backward(); });
  EXPECT_THAT(msg, AllOf(HasSubstr("SqrtBackward"), HasSubstr("sqrt with inputs"),
                         HasSubstr("float32[3]")));
}

TEST(Engine, AnomalyModeNamesLogOfZero) {
  Tensor x = from_vector<float>({1.f, 0.f, 2.f, 3.f}).set_requires_grad();
  AnomalyGuard anomaly;
  Tensor y = sum(log(reshape(x, {2, 2})));
  const std::string msg = error_message([&] { y.backward(); });
  EXPECT_THAT(msg, AllOf(HasSubstr("LogBackward"), HasSubstr("log with inputs"),
                         HasSubstr("float32[2, 2]")));
}

TEST(Engine, WithoutAnomalyModeNonFiniteGradientsPassSilently) {
  ASSERT_FALSE(autograd::anomaly_enabled());
  Tensor x = from_vector<float>({0.f, 4.f}).set_requires_grad();
  EXPECT_NO_THROW(sum(sqrt(x)).backward());
  const auto g = values(x.grad());
  EXPECT_TRUE(std::isinf(g[0]));
  EXPECT_FLOAT_EQ(g[1], 0.25f);
}

TEST(Engine, AnomalyGuardRestoresThePreviousState) {
  EXPECT_FALSE(autograd::anomaly_enabled());
  {
    AnomalyGuard anomaly;
    EXPECT_TRUE(autograd::anomaly_enabled());
  }
  EXPECT_FALSE(autograd::anomaly_enabled());
}

// autograd::queue_callback: end-of-backward work queued from a hook (DDP finishes its gradient
// all-reduces there), and in_backward().

TEST(EngineCallbacks, RunOnceInQueueOrderAfterEveryLeafIsAccumulatedBeforeBackwardReturns) {
  // L = sum(tanh(w2 * tanh(w1 * x))): w2's gradient is final first, w1's last (see
  // AccumulatorsRunAsSoonAsTheirGradientIsComplete). w2's hook queues two callbacks, w1's one.
  Tensor x = from_vector<float>({0.3f, -0.7f});
  Tensor w1 = from_vector<float>({1.2f, 0.4f}).set_requires_grad();
  Tensor w2 = from_vector<float>({-0.5f, 2.f}).set_requires_grad();
  std::vector<std::string> events;
  std::vector<std::vector<float>> w1_seen, w2_seen;  // the gradients each callback saw
  const auto grad_or_empty = [](const Tensor& leaf) {
    return leaf.grad().defined() ? values(leaf.grad()) : std::vector<float>{};
  };
  const std::function<void(const std::string&)> callback_body = [&](const std::string& name) {
    events.push_back(name);
    w1_seen.push_back(grad_or_empty(w1));
    w2_seen.push_back(grad_or_empty(w2));
  };
  autograd::register_post_accumulate_grad_hook(w2, [&](Tensor&) {
    events.push_back("w2 hook");
    autograd::queue_callback([&] { callback_body("first"); });
    autograd::queue_callback([&] { callback_body("second"); });
  });
  autograd::register_post_accumulate_grad_hook(w1, [&](Tensor&) {
    events.push_back("w1 hook");
    autograd::queue_callback([&] { callback_body("third"); });
  });
  const auto loss = [&] { return sum(tanh(w2 * tanh(w1 * x))); };
  const std::vector<std::string> expected_events{"w2 hook", "w1 hook", "first", "second", "third"};

  loss().backward();
  // Nothing but backward() could have run them: they ran before it returned, each once.
  EXPECT_EQ(events, expected_events);
  ASSERT_EQ(w1_seen.size(), 3u);
  ASSERT_EQ(w2_seen.size(), 3u);
  // Every callback, even those queued before w1 was reached, saw both final gradients.
  const std::vector<float> xs{0.3f, -0.7f}, w1v{1.2f, 0.4f}, w2v{-0.5f, 2.f};
  for (size_t c = 0; c < 3; ++c) {
    ASSERT_EQ(w1_seen[c].size(), 2u) << "callback " << c << " ran before w1's gradient existed";
    ASSERT_EQ(w2_seen[c].size(), 2u) << "callback " << c;
    EXPECT_EQ(w1_seen[c], values(w1.grad())) << "callback " << c;
    EXPECT_EQ(w2_seen[c], values(w2.grad())) << "callback " << c;
    for (size_t i = 0; i < 2; ++i) {
      const float h = std::tanh(w1v[i] * xs[i]);
      const float outer = 1 - std::tanh(w2v[i] * h) * std::tanh(w2v[i] * h);
      EXPECT_NEAR(w1_seen[c][i], outer * w2v[i] * (1 - h * h) * xs[i], 1e-5) << "callback " << c;
      EXPECT_NEAR(w2_seen[c][i], outer * h, 1e-5) << "callback " << c;
    }
  }

  // A second backward runs its own callbacks only: the first backward's are gone.
  events.clear();
  w1_seen.clear();
  w2_seen.clear();
  loss().backward();
  EXPECT_EQ(events, expected_events);
  ASSERT_EQ(w1_seen.size(), 3u);
  for (size_t c = 0; c < 3; ++c) {
    EXPECT_EQ(w1_seen[c], values(w1.grad())) << "callback " << c << " saw the accumulated grad";
    EXPECT_EQ(w2_seen[c], values(w2.grad())) << "callback " << c;
  }
}

TEST(EngineCallbacks, InBackwardOnlyOnTheThreadRunningABackward) {
  EXPECT_FALSE(autograd::in_backward());
  Tensor w = from_vector<float>({1.f, 2.f}).set_requires_grad();
  Tensor h = w * 3.0;
  std::vector<bool> in_tensor_hook, in_leaf_hook;
  int other_thread = -1;  // what another thread sees while this one runs the backward
  autograd::register_hook(h, [&](const Tensor&) {
    in_tensor_hook.push_back(autograd::in_backward());
    return Tensor();
  });
  autograd::register_post_accumulate_grad_hook(w, [&](Tensor&) {
    in_leaf_hook.push_back(autograd::in_backward());
    std::thread t([&] { other_thread = autograd::in_backward() ? 1 : 0; });
    t.join();
  });
  sum(h * h).backward();
  EXPECT_EQ(in_tensor_hook, std::vector<bool>{true});
  EXPECT_EQ(in_leaf_hook, std::vector<bool>{true});
  EXPECT_EQ(other_thread, 0);
  EXPECT_FALSE(autograd::in_backward());

  // A backward that fails in a hook leaves the thread outside a backward too.
  Tensor v = from_vector<float>({1.f}).set_requires_grad();
  autograd::register_post_accumulate_grad_hook(
      v, [](Tensor&) { DTRAIN_THROW(ValueError, "hook failure for the test"); });
  EXPECT_THAT(error_message([&] { sum(v * 2.0).backward(); }),
              HasSubstr("hook failure for the test"));
  EXPECT_FALSE(autograd::in_backward());
}

TEST(EngineCallbacks, EveryBackwardHasItsOwnIdAndOutsideOneItIsZero) {
  EXPECT_EQ(autograd::backward_id(), 0u);
  Tensor a = from_vector<float>({1.f, 2.f}).set_requires_grad();
  Tensor b = from_vector<float>({3.f}).set_requires_grad();
  std::vector<uint64_t> seen;  // every hook's view of the id, two leaves per backward
  for (Tensor* leaf : {&a, &b}) {
    autograd::register_post_accumulate_grad_hook(
        *leaf, [&](Tensor&) { seen.push_back(autograd::backward_id()); });
  }
  sum(a * 2.0).backward();
  (sum(a) + sum(b)).backward();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_NE(seen[0], 0u);
  EXPECT_EQ(seen[1], seen[2]) << "one backward, one id";
  EXPECT_NE(seen[0], seen[1]) << "two backwards, two ids";
  EXPECT_EQ(autograd::backward_id(), 0u);
  // An id on another thread's backward is its own, even at the same time as this thread's.
  uint64_t other = 0;
  std::thread t([&] {
    Tensor c = from_vector<float>({1.f}).set_requires_grad();
    autograd::register_post_accumulate_grad_hook(c,
                                                 [&](Tensor&) { other = autograd::backward_id(); });
    sum(c * 3.0).backward();
  });
  t.join();
  EXPECT_NE(other, 0u);
  EXPECT_NE(other, seen[1]);
}

TEST(EngineCallbacks, QueueCallbackOutsideABackwardThrowsValueError) {
  bool ran = false;
  const auto queue_outside = [&] {
    try {
      autograd::queue_callback([&] { ran = true; });
    } catch (const ValueError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_THAT(queue_outside(), HasSubstr("outside a backward"));
  // Also right after a backward: its queue is gone.
  Tensor x = from_vector<float>({1.f, 2.f}).set_requires_grad();
  sum(x * x).backward();
  EXPECT_THAT(queue_outside(), HasSubstr("outside a backward"));
  EXPECT_FALSE(ran);
  // A later backward does not pick up the callback that was refused.
  sum(x * x).backward();
  EXPECT_FALSE(ran);
}

TEST(EngineCallbacks, AThrowingCallbackMakesBackwardThrowAndDropsTheRest) {
  Tensor x = from_vector<float>({1.f, 2.f}).set_requires_grad();
  std::vector<std::string> ran;
  bool fail = true;
  autograd::register_post_accumulate_grad_hook(x, [&](Tensor&) {
    autograd::queue_callback([&] { ran.push_back("before"); });
    autograd::queue_callback([&] {
      if (fail) DTRAIN_THROW(ValueError, "callback failure for the test");
      ran.push_back("middle");
    });
    autograd::queue_callback([&] { ran.push_back("after"); });
  });
  std::string caught;
  try {
    sum(x * x).backward();
  } catch (const ValueError& e) {
    caught = e.what();
  }
  EXPECT_THAT(caught, HasSubstr("callback failure for the test"));
  EXPECT_EQ(ran, std::vector<std::string>{"before"});
  EXPECT_EQ(values(x.grad()), (std::vector<float>{2, 4})) << "accumulated before the callbacks";
  EXPECT_FALSE(autograd::in_backward());

  // The engine is usable again, and the dropped callback does not run late.
  fail = false;
  ran.clear();
  EXPECT_NO_THROW(sum(x * x).backward());
  EXPECT_EQ(ran, (std::vector<std::string>{"before", "middle", "after"}));
  EXPECT_EQ(values(x.grad()), (std::vector<float>{4, 8}));
}

TEST(EngineCallbacks, ABackwardThatFailsDropsTheCallbacksQueuedSoFar) {
  // w's gradient is accumulated (and its hook queues a callback) before the custom node below it
  // runs its backward, which throws.
  Tensor v = from_vector<float>({0.5f, 1.5f}).set_requires_grad();
  Tensor w = from_vector<float>({2.f, -1.f}).set_requires_grad();
  Tensor h = autograd::record(ops::binary(kernels::Binary::kMul, v, v), "failing", {v},
                              [](const Tensor&) -> std::vector<Tensor> {
                                DTRAIN_THROW(ValueError, "backward failure for the test");
                              });
  int hook_calls = 0, callback_calls = 0;
  autograd::register_post_accumulate_grad_hook(w, [&](Tensor&) {
    ++hook_calls;
    autograd::queue_callback([&] { ++callback_calls; });
  });
  EXPECT_THAT(error_message([&] { sum(h * w).backward(); }),
              HasSubstr("backward failure for the test"));
  EXPECT_EQ(hook_calls, 1) << "w's accumulator should run before the failing node";
  EXPECT_EQ(callback_calls, 0);
  EXPECT_FALSE(autograd::in_backward());
  // The next backward runs only its own callback.
  sum(w * 2.0).backward();
  EXPECT_EQ(hook_calls, 2);
  EXPECT_EQ(callback_calls, 1);
}

/// y = x^2 recorded through autograd::record with a backward of `factor` * g * x.
Tensor square_with_backward_factor(const Tensor& x, double factor) {
  Tensor y = ops::binary(kernels::Binary::kMul, x, x);
  return autograd::record(y, "square", {x}, [xd = x.detach(), factor](const Tensor& g) {
    return std::vector<Tensor>{mul(mul(g, xd), factor)};
  });
}

TEST(Engine, GradcheckAcceptsACorrectCustomOp) {
  Generator gen(5);
  Tensor x = randn({2, 3}, gen, DType::kFloat64).set_requires_grad();
  const GradcheckResult r = gradcheck(
      [](const std::vector<Tensor>& in) { return square_with_backward_factor(in[0], 2.0); }, {x});
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_LT(r.max_abs_error, 1e-6);
}

TEST(Engine, GradcheckRejectsAWrongGradient) {
  Generator gen(5);
  Tensor x = randn({2, 3}, gen, DType::kFloat64).set_requires_grad();
  const GradcheckResult r = gradcheck(
      [](const std::vector<Tensor>& in) { return square_with_backward_factor(in[0], 1.0); }, {x});
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.message,
              AllOf(HasSubstr("analytic"), HasSubstr("numerical"), HasSubstr("input 0")));
  EXPECT_GT(r.max_abs_error, 0.01);
}

TEST(Engine, GradcheckRejectsAMissingCrossTerm) {
  // A wrong off-diagonal Jacobian entry: out = [x0 * x1, x1] with d(out0)/dx0 dropped.
  Tensor x = from_vector<double>({1.5, -2.0}).set_requires_grad();
  auto fn = [](const std::vector<Tensor>& in) {
    Tensor v = in[0];
    Tensor out =
        from_vector<double>({v.data<double>()[0] * v.data<double>()[1], v.data<double>()[1]});
    return autograd::record(out, "bad", {v}, [vd = v.detach()](const Tensor& g) {
      const double* pg = g.data<double>();
      const double* pv = vd.data<double>();
      return std::vector<Tensor>{from_vector<double>({0.0, pg[0] * pv[0] + pg[1]})};
    });
  };
  const GradcheckResult r = gradcheck(fn, {x});
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.message, HasSubstr("element 0"));
}

TEST(Engine, GradcheckRequiresFloat64) {
  Tensor x = from_vector<float>({1, 2}).set_requires_grad();
  EXPECT_THAT(error_message([&] {
                gradcheck([](const std::vector<Tensor>& in) { return in[0] * 2.0; }, {x});
              }),
              HasSubstr("float64"));
}

}  // namespace
}  // namespace dtrain

namespace dtrain {
namespace {

TEST(ScalarTensors, ReductionsAndTransposeOfZeroDimTensorsHaveGradients) {
  Tensor x = scalar_tensor(3.0).set_requires_grad();
  Tensor y = mean(transpose(x, 0, -1) * x, {0});  // d/dx x^2 = 2x
  y.backward();
  EXPECT_FLOAT_EQ(x.grad().item<float>(), 6.0f);
  Tensor z = scalar_tensor(2.0).set_requires_grad();
  sum(z, {0}).backward();
  EXPECT_FLOAT_EQ(z.grad().item<float>(), 1.0f);
}

}  // namespace
}  // namespace dtrain
