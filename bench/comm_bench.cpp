// Control and data plane micro-benchmarks that need no MPI: the local and tcp backends' all-reduce
// with 2 ranks against memcpy bandwidth, and the Store's request round trip on loopback.
// Run: build/bench/comm_bench (see docs/performance.md).
#include <benchmark/benchmark.h>

#include <cstring>
#include <thread>

#include "dtrain/distributed/backends/local/local_communicator.h"
#include "dtrain/distributed/backends/tcp/tcp_communicator.h"
#include "dtrain/distributed/store.h"

using namespace dtrain;

namespace {

// Bus bandwidth as nccl-tests defines it: algbw * 2 (n - 1) / n, with algbw = bytes / time.
void set_bus_bandwidth(benchmark::State& state, int64_t bytes, int ranks) {
  state.counters["busbw_GB/s"] = benchmark::Counter(
      static_cast<double>(bytes) * 2.0 * (ranks - 1) / ranks * state.iterations() / 1e9,
      benchmark::Counter::kIsRate);
}

/// Rank 1's side of a two-rank benchmark: as many all_reduces as the timed loop will run.
void run_peer(const benchmark::State& state, dist::Communicator& comm, Tensor& t) {
  for (benchmark::IterationCount i = 0; i < state.max_iterations; ++i) comm.all_reduce(t)->wait();
}

void BM_LocalAllReduce2Ranks(benchmark::State& state) {
  const int64_t bytes = state.range(0);
  auto comms = dist::make_local_group(2);
  Tensor a = ones({bytes / 4}), b = ones({bytes / 4});
  // Each rank on its own thread, as replicas run (a small all_reduce may complete inside the call).
  std::thread peer([&] { run_peer(state, *comms[1], b); });
  for (auto _ : state) comms[0]->all_reduce(a)->wait();
  peer.join();
  state.SetBytesProcessed(bytes * state.iterations());
  set_bus_bandwidth(state, bytes, 2);
}
BENCHMARK(BM_LocalAllReduce2Ranks)->RangeMultiplier(16)->Range(4 << 10, 64 << 20)->UseRealTime();

// Two tcp ranks over loopback sockets, as `dtrain launch` runs them (here as threads of one
// process, each with its own connections; the kernel copies are the same).
void BM_TcpAllReduce2Ranks(benchmark::State& state) {
  const int64_t bytes = state.range(0);
  dist::StoreServerOptions so;
  so.token = "bench-token";
  dist::StoreServer server(so);
  const auto client = [&] {
    dist::StoreClientOptions co;
    co.port = server.port();
    co.token = "bench-token";
    return std::make_shared<dist::StoreClient>(co);
  };
  std::unique_ptr<dist::TcpCommunicator> peer;
  std::thread join([&] { peer = std::make_unique<dist::TcpCommunicator>(client(), 1, 2); });
  dist::TcpCommunicator self(client(), 0, 2);
  join.join();
  Tensor a = ones({bytes / 4}), b = ones({bytes / 4});
  std::thread peer_thread([&] { run_peer(state, *peer, b); });
  for (auto _ : state) self.all_reduce(a)->wait();
  peer_thread.join();
  state.SetBytesProcessed(bytes * state.iterations());
  set_bus_bandwidth(state, bytes, 2);
}
BENCHMARK(BM_TcpAllReduce2Ranks)->RangeMultiplier(16)->Range(4 << 10, 64 << 20)->UseRealTime();

void BM_MemcpySameSize(benchmark::State& state) {
  const int64_t bytes = state.range(0);
  std::vector<char> src(bytes, 1), dst(bytes);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(bytes * state.iterations());
}
BENCHMARK(BM_MemcpySameSize)->RangeMultiplier(16)->Range(4 << 10, 64 << 20)->UseRealTime();

void BM_StoreSetGetRoundTrip(benchmark::State& state) {
  dist::StoreServerOptions so;
  so.token = "bench-token";
  dist::StoreServer server(so);
  dist::StoreClientOptions co;
  co.port = server.port();
  co.token = "bench-token";
  dist::StoreClient client(co);
  const std::string value(static_cast<size_t>(state.range(0)), 'x');
  for (auto _ : state) {
    client.set("key", value);
    benchmark::DoNotOptimize(client.get("key"));
  }
  state.counters["round_trips/s"] =
      benchmark::Counter(2.0 * state.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_StoreSetGetRoundTrip)->Arg(16)->Arg(64 << 10)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
