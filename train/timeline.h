// Where each replica's training time goes: phase times per step for the straggler table (every
// log.every_steps, in metrics.jsonl and TensorBoard), and a bounded window of timed events for a
// Chrome trace (log.trace: <log.dir>/trace.json, which Perfetto and chrome://tracing open).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "dtrain/strategies/ddp.h"

namespace dtrain::train {

enum class Phase { kDataWait, kForward, kBackward, kOptimizer, kCheckpoint };

/// One replica's timing since the window began, in seconds.
struct StepWindow {
  std::vector<double> step_s;  // each step's wall time
  double data_s = 0;           // waiting for the loader and copying batches to the device
  double compute_s = 0;        // forward, backward (less the exposed wait) and optimiser
  double exposed_s = 0;        // waiting for gradient reductions backward did not hide
};

/// Per step means of one replica's window: what replicas exchange for the straggler table.
struct StepSummary {
  double step_p50_s = 0, step_p90_s = 0, data_s = 0, compute_s = 0, exposed_s = 0;
  static constexpr size_t kFields = 5;
  std::array<double, kFields> to_array() const {
    return {step_p50_s, step_p90_s, data_s, compute_s, exposed_s};
  }
  static StepSummary from(const double* v) { return {v[0], v[1], v[2], v[3], v[4]}; }
};
StepSummary summarize(const StepWindow& window);

class Timeline {
 public:
  using Clock = std::chrono::steady_clock;
  /// Events of steps [trace_first, trace_first + trace_steps) are kept (trace_steps 0: none).
  Timeline(int64_t trace_first = 0, int64_t trace_steps = 0);
  /// The instant that is time 0 in the trace: taken on every replica right after a barrier, so
  /// that the replicas' clocks line up to within the barrier's exit skew.
  void set_origin(Clock::time_point origin) { origin_ = origin; }

  /// Steps after `step` come next (a resumed run's position).
  void start_after(int64_t step) { step_ = step; }
  /// Adds a phase of the current step, which the first phase after a step's end begins; inside
  /// the trace window also keeps it as an event. A checkpoint write belongs to the step before.
  void add(Phase phase, Clock::time_point begin, Clock::time_point end);
  /// The step's gradient reductions: the exposed wait counts as communication, not as backward,
  /// and each bucket becomes an event on the communication lane (hidden or exposed).
  void add_communication(const DdpStepTiming& timing);
  /// Ends the current step: its wall time joins the window.
  void end_step(Clock::time_point end);

  const StepWindow& window() const { return window_; }
  void reset_window() { window_ = {}; }

  bool tracing() const { return trace_steps_ > 0; }
  int64_t trace_first_step() const { return trace_first_; }
  /// The last step of the trace window.
  int64_t trace_last_step() const { return trace_first_ + trace_steps_ - 1; }
  /// This replica's events as JSON objects joined by ",\n" (pid `replica`).
  std::string trace_events(int replica) const;

 private:
  bool in_trace() const {
    return trace_steps_ > 0 && step_ >= trace_first_ && step_ <= trace_last_step();
  }
  void event(const char* name, int lane, Clock::time_point begin, Clock::time_point end,
             const std::string& args = "");
  int64_t trace_first_, trace_steps_;
  Clock::time_point origin_ = Clock::now();
  int64_t step_ = 0;
  Clock::time_point step_begin_{};
  bool in_step_ = false;
  bool warmed_up_ = false;
  void begin_step(Clock::time_point at);
  double backward_s_ = 0;
  StepWindow window_;
  std::string events_;
};

/// Writes a Chrome trace (JSON object format) of every replica's events to `path`, atomically.
/// Throws dtrain::Error naming the file when it cannot be written.
void write_chrome_trace(const std::string& path, const std::vector<std::string>& replica_events,
                        const std::string& run_id);

/// The straggler table of one window: one row per replica and the slowest one.
struct StragglerRow {
  StepSummary summary;
  double waiting_s = 0;  // exposed wait beyond the slowest replica's: time spent waiting for it
};
struct StragglerTable {
  std::vector<StragglerRow> rows;
  int slowest = 0;           // the replica with the most data wait + compute per step
  bool significant = false;  // slowest busy > 1.25 x the others' median, and > 1 ms more
};
StragglerTable straggler_table(const std::vector<StepSummary>& replicas);

}  // namespace dtrain::train
