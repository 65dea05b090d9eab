// How much of DDP's gradient all-reduce backward hides: the MLP 784-256-128-10 and the CNN of
// configs/fashion_mnist_cnn.yaml, batch 64 per rank, overlap on and off in alternating rounds,
// timed by DdpOptions::collect_stats. Ranks are 2 threads over the local backend, or the processes
// of an mpirun job. Prints a Markdown table on rank 0.
// Run: OMP_NUM_THREADS=1 build/bench/ddp_overlap_bench [--rounds 3] [--bucket-cap-mb 25]
//      [--first-bucket-mb 1] [--threads 1] (see docs/performance.md)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/distributed/backends/local/local_communicator.h"
#include "dtrain/distributed/environment.h"
#include "dtrain/distributed/job.h"
#include "dtrain/nn/optim.h"
#include "dtrain/strategies/ddp.h"
#include "dtrain/tensor/cpu/parallel.h"
#include "dtrain/train/models.h"

using namespace dtrain;

namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  int rounds = 3;
  double bucket_cap_mb = 25, first_bucket_mb = 1;
  int threads = 1;  // kernel threads per rank
};

struct Bench {
  const char* name;
  train::ModelConfig model;
  int warmup, steps;
};

/// One round on this rank, summed over ranks: seconds per step (slowest rank) and the stats.
struct Round {
  double step_s = 0;
  double all_reduce_s = 0, exposed_s = 0;       // per step, summed over ranks
  double compute_p10_s = 0, compute_p90_s = 0;  // rank 0's forward + backward, over its steps
  double hidden() const { return all_reduce_s > 0 ? 1 - exposed_s / all_reduce_s : 0; }
};

Round run_round(const Bench& bench, bool overlap, const Args& args,
                const std::shared_ptr<dist::HostCommunicator>& comm) {
  cpu::set_num_threads(args.threads);  // per thread: each rank thread sets its own
  const int64_t batch = 64;
  auto model = train::build_model(bench.model, {1, 28, 28}, 10, /*seed=*/0);
  DdpOptions o;
  o.bucket_cap_mb = args.bucket_cap_mb;
  o.bucket_first_cap_mb = args.first_bucket_mb;
  o.overlap = overlap;
  o.collect_stats = true;
  DistributedDataParallel ddp(*model, comm, o);
  nn::SGD opt(model->parameters(), {0.01, 0.9});
  Generator gen(1, static_cast<uint64_t>(comm->rank()));
  const Tensor x = randn({batch, 1, 28, 28}, gen);
  const Tensor y = randint(0, 10, {batch}, gen);
  std::vector<double> compute_s;  // per timed step: forward + backward, up to the gradient sync
  const auto step = [&] {
    const auto begin = Clock::now();
    opt.zero_grad();
    cross_entropy(ddp.forward(x), y).backward();
    compute_s.push_back(std::chrono::duration<double>(Clock::now() - begin).count());
    ddp.synchronize_gradients();
    opt.step();
  };
  for (int i = 0; i < bench.warmup; ++i) step();
  ddp.reset_stats();
  compute_s.clear();
  comm->barrier()->wait();  // the ranks start the timed steps together
  const auto start = Clock::now();
  for (int i = 0; i < bench.steps; ++i) step();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::sort(compute_s.begin(), compute_s.end());
  const DdpStats st = ddp.stats();
  Tensor slowest = full({1}, elapsed / bench.steps, DType::kFloat64);
  comm->all_reduce(slowest, {dist::ReduceOp::kMax})->wait();
  Tensor sums = full({2}, 0.0, DType::kFloat64);
  sums.data<double>()[0] = st.all_reduce_s / st.steps;
  sums.data<double>()[1] = st.exposed_s / st.steps;
  comm->all_reduce(sums)->wait();
  return {slowest.item<double>(), sums.data<double>()[0], sums.data<double>()[1],
          compute_s[compute_s.size() / 10], compute_s[compute_s.size() * 9 / 10]};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// Every round of every benchmark on this rank; rank 0 prints the table.
void run_rank(const std::shared_ptr<dist::HostCommunicator>& comm, const Args& args) {
  train::ModelConfig mlp;  // 784-256-128-10, ReLU
  train::ModelConfig cnn;  // configs/fashion_mnist_cnn.yaml's model
  cnn.type = "cnn";
  cnn.batch_norm = true;
  cnn.dropout = 0.3;
  const std::vector<Bench> benches = {{"MLP 784-256-128-10", mlp, 50, 1000},
                                      {"CNN (fashion_mnist_cnn.yaml)", cnn, 5, 40}};
  const bool primary = comm->rank() == 0;
  if (primary) {
    std::printf(
        "%d ranks (%s backend), batch 64 per rank, %d kernel thread(s) per rank, buckets "
        "%.3g MiB (first %.3g MiB); median of %d rounds\n\n",
        comm->size(), std::string(comm->backend_name()).c_str(), args.threads, args.bucket_cap_mb,
        args.first_bucket_mb, args.rounds);
    std::printf(
        "| model | overlap | step ms | all-reduce ms/step | exposed ms/step | hidden | "
        "forward+backward ms, rank 0, p10 / p90 |\n");
    std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
  }
  for (const Bench& bench : benches) {
    std::vector<Round> on, off;
    for (int r = 0; r < args.rounds; ++r) {  // alternating, so drift affects both alike
      on.push_back(run_round(bench, true, args, comm));
      off.push_back(run_round(bench, false, args, comm));
    }
    if (!primary) continue;
    for (const auto& [label, rounds] : {std::pair{"on", &on}, std::pair{"off", &off}}) {
      std::vector<double> step, busy, exposed, hidden, p10, p90;
      for (const Round& r : *rounds) {
        p10.push_back(r.compute_p10_s * 1e3);
        p90.push_back(r.compute_p90_s * 1e3);
        step.push_back(r.step_s * 1e3);
        busy.push_back(r.all_reduce_s * 1e3 / comm->size());
        exposed.push_back(r.exposed_s * 1e3 / comm->size());
        hidden.push_back(r.hidden());
      }
      std::printf("| %s | %s | %.3f | %.3f | %.3f | %.2f | %.3f / %.3f |\n", bench.name, label,
                  median(step), median(busy), median(exposed), median(hidden), median(p10),
                  median(p90));
      std::fflush(stdout);
    }
  }
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const char* value = argv[i + 1];
    if (flag == "--rounds") {
      a.rounds = std::max(1, std::atoi(value));
    } else if (flag == "--bucket-cap-mb") {
      a.bucket_cap_mb = std::atof(value);
    } else if (flag == "--first-bucket-mb") {
      a.first_bucket_mb = std::atof(value);
    } else if (flag == "--threads") {
      a.threads = std::max(1, std::atoi(value));
    } else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      std::exit(2);
    }
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  if (dist::detect_world().size > 1) {  // mpirun, srun or dtrain launch: one rank per process
    dist::Job job = dist::Job::from_env();
    run_rank(std::dynamic_pointer_cast<dist::HostCommunicator>(job.world()), args);
    return 0;
  }
  auto comms = dist::make_local_group(2);
  std::vector<std::thread> ranks;
  for (auto& comm : comms) ranks.emplace_back([&, comm] { run_rank(comm, args); });
  for (auto& t : ranks) t.join();
  return 0;
}
