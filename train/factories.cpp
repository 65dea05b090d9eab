// The factories behind a config's data, optimizer and schedule sections.
#include "train/factories.h"

#include <algorithm>

#include "data/idx.h"
#include "data/range_dataset.h"
#include "data/synthetic.h"
#include "nn/layers.h"

namespace dtrain::train {

Datasets make_datasets(const DataConfig& d, int64_t seed) {
  if (d.name == "synthetic") {
    // One set split in two, so that train and test share the target function.
    auto all = std::make_shared<data::SyntheticDataset>(
        d.synthetic_train_size + d.synthetic_test_size,
        Shape(d.synthetic_shape.begin(), d.synthetic_shape.end()), d.synthetic_classes,
        static_cast<uint64_t>(seed));
    return {std::make_shared<data::RangeDataset>(all, 0, d.synthetic_train_size, "train split"),
            std::make_shared<data::RangeDataset>(all, d.synthetic_train_size, d.synthetic_test_size,
                                                 "test split")};
  }
  data::Splits splits = data::load_fashion_mnist(d.path, data::parse_normalize(d.normalize));
  return {splits.train, splits.test};
}

std::unique_ptr<nn::Optimizer> make_optimizer(const OptimizerConfig& o, std::vector<Tensor> params,
                                              double lr) {
  if (o.type == "sgd") {
    return std::make_unique<nn::SGD>(
        std::move(params), nn::SgdOptions{lr, o.momentum, o.dampening, o.weight_decay, o.nesterov});
  }
  if (o.type == "adam" || o.type == "adamw") {
    const nn::AdamOptions a{lr, o.beta1, o.beta2, o.eps, o.weight_decay};
    if (o.type == "adam") return std::make_unique<nn::Adam>(std::move(params), a);
    return std::make_unique<nn::AdamW>(std::move(params), a);
  }
  if (o.type == "rmsprop") {
    return std::make_unique<nn::RMSprop>(
        std::move(params), nn::RmspropOptions{lr, o.alpha, o.eps, o.weight_decay, o.momentum});
  }
  DTRAIN_THROW(ValueError, "optimizer.type: unknown optimiser '", o.type, "'");
}

std::unique_ptr<nn::LRScheduler> make_schedule(const ScheduleConfig& s, nn::Optimizer& opt,
                                               int64_t total_steps) {
  const int64_t after_warmup = std::max<int64_t>(1, total_steps - s.warmup_steps);
  std::unique_ptr<nn::LRScheduler> base;
  if (s.type == "constant")
    base = std::make_unique<nn::ConstantLR>(opt);
  else if (s.type == "step")
    base = std::make_unique<nn::StepLR>(opt, s.step_size, s.gamma);
  else if (s.type == "multistep")
    base = std::make_unique<nn::MultiStepLR>(opt, s.milestones, s.gamma);
  else
    base = std::make_unique<nn::CosineLR>(opt, after_warmup, s.eta_min);
  if (s.warmup_steps == 0) return base;
  return std::make_unique<nn::LinearWarmup>(opt, s.warmup_steps, std::move(base),
                                            s.warmup_start_factor);
}

namespace {

void collect_generators(nn::Module& m, const std::string& prefix,
                        std::vector<std::pair<std::string, Generator*>>& out) {
  if (auto* d = dynamic_cast<nn::Dropout*>(&m))
    out.emplace_back("dropout:" + prefix, &d->generator());
  for (const auto& [name, child] : m.named_children()) {
    collect_generators(*child, prefix.empty() ? name : prefix + "." + name, out);
  }
}

}  // namespace

std::vector<std::pair<std::string, Generator*>> model_generators(nn::Module& model) {
  std::vector<std::pair<std::string, Generator*>> out;
  collect_generators(model, "", out);
  return out;
}

}  // namespace dtrain::train
