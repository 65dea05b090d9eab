#include "dtrain/train/stop_signal.h"

#include <signal.h>

#include <atomic>
#include <mutex>
#include <thread>

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
    // A handler runs on the thread the kernel picks, and the kernel first writes the saved
    // registers (about 3 KiB with AVX-512) just below that thread's stack pointer. oneDNN's JIT
    // sgemm kernels (dnnl_sgemm; uxlfoundation/oneDNN#4845, fixed upstream by #4855) point rsp into
    // a heap workspace while they run, so a stop signal during a matmul wrote that frame into the
    // heap ("corrupted size vs. prev_size while consolidating" at a later free). So the signals
    // are blocked on this thread and every thread it starts from now on (training, replicas,
    // OpenMP, loader, communicator), and one thread that runs no kernel takes them. Threads
    // started before keep the handler; none of them runs a matmul.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGUSR1);
    ::pthread_sigmask(SIG_BLOCK, &stop, nullptr);
    // Detached: it holds nothing, and the process may end while it waits.
    std::thread([stop] {
      for (;;) {
        const int signo = ::sigwaitinfo(&stop, nullptr);
        if (signo > 0) record_stop_signal(signo);  // -1: EINTR from another signal
      }
    }).detach();
  });
}

int stop_signal() { return g_stop_signal.load(std::memory_order_relaxed); }

void request_stop(int signo) { record_stop_signal(signo); }

void clear_stop_request() { g_stop_signal.store(0); }

}  // namespace dtrain::train
