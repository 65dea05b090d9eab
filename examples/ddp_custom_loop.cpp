// A training loop of one's own with DistributedDataParallel: each process trains one replica on
// its shard of a synthetic classification set (DataLoader + DistributedSampler), then the ranks
// compare parameter checksums to show that they ended with identical models. Run:
//   ddp_custom_loop                                             (one process)
//   mpirun -n 2 ddp_custom_loop      or      dtrain launch --nproc-per-node 2 -- ddp_custom_loop
// Prints "ddp_custom_loop: rank R of N, loss A -> B, parameters identical on every rank" and
// exits 1 when the ranks' parameters differ or the loss did not fall.
#include <cstdio>
#include <memory>
#include <vector>

#include "dtrain/dtrain.h"

using namespace dtrain;

namespace {

constexpr int kSteps = 40;
constexpr int64_t kBatch = 32;  // per rank
constexpr int kWindow = 5;      // steps averaged for the first and last loss

/// Three checksums of all parameters, in float64: their sum, their sum of squares and a sum
/// weighted by position (so that swapped values also count as a difference).
std::vector<double> checksum(const nn::Module& model) {
  std::vector<double> sums(3, 0.0);
  double position = 0;
  for (const Tensor& p : model.parameters()) {
    for (float v : p.to_vector<float>()) {
      sums[0] += v;
      sums[1] += double(v) * v;
      sums[2] += ++position * v;
    }
  }
  return sums;
}

/// The mean of `value` over the ranks.
double rank_mean(dist::Communicator& comm, double value) {
  Tensor t = from_vector<double>({value}, {1});
  comm.all_reduce(t, {.op = dist::ReduceOp::kAvg})->wait();
  return t.item<double>();
}

}  // namespace

int main() {
  // The job's communicators and watchdog live as long as `job`: keep it beyond the last collective.
  dist::Job job = dist::Job::from_env();  // mpi under mpirun, tcp under dtrain launch, else local
  std::shared_ptr<dist::Communicator> comm = job.world();
  const int rank = comm->rank(), world = comm->size();

  // Each rank initialises its own model; DDP's constructor broadcasts rank 0's parameters.
  manual_seed(100 + rank);
  nn::Sequential model{std::make_shared<nn::Linear>(16, 64), std::make_shared<nn::ReLU>(),
                       std::make_shared<nn::Linear>(64, 4)};
  DistributedDataParallel ddp(model, comm);
  nn::SGD opt(model.parameters(), {.lr = 0.1, .momentum = 0.9});
  nn::CrossEntropyLoss loss_fn;

  // Every rank builds the same data set (same seed); the sampler gives each rank its own shard.
  auto dataset = std::make_shared<data::SyntheticDataset>(2048, Shape{16}, 4, /*seed=*/7);
  data::DistributedSampler sampler(dataset->size(), world, rank, /*shuffle=*/true, /*seed=*/1,
                                   /*drop_last=*/true);
  data::DataLoader loader(dataset, sampler, kBatch, /*drop_last=*/true);

  double first = 0, last = 0;
  int step = 0;
  for (int64_t epoch = 0; step < kSteps; ++epoch) {
    loader.start_epoch(epoch);
    for (data::Batch b; step < kSteps && loader.next(b); ++step) {
      opt.zero_grad();
      Tensor loss = loss_fn(ddp.forward(b.x), b.y);
      loss.backward();  // returns with the gradients averaged over the ranks
      opt.step();
      const double l = loss.item<float>();
      if (step < kWindow) first += l / kWindow;
      if (step >= kSteps - kWindow) last += l / kWindow;
    }
  }
  first = rank_mean(*comm, first);
  last = rank_mean(*comm, last);

  // Identical parameters everywhere iff the largest and smallest checksum over the ranks agree.
  Tensor high = from_vector<double>(checksum(model), {3});
  Tensor low = high.clone();
  comm->all_reduce(high, {.op = dist::ReduceOp::kMax})->wait();
  comm->all_reduce(low, {.op = dist::ReduceOp::kMin})->wait();
  const bool identical = high.to_vector<double>() == low.to_vector<double>();
  const bool fell = last < first;

  std::printf("ddp_custom_loop: rank %d of %d, loss %.4f -> %.4f, parameters %s\n", rank, world,
              first, last, identical ? "identical on every rank" : "DIFFER between ranks");
  if (!fell) std::fprintf(stderr, "ddp_custom_loop: the loss did not fall\n");
  return identical && fell ? 0 : 1;
}
