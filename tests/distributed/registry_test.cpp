// The backend registry: what this build has, and the errors for backends it cannot create.
#include "distributed/registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tensor/check.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;

std::string error_of(std::string_view backend) {
  try {
    dist::create_world_communicator(backend);
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

TEST(Registry, LocalHasNoWorldOfProcesses) {
  EXPECT_THAT(error_of("local"), HasSubstr("make_local_group"));
}

TEST(Registry, UnknownBackendListsTheAvailableOnes) {
  EXPECT_THAT(error_of("gloo"), HasSubstr("backend 'gloo' is not available in this build"));
  EXPECT_THAT(error_of("gloo"), HasSubstr("available: local"));
}

}  // namespace
}  // namespace dtrain
