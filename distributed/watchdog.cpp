// The collective watchdog.
#include "dtrain/distributed/watchdog.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace dtrain::dist {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

void print_and_exit(const std::string& report) {
  std::fprintf(stderr, "%s\n", report.c_str());
  std::fflush(stderr);
  std::_Exit(kWatchdogExitCode);
}

void print_warning(const std::string& report) {
  std::fprintf(stderr, "warning: %s\n", report.c_str());
  std::fflush(stderr);
}

std::string seconds_text(milliseconds ms) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f s", ms.count() / 1000.0);
  return text;
}

/// "all_reduce(sum) float32 x 16": what ranks must agree on for a collective.
std::string call_text(const CollectiveInfo& info) {
  std::string out = info.kind;
  out += ' ';
  out += dtype_name(info.dtype);
  out += " x ";
  out += std::to_string(info.count);
  return out;
}

std::string ranks_text(const std::vector<int>& ranks) {
  std::string out;
  for (int r : ranks) {
    if (!out.empty()) out += ' ';
    out += std::to_string(r);
  }
  return out;
}

/// How long before it judges a collective the watchdog reads everyone's records once: more than
/// two polls, so that a live rank has certainly published again by then.
milliseconds probe_lead(milliseconds poll) { return 2 * poll + milliseconds(250); }

/// The least age of that read for a judgment to use it: a live rank publishes at every poll of its
/// own, so over more than a poll (and a Store round trip) its record changes.
milliseconds probe_min_age(milliseconds poll) { return poll + milliseconds(250); }

}  // namespace

milliseconds watchdog_timeout(milliseconds collective_timeout) {
  const milliseconds lead =
      std::min(std::clamp(collective_timeout / 10, milliseconds(3'000), milliseconds(30'000)),
               collective_timeout / 2);
  return collective_timeout - lead;
}

std::string hang_key(int restart_count) {
  return WatchdogOptions{}.key_prefix + std::to_string(restart_count) + "/hang";
}

Watchdog::Watchdog(int rank, int size, WatchdogOptions options, std::shared_ptr<StoreClient> store,
                   Action on_timeout, Action on_stall, std::shared_ptr<StoreClient> report_store)
    : rank_(rank),
      size_(size),
      options_(std::move(options)),
      store_(std::move(store)),
      report_store_(report_store ? std::move(report_store) : store_),
      on_timeout_(on_timeout ? std::move(on_timeout) : Action(print_and_exit)),
      on_stall_(on_stall ? std::move(on_stall) : Action(print_warning)) {
  if (store_) publisher_ = std::thread([this] { publish_loop(); });
  thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  publish_cv_.notify_all();
  thread_.join();
  // A publisher blocked in a Store call returns within the client's request timeout.
  if (publisher_.joinable()) publisher_.join();
}

// The observer calls only record numbers under a mutex: the Store round trip happens on the
// watchdog's own threads, so a healthy collective costs two uncontended lock operations.
void Watchdog::on_start(int, const CollectiveInfo& info) {
  if (info.sequence == 0) return;  // point-to-point
  std::lock_guard lock(mu_);
  in_flight_ = info;
  started_at_ = Clock::now();
  stall_reported_ = false;
  last_started_ = info.sequence;
  last_started_info_ = info;
}

void Watchdog::on_finish(int, const CollectiveInfo& info) {
  if (info.sequence == 0) return;
  std::lock_guard lock(mu_);
  in_flight_.reset();
  last_finished_ = info.sequence;
}

void Watchdog::publish(uint64_t started, uint64_t finished, uint64_t tick,
                       const std::string& call) {
  try {
    store_->set(options_.key_prefix + std::to_string(rank_), std::to_string(started) + " " +
                                                                 std::to_string(finished) + " " +
                                                                 std::to_string(tick) + " " + call);
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

void Watchdog::publish_loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    publish_cv_.wait(lock, [&] { return stop_ || publish_pending_; });
    if (stop_) return;
    publish_pending_ = false;
    const uint64_t started = last_started_, finished = last_finished_, tick = tick_;
    const std::string call = started ? call_text(last_started_info_) : "";
    // The Store round trip happens without the lock: a slow Store must never hold up the
    // collectives, whose observer calls take it, nor the watchdog's clock.
    lock.unlock();
    publish(started, finished, tick, call);
    lock.lock();
  }
}

std::vector<Watchdog::Record> Watchdog::read_records(const CollectiveInfo& info) {
  std::vector<Record> records(size_);
  {
    std::lock_guard lock(mu_);
    records[rank_] = {true, "", info.sequence, last_finished_, tick_, call_text(info)};
  }
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    Record& rec = records[r];
    if (!report_store_) {
      rec.why_unknown = "unknown (no store)";
      continue;
    }
    try {
      std::optional<std::string> v =
          report_store_->try_get(options_.key_prefix + std::to_string(r));
      rec.known = true;
      if (v) {
        std::istringstream in(*v);
        in >> rec.started >> rec.finished >> rec.tick;
        std::getline(in >> std::ws, rec.call);
      }
    } catch (const std::exception&) {
      // A client whose request timed out fails every later call at once: one slow answer costs
      // one request timeout, not one per rank.
      rec.why_unknown = "unknown (the store does not answer)";
    }
  }
  return records;
}

std::string Watchdog::report(const CollectiveInfo& info, milliseconds waited) {
  return build_report(info, waited, nullptr, milliseconds(0), nullptr);
}

std::string Watchdog::build_report(const CollectiveInfo& info, milliseconds waited,
                                   const std::vector<Record>* probe, milliseconds probe_age,
                                   std::string* verdict) {
  const std::vector<Record> records = read_records(info);
  std::ostringstream table;
  std::vector<int> behind, silent, mismatched;
  const std::string& mine = records[rank_].call;
  std::string calls;  // "rank 1: broadcast(root 0) float32 x 16; ..." of the mismatched ranks
  for (int r = 0; r < size_; ++r) {
    const Record& rec = records[r];
    table << "\n  rank " << r << ": ";
    // A rank that called something else as this sequence number (op, dtype or count): a program
    // error that hangs or mixes data, whatever the backend.
    const bool differs = rec.known && r != rank_ && rec.started == info.sequence &&
                         !rec.call.empty() && rec.call != mine;
    if (differs) {
      mismatched.push_back(r);
      calls += "; rank " + std::to_string(r) + ": " + rec.call;
    }
    if (!rec.known) {
      table << rec.why_unknown;
      // The Store lives in that rank's process: when it does not answer, neither does the rank.
      if (r == options_.store_host_rank && rec.why_unknown.find("answer") != std::string::npos) {
        silent.push_back(r);
        table << "  <- hosts the store and does not answer: stopped, hung or cut off";
      }
      continue;
    }
    // A live rank publishes every poll; a record that did not change over more than two polls
    // belongs to a process that is stopped (SIGSTOP, a debugger) or starved. Its numbers are
    // then as old as its last report (up to a poll before it stopped): they cannot tell whether
    // it stopped before or inside this collective, only that it has not finished it.
    const bool still = r != rank_ && probe && (*probe)[r].known && rec.tick != 0 &&
                       (*probe)[r].tick == rec.tick && rec.finished < info.sequence;
    if (still) {
      silent.push_back(r);
      table << "no progress report for " << seconds_text(probe_age)
            << " or more; its last: started #" << rec.started << ", finished #" << rec.finished
            << "  <- not responding: stopped, hung or cut off";
      if (differs) table << "; called #" << info.sequence << " as " << rec.call;
      continue;
    }
    table << "last started #" << rec.started << ", last finished #" << rec.finished;
    if (differs) table << "  <- called #" << info.sequence << " as " << rec.call;
    if (rec.started < info.sequence) {
      behind.push_back(r);
      table << "  <- has not reached #" << info.sequence;
    }
  }
  std::ostringstream os;
  os << "rank " << rank_ << ": " << info.describe() << " has waited " << waited.count() / 1000.0
     << " s; ";
  if (!mismatched.empty()) {
    os << "ranks called different collectives as #" << info.sequence
       << " (every rank must issue the same collectives, in the same order): rank " << rank_ << ": "
       << mine << calls << "; ";
  }
  if (!behind.empty() || silent.empty()) {
    os << "ranks that have not reached it: "
       << (behind.empty() ? "none known" : ranks_text(behind));
  }
  if (!silent.empty()) {
    os << (behind.empty() ? "" : "; ")
       << "ranks that stopped responding before finishing it (stopped, hung or cut off): "
       << ranks_text(silent);
  }
  os << table.str();
  if (verdict) {
    *verdict = "behind=" + ranks_text(behind) + ";silent=" + ranks_text(silent) +
               ";mismatch=" + ranks_text(mismatched) +
               ";sequence=" + std::to_string(info.sequence) + ";reporter=" + std::to_string(rank_);
  }
  return os.str();
}

void Watchdog::loop() {
  std::unique_lock lock(mu_);
  // Before each judgment of a late collective (the stall warning, the timeout) the records are
  // read once, this long before it, so that the judgment can tell which did not change since.
  const milliseconds lead = probe_lead(options_.poll);
  while (!stop_) {
    cv_.wait_for(lock, options_.poll, [&] { return stop_; });
    if (stop_) return;
    ++tick_;
    publish_pending_ = true;
    publish_cv_.notify_one();
    if (!in_flight_) continue;
    const auto now = Clock::now();
    const auto waited = std::chrono::duration_cast<milliseconds>(now - started_at_);
    const CollectiveInfo info = *in_flight_;
    const milliseconds next_judgment =
        stall_reported_ ? options_.timeout : std::min(options_.stall_warning, options_.timeout);
    // Not earlier than a quarter of the judgment: with a short timeout (under 2.5 s at the default
    // poll) every collective would otherwise be probed.
    if (report_store_ && waited >= std::max(next_judgment - lead, next_judgment / 4) &&
        (probe_sequence_ != info.sequence || probe_for_ != next_judgment)) {
      probe_sequence_ = info.sequence;
      probe_for_ = next_judgment;
      lock.unlock();
      probe_ = read_records(info);
      probe_at_ = Clock::now();
      lock.lock();
      continue;  // judged at a later poll, once the probe is old enough
    }
    const auto probe_age = std::chrono::duration_cast<milliseconds>(now - probe_at_);
    const std::vector<Record>* probe = probe_sequence_ == info.sequence && !probe_.empty() &&
                                               probe_age >= probe_min_age(options_.poll)
                                           ? &probe_
                                           : nullptr;
    if (waited >= options_.timeout) {
      lock.unlock();
      std::string verdict;
      std::string text = build_report(info, waited, probe, probe_age, &verdict);
      text = "watchdog timeout (" + seconds_text(options_.timeout) + "): " + text;
      if (report_store_) {
        try {
          // The first report of the job is the verdict a launcher shows as the root cause.
          report_store_->compare_set(options_.key_prefix + "hang", "", verdict + "\n" + text);
        } catch (const std::exception&) {
        }
      }
      on_timeout_(text);
      lock.lock();
      // The action did not end the process (tests): report this collective once.
      if (in_flight_ && in_flight_->sequence == info.sequence) in_flight_.reset();
    } else if (waited >= options_.stall_warning && !stall_reported_) {
      stall_reported_ = true;
      lock.unlock();
      on_stall_("collective stalled: " + build_report(info, waited, probe, probe_age, nullptr));
      lock.lock();
    }
  }
}

}  // namespace dtrain::dist
