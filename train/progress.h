// The progress display on the primary replica: a bar redrawn in place on a terminal, plain
// periodic lines otherwise (logs, CI), or nothing.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace dtrain::train {

class Progress {
 public:
  enum class Mode { kBar, kLines, kOff };
  /// "auto" picks kBar when `out` is a terminal, else kLines.
  static Mode parse_mode(const std::string& name, std::FILE* out);

  Progress(Mode mode, int64_t total_steps, int64_t every_steps, std::FILE* out = stdout);
  /// Called after each optimiser step; draws at most every `every_steps` steps (bar: every step,
  /// throttled to 10 redraws a second).
  void update(int64_t step, int64_t epoch, int64_t epochs, double loss, double samples_per_sec);
  /// A line that must not be overwritten by the bar (evaluation results, warnings).
  void message(const std::string& line);
  /// Ends the bar's line.
  void finish();

 private:
  std::string render(int64_t step, int64_t epoch, int64_t epochs, double loss,
                     double samples_per_sec, bool with_bar) const;
  Mode mode_;
  int64_t total_, every_;
  std::FILE* out_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  int64_t first_step_ = -1;
  bool bar_open_ = false;
};

}  // namespace dtrain::train
