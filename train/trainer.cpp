// The training loop.
#include "dtrain/train/trainer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include "dtrain/autograd/grad_mode.h"
#include "dtrain/nn/clip_grad.h"
#include "dtrain/tensor/cpu/parallel.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/precision.h"
#include "dtrain/tensor/printable.h"
#include "dtrain/train/device_prefetch.h"
#include "dtrain/train/factories.h"
#include "dtrain/train/metrics_sink.h"
#include "dtrain/train/safetensors.h"
#include "dtrain/train/stop_signal.h"

namespace dtrain::train {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

void warn_stderr(const std::string& what) { std::fprintf(stderr, "warning: %s\n", what.c_str()); }

/// `tensors` with every device tensor copied to the host (host tensors are shared, not copied).
template <class Named>
Named host_copies(Named tensors) {
  for (auto& [name, t] : tensors) {
    if (!t.device().is_cpu()) t = to_device(t, Device::cpu());
  }
  return tensors;
}

// A stop vote is a sum over replicas: any SIGTERM (or another signal, reported as SIGTERM)
// outweighs every SIGUSR1, so all replicas report the same signal.
constexpr double kVoteOtherSignal = 1000;

double stop_vote_value(int signo) {
  if (signo == 0) return 0;
  return signo == SIGUSR1 ? 1 : kVoteOtherSignal;
}

/// A count stored as a double in a checkpoint: finite, positive, whole and exact in a double, so
/// that casting it to an integer is defined.
bool whole_count(double v) {
  return std::isfinite(v) && v >= 1 && v <= 9007199254740992.0 && v == std::floor(v);
}

/// "SIGTERM", "SIGUSR1", or "signal N".
std::string signal_name(int signo) {
  if (signo == SIGTERM) return "SIGTERM";
  if (signo == SIGUSR1) return "SIGUSR1";
  return "signal " + std::to_string(signo);
}

}  // namespace

std::string TrainResult::final_line() const {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "final: test_accuracy=%.4f test_loss=%.4f steps=%" PRId64
                " samples_per_sec=%.1f wall_s=%.2f gflops=%.2f",
                test.accuracy, test.loss, steps, samples_per_sec, wall_s, gflops);
  return buf;
}

Tensor classification_loss(const Tensor& output, const Tensor& target, double label_smoothing) {
  if (output.dim() == target.dim() + 1 && output.dim() > 2) {
    // Sequence models: every position is one classification.
    const int64_t classes = output.size(output.dim() - 1);
    return cross_entropy(reshape(output, {-1, classes}), reshape(target, {-1}), label_smoothing);
  }
  return cross_entropy(output, target, label_smoothing);
}

namespace {

/// DTRAIN_TEST_SLOW_REPLICA=<replica>:<milliseconds>: that replica's loader takes this much longer
/// per batch. For tests of the straggler table, which must name a replica slowed on purpose.
std::chrono::milliseconds slow_replica_delay(int replica) {
  const char* spec = std::getenv("DTRAIN_TEST_SLOW_REPLICA");
  if (spec == nullptr) return {};
  int which = -1;
  long ms = 0;
  if (std::sscanf(spec, "%d:%ld", &which, &ms) != 2 || which != replica || ms < 0) return {};
  return std::chrono::milliseconds(std::min(ms, 10'000L));
}

}  // namespace

Trainer::Trainer(Config config, std::unique_ptr<Strategy> strategy, TrainerParts parts)
    : config_(std::move(config)), strategy_(std::move(strategy)) {
  DTRAIN_CHECK(strategy_ != nullptr, "Trainer: needs a strategy");
  config_.resolve_run_dirs();
  if (config_.train.threads > 0) cpu::set_num_threads(static_cast<int>(config_.train.threads));
  build(std::move(parts));
  slow_batches_ = slow_replica_delay(strategy_->rank());
  const char* defer = std::getenv("DTRAIN_TEST_DEFER_LOSS");
  defer_loss_ = device_.is_cuda() || (defer != nullptr && std::string(defer) == "1");
}

double Trainer::read_device_loss() {
  if (!device_loss_sum_.defined()) return 0;
  const double sum = device_loss_sum_.item<double>();
  device_loss_sum_ = Tensor();
  return sum;
}

Trainer::~Trainer() = default;

void Trainer::build(TrainerParts parts) {
  DTRAIN_CHECK((parts.train_set == nullptr) == (parts.test_set == nullptr),
               "Trainer: give both a training and a test set, or neither (data.name then "
               "chooses both)");
  if (parts.train_set) {
    train_set_ = std::move(parts.train_set);
    test_set_ = std::move(parts.test_set);
  } else {
    Datasets sets = make_datasets(config_.data, config_.train.seed);
    train_set_ = std::move(sets.train);
    test_set_ = std::move(sets.test);
  }
  const auto seed = static_cast<uint64_t>(config_.train.seed);
  if (parts.model) {
    model_ =
        parts.model(ModelContext{config_.model, train_set_->example_shape(),
                                 train_set_->example_dtype(), train_set_->num_classes(), seed});
    DTRAIN_CHECK(model_ != nullptr, "Trainer: the model factory returned no model");
  } else {
    model_ = make_model(config_.model, *train_set_, seed);
  }
  // Built on the host from the seed, then moved: every device starts from the same parameters.
  device_ = parts.device.value_or(Device::cpu());
  precision_ = config_.train.precision == "bf16"   ? DType::kBFloat16
               : config_.train.precision == "fp16" ? DType::kFloat16
                                                   : DType::kFloat32;
  if (precision_ == DType::kFloat16) scaler_.emplace(config_.train.loss_scale);
  if (!device_.is_cpu()) model_->to(device_);
  if (parts.loss) {
    loss_ = std::move(parts.loss);
  } else {
    const double smoothing = config_.train.label_smoothing;
    loss_ = [smoothing](const Tensor& output, const Tensor& target) {
      return classification_loss(output, target, smoothing);
    };
  }
  generators_ = model_generators(*model_);
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
  // divide across replicas (PyTorch's sampler does the same). Accuracy counts every labelled
  // position (one per example, or one per token of a sequence).
  std::vector<double> sums = {0, 0, 0, 0};  // loss * n, correct, labelled positions, n
  data::Batch b;
  while (loader.next(b)) {
    on_device(b);
    Tensor output = model_->forward(b.x);
    const int64_t n = b.y.size(0);
    sums[0] += loss_(output, b.y).item<double>() * n;
    const bool classifies = b.y.dtype() == DType::kInt64 && output.dim() == b.y.dim() + 1;
    if (classifies) {
      const auto pred = argmax(output, output.dim() - 1).to_vector<int64_t>();
      const auto truth = b.y.to_vector<int64_t>();
      for (size_t i = 0; i < truth.size(); ++i) sums[1] += pred[i] == truth[i];
      sums[2] += static_cast<double>(truth.size());
    }
    sums[3] += n;
  }
  strategy_->sum_across_replicas(sums);
  model_->train();
  return {sums[0] / std::max(1.0, sums[3]), sums[1] / std::max(1.0, sums[2]),
          static_cast<int64_t>(sums[3])};
}

EvalResult Trainer::evaluate_checkpoint(const std::string& path) {
  CheckpointData ckpt = load_checkpoint(path);
  model_->load_state_dict(ckpt.model);
  return evaluate();
}

std::vector<std::string> Trainer::settings_changed_since(const std::string& config_yaml,
                                                         const std::string& path) const {
  std::map<std::string, std::string> before;
  try {
    for (auto& [key, value] : parse_config(config_yaml, path).entries(false)) before[key] = value;
  } catch (const Error& e) {
    warn_stderr(path + ": its config cannot be compared with this one (" + printable(e.message()) +
                ")");
    return {};
  }
  std::vector<std::string> changed;
  for (const auto& [key, value] : config_.entries(false)) {
    const std::string section = key.substr(0, key.find('.'));
    if ((section != "model" && section != "data" && section != "optimizer") ||
        key == "data.prefetch" || key == "model.sync_batch_norm") {
      continue;
    }
    const auto it = before.find(key);
    const std::string old = it == before.end() ? "(not set)" : it->second;
    // Values from the checkpoint's file are escaped before they reach a terminal.
    if (old != value) changed.push_back(key + ": " + printable(old) + " -> " + value);
  }
  return changed;
}

std::string Trainer::why_unfit(const CheckpointData& c) const {
  if (auto g = c.metrics.find("global_batch"); g != c.metrics.end() && !whole_count(g->second)) {
    return "its metric global_batch is " + std::to_string(g->second) +
           ", not a positive whole number";
  }
  std::map<std::string, Shape> expected;
  for (const auto& [name, t] : model_->named_parameters()) expected[name] = t.shape();
  for (const auto& [name, t] : model_->named_buffers()) expected[name] = t.shape();
  for (const auto& [name, t] : c.model) {
    const auto it = expected.find(name);
    if (it == expected.end()) return "it holds '" + name + "', which this model does not have";
    if (it->second != t.shape()) {
      return "its '" + name + "' has shape " + shape_str(t.shape()) + " but this model's is " +
             shape_str(it->second);
    }
    expected.erase(it);
  }
  if (!expected.empty()) return "it lacks this model's '" + expected.begin()->first + "'";
  const std::vector<Tensor> params = model_->parameters();
  // "<parameter index>.<name>", or nullopt.
  const auto index_of = [&](const std::string& key) -> std::optional<size_t> {
    size_t i = 0;
    const size_t dot = key.find('.');
    if (dot == std::string::npos) return std::nullopt;
    const auto [end, ec] = std::from_chars(key.data(), key.data() + dot, i);
    if (ec != std::errc() || end != key.data() + dot || i >= params.size()) return std::nullopt;
    return i;
  };
  for (const auto& [key, t] : c.optimizer_tensors) {
    const std::optional<size_t> i = index_of(key);
    if (!i) return "its optimizer state key '" + key + "' names no parameter of this model";
    if (t.shape() != params[*i].shape()) {
      return "its optimizer state '" + key + "' has shape " + shape_str(t.shape()) +
             " but parameter " + std::to_string(*i) + " is " + shape_str(params[*i].shape());
    }
  }
  for (const auto& [key, v] : c.optimizer_scalars) {
    if (key.find('.') != std::string::npos && !index_of(key)) {
      return "its optimizer state key '" + key + "' names no parameter of this model";
    }
  }
  return "";
}

std::optional<LoadedCheckpoint> Trainer::find_checkpoint_to_resume() const {
  const TrainSection& t = config_.train;
  if (t.resume == "never") return std::nullopt;
  std::optional<LoadedCheckpoint> found =
      t.resume == "auto"
          ? load_latest_valid(
                t.checkpoint_dir, &warn_stderr,
                [this, &t](const CheckpointData& c) -> std::string {
                  // One of another run is refused below, not skipped.
                  if (!settings_changed_since(c.config_yaml, t.checkpoint_dir).empty()) {
                    return "";
                  }
                  return why_unfit(c);
                })
          : LoadedCheckpoint{t.resume, load_checkpoint(t.resume)};
  if (!found) return found;
  const std::vector<std::string> changed =
      settings_changed_since(found->data.config_yaml, found->path);
  if (changed.empty()) return found;
  std::string list;
  for (const std::string& c : changed) list += "\n  " + c;
  if (t.resume != "auto") {  // a checkpoint named on purpose: fine-tuning with new settings
    if (strategy_->is_primary())
      warn_stderr("resuming " + found->path + " with other settings:" + list);
    return found;
  }
  ConfigError err(
      "train.resume: auto found " + found->path +
          ", written by a run with other model, data or optimizer settings:" + list +
          "\nRun with the settings it was written with, give this run its own "
          "train.checkpoint_dir, start afresh (train.resume=never), or continue from it "
          "on purpose (train.resume=" +
          found->path + ")",
      __FILE__, __LINE__);
  err.problems = changed;
  throw err;
}

Trainer::Plan Trainer::plan(const std::optional<LoadedCheckpoint>& resumed,
                            int64_t batches_per_epoch) const {
  const TrainSection& t = config_.train;
  Plan p;
  p.replicas = strategy_->num_replicas_in_sync();
  p.lr_replicas = p.replicas;
  p.batch = t.batch_size;
  // Resuming with a different number of replicas changes the per-replica batch: the global
  // batch is kept, and so is the learning rate of the original run.
  if (resumed && resumed->data.world_size != p.replicas) {
    const int old_world = resumed->data.world_size;
    const auto saved = resumed->data.metrics.find("global_batch");
    if (saved != resumed->data.metrics.end()) {
      // Cast only a value that fits: a damaged checkpoint must give an error, not UB.
      DTRAIN_CHECK(whole_count(saved->second), "resume: ", resumed->path,
                   ": its metric global_batch is ", saved->second,
                   ", not a positive whole number; the checkpoint is damaged: resume from an "
                   "older one or start afresh (train.resume=never)");
    }
    const int64_t global = saved != resumed->data.metrics.end()
                               ? static_cast<int64_t>(saved->second)
                               : p.batch * old_world;
    DTRAIN_CHECK(global % p.replicas == 0, "resume: ", resumed->path, " was written by ", old_world,
                 " replicas with a global batch of ", global, ", which does not divide across ",
                 p.replicas, " replicas; resume with a number of replicas that divides it");
    p.batch = global / p.replicas;
    p.lr_replicas = old_world;
  }
  if (batches_per_epoch < 0) return p;  // the loader, which needs the batch, comes next
  p.steps_per_epoch = batches_per_epoch / t.grad_accum_steps;
  DTRAIN_CHECK(p.steps_per_epoch > 0, "train: an epoch of ", batches_per_epoch,
               " batches is shorter than train.grad_accum_steps (", t.grad_accum_steps,
               "); lower train.batch_size or train.grad_accum_steps");
  // An epoch ends after its last full accumulation: leftover batches would draw dropout masks
  // and move batch-norm statistics for a step that never happens (and a resumed run skips them).
  p.batches_per_epoch_used = p.steps_per_epoch * t.grad_accum_steps;
  p.total_steps = t.max_steps > 0 ? t.max_steps : t.epochs * p.steps_per_epoch;
  p.stop_step = t.stop_at_step > 0 ? std::min(t.stop_at_step, p.total_steps) : p.total_steps;
  p.epochs = (p.total_steps + p.steps_per_epoch - 1) / p.steps_per_epoch;
  return p;
}

Trainer::Position Trainer::restore(const Plan& plan,
                                   const std::optional<LoadedCheckpoint>& resumed) {
  const double lr =
      config_.optimizer.lr * (config_.schedule.scale_lr_with_replicas ? plan.lr_replicas : 1);
  optimizer_ = make_optimizer(config_.optimizer, model_->parameters(), lr);
  if (!config_.optimizer.no_decay.empty()) {
    const nn::WeightDecayMask mask = nn::weight_decay_mask(*model_, config_.optimizer.no_decay);
    if (!mask.unmatched.empty()) {
      std::string names;
      for (const auto& [name, p] : model_->named_parameters())
        names += (names.empty() ? "" : ", ") + name;
      throw ConfigError("optimizer.no_decay: '" + mask.unmatched.front() +
                            "' matches no parameter of the model; use bias, norm, embedding or "
                            "part of one of its parameter names: " +
                            names,
                        __FILE__, __LINE__);
    }
    optimizer_->set_weight_decay_mask(mask.decays);
  }
  schedule_ = make_schedule(config_.schedule, *optimizer_, plan.total_steps);
  Position at;
  if (!resumed) {
    const std::string& weights = config_.train.init_from;
    if (!weights.empty()) {
      try {
        load_weights(*model_, read_safetensors(weights).tensors, weights);
      } catch (const Error& e) {
        DTRAIN_THROW(ValueError, "train.init_from: ", e.message());
      }
      if (strategy_->is_primary()) {
        std::printf("initialised the model's %zu parameters and buffers from %s\n",
                    model_->state_dict().size(), printable(weights).c_str());
      }
    }
    return at;
  }
  // The sampler position is in global batches, so it maps unchanged onto another number of
  // replicas.
  const CheckpointData& c = resumed->data;
  try {
    model_->load_state_dict(c.model);
    strategy_->load_optimizer_state(*optimizer_, {c.optimizer_tensors, c.optimizer_scalars});
  } catch (const Error& e) {
    DTRAIN_THROW(ValueError, "resume: ", resumed->path, ": ", e.message());
  }
  schedule_->load_state_dict(c.schedule_step);
  for (auto& [name, gen] : generators_) {
    if (auto it = c.rng_offsets.find(name); it != c.rng_offsets.end()) gen->set_offset(it->second);
  }
  if (auto scale = c.metrics.find("loss_scale"); scaler_ && scale != c.metrics.end()) {
    auto count = [&](const char* key) -> int64_t {
      const auto it = c.metrics.find(key);
      if (it == c.metrics.end()) return 0;
      DTRAIN_CHECK(whole_count(it->second + 1), "resume: ", resumed->path, ": its metric ", key,
                   " is ", it->second, ", not a whole count; the checkpoint is damaged");
      return static_cast<int64_t>(it->second);
    };
    scaler_->restore(scale->second, count("loss_scale_good_steps"),
                     count("loss_scale_skipped_steps"));
  }
  if (auto best = c.metrics.find("early_stop_best"); best != c.metrics.end()) {
    early_stop_.best = best->second;
    early_stop_.bad_evals = static_cast<int64_t>(c.metrics.at("early_stop_bad_evals"));
  }
  at = {c.step, c.epoch, c.batch_in_epoch};
  if (strategy_->is_primary()) {
    std::printf("resuming from %s: step %" PRId64 ", epoch %" PRId64 ", batch %" PRId64 "\n",
                resumed->path.c_str(), at.step, at.epoch + 1, at.batch_in_epoch);
  }
  return at;
}

std::string Trainer::save(const Plan& plan, Position at, Checkpoint kind,
                          const nn::OptimizerState& optimizer_state) {
  const TrainSection& t = config_.train;
  const std::string path = checkpoint_path(t.checkpoint_dir, at.step);
  const int keep = static_cast<int>(std::min<int64_t>(t.keep_checkpoints, INT32_MAX));
  try {
    // Pruning first leaves room for the new file on a nearly full disk; it keeps at least the
    // newest valid checkpoint, so a failed save below still leaves one to resume from.
    prune_checkpoints(t.checkpoint_dir, std::max(keep - 1, 1), at.step - 1);
    const auto begin = Timeline::Clock::now();
    save_checkpoint(path, snapshot(plan, at, optimizer_state));
    timeline_.add(Phase::kCheckpoint, begin, Timeline::Clock::now());
    if (keep == 1) prune_checkpoints(t.checkpoint_dir, keep, at.step);
  } catch (const Error& e) {
    if (kind == Checkpoint::kFinal) throw;
    // A periodic checkpoint is an insurance; losing one must not end hours of training (under a
    // launcher that would become a restart loop on a full disk).
    warn_stderr("step " + std::to_string(at.step) +
                ": checkpoint not written, training goes on: " + e.message());
    return "";
  }
  return path;
}

CheckpointData Trainer::snapshot(const Plan& plan, Position at,
                                 const nn::OptimizerState& optimizer_state) const {
  CheckpointData c;
  c.step = at.step;
  // A finished epoch resumes at the start of the next one.
  if (at.batch_in_epoch >= plan.batches_per_epoch_used) {
    ++at.epoch;
    at.batch_in_epoch = 0;
  }
  c.epoch = at.epoch;
  c.batch_in_epoch = at.batch_in_epoch;
  c.world_size = plan.replicas;
  c.metrics["global_batch"] = static_cast<double>(plan.batch * plan.replicas);
  c.config_yaml = config_.to_yaml();
  // Host copies: a checkpoint written on a GPU resumes on the CPU and the other way round.
  c.model = host_copies(model_->state_dict());
  c.optimizer_tensors = host_copies(optimizer_state.tensors);
  c.optimizer_scalars = optimizer_state.scalars;
  c.schedule_step = schedule_->state_dict();
  for (auto& [name, gen] : generators_) c.rng_offsets[name] = gen->offset();
  if (scaler_) {
    c.metrics["loss_scale"] = scaler_->scale();
    c.metrics["loss_scale_good_steps"] = static_cast<double>(scaler_->good_steps());
    c.metrics["loss_scale_skipped_steps"] = static_cast<double>(scaler_->skipped_steps());
  }
  if (config_.train.early_stop_patience > 0) {
    c.metrics["early_stop_best"] = early_stop_.best;
    c.metrics["early_stop_bad_evals"] = static_cast<double>(early_stop_.bad_evals);
  }
  return c;
}

bool Trainer::early_stop_after(const Plan& plan, Position at, const EvalResult& eval) {
  const TrainSection& t = config_.train;
  if (t.early_stop_patience <= 0) return false;
  const double score = t.early_stop_metric == "loss" ? -eval.loss : eval.accuracy;
  if (score > early_stop_.best) {
    early_stop_.best = score;
    early_stop_.bad_evals = 0;
    const nn::OptimizerState optimizer_state = strategy_->optimizer_state(*optimizer_);
    if (strategy_->is_primary()) {
      try {
        save_checkpoint(t.checkpoint_dir + "/best.dtck", snapshot(plan, at, optimizer_state));
      } catch (const Error& e) {
        warn_stderr("best model not written, training goes on: " + e.message());
      }
    }
    return false;
  }
  return ++early_stop_.bad_evals >= t.early_stop_patience;
}

double Trainer::train_micro_batch(const data::Batch& b, bool last_of_step) {
  const TrainSection& t = config_.train;
  // Micro-batches before the last of a step accumulate locally; the last one's backward
  // reduces the sum, once (reducing each would race the buckets' in-flight all-reduces).
  strategy_->set_gradient_sync(last_of_step);
  const double accum_scale = 1.0 / static_cast<double>(t.grad_accum_steps);
  const auto begin = Timeline::Clock::now();
  MatmulPrecisionGuard precision(precision_);
  Tensor loss = loss_(strategy_->forward(*model_, b.x), b.y);
  const auto forward_end = Timeline::Clock::now();
  timeline_.add(Phase::kForward, begin, forward_end);
  // fp16: the loss scale keeps small gradients inside float16's range; the step divides it out.
  const double backward_scale = accum_scale * (scaler_ ? scaler_->scale() : 1.0);
  (backward_scale != 1.0 ? loss * backward_scale : loss).backward();
  double value = 0;
  if (defer_loss_) {
    Tensor scaled = loss.detach() * accum_scale;
    device_loss_sum_ = device_loss_sum_.defined() ? device_loss_sum_ + scaled : scaled;
  } else {
    value = loss.item<double>() * accum_scale;
  }
  timeline_.add(Phase::kBackward, forward_end, Timeline::Clock::now());
  return value;
}

Trainer::StepResult Trainer::optimizer_step(int64_t step) {
  strategy_->synchronize_gradients(*model_);
  if (const DdpStepTiming* comm = strategy_->last_step_communication())
    timeline_.add_communication(*comm);
  const auto begin = Timeline::Clock::now();
  // The reduced gradients are the same on every replica, so all of them skip the same steps.
  auto skip = [&](StepResult why) {
    optimizer_->zero_grad(!strategy_->gradients_stay_in_place());
    schedule_->step();  // the schedule keeps to the plan's steps
    return why;
  };
  if (scaler_) {
    const double used = scaler_->scale();
    if (!scaler_->update(strategy_->gradients_finite(*model_)))
      return skip(StepResult::kSkippedOverflow);
    const double unscale = 1.0 / used;
    for (const Tensor& p : model_->parameters()) {
      Tensor g = p.grad();
      if (g.defined()) ops::scale_(g, unscale);
    }
  } else if (config_.train.on_nonfinite == "skip_step" && !strategy_->gradients_finite(*model_)) {
    return skip(StepResult::kSkippedNonFinite);
  }
  // After the reduction every replica holds the same gradients, so all clip alike.
  if (config_.optimizer.clip_grad_norm > 0) {
    strategy_->clip_gradients(*model_, config_.optimizer.clip_grad_norm);
  }
  strategy_->step_optimizer(*optimizer_);
  schedule_->step();
  optimizer_->zero_grad(!strategy_->gradients_stay_in_place());
  timeline_.add(Phase::kOptimizer, begin, Timeline::Clock::now());
  const int64_t check_every = config_.strategy.check_parameters_every_steps;
  if (check_every > 0 && step % check_every == 0)
    strategy_->check_parameters_in_sync(*model_, step);
  return StepResult::kStepped;
}

void Trainer::report_stragglers(int64_t step, MetricsSink* sink) {
  const int replicas = strategy_->num_replicas_in_sync();
  if (!config_.log.stragglers || replicas < 2) {
    timeline_.reset_window();  // nobody reads it: keep it from growing with the run
    return;
  }
  // A gather through a sum: each replica fills its own row.
  constexpr size_t kFields = StepSummary::kFields;
  std::vector<double> rows(kFields * static_cast<size_t>(replicas), 0.0);
  const auto mine = summarize(timeline_.window()).to_array();
  std::copy(mine.begin(), mine.end(), rows.begin() + kFields * strategy_->rank());
  strategy_->sum_across_replicas(rows);
  timeline_.reset_window();
  if (!sink) return;
  std::vector<StepSummary> summaries;
  for (int r = 0; r < replicas; ++r) summaries.push_back(StepSummary::from(&rows[kFields * r]));
  sink->stragglers(step, straggler_table(summaries));
}

void Trainer::write_trace_if_due(int64_t step, bool final) {
  if (!timeline_.tracing() || trace_written_) return;
  if (!final && step < timeline_.trace_last_step()) return;
  trace_written_ = true;
  if (step < timeline_.trace_first_step()) {  // the same on every replica: no collective
    if (strategy_->is_primary()) {
      warn_stderr("log.trace: the run ended at step " + std::to_string(step) +
                  ", before log.trace_first_step " + std::to_string(timeline_.trace_first_step()) +
                  "; no trace written");
    }
    return;
  }
  const std::vector<std::string> events =
      strategy_->gather_text(timeline_.trace_events(strategy_->rank()));
  if (!strategy_->is_primary()) return;
  const std::string path = config_.log.dir + "/trace.json";
  try {
    write_chrome_trace(path, events, config_.run_id());
    std::printf("trace of steps %" PRId64 "-%" PRId64 " written to %s (open it in Perfetto)\n",
                timeline_.trace_first_step(), std::min(timeline_.trace_last_step(), step),
                path.c_str());
  } catch (const Error& e) {
    warn_stderr("log.trace: trace not written, training goes on: " + e.message());
  }
}

void Trainer::report_optimizer_shard() {
  double kept = 0;
  for (const auto& [key, t] : optimizer_->state_dict().tensors)
    kept += static_cast<double>(t.nbytes());
  std::vector<double> values = {kept};
  strategy_->sum_across_replicas(values);
  if (!strategy_->is_primary()) return;
  const double mib = 1024.0 * 1024.0;
  std::printf(
      "optimizer state (strategy.shard_optimizer): %.3f MiB on this replica of %.3f MiB "
      "in all, over %d replicas\n",
      kept / mib, values[0] / mib, strategy_->num_replicas_in_sync());
}

bool Trainer::stop_agreed(int64_t step) {
  Strategy::StepAgreement agreed;
  if (stop_vote_) agreed = stop_vote_();
  stop_vote_ = nullptr;
  if (!agreed.same_calls) {
    DTRAIN_THROW(ValueError, "step ", step,
                 ": the replicas have not issued the same collectives (their running digests "
                 "of each call's op, dtype and count differ since the step before): a replica "
                 "took another code path, or code issued a collective on some replicas only. "
                 "DTRAIN_DISTRIBUTED_DEBUG=1 compares every collective and names the first that "
                 "differs");
  }
  if (config_.train.checkpoint_on_signal && agreed.stop_vote > 0) {
    stop_signal_ = agreed.stop_vote >= kVoteOtherSignal ? SIGTERM : SIGUSR1;
    return true;
  }
  stop_vote_ = strategy_->start_step_agreement(
      config_.train.checkpoint_on_signal ? stop_vote_value(stop_signal()) : 0);
  return false;
}

void Trainer::on_device(data::Batch& b) const {
  if (device_.is_cpu()) return;
  b.x = to_device(b.x, device_);
  b.y = to_device(b.y, device_);
}

Trainer::Position Trainer::train_epoch(const Plan& plan, Position at, data::DataLoader& loader,
                                       MetricsSink* sink, TrainResult& result, int64_t& samples,
                                       double& seconds, uint64_t& matrix_flops) {
  const TrainSection& t = config_.train;
  const auto epoch_start = std::chrono::steady_clock::now();
  const uint64_t flops_at_start = ops::matrix_flops();
  loader.start_epoch(at.epoch, at.batch_in_epoch);
  int accumulated = 0;
  double step_loss = 0;
  data::Batch b;
  auto next_batch = [&](data::Batch& into) {
    const auto begin = Timeline::Clock::now();
    if (!loader.next(into)) return false;
    if (slow_batches_.count() > 0) std::this_thread::sleep_for(slow_batches_);
    timeline_.add(Phase::kDataWait, begin, Timeline::Clock::now());
    return true;
  };
  // On a GPU, batch t+1 is copied (pinned buffer, copy stream) while step t computes; the limit
  // is the loop's own, so no batch is taken that the loop below would not use.
  DevicePrefetchOptions prefetch;
  prefetch.limit =
      std::max<int64_t>(0, std::min<int64_t>(plan.batches_per_epoch_used - at.batch_in_epoch,
                                             (plan.stop_step - at.step) * t.grad_accum_steps));
  DevicePrefetcher batches(device_, next_batch, prefetch);
  while (at.step < plan.stop_step && at.batch_in_epoch < plan.batches_per_epoch_used &&
         batches.next(b)) {
    const bool last_of_step = accumulated + 1 == t.grad_accum_steps;
    try {
      step_loss += train_micro_batch(b, last_of_step);
    } catch (const ValueError& e) {
      if (!t.detect_anomaly) throw;
      DTRAIN_THROW(ValueError, "train: step ", at.step + 1,
                   " (train.detect_anomaly): ", e.message());
    }
    samples += b.y.size(0) * plan.replicas;
    ++at.batch_in_epoch;
    if (!last_of_step) {
      ++accumulated;
      continue;
    }
    accumulated = 0;
    const StepResult stepped = optimizer_step(++at.step);
    const bool last = at.step >= plan.stop_step;
    // With the loss on the device, it is read where it is shown or checked: the first step, every
    // log.every_steps and the last. In between, step_loss stays 0 and the sum over the window
    // arrives at the read, so the recorded means are the same.
    const bool loss_due = at.step % config_.log.every_steps == 0 || last || at.step == 1;
    const bool loss_read = !defer_loss_ || loss_due;
    if (defer_loss_ && loss_due) {
      step_loss = read_device_loss();
    }
    if (stepped == StepResult::kSkippedNonFinite) {
      if (strategy_->is_primary()) {
        const std::string loss =
            loss_read ? " (loss " + std::to_string(step_loss) + ")" : std::string();
        warn_stderr("step " + std::to_string(at.step) + ": a gradient is not finite" + loss +
                    "; the step is skipped (train.on_nonfinite: skip_step)");
      }
    } else if (stepped == StepResult::kStepped && !std::isfinite(step_loss) &&
               config_.train.on_nonfinite == "stop") {
      DTRAIN_THROW(ValueError, "train: the loss became ", step_loss,
                   defer_loss_ ? " in the steps up to " : " at step ", at.step,
                   "; lower optimizer.lr or check the data (train.on_nonfinite: skip_step skips "
                   "such steps)");
    }
    timeline_.end_step(Timeline::Clock::now());
    if (const std::string message = strategy_->take_message(); !message.empty()) {
      std::printf("%s\n", message.c_str());
      std::fflush(stdout);
    }
    if (at.step % config_.log.every_steps == 0 || last) report_stragglers(at.step, sink);
    write_trace_if_due(at.step, false);
    if (sink && scaler_) {
      sink->note("loss_scale", scaler_->scale());
      sink->note("skipped_steps", static_cast<double>(scaler_->skipped_steps()));
    }
    if (sink) {
      sink->step(at.step, at.epoch, plan.epochs, step_loss, optimizer_->lr(),
                 static_cast<double>(plan.batch * t.grad_accum_steps * plan.replicas), last,
                 loss_read);
    }
    step_loss = 0;
    const bool stop = stop_agreed(at.step);
    const Checkpoint due = last || stop ? Checkpoint::kFinal
                           : t.checkpoint_every_steps > 0 && at.step % t.checkpoint_every_steps == 0
                               ? Checkpoint::kPeriodic
                               : Checkpoint::kNone;
    if (due != Checkpoint::kNone && at.batch_in_epoch >= plan.batches_per_epoch_used) {
      // At the epoch's end the checkpoint waits for its evaluation, which early stopping keeps
      // track of: a run resumed from it must not evaluate that epoch again.
      checkpoint_after_evaluation_ = due;
    } else if (due != Checkpoint::kNone) {
      // Every replica takes part: a sharded optimiser's state is gathered from all of them.
      const nn::OptimizerState optimizer_state = strategy_->optimizer_state(*optimizer_);
      if (strategy_->is_primary()) {
        const std::string written = save(plan, at, due, optimizer_state);
        if (!written.empty()) result.last_checkpoint = written;
        if (sink) sink->flush();  // TensorBoard shows what the checkpoint holds
      }
    }
    if (stop) break;
  }
  seconds += seconds_since(epoch_start);
  matrix_flops += ops::matrix_flops() - flops_at_start;
  return at;
}

TrainResult Trainer::run() {
  const auto start = std::chrono::steady_clock::now();
  const bool primary = strategy_->is_primary();
  strategy_->check_same_config(config_.entries(/*per_process=*/false));
  if (primary) {
    std::printf("run %s: checkpoints in %s, logs in %s\n", config_.run_id().c_str(),
                config_.train.checkpoint_dir.c_str(), config_.log.dir.c_str());
  }
  strategy_->prepare(*model_);
  if (primary && precision_ != DType::kFloat32 && device_.is_cpu()) {
    std::printf(
        "train.precision %s on the CPU: matrix products and convolutions round their "
        "operands to %s and run in float32 kernels (mixed precision's numerics, not its "
        "speed)\n",
        config_.train.precision.c_str(), std::string(dtype_name(precision_)).c_str());
  }
  // Process-wide; a run without it leaves the setting as it found it.
  if (config_.train.detect_anomaly) autograd::set_anomaly_enabled(true);

  if (primary) {
    for (const std::string& path : remove_stale_temp_files(config_.train.checkpoint_dir)) {
      warn_stderr("removed " + path + ", left by a process killed while writing a checkpoint");
    }
  }
  // The checkpoint comes first: it decides the per-replica batch, which the loader needs.
  const std::optional<LoadedCheckpoint> resumed = find_checkpoint_to_resume();
  const Plan batch_plan = plan(resumed, -1);
  if (primary && batch_plan.lr_replicas != batch_plan.replicas) {
    std::printf("resuming a run of %d replicas on %d: global batch %" PRId64 " kept (%" PRId64
                " per replica), learning rate kept\n",
                batch_plan.lr_replicas, batch_plan.replicas, batch_plan.batch * batch_plan.replicas,
                batch_plan.batch);
  }
  data::DataLoader loader(
      train_set_,
      data::DistributedSampler(train_set_->size(), batch_plan.replicas, strategy_->rank(),
                               /*shuffle=*/true, static_cast<uint64_t>(config_.train.seed),
                               config_.train.drop_last),
      batch_plan.batch, config_.train.drop_last, static_cast<int>(config_.data.prefetch));
  const Plan p = plan(resumed, loader.batches_per_epoch());
  Position at = restore(p, resumed);

  std::unique_ptr<MetricsSink> sink;  // the primary's
  if (primary) {
    std::error_code ec;
    std::filesystem::create_directories(config_.train.checkpoint_dir, ec);
    DTRAIN_CHECK(!ec, "train.checkpoint_dir: cannot create '", config_.train.checkpoint_dir,
                 "': ", ec.message());
    // A directory that exists but cannot be written would fail only at the last checkpoint,
    // after every periodic one warned: find out before training.
    const std::string probe = config_.train.checkpoint_dir + "/.dtrain-write-check." +
                              std::to_string(static_cast<long>(::getpid()));
    const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    DTRAIN_CHECK(fd >= 0, "train.checkpoint_dir: cannot write in '", config_.train.checkpoint_dir,
                 "': ", std::strerror(errno), "; choose a writable directory");
    ::close(fd);
    ::unlink(probe.c_str());
    sink = std::make_unique<MetricsSink>(config_, p.total_steps, resumed.has_value());
  }

  timeline_ =
      Timeline(config_.log.trace_first_step > 0 ? config_.log.trace_first_step : at.step + 1,
               config_.log.trace ? config_.log.trace_steps : 0);
  timeline_.start_after(at.step);
  if (config_.log.trace) {
    // Clocks aligned: every replica takes time 0 as it leaves the second of two barriers.
    std::vector<double> barrier = {0};
    strategy_->sum_across_replicas(barrier);
    strategy_->sum_across_replicas(barrier);
    timeline_.set_origin(Timeline::Clock::now());
  }
  TrainResult result;
  int64_t samples = 0;
  double train_seconds = 0;
  uint64_t train_flops = 0;
  optimizer_->zero_grad(!strategy_->gradients_stay_in_place());
  // A run that early stopping ended stays ended when run again.
  const bool ended = config_.train.early_stop_patience > 0 &&
                     early_stop_.bad_evals >= config_.train.early_stop_patience;
  if (ended) result.stopped_early = true;
  for (; !ended && at.epoch < p.epochs && at.step < p.stop_step;
       ++at.epoch, at.batch_in_epoch = 0) {
    at = train_epoch(p, at, loader, sink.get(), result, samples, train_seconds, train_flops);
    if (at.batch_in_epoch < p.batches_per_epoch_used) break;  // stopped inside the epoch
    result.test = evaluate();
    if (sink) {
      sink->test(at.step, at.epoch, p.epochs, result.test.loss, result.test.accuracy);
    }
    const bool stop = early_stop_after(p, at, result.test);
    // An early stop ends the run: its last step gets a checkpoint, so a re-run continues from it.
    const Checkpoint due = stop ? Checkpoint::kFinal : checkpoint_after_evaluation_;
    if (due != Checkpoint::kNone) {
      const nn::OptimizerState optimizer_state = strategy_->optimizer_state(*optimizer_);
      if (primary) {
        const std::string written = save(p, at, due, optimizer_state);
        if (!written.empty()) result.last_checkpoint = written;
        if (sink) sink->flush();
      }
    }
    checkpoint_after_evaluation_ = Checkpoint::kNone;
    if (stop_signal_ != 0) break;
    if (stop) {
      if (primary) {
        std::printf("early stop after epoch %" PRId64 ": no better test %s for %" PRId64
                    " evaluations; the best model is %s/best.dtck\n",
                    at.epoch + 1, config_.train.early_stop_metric.c_str(), early_stop_.bad_evals,
                    config_.train.checkpoint_dir.c_str());
      }
      result.stopped_early = true;
      ++at.epoch;
      at.batch_in_epoch = 0;
      break;
    }
  }
  if (stop_vote_) {  // every replica started this vote; it must finish before the next collective
    stop_vote_();
    stop_vote_ = nullptr;
  }
  write_trace_if_due(at.step, true);
  if (sink) sink->finish();
  if (config_.strategy.shard_optimizer) report_optimizer_shard();
  if (scaler_ && primary) {
    std::printf("fp16: %" PRId64 " step(s) skipped for gradient overflow; loss scale now %g\n",
                scaler_->skipped_steps(), scaler_->scale());
  }
  result.stopped_by_signal = stop_signal_;
  if (stop_signal_ != 0) {
    // Every replica waits for the primary's checkpoint: under srun --kill-on-bad-exit or mpirun,
    // the first process to exit non-zero ends the others, which could cut the write short.
    std::vector<double> written = {0};
    strategy_->sum_across_replicas(written);
    // The signal's sender (a scheduler's grace time, a launcher's) is waiting: no evaluation.
    if (primary) {
      std::printf("stopped by %s after step %" PRId64 " of %" PRId64
                  "; checkpoint %s; run the same command again to resume from it\n",
                  signal_name(stop_signal_).c_str(), at.step, p.total_steps,
                  result.last_checkpoint.c_str());
      std::fflush(stdout);
    }
  } else if (result.test.examples == 0) {
    result.test = evaluate();  // stopped mid-epoch or nothing to do
  }
  result.steps = at.step;
  result.primary = primary;
  result.stopped_early = result.stopped_early || at.step < p.total_steps;
  result.samples_per_sec = train_seconds > 0 ? samples / train_seconds : 0;
  result.gflops = train_seconds > 0 ? static_cast<double>(train_flops) / train_seconds / 1e9 : 0;
  result.wall_s = seconds_since(start);
  return result;
}

}  // namespace dtrain::train
