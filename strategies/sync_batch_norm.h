// SyncBatchNorm: batch normalisation over the global batch of a data-parallel job, through the
// replicas' communicator (PyTorch's nn.SyncBatchNorm and convert_sync_batchnorm).
#pragma once

#include "dtrain/distributed/communicator.h"
#include "dtrain/nn/layers.h"

namespace dtrain::nn {

/// The replica sum of BatchNorm::set_replica_sum over `comm`: an all-reduce (sum) that every
/// replica's BatchNorm layers issue in the same order, in forward and in backward.
ReplicaSum replica_sum_over(dist::CommunicatorPtr comm,
                            dist::Timeout timeout = dist::kDefaultTimeout);

/// A BatchNorm whose training statistics span every replica of `comm`:
///   auto bn = std::make_shared<nn::SyncBatchNorm>(16, 2, comm);
class SyncBatchNorm : public BatchNorm {
 public:
  SyncBatchNorm(int64_t num_features, int spatial_dims, dist::CommunicatorPtr comm,
                double eps = 1e-5, double momentum = 0.1);
  std::string describe() const override { return "Sync" + BatchNorm::describe(); }
};

/// Synchronises every BatchNorm layer of `model` over `comm` in place (the layers keep their
/// parameters and statistics); returns how many there are. Call it on every replica.
int convert_sync_batch_norm(Module& model, dist::CommunicatorPtr comm,
                            dist::Timeout timeout = dist::kDefaultTimeout);

}  // namespace dtrain::nn
