// detect_world: the precedence of dtrain's launcher, Open MPI, PMIx + Slurm and plain Slurm
// variables, over a fake environment, and the errors for bad values.
#include "dtrain/distributed/environment.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "dtrain/tensor/check.h"

namespace dtrain {
namespace {

using dist::detect_world;
using dist::WorldInfo;
using ::testing::HasSubstr;
using Env = std::map<std::string, std::string>;

WorldInfo detect(const Env& env) {
  return detect_world([&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

std::string error_of(const Env& env) {
  try {
    detect(env);
  } catch (const ValueError& e) {
    return e.message();
  }
  return "(no error)";
}

void expect_world(const WorldInfo& w, int rank, int size, int local_rank, int local_size,
                  const std::string& source) {
  EXPECT_EQ(w.rank, rank);
  EXPECT_EQ(w.size, size);
  EXPECT_EQ(w.local_rank, local_rank);
  EXPECT_EQ(w.local_size, local_size);
  EXPECT_EQ(w.source, source);
}

const Env kDtrain = {{"DTRAIN_RANK", "3"},
                     {"DTRAIN_WORLD_SIZE", "8"},
                     {"DTRAIN_LOCAL_RANK", "1"},
                     {"DTRAIN_LOCAL_WORLD_SIZE", "2"}};
const Env kOmpi = {{"OMPI_COMM_WORLD_RANK", "5"},
                   {"OMPI_COMM_WORLD_SIZE", "6"},
                   {"OMPI_COMM_WORLD_LOCAL_RANK", "2"},
                   {"OMPI_COMM_WORLD_LOCAL_SIZE", "3"}};
// What srun exports for task 5 of 6, three per node (the node with id 1).
const Env kSlurm = {{"SLURM_PROCID", "5"},
                    {"SLURM_NTASKS", "6"},
                    {"SLURM_LOCALID", "2"},
                    {"SLURM_NODEID", "1"},
                    {"SLURM_STEP_TASKS_PER_NODE", "3(x2)"}};

Env merged(std::initializer_list<Env> parts) {
  Env env;
  for (const Env& p : parts) env.insert(p.begin(), p.end());
  return env;
}

TEST(DetectWorld, NothingSetIsOneProcess) { expect_world(detect({}), 0, 1, 0, 1, "single"); }

TEST(DetectWorld, EachSourceAlone) {
  expect_world(detect(kDtrain), 3, 8, 1, 2, "dtrain");
  expect_world(detect(kOmpi), 5, 6, 2, 3, "openmpi");
  expect_world(detect(kSlurm), 5, 6, 2, 3, "slurm");
  Env pmix = kSlurm;
  pmix.erase("SLURM_PROCID");  // srun --mpi=pmix: PMIX_RANK and the SLURM_* sizes
  pmix["PMIX_RANK"] = "4";
  expect_world(detect(pmix), 4, 6, 2, 3, "pmix");
}

TEST(DetectWorld, LauncherBeatsOpenMpiBeatsSlurm) {
  expect_world(detect(merged({kDtrain, kOmpi, kSlurm})), 3, 8, 1, 2, "dtrain");
  expect_world(detect(merged({kOmpi, kSlurm, {{"PMIX_RANK", "0"}}})), 5, 6, 2, 3, "openmpi");
}

TEST(DetectWorld, MpirunInsideSlurmUsesOpenMpisValues) {
  // An sbatch allocation runs mpirun once: every rank inherits SLURM_PROCID=0 and SLURM_LOCALID=0
  // of the batch step, which are wrong for all ranks but the first.
  Env env = merged({kOmpi, {{"SLURM_PROCID", "0"}, {"SLURM_LOCALID", "0"}, {"SLURM_NTASKS", "1"}}});
  expect_world(detect(env), 5, 6, 2, 3, "openmpi");
}

TEST(DetectWorld, PmixBeatsSlurmProcid) {
  Env env = merged({kSlurm, {{"PMIX_RANK", "4"}}});
  expect_world(detect(env), 4, 6, 2, 3, "pmix");
}

TEST(DetectWorld, SlurmLocalSizeFromEachVariable) {
  Env env = kSlurm;
  env["SLURM_STEP_TASKS_PER_NODE"] = "4,3(x2)";  // node 1 runs 3
  expect_world(detect(env), 5, 6, 2, 3, "slurm");
  env.erase("SLURM_STEP_TASKS_PER_NODE");
  env["SLURM_NTASKS_PER_NODE"] = "4";
  expect_world(detect(env), 5, 6, 2, 4, "slurm");
  env.erase("SLURM_NTASKS_PER_NODE");
  env["SLURM_TASKS_PER_NODE"] = "2,5";
  expect_world(detect(env), 5, 6, 2, 5, "slurm");
  env.erase("SLURM_TASKS_PER_NODE");  // nothing says: one machine
  expect_world(detect(env), 5, 6, 2, 6, "slurm");
}

TEST(DetectWorld, MissingLocalValuesMeanOneMachine) {
  expect_world(detect({{"DTRAIN_RANK", "2"}, {"DTRAIN_WORLD_SIZE", "4"}}), 2, 4, 2, 4, "dtrain");
}

TEST(DetectWorld, EmptyValuesCountAsUnset) {
  expect_world(
      detect({{"DTRAIN_RANK", ""}, {"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}}),
      1, 2, 1, 2, "openmpi");
}

TEST(DetectWorld, BadValuesNameTheVariable) {
  EXPECT_THAT(error_of({{"DTRAIN_RANK", "abc"}, {"DTRAIN_WORLD_SIZE", "2"}}),
              HasSubstr("DTRAIN_RANK='abc' is not a non-negative integer"));
  EXPECT_THAT(error_of({{"DTRAIN_RANK", "-1"}, {"DTRAIN_WORLD_SIZE", "2"}}),
              HasSubstr("DTRAIN_RANK='-1' is not a non-negative integer"));
  EXPECT_THAT(error_of({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2x"}}),
              HasSubstr("OMPI_COMM_WORLD_SIZE='2x'"));
  EXPECT_THAT(error_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "99999999999"}}),
              HasSubstr("SLURM_NTASKS='99999999999'"));
  EXPECT_THAT(error_of({{"SLURM_PROCID", " 1"}, {"SLURM_NTASKS", "2"}}),
              HasSubstr("SLURM_PROCID=' 1'"));
}

TEST(DetectWorld, RankMustBeBelowSize) {
  EXPECT_THAT(error_of({{"DTRAIN_RANK", "4"}, {"DTRAIN_WORLD_SIZE", "4"}}),
              HasSubstr("DTRAIN_RANK=4 is not below DTRAIN_WORLD_SIZE=4"));
  EXPECT_THAT(error_of({{"OMPI_COMM_WORLD_RANK", "0"},
                        {"OMPI_COMM_WORLD_SIZE", "4"},
                        {"OMPI_COMM_WORLD_LOCAL_RANK", "2"},
                        {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}}),
              HasSubstr("OMPI_COMM_WORLD_LOCAL_RANK=2 is not below OMPI_COMM_WORLD_LOCAL_SIZE=2"));
  EXPECT_THAT(error_of({{"DTRAIN_RANK", "0"}, {"DTRAIN_WORLD_SIZE", "0"}}),
              HasSubstr("DTRAIN_WORLD_SIZE=0 must be at least 1"));
  EXPECT_THAT(
      error_of(
          {{"DTRAIN_RANK", "0"}, {"DTRAIN_WORLD_SIZE", "2"}, {"DTRAIN_LOCAL_WORLD_SIZE", "3"}}),
      HasSubstr("DTRAIN_LOCAL_WORLD_SIZE=3 is larger than DTRAIN_WORLD_SIZE=2"));
}

TEST(DetectWorld, RankWithoutSizeIsAnError) {
  EXPECT_THAT(error_of({{"DTRAIN_RANK", "0"}}),
              HasSubstr("DTRAIN_RANK is set but DTRAIN_WORLD_SIZE is not"));
  EXPECT_THAT(error_of({{"PMIX_RANK", "0"}}),
              HasSubstr("PMIX_RANK is set but SLURM_NTASKS is not"));
}

TEST(DetectWorld, MalformedSlurmTaskListIsNamed) {
  Env env = kSlurm;
  env["SLURM_STEP_TASKS_PER_NODE"] = "3(x2";
  EXPECT_THAT(error_of(env), HasSubstr("SLURM_STEP_TASKS_PER_NODE='3(x2' has a malformed entry"));
}

TEST(DetectWorld, DescribeSaysWhereItCameFrom) {
  EXPECT_EQ(detect(kOmpi).describe(), "rank 5 of 6 (local 2 of 3, from openmpi)");
}

}  // namespace
}  // namespace dtrain
