// Model zoo.
#include "dtrain/train/models.h"

#include "dtrain/nn/layers.h"

namespace dtrain::train {
namespace {

nn::ModulePtr activation(const std::string& name) {
  if (name == "relu") return std::make_shared<nn::ReLU>();
  if (name == "gelu") return std::make_shared<nn::GELU>();
  if (name == "tanh") return std::make_shared<nn::Tanh>();
  if (name == "sigmoid") return std::make_shared<nn::Sigmoid>();
  DTRAIN_THROW(ValueError, "model.activation: unknown activation '", name, "'");
}

}  // namespace

std::shared_ptr<nn::Sequential> build_model(const ModelConfig& c, const Shape& example_shape,
                                            int64_t num_classes, uint64_t seed) {
  Generator gen(seed, /*stream=*/0);
  uint64_t dropout_stream = 100;  // streams 100, 101, ...: one per dropout layer
  auto model = std::make_shared<nn::Sequential>();
  const auto add_dropout = [&] {
    if (c.dropout > 0) model->add(std::make_shared<nn::Dropout>(c.dropout, seed, dropout_stream++));
  };
  if (c.type == "mlp") {
    int64_t width = shape_numel(example_shape);
    model->add(std::make_shared<nn::Flatten>());
    for (int64_t h : c.hidden) {
      model->add(std::make_shared<nn::Linear>(width, h, true, gen));
      if (c.batch_norm) model->add(std::make_shared<nn::BatchNorm1d>(h));
      model->add(activation(c.activation));
      add_dropout();
      width = h;
    }
    model->add(std::make_shared<nn::Linear>(width, num_classes, true, gen));
    return model;
  }
  if (c.type == "cnn") {
    DTRAIN_CHECK(example_shape.size() == 3,
                 "model.type cnn needs image examples [C, H, W]; the data "
                 "has examples of shape ",
                 shape_str(example_shape));
    DTRAIN_CHECK(c.channels.size() == 2, "model.channels: cnn needs two values");
    int64_t channels = example_shape[0], h = example_shape[1], w = example_shape[2];
    for (int64_t out : c.channels) {
      model->add(std::make_shared<nn::Conv2d>(channels, out, 5, 1, 2, true, gen));
      if (c.batch_norm) model->add(std::make_shared<nn::BatchNorm2d>(out));
      model->add(activation(c.activation));
      model->add(std::make_shared<nn::MaxPool2d>(2));
      channels = out;
      h /= 2;
      w /= 2;
    }
    DTRAIN_CHECK(h > 0 && w > 0, "model.type cnn: images of shape ", shape_str(example_shape),
                 " are too small for two 2x2 poolings");
    model->add(std::make_shared<nn::Flatten>());
    model->add(std::make_shared<nn::Linear>(channels * h * w, c.fc_units, true, gen));
    model->add(activation(c.activation));
    add_dropout();
    model->add(std::make_shared<nn::Linear>(c.fc_units, num_classes, true, gen));
    return model;
  }
  DTRAIN_THROW(ValueError, "model.type: unknown model '", c.type, "'; expected mlp or cnn");
}

}  // namespace dtrain::train
