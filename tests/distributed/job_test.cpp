// dist::Job: the replica thread loop (every replica once, a failing replica aborts the others and
// its own error comes back), replica communicators, backend resolution from the JobSpec, the
// JobSpec read from a fake environment, and a real two-rank tcp job over a Store on loopback.
#include "dtrain/distributed/job.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/distributed/host_communicator.h"
#include "dtrain/distributed/registry.h"
#include "dtrain/distributed/store.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/tensor.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;
using Env = std::map<std::string, std::string>;

/// Long enough never to expire in a passing test: a test that relies on an abort must not be
/// rescued by the collective timing out instead.
constexpr std::chrono::seconds kLong(60);

dist::AllReduceOptions sum_within(dist::Timeout timeout) {
  dist::AllReduceOptions o;
  o.op = dist::ReduceOp::kSum;
  o.timeout = timeout;
  return o;
}

/// A JobSpec for rank `rank` of `size` processes on one machine, found by `source`.
dist::JobSpec spec_of(int rank, int size, const std::string& source,
                      const std::string& backend = "auto") {
  dist::JobSpec spec;
  spec.world.rank = rank;
  spec.world.size = size;
  spec.world.local_rank = rank;
  spec.world.local_size = size;
  spec.world.source = source;
  spec.backend = backend;
  return spec;
}

/// Only constructs the job: asking for world() would try to reach the other ranks.
std::string resolved_backend(const std::string& source, int size = 2,
                             const std::string& backend = "auto") {
  return dist::Job(spec_of(0, size, source, backend)).backend();
}

dist::JobSpec spec_from(const Env& env) {
  return dist::job_spec_from_env([&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

/// Counts the collectives that have started on the communicators it observes, so a test can wait
/// (bounded) until they are under way instead of sleeping.
class StartCounter final : public dist::CollectiveObserver {
 public:
  void on_start(int, const dist::CollectiveInfo&) override {
    {
      std::lock_guard lock(mu_);
      ++started_;
    }
    cv_.notify_all();
  }
  void on_finish(int, const dist::CollectiveInfo&) override {}
  /// True when `n` collectives have started within `timeout`.
  bool wait_for(int n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return started_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int started_ = 0;
};

/// Not a dtrain::Error, so it cannot be mistaken for the abort error the other replicas get.
struct ReplicaFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- run_replicas -------------------------------------------------------------------------------

TEST(JobRunReplicas, EveryReplicaRunsExactlyOnceOnAThreadOfItsOwn) {
  dist::Job job{dist::JobSpec{}};
  const std::thread::id caller = std::this_thread::get_id();
  for (int n : {2, 3, 8}) {
    std::vector<std::atomic<int>> runs(n);
    std::vector<std::thread::id> threads(n);
    std::atomic<int> out_of_range{0};
    job.run_replicas(n, [&](int replica) {
      if (replica < 0 || replica >= n) {
        ++out_of_range;
        return;
      }
      ++runs[replica];
      threads[replica] = std::this_thread::get_id();
    });
    EXPECT_EQ(out_of_range.load(), 0) << n << " replicas";
    for (int r = 0; r < n; ++r) {
      EXPECT_EQ(runs[r].load(), 1) << "replica " << r << " of " << n;
      EXPECT_NE(threads[r], caller) << "replica " << r << " of " << n << " ran on the caller";
    }
    // The threads are joined only after all of them ended, so their ids cannot be reused within
    // one call: distinct ids mean distinct threads.
    EXPECT_EQ(std::set<std::thread::id>(threads.begin(), threads.end()).size(), size_t(n));
  }
}

TEST(JobRunReplicas, OneReplicaRunsOnTheCallingThread) {
  dist::Job job{dist::JobSpec{}};
  int calls = 0, index = -1;
  std::thread::id ran_on;
  job.run_replicas(1, [&](int replica) {
    ++calls;
    index = replica;
    ran_on = std::this_thread::get_id();
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(index, 0);
  EXPECT_EQ(ran_on, std::this_thread::get_id());
}

TEST(JobRunReplicas, AnErrorIsRethrownAfterEveryOtherReplicaEnded) {
  dist::Job job{dist::JobSpec{}};  // no replica communicators: nothing to abort
  std::atomic<int> finished{0};
  try {
    job.run_replicas(4, [&](int replica) {
      if (replica == 2) throw ReplicaFailure("replica 2 failed on purpose");
      ++finished;
    });
    ADD_FAILURE() << "run_replicas returned normally";
  } catch (const ReplicaFailure& e) {
    EXPECT_STREQ(e.what(), "replica 2 failed on purpose");
  }
  EXPECT_EQ(finished.load(), 3);
}

TEST(JobRunReplicas, AFailingReplicaAbortsTheOthersAndItsOwnErrorIsRethrown) {
  StartCounter started;  // declared first: it outlives the communicators it observes
  dist::Job job{dist::JobSpec{}};
  std::vector<dist::CommunicatorPtr> comms = job.replica_communicators(3, false);
  ASSERT_EQ(comms.size(), 3u);
  std::vector<std::shared_ptr<dist::HostCommunicator>> observed;
  for (int r : {0, 2}) {
    auto async = std::dynamic_pointer_cast<dist::HostCommunicator>(comms[r]);
    ASSERT_NE(async, nullptr) << "replica " << r;
    async->add_observer(&started);
    observed.push_back(async);
  }

  std::vector<std::string> others_saw(3);
  bool others_started = false;
  const auto begin = Clock::now();
  try {
    job.run_replicas(3, [&](int replica) {
      if (replica == 1) {
        // Fail only once replicas 0 and 2 are in their all_reduce, waiting for this one.
        others_started = started.wait_for(2, std::chrono::seconds(20));
        throw ReplicaFailure("replica 1: batch 7 has no labels");
      }
      Tensor t = full({4}, 1.0);
      try {
        comms[replica]->all_reduce(t, sum_within(kLong))->wait(kLong);
        others_saw[replica] = "(the all_reduce completed)";
      } catch (const Error& e) {
        others_saw[replica] = e.message();
        throw;
      }
    });
    ADD_FAILURE() << "run_replicas returned normally";
  } catch (const ReplicaFailure& e) {
    EXPECT_STREQ(e.what(), "replica 1: batch 7 has no labels");
  } catch (const std::exception& e) {
    ADD_FAILURE() << "run_replicas rethrew another error than replica 1's: " << e.what();
  }
  const auto elapsed = Clock::now() - begin;
  for (const auto& c : observed) c->remove_observer(&started);

  EXPECT_TRUE(others_started) << "replicas 0 and 2 did not start their all_reduce within 20 s";
  // Without the abort, replicas 0 and 2 would wait out their 60 s collective timeout.
  EXPECT_LT(elapsed, std::chrono::seconds(30))
      << "run_replicas took "
      << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() << " ms";
  for (int r : {0, 2}) {
    EXPECT_THAT(others_saw[r], HasSubstr("replica 1 of this process failed")) << "replica " << r;
  }
}

// ---- replica communicators ----------------------------------------------------------------------

TEST(JobReplicas, ThreadReplicasFormOneLocalGroupThatSums) {
  dist::Job job{dist::JobSpec{}};
  std::vector<dist::CommunicatorPtr> comms = job.replica_communicators(3, false);
  ASSERT_EQ(comms.size(), 3u);
  for (int r = 0; r < 3; ++r) {
    ASSERT_NE(comms[r], nullptr);
    EXPECT_EQ(comms[r]->rank(), r);
    EXPECT_EQ(comms[r]->size(), 3);
    EXPECT_EQ(comms[r]->backend_name(), "local");
  }
  std::vector<std::vector<float>> sums(3);
  job.run_replicas(3, [&](int replica) {
    Tensor t = full({5}, replica + 1.0);
    comms[replica]->all_reduce(t, sum_within(kLong))->wait(kLong);
    sums[replica] = t.to_vector<float>();
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(sums[r], std::vector<float>(5, 6.f)) << "replica " << r;  // 1 + 2 + 3
  }
}

TEST(JobReplicas, CpuDevicesGiveALocalGroup) {
  dist::Job job{dist::JobSpec{}};
  std::vector<dist::CommunicatorPtr> comms =
      job.replica_communicators(std::vector<Device>{Device::cpu(), Device::cpu()});
  ASSERT_EQ(comms.size(), 2u);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(comms[r]->rank(), r);
    EXPECT_EQ(comms[r]->size(), 2);
    EXPECT_EQ(comms[r]->backend_name(), "local");
  }
}

TEST(JobReplicas, MixedOrRepeatedDevicesAreRefused) {
  dist::Job job{dist::JobSpec{}};
  const auto error_of = [&](const std::vector<Device>& devices) -> std::string {
    try {
      job.replica_communicators(devices);
    } catch (const ValueError& e) {
      return e.message();
    }
    return "(no error)";
  };
  EXPECT_THAT(error_of({Device::cpu(), Device::cuda(0)}), HasSubstr("mix cpu and cuda"));
  EXPECT_THAT(error_of({Device::cuda(0), Device::cpu()}), HasSubstr("mix cpu and cuda"));
  // Checked before whether this machine has GPUs at all.
  EXPECT_THAT(error_of({Device::cuda(0), Device::cuda(0)}), HasSubstr("name cuda:0 twice"));
}

// ---- a single process ---------------------------------------------------------------------------

TEST(Job, ASingleProcessIsALocalWorldOfOne) {
  dist::Job job{dist::JobSpec{}};
  EXPECT_EQ(job.backend(), "local");
  EXPECT_EQ(job.rank(), 0);
  EXPECT_EQ(job.world_size(), 1);
  EXPECT_TRUE(job.device().is_cpu()) << job.device().str();
  EXPECT_EQ(job.store_client(), nullptr);

  dist::CommunicatorPtr world = job.world();
  ASSERT_NE(world, nullptr);
  EXPECT_EQ(world->backend_name(), "local");
  EXPECT_EQ(world->rank(), 0);
  EXPECT_EQ(world->size(), 1);
  EXPECT_EQ(job.world().get(), world.get()) << "world() made a second communicator";

  std::vector<dist::CommunicatorPtr> replicas = job.replica_communicators(1, true);
  ASSERT_EQ(replicas.size(), 1u);
  EXPECT_EQ(replicas[0].get(), world.get());

  Tensor t = full({3}, 2.5);
  world->all_reduce(t, sum_within(kLong))->wait(kLong);
  EXPECT_EQ(t.to_vector<float>(), std::vector<float>(3, 2.5f));
}

// ---- backend resolution -------------------------------------------------------------------------

TEST(JobBackend, AutoIsTcpUnderDtrainLaunchAndMpiUnderMpirunOrSrun) {
  EXPECT_EQ(resolved_backend("dtrain"), "tcp");
  EXPECT_EQ(resolved_backend("cluster"), "tcp");
  EXPECT_EQ(resolved_backend("openmpi"), "mpi");
  EXPECT_EQ(resolved_backend("slurm"), "mpi");
  EXPECT_EQ(resolved_backend("pmix"), "mpi");
  // One process needs no other: whoever started it.
  EXPECT_EQ(resolved_backend("dtrain", 1), "local");
  EXPECT_EQ(resolved_backend("single", 1), "local");
}

TEST(JobBackend, AnExplicitBackendIsKept) {
  EXPECT_EQ(resolved_backend("openmpi", 2, "tcp"), "tcp");
  const auto names = dist::available_backends();
  if (std::find(names.begin(), names.end(), "mpi") != names.end()) {
    EXPECT_EQ(resolved_backend("dtrain", 2, "mpi"), "mpi");
  } else {
    try {
      dist::Job job(spec_of(0, 2, "dtrain", "mpi"));
      ADD_FAILURE() << "a build without MPI accepted backend mpi";
    } catch (const UnsupportedError& e) {
      EXPECT_THAT(e.message(), HasSubstr("backend 'mpi' is not available in this build"));
    }
  }
}

TEST(JobBackend, AnUnknownBackendIsRefusedListingTheAvailableOnes) {
  try {
    dist::Job job(spec_of(0, 2, "dtrain", "gloo"));
    ADD_FAILURE() << "backend gloo was accepted";
  } catch (const UnsupportedError& e) {
    EXPECT_THAT(e.message(), HasSubstr("'gloo'"));
    EXPECT_THAT(e.message(), HasSubstr("available: local, tcp"));
  }
}

// ---- the JobSpec from the environment -----------------------------------------------------------

TEST(JobSpecFromEnv, ReadsTheWorldStoreTokenAndRestartCountOfDtrainLaunch) {
  const dist::JobSpec spec = spec_from({{"DTRAIN_RANK", "1"},
                                        {"DTRAIN_WORLD_SIZE", "4"},
                                        {"DTRAIN_LOCAL_RANK", "1"},
                                        {"DTRAIN_LOCAL_WORLD_SIZE", "2"},
                                        {"DTRAIN_STORE_ADDR", "10.1.2.3:29511"},
                                        {"DTRAIN_STORE_TOKEN", "0123456789abcdef0123"},
                                        {"DTRAIN_RESTART_COUNT", "3"}});
  EXPECT_EQ(spec.world.rank, 1);
  EXPECT_EQ(spec.world.size, 4);
  EXPECT_EQ(spec.world.local_rank, 1);
  EXPECT_EQ(spec.world.local_size, 2);
  EXPECT_EQ(spec.world.source, "dtrain");
  EXPECT_EQ(spec.store_address, "10.1.2.3:29511");
  EXPECT_EQ(spec.store_token, "0123456789abcdef0123");
  EXPECT_EQ(spec.restart_count, 3);
  EXPECT_EQ(spec.backend, "auto");
}

TEST(JobSpecFromEnv, WithoutTheLauncherThereIsNoStore) {
  const dist::JobSpec spec = spec_from({});
  EXPECT_EQ(spec.world.size, 1);
  EXPECT_EQ(spec.world.source, "single");
  EXPECT_EQ(spec.store_address, "");
  EXPECT_EQ(spec.store_token, "");
  EXPECT_EQ(spec.restart_count, 0);
  EXPECT_EQ(dist::Job(spec).store_client(), nullptr);
}

TEST(JobSpecFromEnv, AMalformedRestartCountIsNamed) {
  try {
    spec_from({{"DTRAIN_RESTART_COUNT", "x1"}});
    ADD_FAILURE() << "DTRAIN_RESTART_COUNT=x1 was accepted";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("DTRAIN_RESTART_COUNT='x1'"));
  }
}

// ---- a real tcp job -----------------------------------------------------------------------------

TEST(JobTcp, TwoRanksJoinOneWorldThroughTheStore) {
  const std::string token = "job-test-token-3b7d90e1";
  dist::StoreServerOptions so;
  so.bind_address = "127.0.0.1";
  so.port = 0;
  so.token = token;
  dist::StoreServer server(so);  // outlives the rank threads
  const std::string address = "127.0.0.1:" + std::to_string(server.port());

  constexpr int kWorld = 2;
  std::vector<std::string> errors(kWorld);
  std::vector<std::vector<float>> sums(kWorld);
  std::vector<std::thread> ranks;
  for (int r = 0; r < kWorld; ++r) {
    ranks.emplace_back([&, r] {
      try {
        dist::JobSpec spec = spec_of(r, kWorld, "dtrain");
        spec.store_address = address;
        spec.store_token = token;
        dist::Job job(std::move(spec));
        EXPECT_EQ(job.backend(), "tcp");
        EXPECT_EQ(job.rank(), r);
        EXPECT_EQ(job.world_size(), kWorld);
        std::shared_ptr<dist::StoreClient> store = job.store_client();
        ASSERT_NE(store, nullptr);
        EXPECT_EQ(store->address(), address);

        dist::CommunicatorPtr world = job.world();  // collective: ends with the pre-flight
        ASSERT_NE(world, nullptr);
        EXPECT_EQ(world->backend_name(), "tcp");
        EXPECT_EQ(world->rank(), r);
        EXPECT_EQ(world->size(), kWorld);
        EXPECT_EQ(job.world().get(), world.get()) << "world() made a second communicator";

        Tensor t = full({6}, r + 1.0);
        world->all_reduce(t, sum_within(kLong))->wait(kLong);
        sums[r] = t.to_vector<float>();
        // Leaving the scope drops `world`, then destroys the job, which removes its watchdogs.
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_EQ(errors[r], "") << "rank " << r;
    EXPECT_EQ(sums[r], std::vector<float>(6, 3.f)) << "rank " << r;  // 1 + 2
  }
}

}  // namespace
}  // namespace dtrain
