// model.type sequential: the built-in mlp and cnn rebuilt as layer lists draw the same parameters,
// residual blocks, every parse and shape problem with its location and fix, the flow text round
// trip, and a small transformer over int64 tokens.
#include "dtrain/train/sequential.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include "dtrain/nn/attention.h"
#include "dtrain/train/models.h"
#include "testutil.h"

namespace dtrain::train {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testutil::bit_equal;

/// Parses a YAML list of layers that must be valid.
std::vector<LayerSpec> layers_of(const std::string& yaml) {
  std::vector<std::string> problems;
  auto layers = parse_layers(YAML::Load(yaml), "t.yaml", problems);
  EXPECT_THAT(problems, ElementsAre()) << yaml;
  return layers;
}

std::vector<std::string> problems_of(const std::string& yaml) {
  std::vector<std::string> problems;
  parse_layers(YAML::Load(yaml), "t.yaml", problems);
  return problems;
}

/// The message of the ValueError that f throws ("" and a test failure if it does not throw).
template <class F>
std::string value_error(F&& f) {
  try {
    f();
  } catch (const ValueError& e) {
    return e.message();
  }
  ADD_FAILURE() << "expected a ValueError";
  return "";
}

std::string shape_error(const std::string& yaml, const Shape& example, bool tokens = false) {
  const auto layers = layers_of(yaml);
  return value_error([&] { infer_output_shape(layers, example, 10, tokens, "t.yaml"); });
}

void expect_same_model(nn::Module& a, nn::Module& b, const Tensor& x) {
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i].first, pb[i].first);
    EXPECT_TRUE(bit_equal(pa[i].second, pb[i].second)) << pa[i].first;
  }
  EXPECT_TRUE(bit_equal(a.forward(x), b.forward(x)));
}

std::vector<LayerSpec> without_lines(std::vector<LayerSpec> layers) {
  for (LayerSpec& l : layers) {
    l.line = 0;
    l.body = without_lines(l.body);
  }
  return layers;
}

// ---- the built-in models as layer lists -----------------------------------------------------

TEST(SequentialBuild, MlpDrawsTheSameParametersAsTheBuiltInMlp) {
  const auto layers = layers_of(
      "[flatten, {linear: {out: 256}}, relu, {linear: {out: 128}}, relu, "
      "{linear: {out: classes}}]");
  const Shape example = {1, 28, 28};
  auto seq = build_sequential(layers, example, 10, false, 7, "t.yaml");
  auto mlp = build_model(ModelConfig{}, example, 10, 7);
  Generator gen(3);
  expect_same_model(*seq, *mlp, randn({4, 1, 28, 28}, gen));
  EXPECT_EQ(infer_output_shape(layers, example, 10, false, "t.yaml"), Shape{10});
}

TEST(SequentialBuild, MlpWithBatchNormAndDropoutMatchesIncludingDropoutStreams) {
  const auto layers = layers_of(R"(
- flatten
- linear: {out: 32}
- batch_norm
- tanh
- dropout: {p: 0.25}
- linear: {out: 16}
- batch_norm
- tanh
- dropout: {p: 0.25}
- linear: {out: classes}
)");
  ModelConfig config;
  config.hidden = {32, 16};
  config.activation = "tanh";
  config.batch_norm = true;
  config.dropout = 0.25;
  const Shape example = {3, 4, 4};
  auto seq = build_sequential(layers, example, 5, false, 11, "t.yaml");
  auto mlp = build_model(config, example, 5, 11);
  EXPECT_EQ(std::dynamic_pointer_cast<nn::Dropout>((*seq)[4])->generator().stream(), 100u);
  EXPECT_EQ(std::dynamic_pointer_cast<nn::Dropout>((*seq)[8])->generator().stream(), 101u);
  Generator gen(4);
  expect_same_model(*seq, *mlp, randn({6, 3, 4, 4}, gen));  // training mode: masks match too
}

TEST(SequentialBuild, CnnDrawsTheSameParametersAsTheBuiltInCnn) {
  const auto layers = layers_of(R"(
- conv2d: {out: 4, kernel: 5, padding: 2}
- relu
- max_pool2d: {kernel: 2}
- conv2d: {out: 6, kernel: 5, padding: 2}
- relu
- max_pool2d: {kernel: 2}
- flatten
- linear: {out: 24}
- relu
- linear: {out: classes}
)");
  ModelConfig config;
  config.type = "cnn";
  config.channels = {4, 6};
  config.fc_units = 24;
  const Shape example = {2, 12, 12};
  auto seq = build_sequential(layers, example, 10, false, 5, "t.yaml");
  auto cnn = build_model(config, example, 10, 5);
  Generator gen(8);
  expect_same_model(*seq, *cnn, randn({3, 2, 12, 12}, gen));
}

// ---- residual blocks ------------------------------------------------------------------------

TEST(SequentialBuild, ResidualAddsItsInputAndPassesGradientsToItsBody) {
  const auto layers = layers_of(R"(
- conv2d: {out: 4, kernel: 3, padding: 1}
- relu
- max_pool2d: {kernel: 2}
- residual:
    - conv2d: {out: 4, kernel: 3, padding: 1}
    - batch_norm: {momentum: 0.2}
    - relu
    - residual:
        - conv2d: {out: 4, kernel: 1}
- global_avg_pool
- linear: {out: classes}
)");
  auto model = build_sequential(layers, {3, 8, 8}, 10, false, 1, "t.yaml");
  std::vector<std::string> names;
  for (const auto& [name, p] : model->named_parameters()) names.push_back(name);
  EXPECT_THAT(names, ElementsAre("0.weight", "0.bias", "3.body.0.weight", "3.body.0.bias",
                                 "3.body.1.weight", "3.body.1.bias", "3.body.3.body.0.weight",
                                 "3.body.3.body.0.bias", "5.weight", "5.bias"));

  model->eval();  // batch norm from its running statistics: body(x) is the same on every call
  auto residual = std::dynamic_pointer_cast<nn::Residual>((*model)[3]);
  ASSERT_TRUE(residual);
  Generator gen(2);
  const Tensor x = randn({2, 4, 4, 4}, gen);
  EXPECT_TRUE(testutil::all_close(residual->forward(x), x + residual->body->forward(x)));

  model->train();
  const Tensor loss = sum(model->forward(randn({2, 3, 8, 8}, gen)));
  loss.backward();
  for (const auto& [name, p] : model->named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    double norm = 0;
    for (double g : p.grad().to_vector<double>()) norm += g * g;
    EXPECT_GT(norm, 0) << name;
  }
}

// ---- parse problems -------------------------------------------------------------------------

TEST(SequentialParse, ReportsEveryProblemWithLineAndSuggestion) {
  const auto problems = problems_of(R"(- flaten
- linear: {out: 10, bais: false}
- conv2d: {out: 8}
- dropout: {p: 1.5}
- linear: {out: clases}
- residual:
    - relu
    - linear:
        outt: 4
- relu: 3
- linear:
  out: 4
- linear: {out: 4, bias: maybe, in_features: 3}
- max_pool2d: {kernel: [2, 2]}
- residual
- attention: {heads: 0}
- {type: linear, out: 3}
- linear: {out: 3, sizes: [1, 2]}
)");
  EXPECT_THAT(
      problems,
      ElementsAre(
          "t.yaml:1: model.layers[0]: unknown layer type 'flaten' (did you mean 'flatten'?)",
          "t.yaml:2: model.layers[1]: unknown arg 'bais' for linear (did you mean 'bias'?)",
          "t.yaml:3: model.layers[2]: conv2d needs 'kernel' (an integer >= 1), e.g. conv2d: "
          "{out: N, kernel: N}",
          "t.yaml:4: model.layers[3]: dropout.p: 1.5 is out of range; allowed: a number in [0, 1)",
          "t.yaml:5: model.layers[4]: linear.out: expected an integer >= 1 or 'classes', got "
          "'clases' (did you mean 'classes'?)",
          "t.yaml:9: model.layers[5].residual[1]: unknown arg 'outt' for linear (did you mean "
          "'out'?)",
          "t.yaml:8: model.layers[5].residual[1]: linear needs 'out' (an integer >= 1 or "
          "'classes'), e.g. linear: {out: N}",
          "t.yaml:10: model.layers[6]: relu: args must be a mapping (it takes none), got '3'",
          "t.yaml:11: model.layers[7]: a layer is one key, {type: {args}}; got the keys linear, "
          "out (indent the args under the type, e.g. linear: {out: ...})",
          "t.yaml:13: model.layers[8]: linear.bias: expected true or false, got 'maybe'",
          "t.yaml:13: model.layers[8]: unknown arg 'in_features' for linear; it is inferred from "
          "the incoming shape, leave it out",
          "t.yaml:14: model.layers[9]: max_pool2d.kernel: expected a single value, got a list",
          "t.yaml:15: model.layers[10]: residual needs a non-empty list of layers, e.g. "
          "residual: [{conv2d: {out: 32, kernel: 3, padding: 1}}, relu]; got nothing",
          "t.yaml:16: model.layers[11]: attention.heads: 0 is out of range; allowed: an integer "
          ">= 1",
          "t.yaml:17: model.layers[12]: a layer is one key, {type: {args}}; got the keys type, "
          "out (write it as linear: {args}, without the key 'type')",
          "t.yaml:18: model.layers[13]: unknown arg 'sizes' for linear; linear takes out, bias"));
}

TEST(SequentialParse, UnknownTypeWithoutNearMatchListsTheTypes) {
  EXPECT_THAT(problems_of("[{lstm: {hidden: 3}}]"),
              ElementsAre(HasSubstr("t.yaml:1: model.layers[0]: unknown layer type 'lstm'; known: "
                                    "linear, conv2d, conv1d,")));
  EXPECT_THAT(problems_of("[{linear: {out: 3, size: 2}}]"),
              ElementsAre("t.yaml:1: model.layers[0]: unknown arg 'size' for linear; linear takes "
                          "out, bias"));
}

TEST(SequentialParse, NeedsAListAndAcceptsNoLayers) {
  EXPECT_THAT(problems_of("layers: 3"),
              ElementsAre(HasSubstr("t.yaml:1: model.layers: expected a list of layers")));
  EXPECT_TRUE(layers_of("[]").empty());
  std::vector<std::string> problems;
  EXPECT_TRUE(parse_layers(YAML::Node(), "t.yaml", problems).empty());
  EXPECT_TRUE(problems.empty());
}

TEST(SequentialParse, KeepsArgsAsTextInFileOrderWithLines) {
  const auto layers = layers_of(R"(
- conv2d: {padding: 1, out: 32, kernel: 3}
- batch_norm: null
- residual:
    - linear: {out: classes, bias: false}
)");
  ASSERT_EQ(layers.size(), 3u);
  EXPECT_EQ(layers[0].type, "conv2d");
  EXPECT_EQ(layers[0].args, (std::vector<std::pair<std::string, std::string>>{
                                {"padding", "1"}, {"out", "32"}, {"kernel", "3"}}));
  EXPECT_EQ(layers[0].line, 2);
  EXPECT_TRUE(layers[1].args.empty());
  EXPECT_EQ(layers[2].body.size(), 1u);
  EXPECT_EQ(layers[2].body[0].line, 5);
  EXPECT_EQ(layers[2].body[0].args[0], (std::pair<std::string, std::string>{"out", "classes"}));
}

// ---- the flow text --------------------------------------------------------------------------

TEST(SequentialYaml, IsCanonicalFlowTextThatParsesToEqualSpecs) {
  const auto layers = layers_of(R"(
- conv2d: {out: 32, kernel: 3, padding: 1}
- batch_norm
- relu
- residual:
    - conv2d: {out: 32, kernel: 3, padding: 1}
    - batch_norm: {momentum: 0.1}
    - relu
    - residual: [gelu]
- max_pool2d: {kernel: 2}
- global_avg_pool
- dropout: {p: 1e-1}
- linear: {out: classes}
)");
  const std::string text = layers_yaml(layers);
  EXPECT_EQ(text,
            "[{conv2d: {out: 32, kernel: 3, padding: 1}}, batch_norm, relu, {residual: [{conv2d: "
            "{out: 32, kernel: 3, padding: 1}}, {batch_norm: {momentum: 0.1}}, relu, {residual: "
            "[gelu]}]}, {max_pool2d: {kernel: 2}}, global_avg_pool, {dropout: {p: 1e-1}}, "
            "{linear: {out: classes}}]");
  EXPECT_EQ(without_lines(layers_of(text)), without_lines(layers));
  EXPECT_EQ(layers_yaml(layers_of(text)), text);
  EXPECT_EQ(layers_yaml({}), "[]");
}

TEST(SequentialYaml, QuotesValuesThatWouldNotReadBackAsTheSameText) {
  const std::vector<LayerSpec> layers = {{"linear", {{"out", "a: b"}, {"bias", "null"}}, {}, 0}};
  const std::string text = layers_yaml(layers);
  EXPECT_EQ(text, R"([{linear: {out: "a: b", bias: "null"}}])");
  const YAML::Node node = YAML::Load(text);
  EXPECT_EQ(node[0]["linear"]["out"].Scalar(), "a: b");
  EXPECT_EQ(node[0]["linear"]["bias"].Scalar(), "null");
}

// ---- shape problems -------------------------------------------------------------------------

TEST(SequentialShapes, LinearAfterConvWithoutFlatten) {
  const std::string msg = shape_error(R"(
- conv2d: {out: 8, kernel: 3}
- relu
- linear: {out: classes}
)",
                                      {1, 28, 28});
  EXPECT_EQ(msg,
            "model.layers[2] (linear, t.yaml:4): gets [8, 26, 26]; needs [F] or [T, F]. Add "
            "flatten before it (or global_avg_pool)");
}

TEST(SequentialShapes, ResidualWhoseBodyChangesTheShape) {
  const std::string channels = shape_error(R"(
- conv2d: {out: 8, kernel: 3, padding: 1}
- residual:
    - conv2d: {out: 16, kernel: 3, padding: 1}
)",
                                           {3, 16, 16});
  EXPECT_EQ(channels,
            "model.layers[1] (residual, t.yaml:3): its layers turn [8, 16, 16] into [16, 16, 16], "
            "but a residual adds its input to their output, so they must keep the shape "
            "[8, 16, 16]. Give its last conv2d, conv1d or linear out: 8");
  EXPECT_THAT(shape_error("[{conv2d: {out: 8, kernel: 3}}, {residual: [{conv2d: {out: 8, kernel: "
                          "3}}]}]",
                          {3, 16, 16}),
              HasSubstr("[8, 14, 14] into [8, 12, 12], but a residual adds its input to their "
                        "output, so they must keep the shape [8, 14, 14]. Use stride 1 and "
                        "padding (kernel - 1) / 2"));
  EXPECT_THAT(shape_error("[{residual: [flatten]}]", {3, 4, 4}),
              HasSubstr("Move flatten and global pooling out of the residual"));
}

TEST(SequentialShapes, ErrorInsideAResidualNamesTheNestedLayer) {
  EXPECT_EQ(shape_error(R"(
- conv2d: {out: 8, kernel: 3, padding: 1}
- residual:
    - relu
    - residual:
        - batch_norm
        - linear: {out: 8}
)",
                        {3, 16, 16}),
            "model.layers[1].residual[1].residual[1] (linear, t.yaml:7): gets [8, 16, 16]; needs "
            "[F] or [T, F]. Add flatten before it (or global_avg_pool)");
}

TEST(SequentialShapes, AttentionHeadsMustDivideTheWidth) {
  EXPECT_EQ(shape_error(R"(
- embedding: {vocab: classes, dim: 10}
- transformer_block: {heads: 3}
)",
                        {16}, true),
            "model.layers[1] (transformer_block, t.yaml:3): gets [16, 10]; needs [T, D] with D "
            "divisible by heads, but D = 10 and heads = 3. Use heads 2 or 5 (a divisor of 10)");
  EXPECT_THAT(
      shape_error("[{embedding: {vocab: 50, dim: 12}}, {attention: {heads: 5}}]", {4}, true),
      HasSubstr("D = 12 and heads = 5. Use heads 4 or 6 (a divisor of 12)"));
}

TEST(SequentialShapes, SequenceLongerThanMaxLen) {
  EXPECT_EQ(shape_error(R"(
- embedding: {vocab: classes, dim: 8}
- positional_embedding: {max_len: 16}
)",
                        {32}, true),
            "model.layers[1] (positional_embedding, t.yaml:3): gets [32, 8]; needs [T, D] with "
            "T <= max_len 16, but T = 32. Raise max_len to at least 32");
}

TEST(SequentialShapes, TokensNeedEmbeddingFirstAndOnlyThere) {
  EXPECT_THAT(shape_error("[{linear: {out: classes}}]", {16}, true),
              HasSubstr("model.layers[0] (linear, t.yaml:1): gets int64 token ids [16]; the data "
                        "gives token ids, so the first layer must be embedding"));
  EXPECT_THAT(shape_error("[flatten, {embedding: {vocab: 10, dim: 4}}]", {1, 4, 4}),
              HasSubstr("model.layers[1] (embedding, t.yaml:1): gets float values [16]; embedding "
                        "needs int64 token ids"));
}

TEST(SequentialShapes, OtherShapeMismatchesSayWhatToDo) {
  EXPECT_THAT(shape_error("[{conv2d: {out: 4, kernel: 3}}]", {784}),
              HasSubstr("gets [784]; needs [C, H, W]. conv2d needs image examples [C, H, W]"));
  EXPECT_THAT(shape_error("[{conv2d: {out: 4, kernel: 3}}]", {4, 100}),
              HasSubstr("Use conv1d for [C, L]"));
  EXPECT_THAT(shape_error("[{conv2d: {out: 4, kernel: 7}}]", {1, 5, 5}),
              HasSubstr("kernel 7 is larger than the padded input (5 + 2 * padding 0)"));
  EXPECT_THAT(shape_error("[{max_pool2d: {kernel: 2, padding: 2}}]", {1, 8, 8}),
              HasSubstr("padding 2 is more than half the kernel 2; use padding <= 1"));
  EXPECT_THAT(shape_error("[{embedding: {vocab: 9, dim: 4}}, batch_norm]", {8}, true),
              HasSubstr("gets [8, 4]; needs [F] (BatchNorm1d) or [C, H, W] (BatchNorm2d). Use "
                        "layer_norm for [T, D]"));
  EXPECT_THAT(shape_error("[flatten, global_avg_pool]", {2, 3, 3}),
              HasSubstr("no spatial dims left to pool; remove it"));
}

TEST(SequentialShapes, InfersEveryLayerType) {
  const auto conv = layers_of(R"(
- conv2d: {out: 6, kernel: 3, stride: 2, padding: 1, bias: false}
- batch_norm: {eps: 1e-3, momentum: 0.01}
- avg_pool2d: {kernel: 3, stride: 1, padding: 1}
- max_pool2d: {kernel: 2}
- residual: [relu, gelu, tanh, sigmoid]
- global_avg_pool
- linear: {out: classes}
)");
  EXPECT_EQ(infer_output_shape(conv, {3, 15, 15}, 7, false, "t.yaml"), Shape{7});
  EXPECT_EQ(infer_output_shape(layers_of("[flatten, layer_norm, {dropout: {p: 0}}]"), {2, 3, 4}, 7,
                               false, "t.yaml"),
            Shape{24});
  const auto seq1d = layers_of(R"(
- conv1d: {out: 5, kernel: 3, stride: 2}
- layer_norm
- linear: {out: 2}
)");
  EXPECT_EQ(infer_output_shape(seq1d, {4, 21}, 7, false, "t.yaml"), (Shape{5, 2}));
  auto model = build_sequential(seq1d, {4, 21}, 7, false, 0, "t.yaml");
  Generator gen(1);
  EXPECT_EQ(model->forward(randn({3, 4, 21}, gen)).shape(), (Shape{3, 5, 2}));
}

TEST(SequentialShapes, HandWrittenSpecsAreCheckedToo) {
  const std::vector<LayerSpec> bad_arg = {{"linear", {{"out", "-3"}}, {}, 4}};
  EXPECT_EQ(value_error([&] { infer_output_shape(bad_arg, {5}, 2, false, "t.yaml"); }),
            "model.layers[0] (linear, t.yaml:4): linear.out: -3 is out of range; allowed: an "
            "integer >= 1 or 'classes'");
  const std::vector<LayerSpec> unknown = {{"lineer", {}, {}, 0}};
  EXPECT_EQ(value_error([&] { infer_output_shape(unknown, {5}, 2, false, ""); }),
            "model.layers[0] (lineer): unknown layer type 'lineer' (did you mean 'linear'?)");
  EXPECT_THAT(value_error([&] { infer_output_shape({}, {5}, 2, false, "t.yaml"); }),
              HasSubstr("model.type sequential needs at least one layer in model.layers"));
}

TEST(SequentialShapes, ClassifierOutputMustBeOneLogitPerClass) {
  check_classifier_output({10}, {1, 28, 28}, 10, false, "t.yaml");
  check_classifier_output({16, 10}, {16}, 10, true, "t.yaml");
  EXPECT_EQ(value_error([] {
              check_classifier_output({64}, {1, 28, 28}, 10, false, "t.yaml");
            }),
            "model.layers (t.yaml): the model's output per example is [64]; the loss needs "
            "logits [10] (one per class). End the list with linear: {out: classes}");
  EXPECT_THAT(value_error([] {
                check_classifier_output({8, 5, 5}, {1, 9, 9}, 10, false, "");
              }),
              HasSubstr("End the list with linear: {out: classes} after flatten"));
  EXPECT_THAT(value_error([] {
                check_classifier_output({16, 32}, {16}, 10, true, "t.yaml");
              }),
              HasSubstr("logits [16, 10] (one per class, per token)"));
}

// ---- a transformer over tokens --------------------------------------------------------------

TEST(SequentialBuild, TinyTransformerRunsOnTokens) {
  const auto layers = layers_of(R"(
- embedding: {vocab: classes, dim: 16}
- positional_embedding: {max_len: 8}
- transformer_block: {heads: 2}
- transformer_block: {heads: 4, mlp_ratio: 2, dropout: 0.1}
- layer_norm
- linear: {out: classes}
)");
  const int64_t vocab = 11, t = 8;
  const Shape out = infer_output_shape(layers, {t}, vocab, true, "t.yaml");
  EXPECT_EQ(out, (Shape{t, vocab}));
  check_classifier_output(out, {t}, vocab, true, "t.yaml");
  auto model = build_sequential(layers, {t}, vocab, true, 3, "t.yaml");
  EXPECT_TRUE(std::dynamic_pointer_cast<nn::TransformerBlock>((*model)[3]));
  Generator gen(9);
  const Tensor tokens = randint(0, vocab, {3, t}, gen);
  const Tensor logits = model->forward(tokens);
  EXPECT_EQ(logits.shape(), (Shape{3, t, vocab}));
  sum(logits).backward();
  EXPECT_TRUE(model->named_parameters().front().second.grad().defined());

  // The same seed gives the same model; another seed another one.
  auto again = build_sequential(layers, {t}, vocab, true, 3, "t.yaml");
  auto other = build_sequential(layers, {t}, vocab, true, 4, "t.yaml");
  EXPECT_TRUE(bit_equal(again->named_parameters()[0].second, model->named_parameters()[0].second));
  EXPECT_FALSE(bit_equal(other->named_parameters()[0].second, model->named_parameters()[0].second));
}

TEST(SequentialReference, ListsEveryLayerType) {
  const auto types = sequential_layer_types();
  EXPECT_EQ(types.size(), 19u);
  const std::string md = sequential_layers_markdown();
  for (const std::string& t : types) EXPECT_THAT(md, HasSubstr("| `" + t + "` |"));
  EXPECT_THAT(md, HasSubstr("`stride` = kernel"));
}

}  // namespace
}  // namespace dtrain::train
