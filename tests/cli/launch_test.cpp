// `dtrain launch` end to end with real processes: the same weights as mpirun, exact recovery after
// kill -9, a stopped worker caught by its heartbeat, restarts running out, signals to the
// launcher, two launchers as two nodes, and the store token kept off command lines. Every run is
// bounded by `timeout`, and each test checks that no process of its job is left.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <regex>
#include <thread>

#include "cli/launch_util.h"
#include "cli/run_util.h"
#include "dtrain/distributed/store.h"
#include "dtrain/train/checkpoint.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using testutil::CommandResult;
using testutil::expect_no_process_left;
using testutil::job_processes;
using testutil::kLaunchConfig;
using testutil::launcher_pid;
using testutil::read_file;
using testutil::ScratchDir;
using testutil::unique_job;
using testutil::wait_for_file;
using Clock = std::chrono::steady_clock;

/// The pid of worker `rank` of the job, waiting (bounded) for it to appear; -1 if it does not.
pid_t worker_pid(const std::string& job, int rank,
                 std::chrono::seconds limit = std::chrono::seconds(60)) {
  const std::string want = std::string("DTRAIN_RANK=") + std::to_string(rank) + '\0';
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    for (const auto& [pid, env] : job_processes(job)) {
      if (env.find('\0' + want) != std::string::npos) return pid;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

/// Runs `dtrain launch ARGS` in `dir` in the background (exec'd by the shell, so the launcher is
/// the process the test signals), tagged with the job marker.
std::future<CommandResult> launch_async(const std::filesystem::path& dir, const std::string& job,
                                        const std::string& args, const std::string& env = "") {
  const std::string line = "DTRAIN_TEST_JOB=" + job + " " + env + " exec timeout -s KILL 300 '" +
                           DTRAIN_EXECUTABLE + "' launch " + args;
  return std::async(std::launch::async, [line, dir] { return testutil::run_shell(line, dir); });
}

std::string final_line(const std::string& output) {
  std::smatch m;
  static const std::regex re("final: test_accuracy=[0-9.]+ test_loss=[0-9.]+ steps=[0-9]+");
  return std::regex_search(output, m, re) ? m.str() : "";
}

/// The tensor bytes of the checkpoint after the last step, exported to safetensors.
std::string final_weights(const std::filesystem::path& dir) {
  const std::string ckpt =
      std::filesystem::path(train::checkpoint_path("checkpoints", testutil::kLaunchTotalSteps))
          .string();
  const CommandResult e = testutil::run_dtrain("export " + ckpt + " -o model.safetensors", dir);
  EXPECT_EQ(e.exit_code, 0) << e.output;
  return testutil::safetensors_data(read_file(dir / "model.safetensors"));
}

void expect_same_final_weights(const std::filesystem::path& a, const std::filesystem::path& b,
                               const std::string& which) {
  const std::string wa = final_weights(a), wb = final_weights(b);
  EXPECT_FALSE(wa.empty());
  EXPECT_TRUE(wa == wb) << "final weights differ between " << which;
}

struct Job {
  ScratchDir root;
  std::filesystem::path dir(const std::string& name) {
    const std::filesystem::path dir = root.path() / name;
    std::filesystem::create_directories(dir);
    testutil::write_bytes((dir / "run.yaml").string(), kLaunchConfig);
    return dir;
  }
};

TEST(Launch, TwoWorkersMatchMpirunBitForBit) {
  if (!testutil::mpirun_available()) {
    GTEST_SKIP() << "mpirun is not installed (scripts/setup.sh installs openmpi-bin)";
  }
  Job job;
  const auto a = job.dir("launch"), b = job.dir("mpirun");
  const std::string id = unique_job("match");
  const CommandResult launched = launch_async(a, id, "--nproc-per-node 2 run.yaml").get();
  ASSERT_EQ(launched.exit_code, 0) << launched.output;
  EXPECT_THAT(launched.output, HasSubstr("dtrain launch: node 0 hosts the store at 127.0.0.1:"));
  EXPECT_THAT(launched.output, HasSubstr("[rank 0] final: "));
  const CommandResult mpi = testutil::run_dtrain_mpirun(2, "train run.yaml", b);
  ASSERT_EQ(mpi.exit_code, 0) << mpi.output;
  EXPECT_EQ(final_line(launched.output), final_line(mpi.output));
  expect_same_final_weights(a, b, "dtrain launch and mpirun");
  expect_no_process_left(id);
}

TEST(Launch, KilledWorkerRestartsAndEndsBitIdenticalToAnUninterruptedRun) {
  Job job;
  const auto a = job.dir("straight"), b = job.dir("killed");
  const CommandResult straight =
      launch_async(a, unique_job("straight"), "--nproc-per-node 2 run.yaml").get();
  ASSERT_EQ(straight.exit_code, 0) << straight.output;

  const std::string id = unique_job("kill9");
  auto run = launch_async(b, id, "--nproc-per-node 2 --max-restarts 2 run.yaml");
  // After the first checkpoint (step 150 of 312 in the first epoch): a kill inside an epoch.
  ASSERT_TRUE(
      wait_for_file(b / train::checkpoint_path("checkpoints", 150), std::chrono::seconds(120)));
  const pid_t victim = worker_pid(id, 1);
  ASSERT_GT(victim, 0);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  const CommandResult killed = run.get();
  ASSERT_EQ(killed.exit_code, 0) << killed.output;
  EXPECT_THAT(killed.output, HasSubstr("root cause:\n  rank 1 on node 0"));
  EXPECT_THAT(killed.output,
              HasSubstr("pid " + std::to_string(victim) + ") was killed by signal 9 (SIGKILL)"));
  EXPECT_THAT(killed.output, HasSubstr("last collective: "));
  EXPECT_THAT(killed.output, HasSubstr("restarting every worker (restart 1 of 2)"));
  EXPECT_THAT(killed.output, HasSubstr("[rank 0] resuming from checkpoints/"));
  EXPECT_EQ(final_line(killed.output), final_line(straight.output));
  expect_same_final_weights(a, b, "the uninterrupted and the recovered run");
  expect_no_process_left(id);
}

TEST(Launch, StoppedWorkerIsCaughtByItsHeartbeatAndTheJobRestarts) {
  Job job;
  const auto dir = job.dir("stopped");
  const std::string id = unique_job("sigstop");
  auto run =
      launch_async(dir, id, "--nproc-per-node 2 --max-restarts 1 --heartbeat-timeout-s 2 run.yaml");
  ASSERT_TRUE(
      wait_for_file(dir / train::checkpoint_path("checkpoints", 150), std::chrono::seconds(120)));
  const pid_t victim = worker_pid(id, 1);
  ASSERT_GT(victim, 0);
  ASSERT_EQ(::kill(victim, SIGSTOP), 0);
  const CommandResult r = run.get();
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("rank 1 on node 0"));
  EXPECT_THAT(r.output, HasSubstr("sent no heartbeat for"));
  EXPECT_THAT(r.output, HasSubstr("restarting every worker (restart 1 of 1)"));
  EXPECT_THAT(r.output, HasSubstr("[rank 0] final: "));
  expect_no_process_left(id);
}

TEST(Launch, RestartsRunOutWithASummaryAndNoProcessLeft) {
  Job job;
  const auto dir = job.dir("exhausted");
  const std::string id = unique_job("exhausted");
  auto run = launch_async(dir, id, "--nproc-per-node 2 --max-restarts 1 run.yaml");
  // Kill worker 0 of each attempt as soon as it exists.
  std::vector<pid_t> killed;
  for (int attempt = 0; attempt < 2; ++attempt) {
    pid_t pid = -1;
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline) {
      pid = worker_pid(id, 0);
      if (pid > 0 && std::find(killed.begin(), killed.end(), pid) == killed.end()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_GT(pid, 0);
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    killed.push_back(pid);
  }
  const CommandResult r = run.get();
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("giving up: the job failed 2 time(s) and launcher.max_restarts "
                                  "is 1. Root causes:"));
  EXPECT_THAT(r.output, HasSubstr("attempt 0: rank 0 on node 0"));
  EXPECT_THAT(r.output, HasSubstr("attempt 1: rank 0 on node 0"));
  EXPECT_THAT(r.output, Not(HasSubstr("final:")));
  expect_no_process_left(id);
}

TEST(Launch, SigtermAndSigintStopEveryWorkerAndExitWith143And130) {
  for (const auto& [sig, code] : {std::pair{SIGTERM, 143}, std::pair{SIGINT, 130}}) {
    Job job;
    const auto dir = job.dir("signalled");
    const std::string id = unique_job("signal");
    auto run = launch_async(dir, id, "--nproc-per-node 2 run.yaml");
    ASSERT_GT(worker_pid(id, 1), 0);
    const pid_t launcher = launcher_pid(id);
    ASSERT_GT(launcher, 0);
    ASSERT_EQ(::kill(launcher, sig), 0);
    const CommandResult r = run.get();
    EXPECT_EQ(r.exit_code, code) << r.output;
    EXPECT_THAT(r.output,
                HasSubstr("received " + std::string(sig == SIGTERM ? "signal 15 (SIGTERM)"
                                                                   : "signal 2 (SIGINT)")));
    expect_no_process_left(id);
  }
}

TEST(Launch, WorkersDieWithALauncherKilledBySigkill) {
  Job job;
  const auto dir = job.dir("orphans");
  const std::string id = unique_job("orphans");
  auto run = launch_async(dir, id, "--nproc-per-node 2 run.yaml");
  ASSERT_GT(worker_pid(id, 0), 0);
  ASSERT_GT(worker_pid(id, 1), 0);
  const pid_t launcher = launcher_pid(id);
  ASSERT_GT(launcher, 0);
  // SIGKILL gives the launcher no chance to stop anyone: PR_SET_PDEATHSIG must.
  ASSERT_EQ(::kill(launcher, SIGKILL), 0);
  const CommandResult r = run.get();
  EXPECT_NE(r.exit_code, 0);
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (!job_processes(id).empty() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  expect_no_process_left(id);
}

TEST(Launch, TheStoreTokenStaysOffCommandLinesAndStrangersCannotJoin) {
  Job job;
  const auto dir = job.dir("token");
  const std::string id = unique_job("token");
  auto run = launch_async(dir, id, "--nproc-per-node 2 run.yaml");
  const pid_t worker = worker_pid(id, 1);
  ASSERT_GT(worker, 0);
  const std::string env = read_file("/proc/" + std::to_string(worker) + "/environ");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(env, m, std::regex("DTRAIN_STORE_TOKEN=([0-9a-f]+)")));
  const std::string token = m[1];
  EXPECT_EQ(token.size(), 32u);
  ASSERT_TRUE(std::regex_search(env, m, std::regex("DTRAIN_STORE_ADDR=127.0.0.1:([0-9]+)")));
  const int port = std::stoi(m[1]);
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string cmdline = read_file(entry.path() / "cmdline");
    EXPECT_EQ(cmdline.find(token), std::string::npos)
        << "token on the command line of " << entry.path();
  }
  for (const std::string& wrong : {std::string("not-the-token"), std::string()}) {
    dist::StoreClientOptions o;
    o.port = static_cast<uint16_t>(port);
    o.token = wrong.empty() ? "x" : wrong;
    o.connect_timeout = std::chrono::seconds(5);
    EXPECT_THROW(
        {
          dist::StoreClient stranger(o);
          stranger.try_get("launch/0/node/0");
        },
        ValueError);
  }
  const CommandResult r = run.get();
  EXPECT_EQ(r.exit_code, 0) << r.output;
  expect_no_process_left(id);
}

TEST(Launch, LogDirHoldsOneFilePerRankInsteadOfPrefixedLines) {
  Job job;
  const auto dir = job.dir("logs");
  const CommandResult r = launch_async(dir, unique_job("logs"),
                                       "--nproc-per-node 2 --log-dir worker-logs run.yaml "
                                       "train.epochs=1")
                              .get();
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, Not(HasSubstr("[rank 0]")));
  const std::string rank0 = read_file(dir / "worker-logs/rank_0.log");
  EXPECT_THAT(rank0, HasSubstr("--- dtrain launch: attempt 0, rank 0 on "));
  EXPECT_THAT(rank0, HasSubstr("final: test_accuracy="));
  EXPECT_TRUE(std::filesystem::exists(dir / "worker-logs/rank_1.log"));
}

/// A process's "Cpus_allowed_list" from /proc, e.g. "0-1"; "" when it is gone.
std::string allowed_cpus(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Cpus_allowed_list:", 0) == 0) return line.substr(line.find_last_of(" \t") + 1);
  }
  return "";
}

TEST(Launch, EachWorkerRunsOnItsOwnCoreUnlessCpuBindIsNone) {
  cpu_set_t set;
  ASSERT_EQ(::sched_getaffinity(0, sizeof set, &set), 0);
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  if (cpus.size() != 2) {
    GTEST_SKIP() << "expects exactly 2 usable CPUs (one per worker), this process has "
                 << cpus.size();
  }
  const std::string all = allowed_cpus(::getpid());
  Job job;
  for (const bool bind : {true, false}) {
    const auto dir = job.dir(bind ? "bound" : "unbound");
    const std::string id = unique_job(bind ? "bound" : "unbound");
    auto run = launch_async(dir, id,
                            std::string("--nproc-per-node 2 --cpu-bind ") +
                                (bind ? "auto" : "none") + " run.yaml train.epochs=6");
    // Read while the workers train (six short epochs: about a second after start-up).
    const pid_t first = worker_pid(id, 0), second = worker_pid(id, 1);
    ASSERT_GT(first, 0);
    ASSERT_GT(second, 0);
    const std::string first_cpus = allowed_cpus(first), second_cpus = allowed_cpus(second);
    const CommandResult r = run.get();
    ASSERT_EQ(r.exit_code, 0) << r.output;
    if (bind) {
      EXPECT_EQ(first_cpus, std::to_string(cpus[0]));
      EXPECT_EQ(second_cpus, std::to_string(cpus[1]));
      EXPECT_THAT(r.output, HasSubstr(", on CPUs " + std::to_string(cpus[0]) + " / " +
                                      std::to_string(cpus[1])));
    } else {
      EXPECT_EQ(first_cpus, all);
      EXPECT_EQ(second_cpus, all);
      EXPECT_THAT(r.output, Not(HasSubstr("on CPUs")));
    }
  }
}

TEST(Launch, TwoLaunchersAsTwoNodesTrainTogetherAndRefuseDifferentConfigs) {
  Job job;
  const auto single = job.dir("one-node"), multi = job.dir("two-nodes");
  const CommandResult one =
      launch_async(single, unique_job("one"), "--nproc-per-node 2 run.yaml train.epochs=1").get();
  ASSERT_EQ(one.exit_code, 0) << one.output;

  const std::string endpoint = "127.0.0.1:" + std::to_string(testutil::free_port());
  const std::string token = "DTRAIN_STORE_TOKEN=0123456789abcdef0123";
  const std::string id = unique_job("nodes");
  const std::string common = "--nnodes 2 --rdzv-endpoint " + endpoint + " run.yaml train.epochs=1";
  auto node0 = launch_async(multi, id, "--node-rank 0 " + common, token);
  auto node1 = launch_async(multi, id, "--node-rank 1 " + common + " log.dir=runs1", token);
  const CommandResult r0 = node0.get(), r1 = node1.get();
  // log.dir differs, so the config hashes differ: both refuse, naming node 1.
  EXPECT_EQ(r0.exit_code, 2) << r0.output;
  EXPECT_EQ(r1.exit_code, 2) << r1.output;
  EXPECT_THAT(r0.output, HasSubstr("the nodes disagree: node 1 ("));
  EXPECT_THAT(r0.output, HasSubstr("config hash"));

  const std::string endpoint2 = "127.0.0.1:" + std::to_string(testutil::free_port());
  const std::string common2 =
      "--nnodes 2 --rdzv-endpoint " + endpoint2 + " run.yaml train.epochs=1";
  auto good0 = launch_async(multi, id, "--node-rank 0 " + common2, token);
  auto good1 = launch_async(multi, id, "--node-rank 1 " + common2, token);
  const CommandResult g0 = good0.get(), g1 = good1.get();
  ASSERT_EQ(g0.exit_code, 0) << g0.output;
  ASSERT_EQ(g1.exit_code, 0) << g1.output;
  EXPECT_THAT(g1.output, HasSubstr("started ranks 1-1 of 2 on node 1"));
  EXPECT_THAT(g0.output, HasSubstr("warning: 127.0.0.1 is a loopback address here"));
  EXPECT_EQ(final_line(g0.output), final_line(one.output));
  expect_no_process_left(id);
}

TEST(Launch, BadLauncherOptionsAreUsageErrors) {
  Job job;
  const auto dir = job.dir("bad");
  const auto run = [&](const std::string& args) {
    return testutil::run_dtrain("launch " + args, dir);
  };
  CommandResult r = run("--nnodes 2 run.yaml");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--nnodes 2 needs --rdzv-endpoint HOST:PORT"));
  r = run("--nnodes 2 --node-rank 2 --rdzv-endpoint 127.0.0.1:1 run.yaml");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--node-rank 2 is not below --nnodes 2"));
  r = run("--nproc-per-node 2 run.yaml strategy.type=single");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("strategy.type is single"));
  r = run("--nnodes 2 --rdzv-endpoint 127.0.0.1:1 run.yaml");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("DTRAIN_STORE_TOKEN"));
  // torchrun's spellings reach the same checks.
  r = run("--nproc_per_node 2 --max_restarts 0 --log_dir logs run.yaml strategy.type=single");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("strategy.type is single"));
  r = run("--nnodes 2 --node_rank 2 --rdzv_endpoint 127.0.0.1:1 run.yaml");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--node-rank 2 is not below --nnodes 2"));
  r = run("--nproc-per-node 2 run.yaml launcher.rdzv_endpoint=nonsense");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("'nonsense' is not HOST:PORT"));
}

TEST(Launch, APortInUseIsNamedWithAHint) {
  Job job;
  const auto dir = job.dir("port");
  dist::StoreServerOptions so;
  so.token = "someone-else";
  dist::StoreServer occupant(so);  // another job's store on the port we ask for
  const std::string endpoint = "127.0.0.1:" + std::to_string(occupant.port());
  const CommandResult r = testutil::run_dtrain(
      "launch --nproc-per-node 2 --rdzv-endpoint " + endpoint + " run.yaml", dir);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("cannot listen on " + endpoint));
  EXPECT_THAT(r.output, HasSubstr("Is another job using this port?"));

  // 192.0.2.1 (TEST-NET-1) is no address of this machine: a different cause, a different hint.
  const CommandResult foreign = testutil::run_dtrain(
      "launch --nproc-per-node 2 --rdzv-endpoint 192.0.2.1:29500 run.yaml", dir);
  EXPECT_EQ(foreign.exit_code, 1) << foreign.output;
  EXPECT_THAT(foreign.output, HasSubstr("cannot listen on 192.0.2.1:29500"));
  EXPECT_THAT(foreign.output, HasSubstr("not an address of this machine"));
}

TEST(Cluster, ProcessesStartedByHandWithAClusterSectionMatchMpirunBitForBit) {
  if (!testutil::mpirun_available()) {
    GTEST_SKIP() << "mpirun is not installed (scripts/setup.sh installs openmpi-bin)";
  }
  Job job;
  const auto a = job.dir("cluster"), b = job.dir("mpirun");
  const std::string id = unique_job("cluster");
  const std::string store = "127.0.0.1:" + std::to_string(testutil::free_port());
  const auto start = [&](int rank) {
    const std::string line = "DTRAIN_TEST_JOB=" + id +
                             " DTRAIN_STORE_TOKEN=0123456789abcdef0123 OMP_NUM_THREADS=1 exec "
                             "timeout -s KILL 300 '" +
                             DTRAIN_EXECUTABLE + "' train run.yaml cluster.world_size=2 " +
                             "cluster.rank=" + std::to_string(rank) + " cluster.store=" + store;
    return std::async(std::launch::async, [line, a] { return testutil::run_shell(line, a); });
  };
  auto second = start(1);  // before rank 0's store is up: it waits for it
  const CommandResult first = start(0).get();
  const CommandResult other = second.get();
  ASSERT_EQ(first.exit_code, 0) << first.output;
  ASSERT_EQ(other.exit_code, 0) << other.output;
  EXPECT_EQ(final_line(other.output), "") << "only rank 0 reports the job: " << other.output;
  const CommandResult mpi = testutil::run_dtrain_mpirun(2, "train run.yaml", b);
  ASSERT_EQ(mpi.exit_code, 0) << mpi.output;
  EXPECT_NE(final_line(first.output), "") << first.output;
  EXPECT_EQ(final_line(first.output), final_line(mpi.output));
  expect_same_final_weights(a, b, "the cluster section and mpirun");
  expect_no_process_left(id);
}

TEST(Cluster, AJobDescribedTwiceOrWithoutASecretIsRefused) {
  Job job;
  const auto dir = job.dir("refused");
  const std::string cluster = " train run.yaml cluster.world_size=2 cluster.rank=0 cluster.store=" +
                              std::string("127.0.0.1:") + std::to_string(testutil::free_port());
  const CommandResult twice = testutil::run_shell(
      "DTRAIN_STORE_TOKEN=0123456789abcdef0123 OMPI_COMM_WORLD_RANK=0 OMPI_COMM_WORLD_SIZE=2 '" +
          std::string(DTRAIN_EXECUTABLE) + "'" + cluster,
      dir);
  EXPECT_EQ(twice.exit_code, 2) << twice.output;
  EXPECT_THAT(twice.output, HasSubstr("cluster section (cluster.world_size 2) and the environment "
                                      "(rank 0 of 2"));
  EXPECT_THAT(twice.output, HasSubstr("both describe the job"));
  const CommandResult secretless = testutil::run_shell(
      "env -u DTRAIN_STORE_TOKEN '" + std::string(DTRAIN_EXECUTABLE) + "'" + cluster, dir);
  EXPECT_EQ(secretless.exit_code, 2) << secretless.output;
  EXPECT_THAT(secretless.output, HasSubstr("the same secret in DTRAIN_STORE_TOKEN"));
  const CommandResult launched = testutil::run_dtrain(
      "launch --nproc-per-node 2 run.yaml cluster.world_size=2 cluster.rank=0 "
      "cluster.store=127.0.0.1:29500",
      dir);
  EXPECT_EQ(launched.exit_code, 2) << launched.output;
  EXPECT_THAT(launched.output, HasSubstr("dtrain launch: the config's cluster section"));
  EXPECT_FALSE(std::filesystem::exists(dir / "checkpoints")) << "nothing may be written";
}

TEST(Cluster, IncompleteOrOutOfRangeSectionsAreConfigErrorsNamingTheKey) {
  Job job;
  const auto dir = job.dir("config");
  const auto check = [&](const std::string& overrides, const std::string& expected) {
    const CommandResult r = testutil::run_dtrain("config check run.yaml " + overrides, dir);
    EXPECT_EQ(r.exit_code, 2) << overrides << ": " << r.output;
    EXPECT_THAT(r.output, HasSubstr(expected)) << overrides;
  };
  check("cluster.rank=1", "cluster.world_size: cluster.rank and cluster.store need it");
  check("cluster.world_size=2 cluster.rank=2 cluster.store=127.0.0.1:29500",
        "cluster.rank: must be in [0, 2) with cluster.world_size 2");
  check("cluster.world_size=2 cluster.rank=0", "cluster.store: several processes need HOST:PORT");
  check("cluster.world_size=2 cluster.rank=0 cluster.store=nohost",
        "cluster.store 'nohost' is not HOST:PORT");
  check("cluster.world_size=2 cluster.rank=0 cluster.store=127.0.0.1:0",
        "with a port from 1 to 65535");
  // The rank differs between the processes of one job, so it stays out of the config hash.
  const CommandResult r0 = testutil::run_dtrain(
      "config check run.yaml cluster.world_size=2 cluster.rank=0 cluster.store=h:1", dir);
  const CommandResult r1 = testutil::run_dtrain(
      "config check run.yaml cluster.world_size=2 cluster.rank=1 cluster.store=h:1", dir);
  ASSERT_EQ(r0.exit_code, 0) << r0.output;
  ASSERT_EQ(r1.exit_code, 0) << r1.output;
  const auto hash = [](const std::string& out) { return out.substr(0, out.find('\n')); };
  EXPECT_EQ(hash(r0.output), hash(r1.output));
  EXPECT_THAT(r1.output, HasSubstr("  rank: 1"));
}

}  // namespace
}  // namespace dtrain
