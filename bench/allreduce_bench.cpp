// All-reduce bus bandwidth of dtrain's mpi backend against raw MPI_Allreduce on the same buffer,
// of the tcp backend (what `dtrain launch` workers use) and of a shared-memory buffer
// (allocate_symmetric: what DDP's buckets are when ranks share a host) in the same processes,
// interleaved in one run, 4 KiB to 256 MiB of float32. Each dtrain path is timed twice: as
// all_reduce(t)->wait() (handed to the communicator's thread) and as all_reduce_now(t) (run on the
// calling thread, for callers that wait at once). Prints a Markdown table on rank 0; the ratio
// columns are MPI_Allreduce's time over dtrain's (1.00: as fast as MPI, 0.50: twice as long).
// Run: OMP_NUM_THREADS=1 mpirun -n 2 build/bench/allreduce_bench [max_mib] (see
// docs/performance.md)
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "dtrain/distributed/backends/mpi/mpi_communicator.h"
#include "dtrain/distributed/backends/tcp/tcp_communicator.h"

using namespace dtrain;

namespace {

using Clock = std::chrono::steady_clock;

/// Seconds for `reps` back-to-back calls of op, as seen by the slowest rank: a barrier lines the
/// ranks up first, and the max over ranks is what a synchronous step would wait for.
template <class Op>
double timed(int reps, Op&& op) {
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = Clock::now();
  for (int i = 0; i < reps; ++i) op();
  double mine = std::chrono::duration<double>(Clock::now() - start).count(), slowest = 0;
  MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return slowest / reps;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string human(int64_t bytes) {
  if (bytes >= (1 << 20)) return std::to_string(bytes >> 20) + " MiB";
  return std::to_string(bytes >> 10) + " KiB";
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t max_bytes = (argc > 1 ? std::atoll(argv[1]) : 256) << 20;
  auto comm = dist::MpiCommunicator::world();  // initialises MPI with MPI_THREAD_MULTIPLE
  const int n = comm->size();
  const double bus_factor = 2.0 * (n - 1) / n;  // nccl-tests' all-reduce bus bandwidth
  // The tcp group finds its peers through a Store that rank 0 hosts; MPI tells the others its port.
  std::unique_ptr<dist::StoreServer> server;
  int port = 0;
  if (comm->rank() == 0) {
    dist::StoreServerOptions so;
    so.token = "allreduce-bench";
    server = std::make_unique<dist::StoreServer>(so);
    port = server->port();
  }
  MPI_Bcast(&port, 1, MPI_INT, 0, MPI_COMM_WORLD);
  dist::StoreClientOptions co;
  co.port = static_cast<uint16_t>(port);
  co.token = "allreduce-bench";
  dist::TcpCommunicator tcp(std::make_shared<dist::StoreClient>(co), comm->rank(), n);
  if (comm->rank() == 0) {
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int length = 0;
    MPI_Get_library_version(version, &length);
    std::string v(version, length);
    std::printf("all_reduce(sum) float32 on %d ranks; %s\n\n", n,
                v.substr(0, v.find('\n')).c_str());
    std::printf(
        "| size | dtrain mpi algbw GB/s | dtrain mpi busbw GB/s | MPI_Allreduce algbw GB/s | "
        "MPI_Allreduce busbw GB/s | dtrain mpi / MPI | dtrain tcp busbw GB/s | tcp / MPI | "
        "shared memory busbw GB/s | shared / MPI | MPI_Allreduce us | mpi now / MPI | "
        "tcp now / MPI | shared now / MPI |\n");
    std::printf(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        "---: | ---: |\n");
  }
  for (int64_t bytes = 4 << 10; bytes <= max_bytes; bytes *= 4) {
    Tensor t = zeros({bytes / 4});  // zeros stay zeros: no overflow over repetitions
    void* buf = t.data_ptr();
    // About 256 MiB of traffic per batch, 2..200 calls; the first batch of each is a warm-up.
    const int reps = static_cast<int>(std::clamp<int64_t>((int64_t{256} << 20) / bytes, 2, 200));
    const int batches = bytes >= (64 << 20) ? 5 : 9;
    auto run_dtrain = [&] { comm->all_reduce(t)->wait(); };
    auto run_tcp = [&] { tcp.all_reduce(t)->wait(); };
    Tensor shared = tcp.allocate_symmetric(bytes / 4, DType::kFloat32);  // zeros too
    auto run_shared = [&] { tcp.all_reduce(shared)->wait(); };
    auto run_dtrain_now = [&] { comm->all_reduce_now(t); };
    auto run_tcp_now = [&] { tcp.all_reduce_now(t); };
    auto run_shared_now = [&] { tcp.all_reduce_now(shared); };
    auto run_mpi = [&] {
      MPI_Allreduce(MPI_IN_PLACE, buf, static_cast<int>(bytes / 4), MPI_FLOAT, MPI_SUM,
                    MPI_COMM_WORLD);
    };
    timed(1, run_dtrain);
    timed(1, run_mpi);
    timed(1, run_tcp);
    timed(1, run_shared);
    timed(1, run_dtrain_now);
    timed(1, run_tcp_now);
    timed(1, run_shared_now);
    // Interleaved batches, so drift in the machine's load affects every side alike.
    std::vector<double> dtrain_s, mpi_s, tcp_s, shared_s, dtrain_now_s, tcp_now_s, shared_now_s;
    for (int b = 0; b < batches; ++b) {
      dtrain_s.push_back(timed(reps, run_dtrain));
      mpi_s.push_back(timed(reps, run_mpi));
      tcp_s.push_back(timed(reps, run_tcp));
      shared_s.push_back(timed(reps, run_shared));
      dtrain_now_s.push_back(timed(reps, run_dtrain_now));
      tcp_now_s.push_back(timed(reps, run_tcp_now));
      shared_now_s.push_back(timed(reps, run_shared_now));
    }
    const double d = median(dtrain_s), m = median(mpi_s), c = median(tcp_s), h = median(shared_s);
    const double dn = median(dtrain_now_s), cn = median(tcp_now_s), hn = median(shared_now_s);
    if (comm->rank() == 0) {
      const double d_alg = bytes / d / 1e9, m_alg = bytes / m / 1e9;
      std::printf(
          "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f | %.2f | "
          "%.2f | %.2f |\n",
          human(bytes).c_str(), d_alg, d_alg * bus_factor, m_alg, m_alg * bus_factor, m / d,
          bytes / c / 1e9 * bus_factor, m / c, bytes / h / 1e9 * bus_factor, m / h, m * 1e6, m / dn,
          m / cn, m / hn);
      std::fflush(stdout);
    }
  }
  return 0;
}
