// MetricsSink: where a run's numbers go on the replica that reports: metrics.jsonl, TensorBoard
// event files and the progress display, with the training loss averaged over a window of steps.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

#include "dtrain/tensor/ops.h"
#include "dtrain/train/config.h"
#include "dtrain/train/progress.h"
#include "dtrain/train/summary.h"
#include "dtrain/train/timeline.h"

namespace dtrain::train {

class MetricsSink {
 public:
  /// `append`: a resumed run continues metrics.jsonl.
  MetricsSink(const Config& config, int64_t total_steps, bool append);
  /// After optimiser step `step`: adds `loss` to the window, updates the progress display and,
  /// every log.every_steps steps or when `last`, records the window's mean loss, the learning rate,
  /// the throughput (`samples_per_step` samples each step) and this process's matrix GFLOP/s
  /// (ops::matrix_flops), then starts a new window.
  /// `loss_read` false: the Trainer keeps the loss on the device and passes 0 here, then the sum
  /// since its last read at the next step it reads (every log.every_steps, the last, the first);
  /// the progress display keeps the last mean read until then.
  void step(int64_t step, int64_t epoch, int64_t epochs, double loss, double lr,
            double samples_per_step, bool last, bool loss_read = true);
  /// A value written with the next training record (metrics.jsonl and TensorBoard "train/<key>").
  void note(const std::string& key, double value);
  /// The test split's results at the end of an epoch. Throughput windows exclude evaluation.
  void test(int64_t step, int64_t epoch, int64_t epochs, double loss, double accuracy);
  /// The straggler table of the window ending at `step`: a record per replica in metrics.jsonl
  /// ("replica", "step_p50_ms", ..., "slowest"), scalars per replica in TensorBoard
  /// (stragglers/replica_<r>/...), and a progress line when the slowest replica stands out.
  void stragglers(int64_t step, const StragglerTable& table);
  /// Makes every record so far readable in the files (metrics.jsonl is flushed per line; this
  /// flushes the event file, which otherwise waits up to kTensorBoardFlushInterval). Called after
  /// each checkpoint, so that what TensorBoard shows is never behind the state a restart resumes.
  /// Throws dtrain::Error naming the file when it cannot be written.
  void flush();
  /// Ends the progress display and flushes the event file.
  void finish();

 private:
  void scalar(const char* tag, double value, int64_t step);
  int64_t every_steps_;
  JsonlWriter jsonl_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  Progress progress_;
  std::vector<std::pair<std::string, double>> notes_;
  double window_loss_ = 0;
  double shown_loss_ = 0;  // the mean loss the progress display shows
  int64_t window_steps_ = 0;
  std::chrono::steady_clock::time_point window_start_ = std::chrono::steady_clock::now();
  // Training time of the window before the last evaluation: steps done before it count with the
  // time they took, not with none (which read ~2x too high right after every evaluation).
  double window_seconds_before_ = 0;
  std::chrono::steady_clock::time_point last_step_at_ = window_start_;
  // The same for the matrix FLOPs: evaluation's forward passes do not count as training.
  uint64_t window_flops_start_ = ops::matrix_flops();
  uint64_t window_flops_before_ = 0;
  uint64_t flops_at_last_step_ = window_flops_start_;
};

}  // namespace dtrain::train
