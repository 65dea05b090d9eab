// MetricsSink.
#include "dtrain/train/metrics_sink.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>

namespace dtrain::train {
namespace {

double unix_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

MetricsSink::MetricsSink(const Config& config, int64_t total_steps, bool append)
    : every_steps_(config.log.every_steps),
      jsonl_(config.log.dir + "/metrics.jsonl", append),
      tensorboard_(config.log.tensorboard ? std::make_unique<TensorBoardWriter>(config.log.dir)
                                          : nullptr),
      progress_(Progress::parse_mode(config.log.progress, stdout), total_steps,
                config.log.every_steps) {}

void MetricsSink::scalar(const char* tag, double value, int64_t step) {
  if (tensorboard_) tensorboard_->add_scalar(tag, value, step, unix_time());
}

void MetricsSink::step(int64_t step, int64_t epoch, int64_t epochs, double loss, double lr,
                       double samples_per_step, bool last, bool loss_read) {
  window_loss_ += loss;
  ++window_steps_;
  last_step_at_ = std::chrono::steady_clock::now();
  const double window_s =
      window_seconds_before_ + std::chrono::duration<double>(last_step_at_ - window_start_).count();
  const double rate = window_steps_ * samples_per_step / std::max(window_s, 1e-9);
  flops_at_last_step_ = ops::matrix_flops();
  const double window_flops =
      static_cast<double>(window_flops_before_ + (flops_at_last_step_ - window_flops_start_));
  const double gflops = window_flops / std::max(window_s, 1e-9) / 1e9;
  const double mean_loss = window_loss_ / window_steps_;
  if (loss_read) shown_loss_ = mean_loss;
  progress_.update(step, epoch, epochs, shown_loss_, rate);
  if (step % every_steps_ != 0 && !last) return;
  std::vector<std::pair<std::string, double>> record = {
      {"step", double(step)},    {"epoch", double(epoch)}, {"loss", mean_loss}, {"lr", lr},
      {"samples_per_sec", rate}, {"gflops", gflops}};
  for (const auto& [key, value] : notes_) {
    record.emplace_back(key, value);
    scalar(("train/" + key).c_str(), value, step);
  }
  notes_.clear();
  record.emplace_back("wall_time", unix_time());
  jsonl_.write(record);
  scalar("train/loss", mean_loss, step);
  scalar("train/lr", lr, step);
  scalar("train/samples_per_sec", rate, step);
  scalar("train/gflops", gflops, step);
  window_loss_ = 0;
  window_steps_ = 0;
  window_seconds_before_ = 0;
  window_start_ = std::chrono::steady_clock::now();
  window_flops_before_ = 0;
  window_flops_start_ = ops::matrix_flops();
}

void MetricsSink::test(int64_t step, int64_t epoch, int64_t epochs, double loss, double accuracy) {
  char line[160];
  std::snprintf(line, sizeof line,
                "epoch %" PRId64 "/%" PRId64 ": test_loss=%.4f test_accuracy=%.4f", epoch + 1,
                epochs, loss, accuracy);
  progress_.message(line);
  jsonl_.write({{"step", double(step)},
                {"epoch", double(epoch)},
                {"test_loss", loss},
                {"test_accuracy", accuracy},
                {"wall_time", unix_time()}});
  scalar("test/loss", loss, step);
  scalar("test/accuracy", accuracy, step);
  // The evaluation ran between the last step and now.
  if (window_steps_ > 0) {
    window_seconds_before_ += std::chrono::duration<double>(last_step_at_ - window_start_).count();
    window_flops_before_ += flops_at_last_step_ - window_flops_start_;
  }
  window_start_ = std::chrono::steady_clock::now();
  window_flops_start_ = ops::matrix_flops();
}

void MetricsSink::note(const std::string& key, double value) {
  for (auto& [k, v] : notes_) {
    if (k == key) {
      v = value;
      return;
    }
  }
  notes_.emplace_back(key, value);
}

void MetricsSink::stragglers(int64_t step, const StragglerTable& table) {
  const double ms = 1e3;
  for (size_t r = 0; r < table.rows.size(); ++r) {
    const StepSummary& s = table.rows[r].summary;
    const double waiting = table.rows[r].waiting_s;
    jsonl_.write({{"step", double(step)},
                  {"replica", double(r)},
                  {"step_p50_ms", s.step_p50_s * ms},
                  {"step_p90_ms", s.step_p90_s * ms},
                  {"data_wait_ms", s.data_s * ms},
                  {"compute_ms", s.compute_s * ms},
                  {"exposed_comm_ms", s.exposed_s * ms},
                  {"waiting_for_slowest_ms", waiting * ms},
                  {"slowest", static_cast<int>(r) == table.slowest ? 1.0 : 0.0}});
    const std::string tag = "stragglers/replica_" + std::to_string(r) + "/";
    scalar((tag + "step_p50_ms").c_str(), s.step_p50_s * ms, step);
    scalar((tag + "step_p90_ms").c_str(), s.step_p90_s * ms, step);
    scalar((tag + "compute_ms").c_str(), s.compute_s * ms, step);
    scalar((tag + "exposed_comm_ms").c_str(), s.exposed_s * ms, step);
    scalar((tag + "waiting_for_slowest_ms").c_str(), waiting * ms, step);
  }
  scalar("stragglers/slowest_replica", table.slowest, step);
  if (!table.significant) return;
  const StepSummary& slow = table.rows[table.slowest].summary;
  double waiting = 0;
  for (const StragglerRow& row : table.rows) waiting = std::max(waiting, row.waiting_s);
  char line[256];
  std::snprintf(line, sizeof line,
                "step %" PRId64
                ": replica %d is the slowest (data wait %.1f ms + compute %.1f ms "
                "per step; the others wait up to %.1f ms for it)",
                step, table.slowest, slow.data_s * ms, slow.compute_s * ms, waiting * ms);
  progress_.message(line);
}

void MetricsSink::flush() {
  if (tensorboard_) tensorboard_->flush();
}

void MetricsSink::finish() {
  progress_.finish();
  flush();
}

}  // namespace dtrain::train
