// A job where one rank stops participating: run under mpirun by watchdog_check.sh. Rank 0 hosts
// the Store; every rank runs a watchdog with a 2 s timeout; rank 1 sleeps instead of joining
// collective #3, so the others must report it by number and stop the job.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>

#include "dtrain/distributed/backends/mpi/mpi_communicator.h"
#include "dtrain/distributed/store.h"
#include "dtrain/distributed/watchdog.h"

using namespace dtrain;

int main() {
  auto comm = dist::MpiCommunicator::world();
  std::unique_ptr<dist::StoreServer> server;
  Tensor port = zeros({1}, DType::kInt64);
  if (comm->rank() == 0) {
    server = std::make_unique<dist::StoreServer>(dist::StoreServerOptions{});  // token from env
    port.data<int64_t>()[0] = server->port();
  }
  comm->broadcast(port)->wait();
  dist::StoreClientOptions client;
  client.port = static_cast<uint16_t>(port.data<int64_t>()[0]);
  auto store = std::make_shared<dist::StoreClient>(client);

  dist::WatchdogOptions options;
  options.timeout = std::chrono::seconds(2);
  options.stall_warning = std::chrono::seconds(1);
  options.poll = std::chrono::milliseconds(100);
  dist::Watchdog watchdog(comm->rank(), comm->size(), options, store);  // default: report, exit 3
  comm->add_observer(&watchdog);

  Tensor t = ones({1024});
  comm->all_reduce(t)->wait();  // collective #2 (after the broadcast): everyone is healthy
  if (comm->rank() == 1) {
    // The failure under test: this rank stalls (a stuck data loader, a debugger) for far longer
    // than the timeout. mpirun stops it when the other ranks exit.
    std::this_thread::sleep_for(std::chrono::seconds(60));
  }
  comm->all_reduce(t, {dist::ReduceOp::kSum, std::chrono::seconds(120)})
      ->wait(std::chrono::seconds(120));
  std::printf("rank %d: collective #2 finished, which it must not have\n", comm->rank());
  return 0;
}
