// The factories behind a config's data, optimizer and schedule sections.
#include "dtrain/train/factories.h"

#include <algorithm>

#include "dtrain/data/augment.h"
#include "dtrain/data/idx.h"
#include "dtrain/data/range_dataset.h"
#include "dtrain/data/synthetic.h"
#include "dtrain/nn/layers.h"
#include "dtrain/train/models.h"

namespace dtrain::train {

Datasets make_datasets(const DataConfig& d, int64_t seed) {
  const DatasetEntry* entry = find_dataset(d.name);
  DTRAIN_CHECK(entry != nullptr, "data.name: no dataset '", d.name, "' is registered");
  Datasets sets = entry->make(DataContext{d, seed});
  DTRAIN_CHECK(sets.train && sets.test, "data.name: dataset '", d.name, "' returned no ",
               sets.train ? "test" : "training", " split");
  DTRAIN_CHECK(sets.train->size() > 0, "data.name: the training split of '", d.name, "' is empty (",
               sets.train->describe(), ")");
  if (d.crop_padding > 0 || d.horizontal_flip) {
    const Shape shape = sets.train->example_shape();
    DTRAIN_CHECK(shape.size() == 3 && sets.train->example_dtype() == DType::kFloat32,
                 "data.crop_padding, data.horizontal_flip: need image examples [C, H, W]; data '",
                 d.name, "' gives ", shape_str(shape));
    data::AugmentOptions a;
    a.crop_padding = d.crop_padding;
    a.horizontal_flip = d.horizontal_flip;
    a.seed = static_cast<uint64_t>(seed);
    sets.train = std::make_shared<data::AugmentedDataset>(sets.train, a);
  }
  return sets;
}

CheckpointModel model_from_checkpoint(const CheckpointData& ckpt, const Config& c,
                                      const std::string& path) {
  CheckpointModel built;
  try {
    built.sets = make_datasets(c.data, c.train.seed);
  } catch (const Error& e) {
    DTRAIN_THROW(ValueError, "checkpoint '", path,
                 "': its model's example shape comes from its training set (data.name ",
                 c.data.name, "), which cannot be read here: ", e.message(),
                 ". Point to it with an override after the checkpoint, e.g. data.path=DIR");
  }
  built.model = make_model(c.model, *built.sets.train, static_cast<uint64_t>(c.train.seed));
  built.model->load_state_dict(ckpt.model);
  built.model->eval();
  return built;
}

nn::ModulePtr make_model(const ModelConfig& m, const data::Dataset& train_set, uint64_t seed) {
  const ModelEntry* entry = find_model(m.type);
  DTRAIN_CHECK(entry != nullptr, "model.type: no model '", m.type, "' is registered");
  nn::ModulePtr model = entry->make(ModelContext{
      m, train_set.example_shape(), train_set.example_dtype(), train_set.num_classes(), seed});
  DTRAIN_CHECK(model != nullptr, "model.type: the factory of '", m.type, "' returned no model");
  return model;
}

Datasets make_builtin_datasets(const DataConfig& d, int64_t seed) {
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
