// How many ranks one Store serves: a StoreServer in this process and many real StoreClient
// connections from a few forked client processes, sending the watchdog's request mix on loopback.
// Prints requests/s, latency percentiles, server CPU, RSS and descriptors per connection.
// Run: build/bench/store_load_bench --clients 100,500,1000,2000 (see docs/cluster.md).
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/distributed/store.h"

using namespace dtrain;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr char kToken[] = "store-load-bench-token";
// Latency histogram: bucket 0 is below 1 µs, bucket b covers 1 µs * 1.02^(b-1) .. 1.02^b (2%).
constexpr int kBuckets = 1200;
constexpr double kBucketRatio = 1.02;

struct Options {
  std::vector<int> clients = {100, 500, 1000, 2000};
  int procs = 2;          // client processes
  int threads = 4;        // request threads per client process
  double seconds = 3;     // measured load phase per client count
  int interval_ms = 0;    // 0: closed loop (capacity); else each connection sends once per interval
  int get_percent = 20;   // share of try_get (the launcher's poll) in the mix; the rest are sets
  int max_seconds = 300;  // the whole run; SIGALRM ends it past this
  int connect_timeout_s = 60;
  int server_max_clients = 0;  // StoreServerOptions::max_clients; 0: room for every connection
  int idle_per_client = 0;     // extra connections per sending one that only connect (as a
                               // watchdog's report connection is, until a hang)
};

// What a client process sends back through its result pipe (a plain struct: same binary).
struct ChildResult {
  int64_t connected = 0;  // all connections, the idle ones included
  int64_t sending = 0;    // connections that send the request mix
  int64_t requests = 0;
  int64_t errors = 0;
  int64_t elapsed_ns = 0;
  int64_t hist[kBuckets] = {};
};

int bucket_of(int64_t ns) {
  if (ns < 1000) return 0;
  const int b = 1 + static_cast<int>(std::log(double(ns) / 1000.0) / std::log(kBucketRatio));
  return std::min(b, kBuckets - 1);
}

/// Upper edge of bucket b, in µs.
double bucket_upper_us(int b) { return std::pow(kBucketRatio, b); }

double percentile_us(const int64_t* hist, double q) {
  int64_t total = 0;
  for (int b = 0; b < kBuckets; ++b) total += hist[b];
  if (total == 0) return 0;
  const auto rank = static_cast<int64_t>(std::ceil(q * double(total)));
  int64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    seen += hist[b];
    if (seen >= rank) return bucket_upper_us(b);
  }
  return bucket_upper_us(kBuckets - 1);
}

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "store_load_bench: %s\n", why.c_str());
  std::exit(1);
}

std::vector<int> parse_list(const std::string& text) {
  std::vector<int> out;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) out.push_back(std::stoi(part));
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(a + " needs a value");
      return argv[++i];
    };
    if (a == "--clients") {
      o.clients = parse_list(value());
    } else if (a == "--procs") {
      o.procs = std::stoi(value());
    } else if (a == "--threads") {
      o.threads = std::stoi(value());
    } else if (a == "--seconds") {
      o.seconds = std::stod(value());
    } else if (a == "--interval-ms") {
      o.interval_ms = std::stoi(value());
    } else if (a == "--get-percent") {
      o.get_percent = std::stoi(value());
    } else if (a == "--max-seconds") {
      o.max_seconds = std::stoi(value());
    } else if (a == "--server-max-clients") {
      o.server_max_clients = std::stoi(value());
    } else if (a == "--idle-per-client") {
      o.idle_per_client = std::stoi(value());
    } else {
      die("unknown flag " + a +
          "; flags: --clients N[,N...] --procs P --threads T --seconds S --interval-ms I "
          "--get-percent G --max-seconds M --server-max-clients K --idle-per-client K");
    }
  }
  if (o.clients.empty() || o.procs < 1 || o.threads < 1 || o.seconds <= 0 || o.interval_ms < 0 ||
      o.get_percent < 0 || o.get_percent > 100 || o.max_seconds < 1 || o.idle_per_client < 0) {
    die("bad flag values (need clients, procs, threads >= 1, seconds > 0, 0 <= get-percent <= "
        "100)");
  }
  for (int c : o.clients) {
    if (c < o.procs * o.threads) die("--clients must be at least procs * threads");
  }
  return o;
}

int64_t vm_rss_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

int open_fds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) return -1;
  int n = 0;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n - 1;  // the directory stream's own descriptor
}

double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

/// Writes all of `n` bytes; false when the pipe is gone.
bool write_all(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= size_t(w);
  }
  return true;
}

/// Reads exactly `n` bytes before `deadline`; false on timeout, error or end of file.
bool read_all(int fd, void* data, size_t n, Clock::time_point deadline) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    const int r = ::poll(&pfd, 1, int(std::min<int64_t>(left, 1000)));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return false;
    if (r == 0) continue;
    const ssize_t got = ::read(fd, p, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got;
    n -= size_t(got);
  }
  return true;
}

// ------------------------------------------------------------------------------------------------
// Client process

/// One client process: `count` connections with global ids from `first_id`, driven by
/// options.threads threads. Protocol with the parent (each step bounded by a deadline):
/// 1. read the server's port; 2. connect every client (each sets its progress key once, as a
/// watchdog's first publication does) and its idle companions, and write how many connected (all,
/// sending); 3. read the start byte; 4. send the request mix for options.seconds and write a
/// ChildResult.
int run_child(const Options& o, int count, int first_id, int go_fd, int result_fd) {
  uint16_t port = 0;
  const auto setup_deadline = Clock::now() + std::chrono::seconds(o.connect_timeout_s + 30);
  if (!read_all(go_fd, &port, sizeof port, setup_deadline)) return 2;

  std::vector<std::unique_ptr<dist::StoreClient>> clients(count);
  std::vector<std::unique_ptr<dist::StoreClient>> idle(size_t(count) * o.idle_per_client);
  std::atomic<int64_t> errors{0};
  std::mutex first_error_mu;
  std::string first_error;
  auto record_error = [&](const std::exception& e) {
    if (errors.fetch_add(1) == 0) {
      std::lock_guard lock(first_error_mu);
      first_error = e.what();
    }
  };
  auto key_of = [&](int i) { return "dtrain/progress/0/" + std::to_string(first_id + i); };
  {
    std::vector<std::thread> threads;
    for (int t = 0; t < o.threads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = t; i < count; i += o.threads) {
          try {
            dist::StoreClientOptions co;
            co.host = "127.0.0.1";
            co.port = port;
            co.token = kToken;
            co.connect_timeout = std::chrono::seconds(o.connect_timeout_s);
            co.request_timeout = std::chrono::seconds(10);
            auto c = std::make_unique<dist::StoreClient>(co);
            c->set(key_of(i), "0 0");
            clients[i] = std::move(c);
            for (int k = 0; k < o.idle_per_client; ++k) {
              idle[size_t(i) * o.idle_per_client + k] = std::make_unique<dist::StoreClient>(co);
            }
          } catch (const std::exception& e) {
            record_error(e);
          }
        }
      });
    }
    for (auto& th : threads) th.join();
  }
  ChildResult result;
  for (const auto& c : clients) result.sending += c ? 1 : 0;
  result.connected = result.sending;
  for (const auto& c : idle) result.connected += c ? 1 : 0;
  const int64_t counts[2] = {result.connected, result.sending};
  if (!write_all(result_fd, counts, sizeof counts)) return 2;
  char start = 0;
  if (!read_all(go_fd, &start, 1, Clock::now() + std::chrono::seconds(60))) return 2;

  // Load phase: each thread owns the clients i with i % threads == t.
  std::vector<ChildResult> per_thread(o.threads);
  const auto begin = Clock::now();
  const auto end =
      begin + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds));
  const auto interval = milliseconds(o.interval_ms);
  {
    std::vector<std::thread> threads;
    for (int t = 0; t < o.threads; ++t) {
      threads.emplace_back([&, t] {
        ChildResult& r = per_thread[t];
        std::vector<int> mine;
        for (int i = t; i < count; i += o.threads) {
          if (clients[i]) mine.push_back(i);
        }
        if (mine.empty()) return;
        uint64_t op = 0;
        for (size_t k = 0;; ++k) {
          const int i = mine[k % mine.size()];
          if (interval.count() > 0) {
            // Paced like the watchdog: connection j of this thread is due at begin + (j / n + m)
            // intervals, spread evenly so that the thread's requests do not come in bursts.
            const size_t round = k / mine.size(), j = k % mine.size();
            const auto due = begin + interval * round + interval * j / mine.size();
            if (due >= end) break;
            std::this_thread::sleep_until(due);
          } else if (Clock::now() >= end) {
            break;
          }
          const bool get = int(op++ % 100) < o.get_percent;
          const auto t0 = Clock::now();
          try {
            if (get) {
              (void)clients[i]->try_get("launch/0/failed");  // the launcher's poll: missing
            } else {
              clients[i]->set(key_of(i), std::to_string(op) + " " + std::to_string(op));
            }
            ++r.requests;
          } catch (const std::exception& e) {
            ++r.errors;
            record_error(e);
          }
          const auto ns =
              std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
          ++r.hist[bucket_of(ns)];
        }
      });
    }
    for (auto& th : threads) th.join();
  }
  // Paced threads stop after their last due time, a little before `end`: the offered rate is
  // per the whole phase, so the achieved one is too.
  result.elapsed_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::max(Clock::now(), end) - begin)
          .count();
  for (const ChildResult& r : per_thread) {
    result.requests += r.requests;
    for (int b = 0; b < kBuckets; ++b) result.hist[b] += r.hist[b];
  }
  result.errors = errors.load();
  if (!first_error.empty()) {
    std::fprintf(stderr, "store_load_bench: client process %d: %lld error(s), the first: %s\n",
                 int(::getpid()), static_cast<long long>(result.errors), first_error.c_str());
  }
  if (!write_all(result_fd, &result, sizeof result)) return 2;
  clients.clear();  // close the connections before exiting
  idle.clear();
  return 0;
}

// ------------------------------------------------------------------------------------------------
// Parent: the server and the measurements

struct Child {
  pid_t pid = -1;
  int go_fd = -1;      // parent writes
  int result_fd = -1;  // parent reads
  int count = 0;
};

struct Row {
  int clients = 0;
  int64_t connected = 0, sending = 0;
  double connect_s = 0;
  double requests_per_s = 0;
  double p50_us = 0, p99_us = 0;
  double server_cpu_percent = 0;
  double server_cpu_us_per_request = 0;  // less sensitive than req/s to other load on the cores
  double rss_kib_per_client = 0, rss_after_load_kib_per_client = 0;
  double fds_per_client = 0;
  int64_t errors = 0;
  bool ok = false;
};

void end_children(std::vector<Child>& children) {
  for (Child& c : children) {
    if (c.go_fd >= 0) ::close(c.go_fd);
    if (c.result_fd >= 0) ::close(c.result_fd);
    c.go_fd = c.result_fd = -1;
  }
  // Children exit once their pipes close or their load phase ends; give them 10 s, then kill.
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  for (Child& c : children) {
    if (c.pid < 0) continue;
    int status = 0;
    while (::waitpid(c.pid, &status, WNOHANG) == 0) {
      if (Clock::now() >= deadline) {
        ::kill(c.pid, SIGKILL);
        ::waitpid(c.pid, &status, 0);
        break;
      }
      pollfd none{-1, 0, 0};
      ::poll(&none, 0, 20);  // the child's exit has no descriptor to wait on here
    }
    c.pid = -1;
  }
}

Row measure(const Options& o, int total_clients) {
  Row row;
  row.clients = total_clients;
  // 1. Fork the client processes first, while this process has one thread (the previous
  //    point's server thread has been joined): fork copies only the calling thread.
  std::vector<Child> children(o.procs);
  int first_id = 0;
  std::fflush(stdout);  // or the children would print what is buffered again
  for (int p = 0; p < o.procs; ++p) {
    const int count = total_clients / o.procs + (p < total_clients % o.procs ? 1 : 0);
    int go[2], res[2];
    if (::pipe2(go, O_CLOEXEC) != 0 || ::pipe2(res, O_CLOEXEC) != 0) die("pipe failed");
    const pid_t pid = ::fork();
    if (pid < 0) die("fork failed");
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the bench
      if (::getppid() == 1) ::_exit(2);    // the bench ended before prctl took effect
      ::close(go[1]);
      ::close(res[0]);
      for (int q = 0; q < p; ++q) {
        ::close(children[q].go_fd);
        ::close(children[q].result_fd);
      }
      ::_exit(run_child(o, count, first_id, go[0], res[1]));
    }
    ::close(go[0]);
    ::close(res[1]);
    children[p] = {pid, go[1], res[0], count};
    first_id += count;
  }
  // 2. The server, as the launcher starts it but (unless --server-max-clients says otherwise)
  //    with room for every connection: the default max_clients is 1024.
  dist::StoreServerOptions so;
  so.bind_address = "127.0.0.1";
  so.token = kToken;
  so.max_clients = o.server_max_clients > 0 ? o.server_max_clients
                                            : total_clients * (1 + o.idle_per_client) + 16;
  auto server = std::make_unique<dist::StoreServer>(so);
  const int64_t rss0 = vm_rss_kib();
  const int fds0 = open_fds();
  const uint16_t port = server->port();
  const auto connect_begin = Clock::now();
  for (Child& c : children) write_all(c.go_fd, &port, sizeof port);
  const auto connect_deadline = connect_begin + std::chrono::seconds(o.connect_timeout_s + 30);
  for (Child& c : children) {
    int64_t n[2] = {0, 0};
    if (!read_all(c.result_fd, n, sizeof n, connect_deadline)) {
      std::fprintf(stderr, "store_load_bench: a client process did not report its connections\n");
      end_children(children);
      return row;
    }
    row.connected += n[0];
    row.sending += n[1];
  }
  row.connect_s = std::chrono::duration<double>(Clock::now() - connect_begin).count();
  const int64_t rss1 = vm_rss_kib();
  const int fds1 = open_fds();
  // 3. The load phase.
  const double cpu0 = cpu_seconds();
  const auto load_begin = Clock::now();
  for (Child& c : children) write_all(c.go_fd, "s", 1);
  ChildResult sum;
  const auto result_deadline = Clock::now() + std::chrono::seconds(int(o.seconds) + 40);
  double rate = 0;
  for (Child& c : children) {
    auto r = std::make_unique<ChildResult>();
    if (!read_all(c.result_fd, r.get(), sizeof *r, result_deadline)) {
      std::fprintf(stderr, "store_load_bench: a client process did not report its results\n");
      end_children(children);
      return row;
    }
    sum.requests += r->requests;
    sum.errors += r->errors;
    for (int b = 0; b < kBuckets; ++b) sum.hist[b] += r->hist[b];
    if (r->elapsed_ns > 0) rate += double(r->requests) * 1e9 / double(r->elapsed_ns);
  }
  const double load_s = std::chrono::duration<double>(Clock::now() - load_begin).count();
  const double cpu1 = cpu_seconds();
  const int64_t rss2 = vm_rss_kib();
  end_children(children);
  server.reset();
  row.requests_per_s = rate;
  row.p50_us = percentile_us(sum.hist, 0.50);
  row.p99_us = percentile_us(sum.hist, 0.99);
  row.server_cpu_percent = 100.0 * (cpu1 - cpu0) / load_s;
  if (sum.requests > 0) row.server_cpu_us_per_request = (cpu1 - cpu0) * 1e6 / double(sum.requests);
  if (row.connected > 0) {
    row.rss_kib_per_client = double(rss1 - rss0) / double(row.connected);
    row.rss_after_load_kib_per_client = double(rss2 - rss0) / double(row.connected);
    row.fds_per_client = double(fds1 - fds0) / double(row.connected);
  }
  row.errors = sum.errors;
  row.ok = true;
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  // Bounded as a whole: past max_seconds SIGALRM ends the bench, and the client processes follow
  // (PR_SET_PDEATHSIG).
  ::alarm(unsigned(o.max_seconds));
  ::signal(SIGPIPE, SIG_IGN);

  // Every connection costs a descriptor in the server (this process) and one in a client process.
  rlimit lim{};
  ::getrlimit(RLIMIT_NOFILE, &lim);
  const rlim_t soft_before = lim.rlim_cur;
  if (lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) ::getrlimit(RLIMIT_NOFILE, &lim);
  }
  std::printf("open files (ulimit -n): soft %llu, hard %llu; %s %llu\n",
              static_cast<unsigned long long>(soft_before),
              static_cast<unsigned long long>(lim.rlim_max),
              soft_before < lim.rlim_cur ? "raised the soft limit to"
                                         : "the soft limit stays (already the hard limit) at",
              static_cast<unsigned long long>(lim.rlim_cur));
  std::printf(
      "%d client process(es) x %d thread(s); %s; %d%% try_get, %d%% set; %.1f s per point\n",
      o.procs, o.threads,
      o.interval_ms > 0
          ? ("each connection sends one request every " + std::to_string(o.interval_ms) + " ms")
                .c_str()
          : "closed loop (each thread sends its next request when the last is answered)",
      o.get_percent, 100 - o.get_percent, o.seconds);
  std::fflush(stdout);

  std::vector<Row> rows;
  for (int clients : o.clients) {
    const rlim_t needed = rlim_t(clients) * (1 + o.idle_per_client) + 64;
    if (lim.rlim_cur != RLIM_INFINITY && needed > lim.rlim_cur) {
      std::printf("%d clients: skipped, the server would need %llu descriptors (limit %llu)\n",
                  clients, static_cast<unsigned long long>(needed),
                  static_cast<unsigned long long>(lim.rlim_cur));
      continue;
    }
    rows.push_back(measure(o, clients));
    const Row& r = rows.back();
    if (!r.ok) {
      std::printf("%d clients: failed (see above)\n", clients);
      continue;
    }
    std::printf("%d clients: %lld connections (%lld sending) in %.2f s; %.0f requests/s\n", clients,
                static_cast<long long>(r.connected), static_cast<long long>(r.sending), r.connect_s,
                r.requests_per_s);
    std::fflush(stdout);
  }

  std::printf(
      "\n| connections | requests/s | p50 µs | p99 µs | server CPU %% | server CPU µs/request | "
      "server RSS KiB/conn (connected / after load) | server fds/conn | connect s | errors |\n"
      "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const Row& r : rows) {
    if (!r.ok) continue;
    // With --idle-per-client: "all (sending)".
    const std::string conns =
        std::to_string(r.connected) +
        (r.sending != r.connected ? " (" + std::to_string(r.sending) + " sending)" : "");
    std::printf("| %s | %.0f | %.0f | %.0f | %.0f | %.1f | %.1f / %.1f | %.2f | %.2f | %lld |\n",
                conns.c_str(), r.requests_per_s, r.p50_us, r.p99_us, r.server_cpu_percent,
                r.server_cpu_us_per_request, r.rss_kib_per_client, r.rss_after_load_kib_per_client,
                r.fds_per_client, r.connect_s, static_cast<long long>(r.errors));
  }
  return 0;
}
