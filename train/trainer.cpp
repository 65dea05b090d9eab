// The training loop.
#include "train/trainer.h"

#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "data/idx.h"
#include "data/loader.h"
#include "data/synthetic.h"
#include "tensor/cpu/parallel.h"
#include "train/checkpoint.h"
#include "train/progress.h"
#include "train/summary.h"

namespace dtrain::train {
namespace {

/// A contiguous range of another dataset (the synthetic set's train/test split shares its target).
class RangeDataset final : public data::Dataset {
 public:
  RangeDataset(data::DatasetPtr base, int64_t begin, int64_t count, std::string name)
      : base_(std::move(base)), begin_(begin), count_(count), name_(std::move(name)) {}
  int64_t size() const override { return count_; }
  Shape example_shape() const override { return base_->example_shape(); }
  int64_t num_classes() const override { return base_->num_classes(); }
  void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const override {
    std::vector<int64_t> shifted(indices);
    for (auto& i : shifted) i += begin_;
    base_->fill_batch(shifted, x, y);
  }
  std::string describe() const override { return name_ + " of " + base_->describe(); }

 private:
  data::DatasetPtr base_;
  int64_t begin_, count_;
  std::string name_;
};

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

/// The dropout layers' generators by module path, whose offsets a checkpoint must keep.
void collect_generators(nn::Module& m, const std::string& prefix,
                        std::vector<std::pair<std::string, Generator*>>& out) {
  if (auto* d = dynamic_cast<nn::Dropout*>(&m))
    out.emplace_back("dropout:" + prefix, &d->generator());
  for (const auto& [name, child] : m.named_children()) {
    collect_generators(*child, prefix.empty() ? name : prefix + "." + name, out);
  }
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

double unix_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void warn_stderr(const std::string& what) { std::fprintf(stderr, "warning: %s\n", what.c_str()); }

}  // namespace

std::string TrainResult::final_line() const {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "final: test_accuracy=%.4f test_loss=%.4f steps=%" PRId64
                " samples_per_sec=%.1f wall_s=%.2f",
                test.accuracy, test.loss, steps, samples_per_sec, wall_s);
  return buf;
}

Trainer::Trainer(Config config, std::unique_ptr<Strategy> strategy)
    : config_(std::move(config)), strategy_(std::move(strategy)) {
  DTRAIN_CHECK(strategy_ != nullptr, "Trainer: needs a strategy");
  if (config_.train.threads > 0) cpu::set_num_threads(static_cast<int>(config_.train.threads));
  build();
}

Trainer::~Trainer() = default;

void Trainer::build() {
  const DataConfig& d = config_.data;
  if (d.name == "synthetic") {
    auto all = std::make_shared<data::SyntheticDataset>(
        d.synthetic_train_size + d.synthetic_test_size,
        Shape(d.synthetic_shape.begin(), d.synthetic_shape.end()), d.synthetic_classes,
        static_cast<uint64_t>(config_.train.seed));
    train_set_ = std::make_shared<RangeDataset>(all, 0, d.synthetic_train_size, "train split");
    test_set_ = std::make_shared<RangeDataset>(all, d.synthetic_train_size, d.synthetic_test_size,
                                               "test split");
  } else {
    data::Splits splits = data::load_fashion_mnist(d.path, data::parse_normalize(d.normalize));
    train_set_ = splits.train;
    test_set_ = splits.test;
  }
  model_ = build_model(config_.model, train_set_->example_shape(), train_set_->num_classes(),
                       static_cast<uint64_t>(config_.train.seed));
}

EvalResult Trainer::evaluate() {
  NoGradGuard no_grad;
  model_->eval();
  const int64_t batch = std::max<int64_t>(config_.train.batch_size, 256);
  const int replicas = strategy_->num_replicas_in_sync();
  data::DataLoader loader(test_set_,
                          data::DistributedSampler(test_set_->size(), replicas, strategy_->rank(),
                                                   /*shuffle=*/false, 0, /*drop_last=*/false),
                          batch, /*drop_last=*/false, static_cast<int>(config_.data.prefetch));
  loader.start_epoch(0);
  // Sums over this replica's examples; padding repeats a few examples when the test set does not
  // divide across replicas (PyTorch's sampler does the same).
  std::vector<double> sums = {0, 0, 0};  // loss * n, correct, n
  data::Batch b;
  while (loader.next(b)) {
    Tensor logits = model_->forward(b.x);
    const int64_t n = b.y.size(0);
    sums[0] += cross_entropy(logits, b.y).item<double>() * n;
    const auto pred = argmax(logits, 1).to_vector<int64_t>();
    const auto truth = b.y.to_vector<int64_t>();
    for (int64_t i = 0; i < n; ++i) sums[1] += pred[i] == truth[i];
    sums[2] += n;
  }
  strategy_->sum_across_replicas(sums);
  model_->train();
  return {sums[0] / std::max(1.0, sums[2]), sums[1] / std::max(1.0, sums[2]),
          static_cast<int64_t>(sums[2])};
}

EvalResult Trainer::evaluate_checkpoint(const std::string& path) {
  CheckpointData ckpt = load_checkpoint(path);
  model_->load_state_dict(ckpt.model);
  return evaluate();
}

TrainResult Trainer::run() {
  const auto start = std::chrono::steady_clock::now();
  const TrainSection& t = config_.train;
  const bool primary = strategy_->is_primary();
  const int replicas = strategy_->num_replicas_in_sync();
  strategy_->check_same_config(config_.to_yaml(/*per_process=*/false));
  strategy_->prepare(*model_);

  // The checkpoint comes first: resuming with a different number of replicas changes the
  // per-replica batch (the global batch is kept).
  std::optional<LoadedCheckpoint> resumed;
  if (t.resume == "auto") {
    resumed = load_latest_valid(t.checkpoint_dir, &warn_stderr);
  } else if (t.resume != "never") {
    resumed = LoadedCheckpoint{t.resume, load_checkpoint(t.resume)};
  }
  int64_t batch = t.batch_size;
  int lr_replicas = replicas;
  if (resumed && resumed->data.world_size != replicas) {
    const int old_world = resumed->data.world_size;
    const auto saved = resumed->data.metrics.find("global_batch");
    const int64_t global = saved != resumed->data.metrics.end()
                               ? static_cast<int64_t>(saved->second)
                               : batch * old_world;
    DTRAIN_CHECK(global % replicas == 0, "resume: ", resumed->path, " was written by ", old_world,
                 " replicas with a global batch of ", global, ", which does not divide across ",
                 replicas, " replicas; resume with a number of replicas that divides it");
    batch = global / replicas;
    lr_replicas = old_world;  // the learning rate stays that of the original run
    if (primary) {
      std::printf("resuming a run of %d replicas on %d: global batch %" PRId64 " kept (%" PRId64
                  " per replica), learning rate kept\n",
                  old_world, replicas, global, batch);
    }
  }

  data::DataLoader loader(
      train_set_,
      data::DistributedSampler(train_set_->size(), replicas, strategy_->rank(), /*shuffle=*/true,
                               static_cast<uint64_t>(t.seed), t.drop_last),
      batch, t.drop_last, static_cast<int>(config_.data.prefetch));
  const int64_t batches_per_epoch = loader.batches_per_epoch();
  const int64_t steps_per_epoch = batches_per_epoch / t.grad_accum_steps;
  DTRAIN_CHECK(steps_per_epoch > 0, "train: an epoch of ", batches_per_epoch,
               " batches is shorter than train.grad_accum_steps (", t.grad_accum_steps,
               "); lower train.batch_size or train.grad_accum_steps");
  const int64_t total_steps = t.max_steps > 0 ? t.max_steps : t.epochs * steps_per_epoch;
  const int64_t epochs = (total_steps + steps_per_epoch - 1) / steps_per_epoch;

  const double lr =
      config_.optimizer.lr * (config_.schedule.scale_lr_with_replicas ? lr_replicas : 1);
  optimizer_ = make_optimizer(config_.optimizer, model_->parameters(), lr);
  schedule_ = make_schedule(config_.schedule, *optimizer_, total_steps);
  std::vector<std::pair<std::string, Generator*>> generators;
  collect_generators(*model_, "", generators);

  // Resume: model, optimiser, schedule, sampler position and dropout streams. The sampler
  // position is in global batches, so it maps unchanged onto another number of replicas.
  int64_t step = 0, start_epoch = 0, skip_batches = 0;
  if (resumed) {
    const CheckpointData& c = resumed->data;
    model_->load_state_dict(c.model);
    optimizer_->load_state_dict({c.optimizer_tensors, c.optimizer_scalars});
    schedule_->load_state_dict(c.schedule_step);
    for (auto& [name, gen] : generators) {
      if (auto it = c.rng_offsets.find(name); it != c.rng_offsets.end())
        gen->set_offset(it->second);
    }
    step = c.step;
    start_epoch = c.epoch;
    skip_batches = c.batch_in_epoch;
    if (primary) {
      std::printf("resuming from %s: step %" PRId64 ", epoch %" PRId64 ", batch %" PRId64 "\n",
                  resumed->path.c_str(), step, start_epoch + 1, skip_batches);
    }
  }

  // Summaries (primary only).
  std::unique_ptr<JsonlWriter> jsonl;
  std::unique_ptr<TensorBoardWriter> tensorboard;
  std::unique_ptr<Progress> progress;
  if (primary) {
    std::error_code ec;
    std::filesystem::create_directories(t.checkpoint_dir, ec);
    DTRAIN_CHECK(!ec, "train.checkpoint_dir: cannot create '", t.checkpoint_dir,
                 "': ", ec.message());
    jsonl = std::make_unique<JsonlWriter>(config_.log.dir + "/metrics.jsonl",
                                          /*append=*/resumed.has_value());
    if (config_.log.tensorboard) tensorboard = std::make_unique<TensorBoardWriter>(config_.log.dir);
    progress = std::make_unique<Progress>(Progress::parse_mode(config_.log.progress, stdout),
                                          total_steps, config_.log.every_steps);
  }
  const auto scalar = [&](const char* tag, double v) {
    if (tensorboard) tensorboard->add_scalar(tag, v, step, unix_time());
  };

  TrainResult result;
  const auto save = [&](int64_t epoch, int64_t batch_in_epoch) {
    if (!primary) return;
    CheckpointData c;
    c.step = step;
    // A finished epoch resumes at the start of the next one.
    if (batch_in_epoch >= steps_per_epoch * t.grad_accum_steps) {
      ++epoch;
      batch_in_epoch = 0;
    }
    c.epoch = epoch;
    c.batch_in_epoch = batch_in_epoch;
    c.world_size = replicas;
    c.metrics["global_batch"] = static_cast<double>(batch * replicas);
    c.config_yaml = config_.to_yaml();
    c.model = model_->state_dict();
    const nn::OptimizerState os = optimizer_->state_dict();
    c.optimizer_tensors = os.tensors;
    c.optimizer_scalars = os.scalars;
    c.schedule_step = schedule_->state_dict();
    for (auto& [name, gen] : generators) c.rng_offsets[name] = gen->offset();
    const std::string path = checkpoint_path(t.checkpoint_dir, step);
    save_checkpoint(path, c);
    prune_checkpoints(t.checkpoint_dir, static_cast<int>(t.keep_checkpoints));
    result.last_checkpoint = path;
  };

  const double accum_scale = 1.0 / static_cast<double>(t.grad_accum_steps);
  const int64_t stop_step =
      t.stop_at_step > 0 ? std::min(t.stop_at_step, total_steps) : total_steps;
  int64_t samples = 0;
  double train_seconds = 0, window_loss = 0;
  int64_t window_steps = 0;
  auto window_start = std::chrono::steady_clock::now();
  bool finished = step >= stop_step;
  optimizer_->zero_grad();
  for (int64_t epoch = start_epoch; epoch < epochs && !finished; ++epoch) {
    loader.start_epoch(epoch, epoch == start_epoch ? skip_batches : 0);
    int64_t batch_in_epoch = epoch == start_epoch ? skip_batches : 0;
    int accumulated = 0;
    double step_loss = 0;
    data::Batch b;
    const auto epoch_start = std::chrono::steady_clock::now();
    // An epoch ends after its last full accumulation: leftover batches would draw dropout masks
    // and move batch-norm statistics for a step that never happens (and a resumed run skips them).
    const int64_t batches_used = steps_per_epoch * t.grad_accum_steps;
    while (!finished && batch_in_epoch < batches_used && loader.next(b)) {
      Tensor loss = cross_entropy(strategy_->forward(*model_, b.x), b.y, t.label_smoothing);
      (t.grad_accum_steps > 1 ? loss * accum_scale : loss).backward();
      step_loss += loss.item<double>() * accum_scale;
      samples += b.y.size(0) * replicas;
      ++batch_in_epoch;
      if (++accumulated < t.grad_accum_steps) continue;
      accumulated = 0;
      strategy_->synchronize_gradients(*model_);
      optimizer_->step();
      schedule_->step();
      optimizer_->zero_grad();
      ++step;
      const int64_t check_every = config_.strategy.check_parameters_every_steps;
      if (check_every > 0 && step % check_every == 0)
        strategy_->check_parameters_in_sync(*model_, step);
      window_loss += step_loss;
      ++window_steps;
      step_loss = 0;
      if (!std::isfinite(window_loss)) {
        DTRAIN_THROW(ValueError, "train: the loss became ", window_loss, " at step ", step,
                     "; lower optimizer.lr or check the data");
      }
      if (primary) {
        const double window_s = seconds_since(window_start);
        const double rate =
            window_steps * batch * t.grad_accum_steps * replicas / std::max(window_s, 1e-9);
        progress->update(step, epoch, epochs, window_loss / window_steps, rate);
        if (step % config_.log.every_steps == 0 || step == stop_step) {
          const double lr_now = optimizer_->lr();
          jsonl->write({{"step", double(step)},
                        {"epoch", double(epoch)},
                        {"loss", window_loss / window_steps},
                        {"lr", lr_now},
                        {"samples_per_sec", rate},
                        {"wall_time", unix_time()}});
          scalar("train/loss", window_loss / window_steps);
          scalar("train/lr", lr_now);
          scalar("train/samples_per_sec", rate);
          window_loss = 0;
          window_steps = 0;
          window_start = std::chrono::steady_clock::now();
        }
      }
      if (step >= stop_step) finished = true;
      if (finished || (t.checkpoint_every_steps > 0 && step % t.checkpoint_every_steps == 0)) {
        save(epoch, batch_in_epoch);
      }
    }
    train_seconds += seconds_since(epoch_start);
    const bool epoch_done = batch_in_epoch >= batches_used;
    if (epoch_done) {
      const EvalResult ev = evaluate();
      result.test = ev;
      if (primary) {
        char line[160];
        std::snprintf(line, sizeof line,
                      "epoch %" PRId64 "/%" PRId64 ": test_loss=%.4f test_accuracy=%.4f", epoch + 1,
                      epochs, ev.loss, ev.accuracy);
        progress->message(line);
        jsonl->write({{"step", double(step)},
                      {"epoch", double(epoch)},
                      {"test_loss", ev.loss},
                      {"test_accuracy", ev.accuracy},
                      {"wall_time", unix_time()}});
        scalar("test/loss", ev.loss);
        scalar("test/accuracy", ev.accuracy);
      }
      window_start = std::chrono::steady_clock::now();  // throughput excludes evaluation
    }
  }
  if (progress) progress->finish();
  if (result.test.examples == 0) result.test = evaluate();  // stopped mid-epoch or nothing to do
  if (tensorboard) tensorboard->flush();
  result.steps = step;
  result.primary = primary;
  result.stopped_early = step < total_steps;
  result.samples_per_sec = train_seconds > 0 ? samples / train_seconds : 0;
  result.wall_s = seconds_since(start);
  return result;
}

}  // namespace dtrain::train
