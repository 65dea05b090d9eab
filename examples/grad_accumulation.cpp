// Gradient accumulation with DistributedDataParallel::no_sync, and an exact resume from a
// checkpoint (train/checkpoint.h). It checks two things:
//   1. K micro-batches of B rows, accumulated under no_sync with the loss scaled by 1/K, give the
//      same update as one batch of K * B rows;
//   2. N steps, a checkpoint (parameters, optimiser state, sampler position), a fresh model and
//      optimiser that load it, then M more steps end with the parameters of N + M steps in one go.
// Run:
//   grad_accumulation [CHECKPOINT=<temp dir>/dtrain_grad_accumulation_<random>.dtck]
//   mpirun -n 2 grad_accumulation       (rank 0 writes the checkpoint, every rank reads it)
// Prints "grad_accumulation: 4 x 8 rows matches one batch of 32 (...); resumed after 10 of 17 steps
// matches the uninterrupted run (...)" and exits 1 when either comparison fails.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "dtrain/dtrain.h"

using namespace dtrain;

namespace {

constexpr int kMicroBatches = 4;   // K
constexpr int64_t kMicroRows = 8;  // B, per rank
constexpr int kStepsBefore = 10;   // N
constexpr int kStepsAfter = 7;     // M
constexpr uint64_t kDataSeed = 5;

std::shared_ptr<nn::Sequential> make_model(uint64_t seed) {
  manual_seed(seed);
  return std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Linear>(8, 32), std::make_shared<nn::Tanh>(),
      std::make_shared<nn::Linear>(32, 3)});
}

double max_abs_diff(const nn::Module& a, const nn::Module& b) {
  double diff = 0;
  const nn::NamedTensors sa = a.state_dict(), sb = b.state_dict();
  for (size_t i = 0; i < sa.size(); ++i) {
    const std::vector<float> va = sa[i].second.to_vector<float>();
    const std::vector<float> vb = sb[i].second.to_vector<float>();
    for (size_t j = 0; j < va.size(); ++j) diff = std::max(diff, double(std::abs(va[j] - vb[j])));
  }
  return diff;
}

/// The largest value of `v` over the ranks.
double rank_max(dist::Communicator& comm, double v) {
  Tensor t = from_vector<double>({v}, {1});
  comm.all_reduce(t, {.op = dist::ReduceOp::kMax})->wait();
  return t.item<double>();
}

/// One training run: a model under DDP, its optimiser, and its place in the data.
struct Run {
  std::shared_ptr<nn::Sequential> model;
  std::unique_ptr<DistributedDataParallel> ddp;
  std::unique_ptr<nn::Adam> opt;
  std::unique_ptr<data::DataLoader> loader;
  int64_t step = 0, epoch = 0, batch_in_epoch = 0;

  /// A run from the parameters `model` has (rank 0's, once DDP has broadcast them), starting at
  /// batch `start_batch` of epoch `start_epoch`.
  Run(std::shared_ptr<nn::Sequential> m, const dist::CommunicatorPtr& comm,
      const data::DatasetPtr& dataset, int64_t start_epoch = 0, int64_t start_batch = 0)
      : model(std::move(m)), epoch(start_epoch), batch_in_epoch(start_batch) {
    ddp = std::make_unique<DistributedDataParallel>(*model, comm);
    opt = std::make_unique<nn::Adam>(model->parameters(), nn::AdamOptions{.lr = 0.01});
    data::DistributedSampler sampler(dataset->size(), comm->size(), comm->rank(), /*shuffle=*/true,
                                     /*seed=*/1, /*drop_last=*/true);
    loader = std::make_unique<data::DataLoader>(dataset, sampler, kMicroRows, /*drop_last=*/true);
    loader->start_epoch(epoch, batch_in_epoch);
  }

  data::Batch next_batch() {
    data::Batch b;
    while (!loader->next(b)) {  // end of the epoch: the next one
      loader->start_epoch(++epoch);
      batch_in_epoch = 0;
    }
    ++batch_in_epoch;
    return b;
  }

  /// One optimiser step over K micro-batches. Only the last backward all-reduces: it reduces the
  /// gradients the earlier ones accumulated locally.
  void train_step() {
    nn::CrossEntropyLoss loss_fn;
    opt->zero_grad();
    for (int k = 0; k < kMicroBatches; ++k) {
      const data::Batch b = next_batch();
      Tensor loss = loss_fn(ddp->forward(b.x), b.y) * (1.0 / kMicroBatches);
      if (k < kMicroBatches - 1) {
        auto no_sync = ddp->no_sync();
        loss.backward();
      } else {
        loss.backward();
      }
    }
    opt->step();
    ++step;
  }

  train::CheckpointData checkpoint() const {
    train::CheckpointData c;
    c.step = step;
    c.epoch = epoch;
    c.batch_in_epoch = batch_in_epoch;
    c.world_size = ddp->communicator().size();
    c.model = model->state_dict();
    nn::OptimizerState state = opt->state_dict();
    c.optimizer_tensors = std::move(state.tensors);
    c.optimizer_scalars = std::move(state.scalars);
    return c;
  }
};

/// Check 1: one SGD step from the same start with K micro-batches under no_sync, and with one
/// batch of K * B rows (the same rows). Returns the largest parameter difference over the ranks.
double accumulation_vs_large_batch(const dist::CommunicatorPtr& comm,
                                   const data::DatasetPtr& dataset) {
  data::DistributedSampler sampler(dataset->size(), comm->size(), comm->rank(), true, 2, true);
  data::DataLoader loader(dataset, sampler, kMicroBatches * kMicroRows, true);
  loader.start_epoch(0);
  data::Batch big;
  loader.next(big);
  nn::CrossEntropyLoss loss_fn;

  auto accumulated = make_model(11);
  DistributedDataParallel ddp_acc(*accumulated, comm);
  nn::SGD opt_acc(accumulated->parameters(), {.lr = 0.5});
  for (int k = 0; k < kMicroBatches; ++k) {
    const Tensor x = slice(big.x, 0, k * kMicroRows, (k + 1) * kMicroRows);
    const Tensor y = slice(big.y, 0, k * kMicroRows, (k + 1) * kMicroRows);
    Tensor loss = loss_fn(ddp_acc.forward(x), y) * (1.0 / kMicroBatches);
    if (k < kMicroBatches - 1) {
      auto no_sync = ddp_acc.no_sync();
      loss.backward();
    } else {
      loss.backward();
    }
  }
  opt_acc.step();

  auto single = make_model(11);
  DistributedDataParallel ddp_single(*single, comm);
  nn::SGD opt_single(single->parameters(), {.lr = 0.5});
  loss_fn(ddp_single.forward(big.x), big.y).backward();
  opt_single.step();
  return rank_max(*comm, max_abs_diff(*accumulated, *single));
}

}  // namespace

int main(int argc, char** argv) {
  dist::Job job = dist::Job::from_env();
  dist::CommunicatorPtr comm = job.world();
  const int rank = comm->rank();
  auto dataset = std::make_shared<data::SyntheticDataset>(512, Shape{8}, 3, kDataSeed);

  const double accumulation_diff = accumulation_vs_large_batch(comm, dataset);

  // Every rank uses rank 0's file name (a random number keeps concurrent runs apart).
  Tensor tag = from_vector<int64_t>({int64_t(std::random_device{}())}, {1});
  comm->broadcast(tag)->wait();
  const std::string path =
      argc > 1 ? argv[1]
               : (std::filesystem::temp_directory_path() /
                  ("dtrain_grad_accumulation_" + std::to_string(tag.item<int64_t>()) + ".dtck"))
                     .string();

  // The uninterrupted run: N + M steps.
  Run whole(make_model(1), comm, dataset);
  for (int s = 0; s < kStepsBefore + kStepsAfter; ++s) whole.train_step();

  // N steps, then a checkpoint that rank 0 writes (the ranks' parameters and optimiser states are
  // identical, as DDP keeps them).
  {
    Run first(make_model(1), comm, dataset);
    for (int s = 0; s < kStepsBefore; ++s) first.train_step();
    if (rank == 0) train::save_checkpoint(path, first.checkpoint());
  }
  // The file is complete before any rank reads it.
  comm->barrier()->wait();

  // A fresh model (other initial values) and optimiser take everything from the checkpoint.
  const train::CheckpointData c = train::load_checkpoint(path);
  auto model = make_model(99);
  model->load_state_dict(c.model);
  Run resumed(model, comm, dataset, c.epoch, c.batch_in_epoch);
  resumed.step = c.step;
  resumed.opt->load_state_dict({c.optimizer_tensors, c.optimizer_scalars});
  for (int s = 0; s < kStepsAfter; ++s) resumed.train_step();
  // Every rank has read the file before rank 0 removes it.
  comm->barrier()->wait();
  if (rank == 0 && argc <= 1) std::filesystem::remove(path);

  const double resume_diff = rank_max(*comm, max_abs_diff(*whole.model, *resumed.model));
  const bool accumulation_ok = accumulation_diff <= 1e-5;
  const bool resume_ok = resume_diff <= 1e-6 && resumed.step == whole.step;
  if (rank == 0) {
    std::printf(
        "grad_accumulation: %d x %lld rows %s one batch of %lld (max diff %.1e); resumed after %d "
        "of %d steps %s the uninterrupted run (max diff %.1e)\n",
        kMicroBatches, (long long)kMicroRows, accumulation_ok ? "matches" : "DOES NOT MATCH",
        (long long)(kMicroBatches * kMicroRows), accumulation_diff, kStepsBefore,
        kStepsBefore + kStepsAfter, resume_ok ? "matches" : "DOES NOT MATCH", resume_diff);
  }
  return accumulation_ok && resume_ok ? 0 : 1;
}
