#include "dtrain/train/stop_signal.h"

#include <signal.h>

#include <atomic>
#include <mutex>

namespace dtrain::train {
namespace {

std::atomic<int> g_stop_signal{0};

extern "C" void record_stop_signal(int signo) {
  int none = 0;
  // Only the first signal counts: a launcher and a scheduler may both deliver one.
  g_stop_signal.compare_exchange_strong(none, signo);
}

}  // namespace

void install_stop_signal_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action = {};
    action.sa_handler = record_stop_signal;
    sigemptyset(&action.sa_mask);
    // Restarted system calls: the loop polls the flag, so no read or poll needs to see EINTR.
    action.sa_flags = SA_RESTART;
    ::sigaction(SIGTERM, &action, nullptr);
    ::sigaction(SIGUSR1, &action, nullptr);
  });
}

int stop_signal() { return g_stop_signal.load(std::memory_order_relaxed); }

void request_stop(int signo) { record_stop_signal(signo); }

void clear_stop_request() { g_stop_signal.store(0); }

}  // namespace dtrain::train
