// The worker's side of the launcher's liveness check: while a dist::Job lives in a process that
// `dtrain launch` started (DTRAIN_HEARTBEAT_FD set), a thread sends a line with this process's
// collective progress every DTRAIN_HEARTBEAT_INTERVAL_MS. A launched program that never builds a
// Job sends none, and the launcher then watches only its exit.
#pragma once

namespace dtrain::dist {

/// Sends heartbeats until destroyed; does nothing outside `dtrain launch`.
class WorkerHeartbeat {
 public:
  WorkerHeartbeat();
  ~WorkerHeartbeat();
  WorkerHeartbeat(const WorkerHeartbeat&) = delete;
  WorkerHeartbeat& operator=(const WorkerHeartbeat&) = delete;

 private:
  struct Impl;
  Impl* impl_ = nullptr;
};

}  // namespace dtrain::dist
