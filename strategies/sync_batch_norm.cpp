// SyncBatchNorm over a communicator.
#include "dtrain/strategies/sync_batch_norm.h"

#include "dtrain/tensor/check.h"

namespace dtrain::nn {

ReplicaSum replica_sum_over(dist::CommunicatorPtr comm, dist::Timeout timeout) {
  DTRAIN_CHECK(comm != nullptr, "SyncBatchNorm: needs a communicator");
  return [comm, timeout](Tensor& t) { comm->all_reduce_now(t, {dist::ReduceOp::kSum, timeout}); };
}

SyncBatchNorm::SyncBatchNorm(int64_t num_features, int spatial_dims, dist::CommunicatorPtr comm,
                             double eps, double momentum)
    : BatchNorm(num_features, spatial_dims, eps, momentum) {
  set_replica_sum(replica_sum_over(std::move(comm)));
}

namespace {
int convert(Module& m, const ReplicaSum& sum) {
  int n = 0;
  if (auto* bn = dynamic_cast<BatchNorm*>(&m)) {
    bn->set_replica_sum(sum);
    ++n;
  }
  for (const auto& [name, child] : m.named_children()) n += convert(*child, sum);
  return n;
}
}  // namespace

int convert_sync_batch_norm(Module& model, dist::CommunicatorPtr comm, dist::Timeout timeout) {
  return convert(model, replica_sum_over(std::move(comm), timeout));
}

}  // namespace dtrain::nn
