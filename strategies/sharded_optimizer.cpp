// ZeRO-1 over DistributedDataParallel's reduce-scattered buckets.
#include "dtrain/strategies/sharded_optimizer.h"

#include <cmath>
#include <unordered_map>

#include "dtrain/autograd/grad_mode.h"
#include "dtrain/distributed/host_communicator.h"
#include "dtrain/nn/clip_grad.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/hash.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/printable.h"

namespace dtrain {

namespace {

/// Elements `r` of `t` as a flat tensor sharing its memory.
Tensor flat_elements(const Tensor& t, nn::ElementRange r) {
  return Tensor(t.storage(), t.storage_offset_bytes() + r.begin * dtype_size(t.dtype()), {r.size()},
                t.dtype());
}

/// "<index>.<name>" split at its first dot.
std::pair<size_t, std::string> split_key(const std::string& key) {
  const size_t dot = key.find('.');
  DTRAIN_CHECK(dot != std::string::npos && dot > 0, "sharded optimiser state: key '",
               printable(key), "' is not \"<parameter index>.<buffer>\"");
  return {std::stoul(key.substr(0, dot)), key.substr(dot + 1)};
}

double sum_over_replicas(dist::Communicator& comm, double value) {
  Tensor t({1}, DType::kFloat64);
  t.data<double>()[0] = value;
  comm.all_reduce_now(t);
  return t.data<double>()[0];
}

}  // namespace

ShardedOptimizer::ShardedOptimizer(DistributedDataParallel& ddp, nn::Optimizer& optimizer)
    : ddp_(ddp), opt_(optimizer) {
  DTRAIN_CHECK(ddp.reduces_scatter(),
               "ShardedOptimizer: the DistributedDataParallel must be "
               "built with DdpOptions::reduce_scatter = true");
  const std::vector<Tensor> reduced = ddp.parameters();
  std::unordered_map<const detail::TensorImpl*, size_t> index;
  for (size_t k = 0; k < reduced.size(); ++k) index[reduced[k].impl_ptr().get()] = k;
  for (const Tensor& p : opt_.params()) {
    auto it = index.find(p.impl_ptr().get());
    DTRAIN_CHECK(it != index.end(), "ShardedOptimizer: the optimiser's parameter ", p.describe(),
                 " is not one DistributedDataParallel reduces (a parameter of ",
                 "another model, or one that does not require grad)");
    ddp_index_.push_back(it->second);
  }
  DTRAIN_CHECK(ddp_index_.size() == reduced.size(), "ShardedOptimizer: the optimiser holds ",
               ddp_index_.size(), " of the ", reduced.size(),
               " parameters DistributedDataParallel reduces; a sharded step must update all of "
               "them (their gradients are reduced only in shards)");
}

void ShardedOptimizer::shard_once() {
  if (opt_.is_sharded()) return;
  DTRAIN_CHECK(ddp_.buckets_settled(),
               "ShardedOptimizer: no gradients were synchronised yet; "
               "run a backward through the DistributedDataParallel "
               "model before the first step");
  const std::vector<nn::ElementRange> owned = ddp_.owned_elements();
  std::vector<nn::ElementRange> ranges;
  for (size_t k : ddp_index_) ranges.push_back(owned[k]);
  opt_.shard(std::move(ranges));
}

void ShardedOptimizer::step() {
  shard_once();
  opt_.step();
  std::vector<Tensor> params(ddp_index_.size());
  const std::vector<Tensor> reduced = ddp_.parameters();
  for (size_t k = 0; k < reduced.size(); ++k) params[k] = reduced[k].detach();
  ddp_.all_gather_owned(params);
}

double sharded_grad_norm(DistributedDataParallel& ddp) {
  const std::vector<Tensor> reduced = ddp.parameters();
  const std::vector<nn::ElementRange> owned = ddp.owned_elements();
  std::vector<Tensor> pieces;
  for (size_t k = 0; k < reduced.size(); ++k) {
    const Tensor g = reduced[k].grad();
    if (g.defined() && owned[k].size() > 0) pieces.push_back(flat_elements(g, owned[k]));
  }
  return std::sqrt(sum_over_replicas(ddp.communicator(), nn::sum_of_squares(pieces)));
}

double sharded_clip_grad_norm_(DistributedDataParallel& ddp, double max_norm) {
  DTRAIN_CHECK(max_norm > 0, "clip_grad_norm_: max_norm must be > 0; got ", max_norm);
  const double norm = sharded_grad_norm(ddp);
  nn::scale_gradients_(ddp.parameters(), max_norm / (norm + 1e-6));
  return norm;
}

nn::OptimizerState ShardedOptimizer::state_dict() {
  nn::OptimizerState local = opt_.state_dict();
  if (!opt_.is_sharded()) return local;  // no step yet: the state is whole
  // Every replica steps every parameter (with no elements outside its shard), so the keys are
  // the same everywhere; a difference would leave replicas in different collectives.
  std::string keys;
  for (const auto& [key, t] : local.tensors) keys += key + '\n';
  Tensor mine({1}, DType::kInt64);
  mine.data<int64_t>()[0] = static_cast<int64_t>(fnv1a(keys));
  Tensor all({ddp_.communicator().size()}, DType::kInt64);
  ddp_.communicator().all_gather(mine, all)->wait();
  for (int64_t h : all.to_vector<int64_t>()) {
    DTRAIN_CHECK(h == mine.data<int64_t>()[0], "ShardedOptimizer::state_dict: replica ",
                 ddp_.communicator().rank(),
                 "'s optimiser holds other state buffers than another replica; every replica "
                 "must step the same parameters");
  }
  // One all-gather per buffer name ("exp_avg", ...) over every parameter that has it.
  std::map<std::string, std::vector<Tensor>> by_name;
  const std::vector<Tensor> reduced = ddp_.parameters();
  const std::vector<nn::ElementRange> owned = opt_.owned_elements();
  for (const auto& [key, piece] : local.tensors) {
    const auto [i, name] = split_key(key);
    DTRAIN_CHECK(i < ddp_index_.size(), "sharded optimiser state: key '", printable(key),
                 "' names no parameter");
    auto& tensors = by_name[name];
    if (tensors.empty()) tensors.resize(reduced.size());
    const Tensor& p = reduced[ddp_index_[i]];
    Tensor whole = zeros(p.shape(), piece.dtype(), p.device());
    flat_elements(whole, owned[i]).copy_(to_device(piece, p.device()));
    tensors[ddp_index_[i]] = whole;
  }
  nn::OptimizerState out;
  out.scalars = local.scalars;
  for (auto& [name, tensors] : by_name) {
    ddp_.all_gather_owned(tensors);
    for (size_t i = 0; i < ddp_index_.size(); ++i) {
      if (tensors[ddp_index_[i]].defined())
        out.tensors[std::to_string(i) + "." + name] = tensors[ddp_index_[i]];
    }
  }
  return out;
}

void ShardedOptimizer::load_state_dict(const nn::OptimizerState& state) {
  if (!opt_.is_sharded()) {  // cut to the shard at the first step
    opt_.load_state_dict(state);
    return;
  }
  const std::vector<nn::ElementRange> owned = opt_.owned_elements();
  const std::vector<Tensor>& params = opt_.params();
  nn::OptimizerState local;
  local.scalars = state.scalars;
  for (const auto& [key, whole] : state.tensors) {
    const auto [i, name] = split_key(key);
    DTRAIN_CHECK(i < params.size() && whole.shape() == params[i].shape(),
                 "sharded optimiser state: buffer '", printable(key), "' is ", whole.describe(),
                 i < params.size() ? " but its parameter is " + params[i].describe()
                                   : std::string(" and names no parameter"));
    local.tensors[key] = flat_elements(whole, owned[i]).clone();
  }
  opt_.load_state_dict(local);
}

}  // namespace dtrain
