// Watchdog: turns a hung collective into a report that names the ranks that have not reached it,
// then stops the process instead of hanging. Ranks publish their last started and finished
// sequence numbers to the Store; the report is built from everyone's numbers.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "dtrain/distributed/host_communicator.h"
#include "dtrain/distributed/store.h"

namespace dtrain::dist {

struct WatchdogOptions {
  /// A collective running longer than this is fatal (strategy.timeout_s).
  std::chrono::milliseconds timeout = kDefaultTimeout;
  /// A collective running longer than this logs the report once and keeps waiting.
  std::chrono::milliseconds stall_warning = kDefaultStallWarning;
  /// How often the watchdog thread looks (and publishes progress).
  std::chrono::milliseconds poll{500};
  /// Store key prefix of the progress records ("<prefix><rank>" = "<started> <finished>").
  std::string key_prefix = "dtrain/progress/";
};

/// Exit status of a process stopped by the watchdog.
inline constexpr int kWatchdogExitCode = 3;

/// Install as the communicator's observer. Thread-safe. The default action on timeout prints the
/// report to stderr and ends the process with kWatchdogExitCode: a collective stuck inside MPI or
/// NCCL cannot be cancelled, so stopping is the only way not to hang. Tests pass their own action.
class Watchdog final : public CollectiveObserver {
 public:
  using Action = std::function<void(const std::string& report)>;
  /// `store` may be null (single process): the report then names only this rank's state.
  Watchdog(int rank, int size, WatchdogOptions options, std::shared_ptr<StoreClient> store,
           Action on_timeout = nullptr, Action on_stall = nullptr);
  ~Watchdog() override;

  void on_start(int rank, const CollectiveInfo& info) override;
  void on_finish(int rank, const CollectiveInfo& info) override;

  /// The table for an in-flight collective: every rank's last started and finished sequence
  /// number and the ranks that have not reached `info`.
  std::string report(const CollectiveInfo& info, std::chrono::milliseconds waited);

 private:
  void loop();
  /// Writes this rank's progress to the Store (the watchdog's thread only; without mu_).
  void publish(uint64_t started, uint64_t finished);
  const int rank_, size_;
  const WatchdogOptions options_;
  std::shared_ptr<StoreClient> store_;
  Action on_timeout_, on_stall_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::optional<CollectiveInfo> in_flight_;
  std::chrono::steady_clock::time_point started_at_;
  bool stall_reported_ = false;
  uint64_t last_started_ = 0, last_finished_ = 0;
  uint64_t published_started_ = ~0ull, published_finished_ = ~0ull;  // watchdog thread only
  bool publish_failed_ = false;                                      // watchdog thread only
  std::thread thread_;
};

}  // namespace dtrain::dist
