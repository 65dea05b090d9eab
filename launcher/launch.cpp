// `dtrain launch`. Protocol between the launchers of a job, all through node 0's Store, for each
// attempt a (0, then 1 after the first restart, ...):
//  1. every node publishes launch/a/node/K = host, version, config hash, restarts, workers, and
//     waits for all nodes; nodes that disagree stop with exit status 2 naming the node;
//  2. each node spawns its workers (global ranks in node order) and watches them;
//  3. the first node to see a failure writes launch/a/failed (compare-and-set, so the first
//     failure is the root cause everyone prints); every node stops its workers, adds itself to
//     launch/a/stopped, and once all have, all start attempt a+1 or give up together;
//  4. on success each node adds itself to launch/a/done and waits for all, then to
//     launch/a/leaving, so that node 0 keeps the Store up until every node has read the outcome.
#include "dtrain/launcher/launch.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "dtrain/distributed/host_communicator.h"
#include "dtrain/distributed/socket.h"
#include "dtrain/distributed/store.h"
#include "dtrain/distributed/watchdog.h"
#include "dtrain/tensor/check.h"

extern char** environ;

namespace dtrain::launch {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
namespace net = dist::net;

constexpr size_t kTailLines = 12;
constexpr int kHeartbeatFd = 3;  // where a worker finds its end of the heartbeat socket
// A worker that failed because a peer vanished is probably not the root cause: the launcher
// waits this long for the failure that caused it before reporting this one.
constexpr milliseconds kSecondaryGrace{2'000};
constexpr milliseconds kStorePoll{250};
// The longest output or heartbeat line passed on whole. A worker writing more without a newline
// (a binary dump to stdout) has it split, so the launcher's buffers stay bounded.
constexpr size_t kMaxLineBytes = 64 << 10;

void say(const std::string& text) {
  const std::string line = "dtrain launch: " + text + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

std::string signal_text(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return "signal " + std::to_string(sig) + (abbrev ? " (SIG" + std::string(abbrev) + ")" : "");
}

std::string host_name() {
  char name[256] = {};
  ::gethostname(name, sizeof name - 1);
  return name;
}

int usable_cores() {
  cpu_set_t set;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

/// The CPUs this launcher may run on, in order (empty if the kernel does not say).
std::vector<int> usable_cpus() {
  cpu_set_t set;
  std::vector<int> cpus;
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}

/// "0-3" or "4" or "0,2": a worker's CPUs for the start-up line.
std::string cpu_list(const std::vector<int>& cpus) {
  std::string s;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!s.empty()) s += ",";
    s += std::to_string(cpus[i]);
    if (j > i) s += "-" + std::to_string(cpus[j]);
    i = j + 1;
  }
  return s;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream is(s);
  while (std::getline(is, part, sep)) parts.push_back(part);
  return parts;
}

/// Calls emit(line) for each complete line at the start of `partial`, and for each kMaxLineBytes
/// piece of a longer one, then keeps only the unfinished rest (at most kMaxLineBytes).
template <class Emit>
void take_lines(std::string& partial, Emit&& emit) {
  size_t start = 0;
  for (;;) {
    const size_t nl = partial.find('\n', start);
    const size_t end = nl == std::string::npos ? partial.size() : nl;
    if (end - start > kMaxLineBytes) {
      emit(partial.substr(start, kMaxLineBytes));
      start += kMaxLineBytes;
      continue;
    }
    if (nl == std::string::npos) break;
    emit(partial.substr(start, nl - start));
    start = nl + 1;
  }
  partial.erase(0, start);
}

/// Thrown when the nodes disagree (exit status 2, no restart).
struct NodeMismatch {
  std::string message;
};

/// A signal arrived while the launcher waited for the store or for other nodes.
struct InterruptedWhileWaiting {};

/// Waits for the store and for other nodes are cut into slices this long, so that a signal is
/// handled within one.
constexpr std::chrono::milliseconds kWaitSlice{250};

struct Worker {
  int rank = 0, local_rank = 0;
  pid_t pid = -1;
  net::UniqueFd out, beat;  // the worker's stdout+stderr; its heartbeat socket
  std::string partial, beat_partial;
  std::deque<std::string> tail;
  Clock::time_point last_beat;
  bool beat_seen = false;
  std::string progress = "no collective yet";
  bool exited = false;
  int status = 0;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> log{nullptr, std::fclose};
};

enum class Outcome { kSucceeded, kFailed, kInterrupted };

class Launcher {
 public:
  explicit Launcher(const LaunchOptions& o) : o_(o), host_(host_name()) {}
  int run();

 private:
  void start_store();
  void rendezvous(int attempt);
  void spawn(int attempt);
  Outcome monitor(int attempt);
  void stop_workers();
  void drain(Worker& w, bool to_eof);
  void emit_line(Worker& w, const std::string& line);
  void read_beats(Worker& w);
  void handle_signals();
  bool reap();
  std::string describe_failure(const Worker& w, const std::string& what) const;
  /// For a worker stopped by its collective watchdog: the root cause named by the verdict the
  /// watchdog left in the store (the ranks that held the collective up), or nullopt without one.
  std::optional<std::string> describe_hang(int attempt, const Worker& reporter);
  std::string key(int attempt, const std::string& name) const {
    return "launch/" + std::to_string(attempt) + "/" + name;
  }
  /// Adds this node to a counter and waits until every node has; false on timeout.
  bool count_and_wait(const std::string& counter, milliseconds timeout);
  /// After this node's workers succeeded: true once every node's have, false when a failure was
  /// recorded (or the launcher was interrupted) meanwhile.
  bool wait_for_every_node_done(int attempt);
  milliseconds ms(double seconds) const {
    return milliseconds(static_cast<int64_t>(std::min(seconds, 1e9) * 1e3));  // 1e9 s: forever
  }

  const LaunchOptions o_;
  const std::string host_;
  std::string token_, store_address_;
  std::unique_ptr<dist::StoreServer> server_;
  std::unique_ptr<dist::StoreClient> store_;
  net::UniqueFd signals_;
  sigset_t old_mask_{};
  int interrupted_by_ = 0;
  int world_size_ = 0, rank_offset_ = 0;
  // Per node of the current attempt: its host and first global rank (node order).
  std::vector<std::pair<std::string, int>> nodes_;
  std::vector<Worker> workers_;
};

void Launcher::start_store() {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  if (!o_.rdzv_endpoint.empty()) {
    std::tie(host, port) = net::split_host_port(o_.rdzv_endpoint, "--rdzv-endpoint");
  }
  if (o_.node_rank == 0) {
    dist::StoreServerOptions so;
    so.bind_address = host;
    so.port = port;
    so.token = token_;
    so.max_clients = dist::store_max_clients(int64_t{o_.nnodes} * o_.nproc_per_node);
    server_ = std::make_unique<dist::StoreServer>(so);
    port = server_->port();
    say("node 0 hosts the store at " + net::host_port(host, port) +
        (o_.nnodes > 1
             ? "; start the other nodes with --rdzv-endpoint " + net::host_port(host, port)
             : ""));
    if (o_.nnodes > 1 && net::resolves_only_to_loopback(host)) {
      say("warning: " + host +
          " is a loopback address here, so only launchers on this machine can reach the "
          "store; for nodes on other machines give --rdzv-endpoint an address they can reach "
          "(a host name in Debian's /etc/hosts maps to 127.0.1.1: use the machine's IP)");
    }
  }
  store_address_ = net::host_port(host, port);
  dist::StoreClientOptions co;
  co.host = host;
  co.port = port;
  co.token = token_;
  // Every request of the launcher is quick; an unanswered one means node 0 is gone or cut off.
  co.request_timeout = milliseconds(30'000);
  const auto deadline = Clock::now() + ms(o_.rdzv_timeout_s);
  for (;;) {
    co.connect_timeout = std::max(
        milliseconds(1),
        std::min(kWaitSlice, std::chrono::duration_cast<milliseconds>(deadline - Clock::now())));
    try {
      store_ = std::make_unique<dist::StoreClient>(co);
      return;
    } catch (const TimeoutError&) {
      if (Clock::now() >= deadline) {
        DTRAIN_THROW(TimeoutError, "store ", store_address_, ": could not connect within ",
                     o_.rdzv_timeout_s,
                     " s (launcher.rdzv_timeout_s); is node 0's launcher running there, and can "
                     "this machine reach it?");
      }
    }
    handle_signals();
    if (interrupted_by_) throw InterruptedWhileWaiting{};
  }
}

void Launcher::rendezvous(int attempt) {
  std::ostringstream me;
  me << host_ << '\t' << o_.version << '\t' << o_.config_hash << '\t' << o_.max_restarts << '\t'
     << o_.nproc_per_node;
  store_->set(key(attempt, "node/" + std::to_string(o_.node_rank)), me.str());
  std::vector<std::string> keys;
  for (int k = 0; k < o_.nnodes; ++k) keys.push_back(key(attempt, "node/" + std::to_string(k)));
  try {
    const auto deadline = Clock::now() + ms(o_.rdzv_timeout_s);
    for (;;) {
      try {
        store_->wait(keys, std::max(milliseconds(1),
                                    std::min(kWaitSlice, std::chrono::duration_cast<milliseconds>(
                                                             deadline - Clock::now()))));
        break;
      } catch (const TimeoutError&) {
        if (Clock::now() >= deadline) throw;
      }
      handle_signals();
      if (interrupted_by_) throw InterruptedWhileWaiting{};
    }
  } catch (const TimeoutError&) {
    std::ostringstream missing;
    for (int k = 0; k < o_.nnodes; ++k) {
      if (!store_->try_get(keys[k])) missing << " " << k;
    }
    DTRAIN_THROW(TimeoutError, "node(s)", missing.str(), " did not join within ", o_.rdzv_timeout_s,
                 " s (launcher.rdzv_timeout_s). Is `dtrain launch --node-rank",
                 missing.str().substr(0, missing.str().find(' ', 1)),
                 "` running there with "
                 "--rdzv-endpoint ",
                 store_address_, ", and can it reach that address?");
  }
  world_size_ = 0;
  rank_offset_ = 0;
  nodes_.clear();
  std::vector<std::string> node0;
  std::string mismatch;
  for (int k = 0; k < o_.nnodes; ++k) {
    const auto fields = split(store_->get(keys[k]), '\t');
    DTRAIN_CHECK(fields.size() == 5, "launch: malformed node record for node ", k);
    if (k == 0) node0 = fields;
    const char* names[] = {"host", "dtrain version", "config hash", "max_restarts"};
    for (int f = 1; f <= 3 && mismatch.empty(); ++f) {
      if (fields[f] != node0[f]) {
        mismatch = "node " + std::to_string(k) + " (" + fields[0] + ") has " + names[f] + " " +
                   fields[f] + " but node 0 (" + node0[0] + ") has " + node0[f] +
                   (f == 2   ? "; every node must run the same config file and overrides "
                               "(`dtrain config check` prints the hash)"
                    : f == 1 ? "; install the same dtrain on every node"
                             : "; pass the same --max-restarts everywhere");
      }
    }
    const int nproc = std::stoi(fields[4]);
    nodes_.emplace_back(fields[0], world_size_);
    if (k < o_.node_rank) rank_offset_ += nproc;
    world_size_ += nproc;
  }
  if (!mismatch.empty()) {
    // Every node reaches the same verdict; node 0 keeps the Store up until all have read it.
    if (o_.node_rank == 0) {
      count_and_wait(key(attempt, "checked"), milliseconds(10'000));
    } else {
      store_->add(key(attempt, "checked"), 1);
    }
    throw NodeMismatch{mismatch};
  }
}

void Launcher::spawn(int attempt) {
  workers_.clear();
  workers_.resize(o_.nproc_per_node);
  const int threads = std::max(1, static_cast<int>(usable_cores() / o_.nproc_per_node));
  // With a core per worker or more, each worker gets `threads` CPUs of its own, as mpirun binds
  // by default: the workers' threads (kernels, loader, communication) then never preempt another
  // worker's, and a worker's caches stay its own.
  const std::vector<int> cpus = usable_cpus();
  const bool bind = (o_.cpu_bind == "auto") && !cpus.empty() &&
                    static_cast<int>(cpus.size()) >= o_.nproc_per_node;
  std::string placement;
  const bool user_threads = std::getenv("OMP_NUM_THREADS") != nullptr;
  const int heartbeat_ms =
      static_cast<int>(std::clamp(o_.heartbeat_timeout_s * 1000 / 4, 50.0, 250.0));
  // Everything a child needs is built before fork(): after it only async-signal-safe calls.
  static const char* const kSetHere[] = {"DTRAIN_RANK",         "DTRAIN_WORLD_SIZE",
                                         "DTRAIN_LOCAL_RANK",   "DTRAIN_LOCAL_WORLD_SIZE",
                                         "DTRAIN_NODE_RANK",    "DTRAIN_STORE_ADDR",
                                         "DTRAIN_STORE_TOKEN",  "DTRAIN_RESTART_COUNT",
                                         "DTRAIN_HEARTBEAT_FD", "DTRAIN_HEARTBEAT_INTERVAL_MS",
                                         "OPENBLAS_NUM_THREADS"};
  std::vector<std::string> inherited;
  for (char** e = environ; *e; ++e) {
    const std::string var(*e);
    const std::string name = var.substr(0, var.find('='));
    if (std::find(std::begin(kSetHere), std::end(kSetHere), name) != std::end(kSetHere) &&
        (name != "OPENBLAS_NUM_THREADS" || !user_threads)) {
      continue;
    }
    inherited.push_back(var);
  }
  if (o_.log_dir.size()) {
    std::error_code ec;
    std::filesystem::create_directories(o_.log_dir, ec);
    DTRAIN_CHECK(!ec, "launcher.log_dir (--log-dir): cannot create '", o_.log_dir,
                 "': ", ec.message(), "; choose a writable directory");
  }
  for (int i = 0; i < o_.nproc_per_node; ++i) {
    Worker& w = workers_[i];
    w.local_rank = i;
    w.rank = rank_offset_ + i;
    std::vector<std::string> env = inherited;
    const auto set = [&](const std::string& name, const std::string& value) {
      env.push_back(name + "=" + value);
    };
    set("DTRAIN_RANK", std::to_string(w.rank));
    set("DTRAIN_WORLD_SIZE", std::to_string(world_size_));
    set("DTRAIN_LOCAL_RANK", std::to_string(i));
    set("DTRAIN_LOCAL_WORLD_SIZE", std::to_string(o_.nproc_per_node));
    set("DTRAIN_NODE_RANK", std::to_string(o_.node_rank));
    set("DTRAIN_STORE_ADDR", store_address_);
    set("DTRAIN_STORE_TOKEN", token_);  // the environment only: a command line shows in ps
    set("DTRAIN_RESTART_COUNT", std::to_string(attempt));
    set("DTRAIN_HEARTBEAT_FD", std::to_string(kHeartbeatFd));
    set("DTRAIN_HEARTBEAT_INTERVAL_MS", std::to_string(heartbeat_ms));
    if (!user_threads) {
      set("OMP_NUM_THREADS", std::to_string(threads));
      set("OPENBLAS_NUM_THREADS", std::to_string(threads));
    }
    std::vector<std::string> args = o_.command;
    if (args.empty()) {
      args = {o_.worker_executable, "train", o_.config_path};
      args.insert(args.end(), o_.overrides.begin(), o_.overrides.end());
    }
    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);

    int out[2], beat[2];
    DTRAIN_CHECK(::pipe2(out, O_CLOEXEC) == 0, "launch: pipe: ", net::errno_text(errno));
    DTRAIN_CHECK(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, beat) == 0,
                 "launch: socketpair: ", net::errno_text(errno));
    if (o_.log_dir.size()) {
      const std::string path = o_.log_dir + "/rank_" + std::to_string(w.rank) + ".log";
      w.log.reset(std::fopen(path.c_str(), "ae"));
      DTRAIN_CHECK(w.log != nullptr, "launcher.log_dir (--log-dir): cannot open ", path, ": ",
                   net::errno_text(errno));
      std::fprintf(w.log.get(), "--- dtrain launch: attempt %d, rank %d on %s ---\n", attempt,
                   w.rank, host_.c_str());
      std::fflush(w.log.get());
    }
    cpu_set_t own{};
    CPU_ZERO(&own);
    if (bind) {
      std::vector<int> mine(cpus.begin() + i * threads, cpus.begin() + (i + 1) * threads);
      for (int c : mine) CPU_SET(c, &own);
      placement += (i ? " / " : "") + cpu_list(mine);
    }
    rlimit files{};
    const int max_fd = ::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < (1u << 20)
                           ? static_cast<int>(files.rlim_cur)
                           : 1 << 20;
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    DTRAIN_CHECK(pid >= 0, "launch: fork: ", net::errno_text(errno));
    if (pid == 0) {
      // Own process group: the launcher stops a worker and anything it started with one kill,
      // and Ctrl-C in the terminal reaches only the launcher, which then stops everyone.
      ::setpgid(0, 0);
      // Dies with the launcher, whatever kills it (no orphans).
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      ::sigprocmask(SIG_SETMASK, &old_mask_, nullptr);
      ::signal(SIGPIPE, SIG_DFL);
      if (bind) ::sched_setaffinity(0, sizeof own, &own);
      ::dup2(out[1], 1);
      ::dup2(out[1], 2);
      if (beat[1] == kHeartbeatFd) {
        ::fcntl(kHeartbeatFd, F_SETFD, 0);
      } else {
        ::dup2(beat[1], kHeartbeatFd);
      }
      // Only 0-2 and the heartbeat pass on: descriptors the launcher inherited without
      // O_CLOEXEC (from a shell, a batch system) would otherwise reach every worker.
      if (::close_range(kHeartbeatFd + 1, ~0U, 0) != 0) {
        for (int fd = kHeartbeatFd + 1; fd < max_fd; ++fd) ::close(fd);
      }
      ::execve(argv[0], argv.data(), envp.data());
      const char msg[] = "dtrain launch: cannot execute the worker\n";
      [[maybe_unused]] auto n = ::write(2, msg, sizeof msg - 1);
      ::_exit(127);
    }
    ::setpgid(pid, pid);  // also here, so a kill right after fork finds the group
    ::close(out[1]);
    ::close(beat[1]);
    w.pid = pid;
    w.out.reset(out[0]);
    w.beat.reset(beat[0]);
    ::fcntl(out[0], F_SETFL, O_NONBLOCK);
    ::fcntl(beat[0], F_SETFL, O_NONBLOCK);
    w.last_beat = Clock::now();
  }
  say("attempt " + std::to_string(attempt) + ": started ranks " + std::to_string(rank_offset_) +
      "-" + std::to_string(rank_offset_ + o_.nproc_per_node - 1) + " of " +
      std::to_string(world_size_) + " on node " + std::to_string(o_.node_rank) + " (" + host_ +
      "), " +
      (user_threads ? std::string("OMP_NUM_THREADS from the environment")
                    : std::to_string(threads) + " thread(s) each") +
      (bind ? ", on CPUs " + placement : std::string()));
}

void Launcher::emit_line(Worker& w, const std::string& line) {
  w.tail.push_back(line);
  if (w.tail.size() > kTailLines) w.tail.pop_front();
  if (w.log) {
    std::fprintf(w.log.get(), "%s\n", line.c_str());
  } else {
    const std::string out = "[rank " + std::to_string(w.rank) + "] " + line + "\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
  }
}

void Launcher::drain(Worker& w, bool to_eof) {
  if (!w.out) return;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(w.out.get(), buf, sizeof buf);
    if (n > 0) {
      w.partial.append(buf, size_t(n));
      take_lines(w.partial, [&](std::string line) { emit_line(w, line); });
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      if (!to_eof) break;
      pollfd p{w.out.get(), POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) break;  // a grandchild may keep the pipe open
      continue;
    }
    w.out.reset();                                    // EOF or error
    if (!w.partial.empty()) emit_line(w, w.partial);  // its last words, without a newline
    w.partial.clear();
    break;
  }
  if (w.log) std::fflush(w.log.get());
  std::fflush(stdout);
}

void Launcher::read_beats(Worker& w) {
  if (!w.beat) return;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(w.beat.get(), buf, sizeof buf);
    if (n > 0) {
      w.last_beat = Clock::now();
      w.beat_seen = true;
      w.beat_partial.append(buf, size_t(n));
      // Each line is one heartbeat carrying the worker's collective progress; keep the newest.
      take_lines(w.beat_partial, [&](std::string line) { w.progress = std::move(line); });
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) w.beat.reset();
    break;
  }
}

bool Launcher::reap() {
  bool any = false;
  for (Worker& w : workers_) {
    if (w.exited || w.pid < 0) continue;
    int status = 0;
    if (::waitpid(w.pid, &status, WNOHANG) == w.pid) {
      w.exited = true;
      w.status = status;
      any = true;
      drain(w, true);  // what it wrote just before exiting is still in the pipe
    }
  }
  return any;
}

void Launcher::handle_signals() {
  signalfd_siginfo info;
  while (::read(signals_.get(), &info, sizeof info) == sizeof info) {
    if (info.ssi_signo == SIGINT || info.ssi_signo == SIGTERM || info.ssi_signo == SIGHUP ||
        info.ssi_signo == SIGUSR1) {
      interrupted_by_ = static_cast<int>(info.ssi_signo);
    }
  }
}

/// What /proc says of a process that a report blames, for its first line.
std::string process_state_text(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');
  const char state = paren != std::string::npos && paren + 2 < stat.size() ? stat[paren + 2] : '?';
  switch (state) {
    case 'T':
    case 't':
      return "; its process is stopped (SIGSTOP, a debugger)";
    case 'D':
      return "; its process is in uninterruptible sleep (disk or network file system)";
    case 'R':
    case 'S':
      return "; its process is running (busy elsewhere, or waiting for something else)";
    default:
      return "";
  }
}

std::optional<std::string> Launcher::describe_hang(int attempt, const Worker& reporter) {
  std::optional<std::string> verdict;
  try {
    verdict = store_->try_get(dist::hang_key(attempt));
  } catch (const Error&) {
    return std::nullopt;
  }
  if (!verdict) return std::nullopt;
  const size_t nl = verdict->find('\n');
  const std::string report = nl == std::string::npos ? "" : verdict->substr(nl + 1);
  std::vector<std::pair<int, bool>> culprits;  // rank, whether it stopped responding
  std::string reporter_rank = std::to_string(reporter.rank);
  for (const std::string& field : split(verdict->substr(0, nl), ';')) {
    const size_t eq = field.find('=');
    if (eq == std::string::npos) continue;
    const std::string name = field.substr(0, eq), value = field.substr(eq + 1);
    if (name == "reporter") reporter_rank = value;
    if (name != "behind" && name != "silent") continue;
    for (const std::string& r : split(value, ' ')) {
      if (r.empty() || r.find_first_not_of("0123456789") != std::string::npos || r.size() > 9) {
        continue;  // not a rank: the verdict is the watchdog's, but the store holds any text
      }
      culprits.emplace_back(std::stoi(r), name == "silent");
    }
  }
  if (culprits.empty()) return std::nullopt;  // the generic report shows the watchdog's output
  // "collective #925 all_reduce(avg) float32 x 235146", from the report's first line.
  std::string collective = "the collective";
  const size_t from = report.find("collective #"), to = report.find(" has waited");
  if (from != std::string::npos && to != std::string::npos && to > from) {
    collective = report.substr(from, to - from);
  }
  std::ostringstream os;
  for (size_t i = 0; i < culprits.size(); ++i) {
    const auto [rank, silent] = culprits[i];
    const std::string what =
        (silent ? "stopped responding before finishing " : "has not reached ") + collective;
    const bool local = rank >= rank_offset_ && rank < rank_offset_ + o_.nproc_per_node;
    if (i > 0) os << "\n  also ";
    if (!local) {
      // The node whose first rank is the last one not above `rank`.
      size_t node = 0;
      while (node + 1 < nodes_.size() && nodes_[node + 1].second <= rank) ++node;
      os << "rank " << rank << " on node " << node << " (host "
         << (node < nodes_.size() ? nodes_[node].first : "?") << ") " << what;
    } else if (i > 0) {
      const Worker& w = workers_[rank - rank_offset_];
      os << "rank " << rank << " (pid " << w.pid << ") " << what << process_state_text(w.pid);
    } else {
      const Worker& w = workers_[rank - rank_offset_];
      os << describe_failure(w, what + ", on which the collective watchdog of rank " +
                                    reporter_rank + " gave up (exit status 3)" +
                                    process_state_text(w.pid));
    }
  }
  os << "\n  watchdog report:";
  for (const std::string& line : split(report, '\n')) os << "\n    | " << line;
  return os.str();
}

std::string Launcher::describe_failure(const Worker& w, const std::string& what) const {
  std::ostringstream os;
  os << "rank " << w.rank << " on node " << o_.node_rank << " (host " << host_ << ", pid " << w.pid
     << ") " << what << "\n  last collective: " << w.progress;
  char age[64];
  std::snprintf(age, sizeof age, " (last heartbeat %.1f s ago)",
                std::chrono::duration<double>(Clock::now() - w.last_beat).count());
  os << age << "\n  last output:";
  if (w.tail.empty()) os << " (none)";
  for (const std::string& line : w.tail) os << "\n    | " << line;
  return os.str();
}

Outcome Launcher::monitor(int attempt) {
  const std::string failed_key = key(attempt, "failed");
  auto next_store_poll = Clock::now();
  std::optional<std::pair<Clock::time_point, std::string>> secondary;
  const auto fail = [&](const std::string& report, bool hang = false) {
    // The first failure any node records is the root cause that every node prints.
    const std::string root = store_->compare_set(failed_key, "", report);
    // A hang (the launcher's exit status 3 when it is the last attempt's root cause).
    if (hang && root == report) store_->set(key(attempt, "hang"), "1");
    say("worker failure in attempt " + std::to_string(attempt) + "; root cause:\n  " + root);
    return Outcome::kFailed;
  };
  for (;;) {
    std::vector<pollfd> fds = {{signals_.get(), POLLIN, 0}};
    for (const Worker& w : workers_) {
      if (w.out) fds.push_back({w.out.get(), POLLIN, 0});
      if (w.beat) fds.push_back({w.beat.get(), POLLIN, 0});
    }
    ::poll(fds.data(), fds.size(), 100);
    handle_signals();
    if (interrupted_by_) return Outcome::kInterrupted;
    for (Worker& w : workers_) {
      drain(w, false);
      read_beats(w);
    }
    reap();
    const auto now = Clock::now();
    bool all_done = true;
    for (Worker& w : workers_) {
      if (!w.exited) {
        all_done = false;
        // Until its first heartbeat a worker is still loading (libraries, data): at least 30 s.
        // A program of the user's may never send one (it builds no dist::Job): then only its
        // exit is watched.
        const milliseconds limit = w.beat_seen
                                       ? ms(o_.heartbeat_timeout_s)
                                       : std::max(ms(o_.heartbeat_timeout_s), milliseconds(30'000));
        const bool watched = w.beat_seen || o_.command.empty();
        if (watched && o_.heartbeat_timeout_s > 0 && now - w.last_beat > limit) {
          char what[160];
          std::snprintf(what, sizeof what,
                        "sent no heartbeat for %.1f s (launcher.heartbeat_timeout_s): stopped "
                        "(SIGSTOP, a debugger) or starved",
                        std::chrono::duration<double>(now - w.last_beat).count());
          return fail(describe_failure(w, what), /*hang=*/true);
        }
        continue;
      }
      if (WIFEXITED(w.status) && WEXITSTATUS(w.status) == 0) continue;
      all_done = false;
      drain(w, true);  // its last words are the most useful part of the report
      const std::string what = WIFSIGNALED(w.status)
                                   ? "was killed by " + signal_text(WTERMSIG(w.status))
                                   : "exited with status " + std::to_string(WEXITSTATUS(w.status));
      // A worker that ended a hung collective is not the cause: its watchdog names the ranks.
      if (WIFEXITED(w.status) && WEXITSTATUS(w.status) == dist::kWatchdogExitCode) {
        const auto hang = describe_hang(attempt, w);
        return fail(hang ? *hang : describe_failure(w, what), /*hang=*/true);
      }
      const bool consequence = !WIFSIGNALED(w.status) &&
                               std::any_of(w.tail.begin(), w.tail.end(), [](const std::string& l) {
                                 return l.find("closed the connection") != std::string::npos ||
                                        l.find("peer lost") != std::string::npos;
                               });
      if (!consequence) return fail(describe_failure(w, what));
      if (!secondary) secondary.emplace(now + kSecondaryGrace, describe_failure(w, what));
    }
    if (secondary && now >= secondary->first) return fail(secondary->second);
    if (all_done) return Outcome::kSucceeded;
    if (now >= next_store_poll) {
      next_store_poll = now + kStorePoll;
      if (auto root = store_->try_get(failed_key)) {
        say("attempt " + std::to_string(attempt) + " failed on another node; root cause:\n  " +
            *root);
        return Outcome::kFailed;
      }
    }
  }
}

void Launcher::stop_workers() {
  bool any = false;
  for (Worker& w : workers_) {
    if (w.exited || w.pid < 0) continue;
    // SIGCONT too: a stopped process does not act on SIGTERM until it runs again. SIGUSR1
    // (Slurm's warning before the time limit) is passed on as it is: workers checkpoint on both.
    ::kill(-w.pid, interrupted_by_ == SIGUSR1 ? SIGUSR1 : SIGTERM);
    ::kill(-w.pid, SIGCONT);
    any = true;
  }
  const auto deadline = Clock::now() + ms(o_.stop_grace_s);
  while (any && Clock::now() < deadline) {
    std::vector<pollfd> fds = {{signals_.get(), POLLIN, 0}};
    for (const Worker& w : workers_) {
      if (w.out) fds.push_back({w.out.get(), POLLIN, 0});
    }
    ::poll(fds.data(), fds.size(), 50);
    handle_signals();
    for (Worker& w : workers_) drain(w, false);
    reap();
    any = std::any_of(workers_.begin(), workers_.end(), [](const Worker& w) { return !w.exited; });
  }
  for (Worker& w : workers_) {
    if (w.exited || w.pid < 0) continue;
    ::kill(-w.pid, SIGKILL);
    ::waitpid(w.pid, &w.status, 0);
    w.exited = true;
  }
  // Anything left in a group (a worker's own children) goes too.
  for (Worker& w : workers_) {
    if (w.pid > 0) ::kill(-w.pid, SIGKILL);
    drain(w, false);
  }
}

bool Launcher::wait_for_every_node_done(int attempt) {
  // This node's workers are done; another node's may still fail, and then every node must take
  // the failure path together (stop, agree, restart) instead of this one leaving with 0.
  store_->add(key(attempt, "done"), 1);
  const auto deadline = Clock::now() + ms(o_.rdzv_timeout_s);
  for (milliseconds pause{5};; pause = std::min(pause * 2, milliseconds(200))) {
    const auto done = store_->try_get(key(attempt, "done"));
    if (done && std::stoll(*done) >= o_.nnodes) return true;
    if (auto root = store_->try_get(key(attempt, "failed"))) {
      say("attempt " + std::to_string(attempt) + " failed on another node; root cause:\n  " +
          *root);
      return false;
    }
    handle_signals();
    if (interrupted_by_) return false;
    if (Clock::now() >= deadline) {
      store_->compare_set(key(attempt, "failed"), "",
                          "node " + std::to_string(o_.node_rank) + " (" + host_ +
                              ") finished but not every node did within "
                              "launcher.rdzv_timeout_s");
      return false;
    }
    std::this_thread::sleep_for(pause);
  }
}

bool Launcher::count_and_wait(const std::string& counter, milliseconds timeout) {
  store_->add(counter, 1);
  const auto deadline = Clock::now() + timeout;
  for (milliseconds pause{5};; pause = std::min(pause * 2, milliseconds(200))) {
    const auto value = store_->try_get(counter);
    if (value && std::stoll(*value) >= o_.nnodes) return true;
    if (Clock::now() >= deadline) return false;
    handle_signals();
    if (interrupted_by_) return false;
    std::this_thread::sleep_for(pause);
  }
}

int Launcher::run() {
  if (o_.nnodes > 1) {
    const char* shared = std::getenv("DTRAIN_STORE_TOKEN");
    if (shared == nullptr || std::strlen(shared) < 16) {
      say("error: with --nnodes > 1 every node's launcher needs the same secret in "
          "DTRAIN_STORE_TOKEN (16 or more characters), e.g. `export DTRAIN_STORE_TOKEN=$(openssl "
          "rand -hex 16)` before starting the launchers, with the same value on every node");
      return 2;
    }
    token_ = shared;
  } else {
    token_ =
        net::random_hex(16, "the store token");  // one job, one secret, never on a command line
  }
  // Signals arrive through a descriptor the monitor loop polls; workers get the old mask back.
  // A launcher started in the background by a shell inherits SIGINT ignored, and an ignored
  // signal never reaches the descriptor: take both back.
  ::signal(SIGINT, SIG_DFL);
  ::signal(SIGTERM, SIG_DFL);
  ::signal(SIGHUP, SIG_DFL);
  ::signal(SIGUSR1, SIG_DFL);
  // A closed terminal or pipe must not kill the launcher mid-job: writes then just fail.
  ::signal(SIGPIPE, SIG_IGN);
  ::signal(SIGCHLD, SIG_DFL);  // an inherited SIG_IGN would reap the workers behind our back
  sigset_t mask;
  sigemptyset(&mask);
  // SIGHUP (terminal closed, ssh dropped) stops the job like SIGTERM: workers get their grace.
  // SIGUSR1 too: Slurm's --signal warns the whole job step, launcher included.
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGCHLD}) sigaddset(&mask, sig);
  ::pthread_sigmask(SIG_BLOCK, &mask, &old_mask_);
  signals_.reset(::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!signals_) {
    // Blocked and never read, SIGINT and SIGTERM would be lost for the launcher's whole life.
    const int err = errno;
    ::pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
    say("error: cannot watch for signals: signalfd: " + net::errno_text(err) +
        (err == EMFILE || err == ENFILE
             ? "; too many open descriptors: raise the limit (ulimit -n) or close some"
             : ""));
    return 1;
  }

  std::vector<std::string> failures;
  bool last_hung = false;
  try {
    start_store();
    for (int attempt = 0;; ++attempt) {
      rendezvous(attempt);
      spawn(attempt);
      Outcome outcome = monitor(attempt);
      if (outcome == Outcome::kSucceeded && !wait_for_every_node_done(attempt)) {
        outcome = interrupted_by_ ? Outcome::kInterrupted : Outcome::kFailed;
      }
      if (outcome == Outcome::kSucceeded) {
        // Node 0 keeps the Store up until every node has seen the outcome; the others leave at
        // once (node 0 may be gone by the time they would look again).
        if (o_.node_rank != 0) {
          store_->add(key(attempt, "leaving"), 1);
        } else if (!count_and_wait(key(attempt, "leaving"), milliseconds(10'000))) {
          say("some nodes did not confirm the end of the job within 10 s");
        }
        say("all " + std::to_string(o_.nproc_per_node) + " worker(s) of node " +
            std::to_string(o_.node_rank) + " finished" +
            (attempt ? " after " + std::to_string(attempt) + " restart(s)" : std::string()));
        return 0;
      }
      if (outcome == Outcome::kInterrupted) {
        const std::string why = "the launcher on node " + std::to_string(o_.node_rank) + " (" +
                                host_ + ") received " + signal_text(interrupted_by_);
        try {
          store_->compare_set(key(attempt, "failed"), "", why);
        } catch (const Error&) {
          // The store may be gone already (node 0 stopped first); stopping matters more.
        }
        say(why + "; stopping the workers");
        stop_workers();
        try {
          // The other nodes stop too and do not restart: the job was stopped, not broken.
          store_->set(key(attempt, "abort"), why);
          store_->add(key(attempt, "stopped"), 1);
        } catch (const Error&) {
        }
        return 128 + interrupted_by_;
      }
      failures.push_back(store_->get(key(attempt, "failed")));
      stop_workers();
      if (interrupted_by_) return 128 + interrupted_by_;
      if (!count_and_wait(key(attempt, "stopped"), ms(o_.rdzv_timeout_s))) {
        if (interrupted_by_) return 128 + interrupted_by_;
        say("error: not every node stopped its workers within launcher.rdzv_timeout_s; giving up");
        return 1;
      }
      if (auto why = store_->try_get(key(attempt, "abort"))) {
        say("not restarting: " + *why);
        return 1;
      }
      if (attempt >= o_.max_restarts) {
        last_hung = store_->try_get(key(attempt, "hang")).has_value();
        // Node 0 keeps the Store up until every node knows the job is over.
        if (o_.node_rank != 0) {
          store_->add(key(attempt, "leaving"), 1);
        } else {
          count_and_wait(key(attempt, "leaving"), milliseconds(10'000));
        }
        break;
      }
      say("restarting every worker (restart " + std::to_string(attempt + 1) + " of " +
          std::to_string(o_.max_restarts) + "); they resume from the latest checkpoint");
    }
  } catch (const NodeMismatch& e) {
    say("error: the nodes disagree: " + e.message);
    return 2;
  } catch (const InterruptedWhileWaiting&) {
    say("received " + signal_text(interrupted_by_) +
        " while waiting for the store or the other "
        "nodes; stopping");
    return 128 + interrupted_by_;
  } catch (const Error& e) {
    if (!workers_.empty()) stop_workers();
    say("error: " + e.message());
    return 1;
  }
  std::ostringstream summary;
  summary << "giving up: the job failed " << failures.size() << " time(s) and launcher.max_restarts"
          << " is " << o_.max_restarts << ". Root causes:";
  for (size_t i = 0; i < failures.size(); ++i) {
    summary << "\n  attempt " << i << ": " << failures[i].substr(0, failures[i].find('\n'));
  }
  say(summary.str());
  // A job whose last attempt hung ends as a hung `dtrain train` does.
  return last_hung ? dist::kWatchdogExitCode : 1;
}

}  // namespace

int run_launch(const LaunchOptions& options) { return Launcher(options).run(); }

// ------------------------------------------------------------------------------------------------
}  // namespace dtrain::launch
