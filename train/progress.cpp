// Progress display.
#include "dtrain/train/progress.h"

#include <unistd.h>

#include <cmath>

namespace dtrain::train {
namespace {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%02lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  }
  return buf;
}

}  // namespace

Progress::Mode Progress::parse_mode(const std::string& name, std::FILE* out) {
  if (name == "bar") return Mode::kBar;
  if (name == "lines") return Mode::kLines;
  if (name == "off") return Mode::kOff;
  return isatty(fileno(out)) ? Mode::kBar : Mode::kLines;
}

Progress::Progress(Mode mode, int64_t total_steps, int64_t every_steps, std::FILE* out)
    : mode_(mode),
      total_(total_steps),
      every_(every_steps),
      out_(out),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

std::string Progress::render(int64_t step, int64_t epoch, int64_t epochs, double loss,
                             double samples_per_sec, bool with_bar) const {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t done_here = step - first_step_;
  const double eta = done_here > 0 ? elapsed / done_here * (total_ - step) : NAN;
  char head[96], tail[160];
  std::snprintf(head, sizeof head, "epoch %lld/%lld step %lld/%lld",
                static_cast<long long>(epoch + 1), static_cast<long long>(epochs),
                static_cast<long long>(step), static_cast<long long>(total_));
  std::snprintf(tail, sizeof tail, "loss %.4f  %.0f samples/s  ETA %s", loss, samples_per_sec,
                format_duration(eta).c_str());
  std::string line = head;
  if (with_bar) {
    constexpr int kWidth = 24;
    const int filled =
        total_ > 0 ? static_cast<int>(kWidth * std::min<double>(1.0, double(step) / total_)) : 0;
    line += " [" + std::string(filled, '#') + std::string(kWidth - filled, '.') + "]";
  }
  return line + "  " + tail;
}

void Progress::update(int64_t step, int64_t epoch, int64_t epochs, double loss,
                      double samples_per_sec) {
  if (mode_ == Mode::kOff) return;
  if (first_step_ < 0) first_step_ = step - 1;
  const auto now = std::chrono::steady_clock::now();
  if (mode_ == Mode::kLines) {
    if (step % every_ != 0 && step != total_) return;
    std::fprintf(out_, "%s\n", render(step, epoch, epochs, loss, samples_per_sec, false).c_str());
    std::fflush(out_);
    return;
  }
  if (now - last_draw_ < std::chrono::milliseconds(100) && step != total_) return;
  last_draw_ = now;
  // \r returns to the line start; \033[K clears what a longer previous line left behind.
  std::fprintf(out_, "\r%s\033[K",
               render(step, epoch, epochs, loss, samples_per_sec, true).c_str());
  std::fflush(out_);
  bar_open_ = true;
}

void Progress::message(const std::string& line) {
  if (mode_ == Mode::kOff) return;
  if (bar_open_) std::fputc('\n', out_);
  bar_open_ = false;
  std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

void Progress::finish() {
  if (bar_open_) std::fputc('\n', out_);
  bar_open_ = false;
  std::fflush(out_);
}

}  // namespace dtrain::train
