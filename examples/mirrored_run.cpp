// MirroredStrategy: two replicas of one model as threads of this process on the CPU, each
// training on its share of every global batch (data::DistributedDataset), with gradients averaged
// by the strategy. run(step_fn) runs one step on every replica and returns their losses. Run:
//   mirrored_run
// Prints "mirrored_run: 2 replicas, loss A -> B, replicas identical" and exits 1 when the
// replicas' parameters differ or the loss did not fall.
#include <cstdio>
#include <memory>
#include <vector>

#include "dtrain/dtrain.h"

using namespace dtrain;

int main() {
  constexpr int kReplicas = 2;
  constexpr int kSteps = 30;
  constexpr int kWindow = 5;  // steps averaged for the first and last loss

  manual_seed(0);
  nn::Sequential model{std::make_shared<nn::Linear>(16, 64), std::make_shared<nn::ReLU>(),
                       std::make_shared<nn::Linear>(64, 4)};
  // Replica 0 trains `model`; replica 1 a clone of it on its own thread.
  MirroredStrategy strategy(model, kReplicas);
  std::vector<std::unique_ptr<nn::Optimizer>> opts;  // one per replica model
  for (int r = 0; r < kReplicas; ++r) {
    opts.push_back(std::make_unique<nn::SGD>(strategy.replica_model(r).parameters(),
                                             nn::SgdOptions{.lr = 0.1, .momentum = 0.9}));
  }
  nn::CrossEntropyLoss loss_fn;

  auto dataset = std::make_shared<data::SyntheticDataset>(2048, Shape{16}, 4, /*seed=*/7);
  data::DistributedDataset batches(dataset, kReplicas, {.global_batch_size = 64, .seed = 1});

  double first = 0, last = 0;
  int step = 0;
  for (int64_t epoch = 0; step < kSteps; ++epoch) {
    batches.start_epoch(epoch);
    for (data::DistributedBatch global; step < kSteps && batches.next(global); ++step) {
      std::vector<double> losses = strategy.run<double>([&](ReplicaContext& ctx) {
        const data::Batch& b = global.per_replica[ctx.replica];  // 32 of the 64 rows
        opts[ctx.replica]->zero_grad();
        Tensor loss = loss_fn(ctx.ddp.forward(b.x), b.y);
        // Backward returns with the gradients averaged over both replicas.
        (loss * global.loss_scale(ctx.replica)).backward();
        opts[ctx.replica]->step();
        return double(loss.item<float>());
      });
      const double l = MirroredStrategy::reduce(dist::ReduceOp::kAvg, losses);
      if (step < kWindow) first += l / kWindow;
      if (step >= kSteps - kWindow) last += l / kWindow;
    }
  }

  // Both replicas applied the same averaged gradients from the same start: bitwise equal.
  bool identical = true;
  const nn::NamedTensors a = strategy.replica_model(0).state_dict();
  const nn::NamedTensors b = strategy.replica_model(1).state_dict();
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].second.to_vector<float>() != b[i].second.to_vector<float>()) {
      std::fprintf(stderr, "mirrored_run: replicas differ in %s\n", a[i].first.c_str());
      identical = false;
    }
  }
  const bool fell = last < first;
  std::printf("mirrored_run: %d replicas, loss %.4f -> %.4f, replicas %s\n", kReplicas, first, last,
              identical ? "identical" : "DIFFER");
  if (!fell) std::fprintf(stderr, "mirrored_run: the loss did not fall\n");
  return identical && fell ? 0 : 1;
}
