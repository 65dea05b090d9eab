// The collective watchdog.
#include "dtrain/distributed/watchdog.h"

#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace dtrain::dist {
namespace {

void print_and_exit(const std::string& report) {
  std::fprintf(stderr, "%s\n", report.c_str());
  std::fflush(stderr);
  std::_Exit(kWatchdogExitCode);
}

void print_warning(const std::string& report) {
  std::fprintf(stderr, "warning: %s\n", report.c_str());
  std::fflush(stderr);
}

}  // namespace

Watchdog::Watchdog(int rank, int size, WatchdogOptions options, std::shared_ptr<StoreClient> store,
                   Action on_timeout, Action on_stall)
    : rank_(rank),
      size_(size),
      options_(std::move(options)),
      store_(std::move(store)),
      on_timeout_(on_timeout ? std::move(on_timeout) : Action(print_and_exit)),
      on_stall_(on_stall ? std::move(on_stall) : Action(print_warning)) {
  thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

// The observer calls only record numbers under a mutex: the Store round trip happens on the
// watchdog's own thread, so a healthy collective costs two uncontended lock operations.
void Watchdog::on_start(int, const CollectiveInfo& info) {
  if (info.sequence == 0) return;  // point-to-point
  std::lock_guard lock(mu_);
  in_flight_ = info;
  started_at_ = std::chrono::steady_clock::now();
  stall_reported_ = false;
  last_started_ = info.sequence;
}

void Watchdog::on_finish(int, const CollectiveInfo& info) {
  if (info.sequence == 0) return;
  std::lock_guard lock(mu_);
  in_flight_.reset();
  last_finished_ = info.sequence;
}

void Watchdog::publish(uint64_t started, uint64_t finished) {
  if (!store_ || (published_started_ == started && published_finished_ == finished)) return;
  published_started_ = started;
  published_finished_ = finished;
  try {
    store_->set(options_.key_prefix + std::to_string(rank_),
                std::to_string(started) + " " + std::to_string(finished));
    publish_failed_ = false;
  } catch (const std::exception& e) {
    // Losing the store must not take training down. Said once: a client whose request timed out
    // does not reconnect, so every later publish (twice a second) would fail the same way.
    if (!publish_failed_) {
      std::fprintf(stderr,
                   "warning: watchdog on rank %d cannot publish progress: %s; other ranks' "
                   "reports will show its last published numbers (not repeated)\n",
                   rank_, e.what());
    }
    publish_failed_ = true;
  }
}

std::string Watchdog::report(const CollectiveInfo& info, std::chrono::milliseconds waited) {
  std::ostringstream os;
  os << "rank " << rank_ << ": " << info.describe() << " has waited " << waited.count() / 1000.0
     << " s";
  uint64_t my_finished;
  {
    std::lock_guard lock(mu_);
    my_finished = last_finished_;
  }
  std::ostringstream table;
  std::string behind;
  for (int r = 0; r < size_; ++r) {
    uint64_t started = 0, finished = 0;
    bool known = true;
    if (r == rank_) {
      started = info.sequence;
      finished = my_finished;
    } else if (store_) {
      try {
        std::optional<std::string> v = store_->try_get(options_.key_prefix + std::to_string(r));
        if (v) {
          std::istringstream in(*v);
          in >> started >> finished;
        }
      } catch (const std::exception&) {
        known = false;
      }
    } else {
      known = false;
    }
    table << "\n  rank " << r << ": ";
    if (!known) {
      table << "unknown (no store)";
      continue;
    }
    table << "last started #" << started << ", last finished #" << finished;
    if (started < info.sequence) {
      if (!behind.empty()) behind += ' ';
      behind += std::to_string(r);
      table << "  <- has not reached #" << info.sequence;
    }
  }
  os << "; ranks that have not reached it: " << (behind.empty() ? "none known" : behind)
     << table.str();
  return os.str();
}

void Watchdog::loop() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, options_.poll, [&] { return stop_; });
    if (stop_) return;
    {
      // The Store round trip happens without the lock: a slow Store must never hold up the
      // collectives, whose observer calls take it.
      const uint64_t started = last_started_, finished = last_finished_;
      lock.unlock();
      publish(started, finished);
      lock.lock();
      if (stop_) return;
    }
    if (!in_flight_) continue;
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - started_at_);
    const CollectiveInfo info = *in_flight_;
    if (waited >= options_.timeout) {
      lock.unlock();
      std::string text = report(info, waited);
      char limit[32];
      std::snprintf(limit, sizeof limit, "%.1f s", options_.timeout.count() / 1000.0);
      on_timeout_("watchdog timeout (" + std::string(limit) + "): " + text);
      lock.lock();
      // The action did not end the process (tests): report this collective once.
      if (in_flight_ && in_flight_->sequence == info.sequence) in_flight_.reset();
    } else if (waited >= options_.stall_warning && !stall_reported_) {
      stall_reported_ = true;
      lock.unlock();
      on_stall_("collective stalled: " + report(info, waited));
      lock.lock();
    }
  }
}

}  // namespace dtrain::dist
