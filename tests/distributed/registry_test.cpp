// The backend registry: what this build has, and the errors for backends it cannot create.
#include "dtrain/distributed/registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;

std::string error_of(std::string_view backend) {
  try {
    dist::create_world_communicator(backend, dist::JobSpec{}, nullptr);
  } catch (const UnsupportedError& e) {
    return e.message();
  }
  return "(no error)";
}

TEST(Registry, ListsLocalFirstAndMpiWhenBuilt) {
  const auto names = dist::available_backends();
  ASSERT_FALSE(names.empty());
  EXPECT_EQ(names[0], "local");
#ifdef DTRAIN_HAS_MPI
  EXPECT_THAT(names, ::testing::Contains("mpi"));
#else
  EXPECT_THAT(names, ::testing::Not(::testing::Contains("mpi")));
#endif
}

// The config documents every known backend whatever this build has; each one the build lacks
// says how to get it.
TEST(Registry, KnownBackendsHoldEveryBuiltOneAndTheOthersSayHowToGetThem) {
  const auto known = dist::known_backends();
  EXPECT_THAT(known, ::testing::ElementsAre("local", "tcp", "mpi", "nccl"));
  for (const std::string& name : dist::available_backends()) {
    EXPECT_THAT(known, ::testing::Contains(name));
    EXPECT_TRUE(dist::built_with(name)) << name;
  }
  for (const std::string& name : known) {
    if (dist::built_with(name)) continue;
    EXPECT_THAT(dist::backend_unavailable_reason(name), HasSubstr("rebuild")) << name;
    EXPECT_THAT(dist::backend_unavailable_reason(name), HasSubstr("or use one of local, tcp"))
        << name;
  }
}

TEST(Registry, LocalHasNoWorldOfProcesses) {
  EXPECT_THAT(error_of("local"), HasSubstr("make_local_group"));
}

TEST(Registry, UnknownBackendListsTheAvailableOnes) {
  EXPECT_THAT(error_of("gloo"), HasSubstr("backend 'gloo' is not available in this build"));
  EXPECT_THAT(error_of("gloo"), HasSubstr("available: local"));
}

TEST(Registry, TcpWithoutAStoreSaysHowToGetOne) {
  EXPECT_THAT(error_of("tcp"), HasSubstr("this job has none"));
  EXPECT_THAT(error_of("tcp"), HasSubstr("dtrain launch"));
}

TEST(Registry, EveryBuiltHostBackendIsUsableAndUnknownOnesSayWhy) {
  for (const std::string& name : dist::available_backends()) {
    if (!dist::is_device_backend(name)) EXPECT_EQ(dist::backend_unavailable_reason(name), "");
  }
  EXPECT_EQ(dist::backend_unavailable_reason("auto"), "");
  EXPECT_THAT(dist::backend_unavailable_reason("gloo"),
              HasSubstr("backend 'gloo' is not available in this build"));
}

TEST(Registry, NcclIsListedWhenBuiltAndNeedsAGpuToRun) {
  const auto names = dist::available_backends();
  const bool listed = std::find(names.begin(), names.end(), "nccl") != names.end();
#ifdef DTRAIN_HAS_NCCL
  EXPECT_TRUE(listed);
  if (cuda::available()) {
    EXPECT_EQ(dist::backend_unavailable_reason("nccl"), "");
  } else {
    EXPECT_THAT(dist::backend_unavailable_reason("nccl"), HasSubstr("backend 'nccl' needs a GPU"));
  }
#else
  EXPECT_FALSE(listed);
  EXPECT_THAT(dist::backend_unavailable_reason("nccl"), HasSubstr("not available in this build"));
#endif
  // A device backend is never a world of its own: it needs a host communicator beside it.
  EXPECT_TRUE(dist::is_device_backend("nccl"));
  EXPECT_FALSE(dist::is_device_backend("tcp"));
}

}  // namespace
}  // namespace dtrain
