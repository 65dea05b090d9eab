// The nccl backend on the GPUs of this machine, against the values the local backend computes.
// Skipped, with the reason, where the build has no NCCL or the machine no GPU.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/tensor.h"

#if defined(DTRAIN_HAS_NCCL)
#include "dtrain/distributed/backends/local/local_communicator.h"
#include "dtrain/distributed/backends/nccl/nccl_communicator.h"
#endif

namespace dtrain {
namespace {

#if defined(DTRAIN_HAS_NCCL)
TEST(Nccl, GroupAllReduceOverEveryLocalGpuMatchesTheHostSum) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  const int n = cuda::device_count();
  std::vector<int> devices(n);
  for (int d = 0; d < n; ++d) devices[d] = d;
  auto comms = dist::NcclCommunicator::create_local(devices);
  std::vector<Tensor> tensors;
  for (int d = 0; d < n; ++d)
    tensors.push_back(full({1000}, d + 1.0, DType::kFloat32, Device::cuda(d)));
  for (auto& w : dist::NcclCommunicator::group_all_reduce(comms, tensors)) w->wait();
  const float expected = n * (n + 1) / 2.0f;
  for (int d = 0; d < n; ++d) {
    const auto v = tensors[d].to_vector<float>();
    EXPECT_EQ(v.front(), expected) << "cuda:" << d;
    EXPECT_EQ(v.back(), expected) << "cuda:" << d;
  }
}

TEST(Nccl, SingleGpuCollectivesKeepValuesAndCountSequences) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  auto comms = dist::NcclCommunicator::create_local({0});
  Tensor t = from_vector<float>({1, 2, 3}, {}, Device::cuda(0));
  dist::WorkPtr a = comms[0]->all_reduce(t);
  dist::WorkPtr b = comms[0]->broadcast(t);
  b->wait();
  // The host read waits for the default stream, which wait() ordered after b (and so after a).
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1, 2, 3}));
  EXPECT_TRUE(a->is_completed());
  EXPECT_EQ(a->info().sequence + 1, b->info().sequence);
  Tensor host = zeros({3});
  EXPECT_THROW(comms[0]->all_reduce(host), ValueError);  // host tensors belong to mpi/local
}
TEST(Nccl, CreatedThroughAHostCommunicatorWithoutAStore) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  auto host = dist::make_local_group(1);
  auto nccl = dist::NcclCommunicator::create(*host[0], 0);
  EXPECT_EQ(nccl->device(), 0);
  Tensor t = from_vector<float>({1, 2}, {}, Device::cuda(0));
  nccl->all_reduce(t, {dist::ReduceOp::kMax})->wait();
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1, 2}));
}

TEST(Nccl, WaitOrdersTheDefaultStreamAfterTheCollectiveWithoutBlockingTheHost) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  auto comm = dist::NcclCommunicator::create_local({0})[0];
  Tensor warm = ones({4}, DType::kFloat32, Device::cuda(0));
  comm->all_reduce(warm)->wait();
  warm.to_vector<float>();  // NCCL's connections are set up before the default stream is held
  // all_gather on one rank is a copy from `in` to `out`: `seen` copies `out` behind wait(), so it
  // holds `in`'s values only if the default stream waited for the collective.
  Tensor in = full({4096}, 7.0, DType::kFloat32, Device::cuda(0));
  Tensor out = zeros({4096}, DType::kFloat32, Device::cuda(0));
  Tensor seen = zeros({4096}, DType::kFloat32, Device::cuda(0));
  dist::WorkPtr work;
  {
    cuda::DefaultStreamHold hold(0);  // NCCL's stream waits for the default one: pending
    work = comm->all_gather(in, out);
    work->wait(std::chrono::seconds(60));
    EXPECT_FALSE(work->is_completed())
        << "wait() returned only once the collective had run: it blocked the host";
    seen.copy_(out);  // device to device on the default stream; no host wait
  }
  const std::vector<float> expected(4096, 7.0f);
  EXPECT_EQ(seen.to_vector<float>(), expected) << "a copy queued after wait() ran before NCCL";
  EXPECT_EQ(out.to_vector<float>(), expected);
  EXPECT_TRUE(work->is_completed());
}

TEST(Nccl, WaitingTwiceAndWaitingOnACompletedCollectiveAreHarmless) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  auto comm = dist::NcclCommunicator::create_local({0})[0];
  Tensor t = full({8}, 3.0, DType::kFloat32, Device::cuda(0));
  dist::WorkPtr work = comm->all_reduce(t, {dist::ReduceOp::kMax});
  work->wait();
  work->wait();
  cuda::synchronize(0);
  ASSERT_TRUE(work->is_completed());
  work->wait(std::chrono::milliseconds(0));  // already done: no deadline to miss
  Tensor next = full({2}, 5.0, DType::kFloat32, Device::cuda(0));
  comm->all_reduce(next)->wait();  // a zero timeout on a done collective aborted nothing
  EXPECT_EQ(next.to_vector<float>(), (std::vector<float>{5, 5}));
  EXPECT_EQ(t.to_vector<float>(), std::vector<float>(8, 3.0f));
}

/// Runs fn(p) on a thread per process p and returns what each threw ("" when nothing).
std::vector<std::string> on_threads(int n, const std::function<void(int)>& fn) {
  std::vector<std::string> errors(n);
  std::vector<std::thread> threads;
  for (int p = 0; p < n; ++p) {
    threads.emplace_back([&errors, &fn, p] {
      try {
        fn(p);
      } catch (const std::exception& e) {
        errors[p] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

TEST(NcclAcrossProcesses, ProcessesDrivingDifferentGpuCountsAreRefusedOnTheHost) {
  // Refused by the host check before NCCL or a GPU is touched: runs without a GPU.
  auto host = dist::make_local_group(2);
  const std::vector<std::string> errors = on_threads(2, [&host](int p) {
    dist::NcclCommunicator::create_across_processes(
        *host[p], p == 0 ? std::vector<int>{0} : std::vector<int>{0, 1});
  });
  for (int p = 0; p < 2; ++p) {
    EXPECT_NE(errors[p].find("every process must drive the same number of GPUs"), std::string::npos)
        << "process " << p << ": " << errors[p];
  }
}

/// `processes` host ranks (threads) each drive `per_process` GPUs of this machine; every (process,
/// GPU) pair all-reduces its rank + 1 and must get the sum over all pairs.
void expect_sum_over_every_process_and_gpu(int processes, int per_process) {
  auto host = dist::make_local_group(processes);
  std::vector<std::vector<std::shared_ptr<dist::NcclCommunicator>>> comms(processes);
  const std::vector<std::string> created = on_threads(processes, [&](int p) {
    std::vector<int> devices;
    for (int i = 0; i < per_process; ++i) devices.push_back(p * per_process + i);
    comms[p] = dist::NcclCommunicator::create_across_processes(*host[p], devices);
  });
  for (int p = 0; p < processes; ++p) ASSERT_EQ(created[p], "") << "process " << p;
  const int size = processes * per_process;
  std::vector<std::shared_ptr<dist::NcclCommunicator>> by_rank(size);
  for (const auto& mine : comms) {
    for (const auto& c : mine) {
      ASSERT_EQ(c->size(), size);
      by_rank.at(c->rank()) = c;
    }
  }
  for (int p = 0; p < processes; ++p) {
    for (int i = 0; i < per_process; ++i) {
      EXPECT_EQ(by_rank[p * per_process + i]->device(), p * per_process + i);
    }
  }
  std::vector<std::vector<float>> got(size);
  const std::vector<std::string> reduced = on_threads(size, [&](int r) {
    cuda::set_device(by_rank[r]->device());
    Tensor t = full({64}, r + 1.0, DType::kFloat32, Device::cuda(by_rank[r]->device()));
    by_rank[r]->all_reduce(t)->wait();
    got[r] = t.to_vector<float>();
  });
  const float expected = size * (size + 1) / 2.0f;
  for (int r = 0; r < size; ++r) {
    EXPECT_EQ(reduced[r], "") << "rank " << r;
    EXPECT_EQ(got[r], std::vector<float>(64, expected)) << "rank " << r;
  }
}

TEST(NcclAcrossProcesses, OneProcessDrivingEveryGpuSumsOverAllOfThem) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  expect_sum_over_every_process_and_gpu(1, cuda::device_count());
}

TEST(NcclAcrossProcesses, TwoProcessesOfSeveralGpusSumOverEveryPair) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  if (cuda::device_count() < 2) GTEST_SKIP() << "needs two GPUs; this machine has one";
  expect_sum_over_every_process_and_gpu(2, cuda::device_count() / 2);
}
#else
TEST(Nccl, NotBuilt) {
  GTEST_SKIP()
      << "this build has no nccl backend (configure with CUDA and NCCL under the CUDA root)";
}
#endif

}  // namespace
}  // namespace dtrain
