// Where the time goes, end to end through the real dtrain executable: log.trace writes a Chrome
// trace of a bounded window of steps with every phase and gradient bucket of every replica, and
// the straggler table names a replica slowed on purpose (DTRAIN_TEST_SLOW_REPLICA).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

#include "cli/run_util.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;
using testutil::CommandResult;

constexpr char kConfig[] =
    "model: {type: mlp, hidden: [64, 32]}\n"
    "data: {name: synthetic, synthetic_train_size: 2048, synthetic_test_size: 256, "
    "synthetic_shape: [32]}\n"
    "train: {max_steps: 40, batch_size: 16, resume: never, checkpoint_dir: checkpoints, "
    "checkpoint_every_steps: 4}\n"
    "log: {dir: runs, progress: lines, every_steps: 10}\n"
    "strategy: {type: ddp, bucket_cap_mb: 0.004}\n";

class RunDir : public testutil::ScratchDir {
 public:
  RunDir() { testutil::write_bytes(*this / "run.yaml", kConfig); }
  CommandResult launch(const std::string& env, const std::string& overrides) const {
    return testutil::run_shell(env + " OMP_NUM_THREADS=1 timeout 120 '" +
                                   std::string(DTRAIN_EXECUTABLE) +
                                   "' launch --nproc-per-node 2 run.yaml " + overrides,
                               path().string());
  }
  std::string read(const std::string& relative) const {
    std::ifstream in(path() / relative);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
};

TEST(Trace, TwoLaunchedWorkersGetALaneEachWithEveryPhaseAndBucketOfTheWindow) {
  RunDir d;
  const CommandResult r = d.launch("", "log.trace=true log.trace_first_step=7 log.trace_steps=5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("trace of steps 7-11 written to runs/trace.json"));
  const nlohmann::json trace = nlohmann::json::parse(d.read("runs/trace.json"));
  ASSERT_TRUE(trace.contains("traceEvents"));
  std::map<int, std::multiset<std::string>> names;  // per replica
  std::map<int, std::set<int64_t>> steps;
  std::map<std::pair<int, int64_t>, std::pair<double, double>> step_span;
  int buckets = 0;
  for (const auto& e : trace["traceEvents"]) {
    const int pid = e["pid"].get<int>();
    const std::string name = e["name"].get<std::string>();
    names[pid].insert(name);
    if (e["ph"] != "X") continue;
    EXPECT_GE(e["ts"].get<double>(), 0) << e.dump();
    EXPECT_GE(e["dur"].get<double>(), 0) << e.dump();
    const int64_t step = e["args"]["step"].get<int64_t>();
    steps[pid].insert(step);
    if (name == "step")
      step_span[{pid, step}] = {e["ts"], e["ts"].get<double>() + e["dur"].get<double>()};
    if (name == "all_reduce") {
      ++buckets;
      EXPECT_GT(e["args"]["bytes"].get<int64_t>(), 0);
      EXPECT_TRUE(e["args"]["hidden"].is_boolean());
      EXPECT_EQ(e["tid"].get<int>(), 1);
    }
  }
  ASSERT_EQ(names.size(), 2u) << "one lane (pid) per replica";
  for (int pid : {0, 1}) {
    EXPECT_EQ(steps[pid], (std::set<int64_t>{7, 8, 9, 10, 11})) << "replica " << pid;
    for (const char* phase :
         {"data wait", "forward", "backward", "wait for gradients", "optimizer", "step"}) {
      EXPECT_EQ(names[pid].count(phase), 5u) << "replica " << pid << " " << phase;
    }
    EXPECT_EQ(names[pid].count("process_name"), 1u);
  }
  // Checkpoints every 4 steps: the primary writes those of steps 8 and 9..11 holds none.
  EXPECT_EQ(names[0].count("checkpoint write"), 1u);
  EXPECT_EQ(names[1].count("checkpoint write"), 0u);
  EXPECT_GE(buckets, 2 * 5) << "a bucket or more per step on each replica";
  // Within a replica the steps follow each other.
  for (int pid : {0, 1}) {
    for (int64_t s = 7; s < 11; ++s) {
      const auto this_step = step_span[{pid, s}], next_step = step_span[{pid, s + 1}];
      EXPECT_LE(this_step.second, next_step.first + 1) << "replica " << pid << " step " << s;
    }
  }
}

TEST(Stragglers, AReplicaSlowedOnPurposeIsNamedInTheTableAndTheOutput) {
  RunDir d;
  // 12 ms a step: well above what two loaded cores add to either replica's step.
  const CommandResult r = d.launch("DTRAIN_TEST_SLOW_REPLICA=1:12", "");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("replica 1 is the slowest"));
  // metrics.jsonl: a row per replica every 10 steps, replica 1 flagged each time and replica 0
  // waiting for it.
  std::istringstream lines(d.read("runs/metrics.jsonl"));
  std::string line;
  int rows = 0, flagged = 0;
  while (std::getline(lines, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (!j.contains("replica")) continue;
    ++rows;
    const int replica = j["replica"].get<int>();
    if (j["slowest"].get<double>() == 1) {
      EXPECT_EQ(replica, 1) << line;
      ++flagged;
    }
    if (replica == 1) {
      EXPECT_GT(j["data_wait_ms"].get<double>(), 11.5) << line;
    }
    // About the 12 ms a step on a quiet machine; on two loaded cores the slowed replica waits for
    // its communicator thread too, which the difference removes.
    if (replica == 0) {
      EXPECT_GT(j["waiting_for_slowest_ms"].get<double>(), 0.5) << line;
    }
  }
  EXPECT_EQ(rows, 2 * 4);
  EXPECT_EQ(flagged, 4);
}

TEST(BucketCapAuto, LaunchedWorkersPrintTheTrialTableAndEndLikeAFixedCap) {
  RunDir tuned, fixed;
  const CommandResult t = tuned.launch("", "strategy.bucket_cap_mb=auto");
  ASSERT_EQ(t.exit_code, 0) << t.output;
  EXPECT_THAT(t.output, HasSubstr("strategy.bucket_cap_mb auto: exposed communication per step"));
  EXPECT_THAT(t.output, ContainsRegex("1 MiB [0-9.]+ ms; 4 MiB [0-9.]+ ms; 16 MiB [0-9.]+ ms; 64 "
                                      "MiB [0-9.]+ ms; keeping [0-9]+ MiB"));
  const CommandResult f = fixed.launch("", "strategy.bucket_cap_mb=4");
  ASSERT_EQ(f.exit_code, 0) << f.output;
  // Bucketing groups the same per-element sums: the final lines agree to the last digit.
  const auto final_of = [](const std::string& out) { return out.substr(out.find("final:"), 56); };
  EXPECT_EQ(final_of(t.output), final_of(f.output));
  // With a sharded optimiser the buckets must stay fixed: refused before training.
  const CommandResult z =
      tuned.launch("", "strategy.bucket_cap_mb=auto strategy.shard_optimizer=true");
  EXPECT_NE(z.exit_code, 0);
  EXPECT_THAT(z.output, HasSubstr("give bucket_cap_mb a size, or turn shard_optimizer off"));
}

TEST(Stragglers, OneReplicaWritesNoTable) {
  RunDir d;
  const CommandResult r =
      testutil::run_dtrain("train run.yaml strategy.type=single", d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(d.read("runs/metrics.jsonl"), Not(HasSubstr("replica")));
}

}  // namespace
}  // namespace dtrain
