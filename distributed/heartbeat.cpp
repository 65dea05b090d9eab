// Heartbeats from a launched worker to its launcher.
#include "dtrain/distributed/heartbeat.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

#include "dtrain/distributed/host_communicator.h"

namespace dtrain::dist {

using std::chrono::milliseconds;

struct WorkerHeartbeat::Impl {
  int fd = -1;
  milliseconds interval{1000};
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::thread thread;
};

WorkerHeartbeat::WorkerHeartbeat() {
  const char* fd = std::getenv("DTRAIN_HEARTBEAT_FD");
  if (fd == nullptr || *fd == '\0') return;
  impl_ = new Impl();
  impl_->fd = std::atoi(fd);
  if (const char* ms = std::getenv("DTRAIN_HEARTBEAT_INTERVAL_MS")) {
    impl_->interval = milliseconds(std::max(10, std::atoi(ms)));
  }
  impl_->thread = std::thread([impl = impl_] {
    std::unique_lock lock(impl->mu);
    do {
      const std::string line = collective_progress() + "\n";
      // MSG_NOSIGNAL: a launcher that is gone must not kill this process with SIGPIPE.
      if (::send(impl->fd, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0 &&
          errno == EPIPE) {
        return;
      }
    } while (!impl->cv.wait_for(lock, impl->interval, [&] { return impl->stop; }));
  });
}

WorkerHeartbeat::~WorkerHeartbeat() {
  if (!impl_) return;
  {
    std::lock_guard lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  impl_->thread.join();
  delete impl_;
}

}  // namespace dtrain::dist
