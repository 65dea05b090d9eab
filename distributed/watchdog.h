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
#include <vector>

#include "dtrain/distributed/host_communicator.h"
#include "dtrain/distributed/store.h"

namespace dtrain::dist {

struct WatchdogOptions {
  /// A collective running longer than this is fatal. A job sets it to
  /// watchdog_timeout(strategy.timeout_s), so that the report comes before the collective's own
  /// timeout error, which cannot name anybody.
  std::chrono::milliseconds timeout = kDefaultTimeout;
  /// A collective running longer than this logs the report once and keeps waiting.
  std::chrono::milliseconds stall_warning = kDefaultStallWarning;
  /// How often the watchdog thread looks and publishes progress (every time, also when nothing
  /// changed: a record that stops changing means its process stopped).
  std::chrono::milliseconds poll{500};
  /// Store key prefix of the progress records ("<prefix><rank>" = "<started> <finished> <tick>
  /// <the started collective's kind, dtype and count>")
  /// and of the verdict the first fatal report leaves ("<prefix>hang", see hang_key).
  std::string key_prefix = "dtrain/progress/";
  /// The rank whose process hosts the Store (rank 0 under mpirun, srun and a `cluster:` job),
  /// -1 when a launcher does. When the Store does not answer, that rank is reported as not
  /// responding.
  int store_host_rank = -1;
};

/// Exit status of a process stopped by the watchdog.
inline constexpr int kWatchdogExitCode = 3;

/// When a job's watchdog gives up on a collective whose own timeout is `collective_timeout`:
/// clamp(timeout / 10, 3 s, 30 s) earlier, but not before half of it (300 s -> 270 s, 4 s -> 2 s).
std::chrono::milliseconds watchdog_timeout(std::chrono::milliseconds collective_timeout);

/// The Store key of the verdict of attempt `restart_count` of a job (the key_prefix Job gives its
/// watchdogs, + "hang"), which the first fatal report of the attempt writes. Its value, one line
/// "behind=1 3;silent=2;mismatch=;sequence=925;reporter=0" (the ranks that have not reached
/// collective #925, those that stopped responding before finishing it, those that called another
/// collective as #925, and the rank that reports), then the report.
std::string hang_key(int restart_count);

/// Install as the communicator's observer. Thread-safe. The default action on timeout prints the
/// report to stderr and ends the process with kWatchdogExitCode: a collective stuck inside MPI or
/// NCCL cannot be cancelled, so stopping is the only way not to hang. Tests pass their own action.
class Watchdog final : public CollectiveObserver {
 public:
  using Action = std::function<void(const std::string& report)>;
  /// `store` may be null (single process): the report then names only this rank's state. Progress
  /// goes to `store` from a thread of its own, so a slow Store never delays the timeout; reports
  /// read through `report_store` (which should give up fast), or through `store` when it is null.
  Watchdog(int rank, int size, WatchdogOptions options, std::shared_ptr<StoreClient> store,
           Action on_timeout = nullptr, Action on_stall = nullptr,
           std::shared_ptr<StoreClient> report_store = nullptr);
  ~Watchdog() override;

  void on_start(int rank, const CollectiveInfo& info) override;
  void on_finish(int rank, const CollectiveInfo& info) override;

  /// The table for an in-flight collective: every rank's last started and finished sequence
  /// number and the ranks that have not reached `info`. The watchdog's own reports also name the
  /// ranks whose record stopped changing (they read everyone's records once before, early
  /// enough): stopped, hung or cut off from the Store, whether before or inside `info`.
  std::string report(const CollectiveInfo& info, std::chrono::milliseconds waited);

 private:
  /// One rank's progress record as read from the Store.
  struct Record {
    bool known = false;
    std::string why_unknown;
    uint64_t started = 0, finished = 0, tick = 0;
    std::string call;  // "all_reduce(sum) float32 x 16": what it called as #started
  };
  /// Every rank's record (this rank's from memory).
  std::vector<Record> read_records(const CollectiveInfo& info);
  /// The report, and the verdict line of hang_key when `verdict` is given. `probe`: the records
  /// read `probe_age` before (null when there was no such read).
  std::string build_report(const CollectiveInfo& info, std::chrono::milliseconds waited,
                           const std::vector<Record>* probe, std::chrono::milliseconds probe_age,
                           std::string* verdict);
  void loop();
  void publish_loop();
  /// Writes this rank's progress to the Store (the publisher's thread only; without mu_).
  void publish(uint64_t started, uint64_t finished, uint64_t tick, const std::string& call);
  const int rank_, size_;
  const WatchdogOptions options_;
  std::shared_ptr<StoreClient> store_, report_store_;
  Action on_timeout_, on_stall_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::optional<CollectiveInfo> in_flight_;
  std::chrono::steady_clock::time_point started_at_;
  bool stall_reported_ = false;
  uint64_t last_started_ = 0, last_finished_ = 0;
  CollectiveInfo last_started_info_;  // what #last_started_ was, for the mismatch check
  // What the publisher is to write next (guarded by mu_): the loop raises tick_ every poll.
  uint64_t tick_ = 0;
  bool publish_pending_ = false;
  std::condition_variable publish_cv_;
  bool publish_failed_ = false;  // publisher thread only
  // Everyone's records read once while a collective was late, to tell later which records did
  // not change since (watchdog thread only).
  uint64_t probe_sequence_ = 0;
  std::chrono::milliseconds probe_for_{0};  // the judgment (waited) it was read for
  std::chrono::steady_clock::time_point probe_at_;
  std::vector<Record> probe_;
  std::thread thread_, publisher_;
};

}  // namespace dtrain::dist
