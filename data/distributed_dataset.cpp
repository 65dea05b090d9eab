// DistributedDataset: a single-process DataLoader with the global batch, each batch cut into the
// replicas' contiguous shares (views, no copy).
#include "dtrain/data/distributed_dataset.h"

#include <algorithm>
#include <string>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/ops.h"

namespace dtrain::data {
namespace {

/// The loader of one process with the global batch, after the checks that name the replica count.
DataLoader make_global_loader(DatasetPtr dataset, int replicas, const DistributeOptions& o) {
  DTRAIN_CHECK(dataset != nullptr, "DistributedDataset: dataset is null");
  DTRAIN_CHECK(replicas >= 1, "DistributedDataset(", dataset->describe(), "): num_replicas is ",
               replicas, "; expected >= 1");
  DTRAIN_CHECK(o.global_batch_size >= 1, "DistributedDataset(", dataset->describe(),
               "): global_batch_size is ", o.global_batch_size, "; expected >= 1");
  const int64_t lower = o.global_batch_size / replicas * replicas;
  DTRAIN_CHECK(o.global_batch_size % replicas == 0, "DistributedDataset(", dataset->describe(),
               "): the global batch size ", o.global_batch_size, " does not divide across ",
               replicas, " replicas; use a multiple of ", replicas, " (",
               lower > 0 ? std::to_string(lower) + " or " : "", lower + replicas, ")");
  const int64_t size = dataset->size();
  return DataLoader(std::move(dataset),
                    DistributedSampler(size, /*num_replicas=*/1, /*rank=*/0, o.shuffle, o.seed,
                                       /*drop_last=*/false),
                    o.global_batch_size, o.drop_last, o.prefetch);
}

}  // namespace

double DistributedBatch::loss_scale(int r) const {
  const int64_t rows = per_replica.at(r).y.size(0);
  if (rows == 0) return 0.0;
  return static_cast<double>(rows * static_cast<int64_t>(per_replica.size())) /
         static_cast<double>(global_size);
}

DistributedDataset::DistributedDataset(DatasetPtr dataset, int num_replicas,
                                       DistributeOptions options)
    : replicas_(num_replicas),
      global_batch_(options.global_batch_size),
      loader_(make_global_loader(std::move(dataset), num_replicas, options)) {}

void DistributedDataset::start_epoch(int64_t epoch, int64_t skip_steps) {
  loader_.start_epoch(epoch, skip_steps);
}

bool DistributedDataset::next(DistributedBatch& step) {
  Batch global;
  if (!loader_.next(global)) return false;
  const int64_t rows = global.y.size(0);
  step.per_replica.resize(static_cast<size_t>(replicas_));
  for (int r = 0; r < replicas_; ++r) {
    const auto [first, last] = share(rows, replicas_, r);
    step.per_replica[r] = Batch{ops::slice(global.x, 0, first, last),
                                ops::slice(global.y, 0, first, last), global.index};
  }
  step.global_size = rows;
  step.index = global.index;
  return true;
}

std::pair<int64_t, int64_t> DistributedDataset::share(int64_t rows, int replicas, int r) {
  // numpy.array_split's rule: the first rows % replicas shares are one row longer.
  const int64_t base = rows / replicas, extra = rows % replicas;
  const int64_t first = r * base + std::min<int64_t>(r, extra);
  return {first, first + base + (r < extra ? 1 : 0)};
}

}  // namespace dtrain::data
