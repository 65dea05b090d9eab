// Timeline: phase times, trace events, the straggler table.
#include "dtrain/train/timeline.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>

#include "dtrain/train/checkpoint.h"

namespace dtrain::train {
namespace {

double seconds(Timeline::Clock::duration d) { return std::chrono::duration<double>(d).count(); }

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::kDataWait:
      return "data wait";
    case Phase::kForward:
      return "forward";
    case Phase::kBackward:
      return "backward";
    case Phase::kOptimizer:
      return "optimizer";
    case Phase::kCheckpoint:
      return "checkpoint write";
  }
  return "?";
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

constexpr int kComputeLane = 0, kCommunicationLane = 1;

}  // namespace

StepSummary summarize(const StepWindow& w) {
  StepSummary s;
  if (w.step_s.empty()) return s;
  const double n = static_cast<double>(w.step_s.size());
  s.step_p50_s = percentile(w.step_s, 0.5);
  s.step_p90_s = percentile(w.step_s, 0.9);
  s.data_s = w.data_s / n;
  s.compute_s = w.compute_s / n;
  s.exposed_s = w.exposed_s / n;
  return s;
}

Timeline::Timeline(int64_t trace_first, int64_t trace_steps)
    : trace_first_(trace_first), trace_steps_(trace_steps) {}

void Timeline::begin_step(Clock::time_point at) {
  ++step_;
  in_step_ = true;
  step_begin_ = at;
  backward_s_ = 0;
}

void Timeline::event(const char* name, int lane, Clock::time_point begin, Clock::time_point end,
                     const std::string& args) {
  char line[320];
  std::snprintf(line, sizeof line,
                "{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,"
                "\"pid\":%%d,\"tid\":%d,\"args\":{\"step\":%" PRId64 "%s%s}}",
                name, lane == kComputeLane ? "compute" : "communication",
                std::chrono::duration<double, std::micro>(begin - origin_).count(),
                std::chrono::duration<double, std::micro>(end - begin).count(), lane, step_,
                args.empty() ? "" : ",", args.c_str());
  if (!events_.empty()) events_ += ",\n";
  events_ += line;
}

void Timeline::add(Phase phase, Clock::time_point begin, Clock::time_point end) {
  if (!in_step_ && phase != Phase::kCheckpoint) begin_step(begin);
  const double s = seconds(end - begin);
  switch (phase) {
    case Phase::kDataWait:
      window_.data_s += s;
      break;
    case Phase::kForward:
    case Phase::kOptimizer:
      window_.compute_s += s;
      break;
    case Phase::kBackward:
      window_.compute_s += s;
      backward_s_ += s;
      break;
    case Phase::kCheckpoint:
      break;  // not part of a step's work
  }
  if (in_trace()) event(phase_name(phase), kComputeLane, begin, end);
}

void Timeline::add_communication(const DdpStepTiming& timing) {
  // The wait ran inside backward (its end-of-backward callback): move it to communication.
  const double exposed = std::min(timing.exposed_s, backward_s_);
  window_.compute_s -= exposed;
  window_.exposed_s += exposed;
  if (!in_trace()) return;
  const auto wait_end = timing.wait_began + std::chrono::duration_cast<Clock::duration>(
                                                std::chrono::duration<double>(timing.exposed_s));
  event("wait for gradients", kComputeLane, timing.wait_began, wait_end);
  for (size_t k = 0; k < timing.buckets.size(); ++k) {
    const BucketTiming& b = timing.buckets[k];
    const bool hidden = b.finished <= timing.wait_began;
    char args[160];
    std::snprintf(args, sizeof args, "\"bucket\":%zu,\"bytes\":%" PRId64 ",\"hidden\":%s", k,
                  b.bytes, hidden ? "true" : "false");
    event(b.scattered ? "reduce_scatter" : "all_reduce", kCommunicationLane, b.launched, b.finished,
          args);
  }
}

void Timeline::end_step(Clock::time_point end) {
  if (!in_step_) return;
  window_.step_s.push_back(seconds(end - step_begin_));
  if (in_trace()) event("step", kComputeLane, step_begin_, end);
  in_step_ = false;
  // The run's first step pays one-time costs (buckets settled, memory first touched): it would
  // make every replica look like a straggler in the first table.
  if (!warmed_up_) window_ = {};
  warmed_up_ = true;
}

std::string Timeline::trace_events(int replica) const {
  std::string out;
  char meta[256];
  std::snprintf(meta, sizeof meta,
                "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"args\":{\"name\":\"replica "
                "%d\"}},\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"args\":{"
                "\"name\":\"compute\"}},\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,"
                "\"tid\":1,\"args\":{\"name\":\"gradient reductions\"}}",
                replica, replica, replica, replica);
  out = meta;
  // Each event holds one "%d" for its pid.
  const std::string pid = std::to_string(replica);
  size_t at = 0;
  std::string events = events_;
  while ((at = events.find("%d", at)) != std::string::npos) {
    events.replace(at, 2, pid);
    at += pid.size();
  }
  if (!events.empty()) out += ",\n" + events;
  return out;
}

void write_chrome_trace(const std::string& path, const std::vector<std::string>& replica_events,
                        const std::string& run_id) {
  std::string text = "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"run\":\"" + run_id +
                     "\",\"clock\":\"microseconds since a start-up barrier on every replica\"},"
                     "\n\"traceEvents\":[\n";
  for (size_t r = 0; r < replica_events.size(); ++r) {
    text += replica_events[r];
    text += r + 1 < replica_events.size() ? ",\n" : "\n";
  }
  text += "]}\n";
  write_file_atomic(path, {text});
}

StragglerTable straggler_table(const std::vector<StepSummary>& replicas) {
  StragglerTable t;
  if (replicas.empty()) return t;
  std::vector<double> busy;
  for (const StepSummary& s : replicas) busy.push_back(s.data_s + s.compute_s);
  t.slowest = static_cast<int>(std::max_element(busy.begin(), busy.end()) - busy.begin());
  const double slowest_exposed = replicas[t.slowest].exposed_s;
  for (const StepSummary& s : replicas) {
    t.rows.push_back({s, std::max(0.0, s.exposed_s - slowest_exposed)});
  }
  std::vector<double> others = busy;
  others.erase(others.begin() + t.slowest);
  const double median = percentile(others, 0.5);
  t.significant =
      !others.empty() && busy[t.slowest] > 1.25 * median && busy[t.slowest] - median > 1e-3;
  return t;
}

}  // namespace dtrain::train
