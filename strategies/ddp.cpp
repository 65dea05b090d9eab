// DistributedDataParallel: model agreement check, parameter broadcast, gradient buckets whose
// all-reduce starts from autograd hooks, no_sync, unused-parameter detection, bucket rebuild,
// all-reduce timing.
#include "dtrain/strategies/ddp.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <sstream>

#include "dtrain/autograd/grad_mode.h"
#include "dtrain/autograd/hooks.h"
#include "dtrain/distributed/host_communicator.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/hash.h"
#include "dtrain/tensor/ops.h"

namespace dtrain {

using Clock = std::chrono::steady_clock;

struct Bucket {
  std::vector<size_t> params;  // indices into State::params, in bucket order
  Tensor flat;                 // the gradients, contiguous: each parameter's grad is a view
  Tensor compressed;           // fp16/bf16 copy sent instead of flat by a comm hook
  Tensor shard;                // reduce_scatter: this rank's chunk of the average (or compressed)
  bool scattered = false;      // this step's collective is a reduce_scatter into shard
  Tensor gather_mine, gather_all;  // all_gather_owned's chunk and whole bucket
  int pending = 0;                 // parameters whose gradient is not final yet this step
  dist::WorkPtr work;
  Clock::time_point launched;  // collect_stats: when this step's all-reduce was issued
};

namespace {

/// When this rank's collectives finished, by sequence number: noted on the communicator's worker
/// thread right after each one ran, before its Work completes (collect_stats).
class FinishTimes final : public dist::CollectiveObserver {
 public:
  void on_start(int, const dist::CollectiveInfo&) override {}
  void on_finish(int, const dist::CollectiveInfo& info) override {
    const Clock::time_point now = Clock::now();
    std::lock_guard lock(mu_);
    times_.emplace_back(info.sequence, now);
  }
  /// When collective `sequence` finished; valid once its Work's wait() has returned.
  Clock::time_point of(uint64_t sequence) {
    std::lock_guard lock(mu_);
    for (const auto& [seq, at] : times_) {
      if (seq == sequence) return at;
    }
    return Clock::now();  // not observed (cannot happen after wait()): count it as ending now
  }
  /// Forgets what was noted (once per step, so the list stays a step long).
  void clear() {
    std::lock_guard lock(mu_);
    times_.clear();
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<uint64_t, Clock::time_point>> times_;
};

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

struct DistributedDataParallel::State {
  std::shared_ptr<dist::Communicator> comm;
  DdpOptions options;
  std::vector<std::pair<std::string, Tensor>> params;  // those that require grad
  std::vector<int> bucket_of;
  std::vector<Bucket> buckets;
  std::vector<bool> ready;
  size_t next_launch = 0;
  bool syncing = true;
  bool rebuilt = false;
  /// The last backward finished the reduction and no synchronize_gradients() has been called
  /// since: the next one has nothing to do. A replica that skips backward for a step (no data)
  /// and calls synchronize_gradients() still joins the step's all-reduces.
  bool reduced_by_backward = false;
  /// The autograd::backward_id() of the backward whose end runs finish() (0: none queued). An id
  /// rather than a flag: a backward that throws drops its callbacks, and the next one must queue.
  uint64_t finish_queued_in = 0;
  std::weak_ptr<State> self;
  std::vector<size_t> ready_order;            // first step: the order gradients became final
  std::shared_ptr<FinishTimes> finish_times;  // set when collect_stats
  DdpStats stats;
  DdpStepTiming last_step;

  /// Groups parameters in `order` into buckets (one dtype each, first bucket smaller), and makes
  /// every gradient a view into its bucket, keeping the values it had.
  void build_buckets(const std::vector<size_t>& order) {
    buckets.clear();
    bucket_of.assign(params.size(), -1);
    const double mib = 1024.0 * 1024.0;
    size_t cap = static_cast<size_t>(options.bucket_first_cap_mb * mib);
    size_t bytes = 0;
    for (size_t i : order) {
      const Tensor& p = params[i].second;
      const bool fits = !buckets.empty() && bytes + p.nbytes() <= cap &&
                        params[buckets.back().params.front()].second.dtype() == p.dtype();
      if (!fits) {
        if (!buckets.empty()) cap = static_cast<size_t>(options.bucket_cap_mb * mib);
        buckets.emplace_back();
        bytes = 0;
      }
      buckets.back().params.push_back(i);
      bucket_of[i] = static_cast<int>(buckets.size()) - 1;
      bytes += p.nbytes();
    }
    for (Bucket& b : buckets) {
      int64_t total = 0;
      for (size_t i : b.params) total += params[i].second.numel();
      // reduce_scatter splits a bucket into equal chunks: the padding stays zero.
      if (options.reduce_scatter) total = (total + comm->size() - 1) / comm->size() * comm->size();
      const Tensor& first = params[b.params.front()].second;
      // Host buckets in the communicator's symmetric memory: where the backend shares memory
      // between processes of one host (tcp by default), they are reduced in place there.
      b.flat = first.device().is_cpu() ? comm->allocate_symmetric(total, first.dtype())
                                       : zeros({total}, first.dtype(), first.device());
      int64_t at = 0;
      for (size_t i : b.params) {
        Tensor& p = params[i].second;
        Tensor view(b.flat.storage(), at * dtype_size(p.dtype()), p.shape(), p.dtype());
        if (p.grad().defined()) view.copy_(p.grad());
        p.set_grad(view);
        at += p.numel();
      }
      b.pending = static_cast<int>(b.params.size());
    }
    ready.assign(params.size(), false);
    next_launch = 0;
  }

  /// Chunk of a reduce-scattered bucket each rank owns, in elements.
  int64_t chunk(const Bucket& b) const { return b.flat.numel() / comm->size(); }

  /// Elements [at, at + n) of `flat` as a tensor sharing its memory.
  static Tensor slice_of(const Tensor& flat, int64_t at, int64_t n) {
    return Tensor(flat.storage(), flat.storage_offset_bytes() + at * dtype_size(flat.dtype()), {n},
                  flat.dtype());
  }

  void launch(Bucket& b) {
    b.launched = Clock::now();
    const int world = comm->size();
    b.scattered = options.reduce_scatter && rebuilt;
    Tensor send = b.flat;
    dist::ReduceOp op = dist::ReduceOp::kAvg;
    if (options.comm_hook != "none") {
      // Compression: divide first (no overflow in 16 bits), sum the halves, widen at the end.
      Tensor scaled = b.flat.clone();
      ops::scale_(scaled, 1.0 / world);
      b.compressed =
          to_dtype(scaled, options.comm_hook == "fp16" ? DType::kFloat16 : DType::kBFloat16);
      send = b.compressed;
      op = dist::ReduceOp::kSum;
    }
    if (!b.scattered) {
      b.work = comm->all_reduce(send, {op, options.timeout});
      return;
    }
    if (!b.shard.defined() || b.shard.dtype() != send.dtype())
      b.shard = zeros({chunk(b)}, send.dtype(), send.device());
    b.work = comm->reduce_scatter(send, b.shard, {op, options.timeout});
  }

  /// Launches ready buckets strictly in bucket order, so every rank issues the same sequence.
  void launch_ready() {
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0) {
      launch(buckets[next_launch]);
      ++next_launch;
    }
  }

  void on_ready(size_t i) {
    if (!syncing || ready[i]) return;
    reduced_by_backward = false;
    if (finish_queued_in != autograd::backward_id()) {
      // The reduction ends with the backward that produced the gradients, as in PyTorch's DDP:
      // an optimiser step after backward() always sees averaged gradients, even when the caller
      // never calls synchronize_gradients().
      finish_queued_in = autograd::backward_id();
      autograd::queue_callback([weak = self] {
        if (auto st = weak.lock()) {
          st->finish();
          st->reduced_by_backward = true;
        }
      });
    }
    Tensor& p = params[i].second;
    Bucket& b = buckets[bucket_of[i]];
    // A gradient that left its bucket (zero_grad(set_to_none) then a fresh accumulation) is
    // copied back and viewed again.
    const int64_t offset = offset_in_bucket(i);
    Tensor view(b.flat.storage(), offset * dtype_size(p.dtype()), p.shape(), p.dtype());
    if (p.grad().data_ptr() != view.data_ptr()) {
      view.copy_(p.grad());
      p.set_grad(view);
    }
    ready[i] = true;
    if (!rebuilt) ready_order.push_back(i);
    --b.pending;
    if (options.overlap) launch_ready();
  }

  /// Adds one step to stats: the union of the buckets' [launched, finished] intervals, and the part
  /// of it after `entered` (when synchronize_gradients began, i.e. after backward returned).
  void record_step(std::vector<std::pair<Clock::time_point, Clock::time_point>> busy,
                   Clock::time_point entered) {
    const Clock::time_point left = Clock::now();
    std::sort(busy.begin(), busy.end());
    double total = 0, exposed = 0;
    for (size_t i = 0; i < busy.size();) {
      const Clock::time_point begin = busy[i].first;
      Clock::time_point end = busy[i].second;
      for (++i; i < busy.size() && busy[i].first <= end; ++i) end = std::max(end, busy[i].second);
      total += seconds(end - begin);
      if (end > entered) exposed += seconds(end - std::max(begin, entered));
    }
    ++stats.steps;
    stats.all_reduce_s += total;
    stats.exposed_s += exposed;
    stats.synchronize_s += seconds(left - entered);
    finish_times->clear();
  }

  /// Waits for every bucket's all-reduce (launching those backward did not start), so the
  /// gradients hold the average; the first time, rebuilds the buckets in rank 0's ready order.
  void finish() {
    finish_queued_in = 0;
    const bool timed = finish_times != nullptr;
    const Clock::time_point entered = Clock::now();
    last_step.buckets.clear();
    last_step.wait_began = entered;
    std::vector<std::string> unused;
    for (size_t i = 0; i < params.size(); ++i) {
      if (!ready[i]) unused.push_back(params[i].first);
    }
    if (!unused.empty()) {
      if (!options.find_unused_parameters) {
        std::string names;
        for (const auto& n : unused) names += (names.empty() ? "" : ", ") + n;
        DTRAIN_THROW(ValueError,
                     "DistributedDataParallel: parameters that got no gradient in this "
                     "step: ",
                     names,
                     ". Use them in the forward pass, or set "
                     "find_unused_parameters (strategy.find_unused_parameters: true) so their "
                     "zero gradients are reduced too");
      }
      // Unused parameters contribute what their bucket slot holds (zeros, or what no_sync
      // micro-batches accumulated), so every rank runs every bucket. A gradient dropped by
      // zero_grad(set_to_none) comes back as zeros: last step's average must not be sent
      // again, and every replica must step every parameter.
      for (size_t i = 0; i < params.size(); ++i) {
        if (ready[i]) continue;
        Tensor& p = params[i].second;
        Bucket& b = buckets[bucket_of[i]];
        Tensor view(b.flat.storage(), offset_in_bucket(i) * dtype_size(p.dtype()), p.shape(),
                    p.dtype());
        if (!p.grad().defined()) {
          view.zero_();
          p.set_grad(view);
        } else if (p.grad().data_ptr() != view.data_ptr()) {
          view.copy_(p.grad());
          p.set_grad(view);
        }
        ready[i] = true;
        --b.pending;
      }
    }
    launch_ready();  // buckets not started from backward (no overlap, unused parameters)
    std::vector<std::pair<Clock::time_point, Clock::time_point>> busy;
    for (Bucket& b : buckets) {
      b.work->wait(options.timeout);
      const Clock::time_point done =
          timed ? finish_times->of(b.work->info().sequence) : Clock::now();
      if (timed) busy.emplace_back(b.launched, done);
      last_step.buckets.push_back(
          {b.launched, done, static_cast<int64_t>(b.flat.nbytes()), b.scattered});
      b.work.reset();
      if (b.scattered) {
        slice_of(b.flat, comm->rank() * chunk(b), chunk(b)).copy_(b.shard);
      } else if (b.compressed.defined()) {
        b.flat.copy_(b.compressed);
      }
      b.compressed = Tensor();
      b.pending = static_cast<int>(b.params.size());
    }
    std::fill(ready.begin(), ready.end(), false);
    next_launch = 0;
    last_step.exposed_s = seconds(Clock::now() - entered);
    if (timed) record_step(std::move(busy), entered);
    if (!rebuilt) {
      // Buckets follow the order gradients actually became final. Rank 0's order is used
      // everywhere, so all ranks issue the same all-reduces.
      rebuilt = true;
      std::vector<size_t> order = ready_order;
      for (size_t i = 0; i < params.size(); ++i) {
        if (std::find(order.begin(), order.end(), i) == order.end()) order.push_back(i);
      }
      Tensor shared({static_cast<int64_t>(order.size())}, DType::kInt64);
      for (size_t k = 0; k < order.size(); ++k)
        shared.data<int64_t>()[k] = static_cast<int64_t>(order[k]);
      comm->broadcast(shared, {0, options.timeout})->wait(options.timeout);
      for (size_t k = 0; k < order.size(); ++k)
        order[k] = static_cast<size_t>(shared.data<int64_t>()[k]);
      build_buckets(order);
    }
  }

  nn::ElementRange owned(size_t i) const {
    const int64_t n = params[i].second.numel();
    if (!options.reduce_scatter) return {0, n};
    const Bucket& b = buckets[bucket_of[i]];
    const int64_t at = offset_in_bucket(i);
    const int64_t first = comm->rank() * chunk(b);
    const int64_t begin = std::clamp(first - at, int64_t{0}, n);
    const int64_t end = std::clamp(first + chunk(b) - at, begin, n);
    return {begin, end};
  }

  int64_t offset_in_bucket(size_t i) const {
    int64_t at = 0;
    for (size_t j : buckets[bucket_of[i]].params) {
      if (j == i) return at;
      at += params[j].second.numel();
    }
    return at;
  }
};

DistributedDataParallel::DistributedDataParallel(nn::Module& model,
                                                 std::shared_ptr<dist::Communicator> comm,
                                                 DdpOptions options)
    : model_(model), comm_(std::move(comm)), options_(options), state_(std::make_shared<State>()) {
  DTRAIN_CHECK(comm_ != nullptr, "DistributedDataParallel: needs a communicator");
  DTRAIN_CHECK(
      options_.comm_hook == "none" || options_.comm_hook == "fp16" || options_.comm_hook == "bf16",
      "DistributedDataParallel: comm_hook must be none, fp16 or bf16; got '", options_.comm_hook,
      "'");
  if (options_.collect_stats && !comm_->observes_collectives()) {
    DTRAIN_THROW(UnsupportedError,
                 "DistributedDataParallel: collect_stats observes when each all-reduce finishes, "
                 "which the '",
                 comm_->backend_name(),
                 "' communicator does not report (its collectives run off the host)");
  }
  check_models_agree();
  broadcast_state(/*parameters=*/true, /*buffers=*/true);
  State& s = *state_;
  s.comm = comm_;
  s.options = options_;
  s.self = state_;
  for (auto& [name, p] : model_.named_parameters()) {
    if (p.requires_grad()) s.params.emplace_back(name, p);
  }
  // Reverse registration order approximates the order backward finishes gradients; the real
  // order, recorded in the first step, replaces it.
  std::vector<size_t> order(s.params.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = order.size() - 1 - i;
  s.build_buckets(order);
  std::weak_ptr<State> weak = state_;
  for (size_t i = 0; i < s.params.size(); ++i) {
    autograd::register_post_accumulate_grad_hook(s.params[i].second, [weak, i](Tensor&) {
      if (auto st = weak.lock()) st->on_ready(i);
    });
  }
  if (options_.collect_stats) {
    s.finish_times = std::make_shared<FinishTimes>();
    comm_->add_observer(s.finish_times.get());
  }
}

DistributedDataParallel::~DistributedDataParallel() {
  // Collectives still in flight hold views of our buckets: let them finish first.
  for (Bucket& b : state_->buckets) {
    if (b.work) {
      try {
        b.work->wait(options_.timeout);
      } catch (...) {
      }
    }
  }
  if (state_->finish_times) {
    comm_->remove_observer(state_->finish_times.get());
  }
}

void DistributedDataParallel::check_models_agree() {
  // 1. Every rank gathers every rank's tensor count; 2. then one fingerprint per tensor (name,
  //    shape, dtype); the first index where a rank differs from rank 0 names the tensor.
  std::vector<std::pair<std::string, Tensor>> tensors = model_.named_parameters();
  for (auto& b : model_.named_buffers()) tensors.push_back(b);
  const int world = comm_->size();
  Tensor count = full({1}, static_cast<double>(tensors.size()), DType::kInt64);
  Tensor counts({world}, DType::kInt64);
  comm_->all_gather(count, counts, {options_.timeout})->wait(options_.timeout);
  const auto all_counts = counts.to_vector<int64_t>();
  if (std::any_of(all_counts.begin(), all_counts.end(),
                  [&](int64_t c) { return c != all_counts[0]; })) {
    std::ostringstream os;
    os << "DistributedDataParallel: the ranks' models differ in their number of parameters and "
          "buffers:";
    for (int r = 0; r < world; ++r) os << " rank " << r << " has " << all_counts[r] << ";";
    DTRAIN_THROW(ValueError, os.str());
  }
  Tensor mine({static_cast<int64_t>(tensors.size())}, DType::kInt64);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i].second;
    mine.data<int64_t>()[i] = static_cast<int64_t>(fnv1a(
        tensors[i].first + "|" + shape_str(t.shape()) + "|" + std::string(dtype_name(t.dtype()))));
  }
  Tensor all({static_cast<int64_t>(tensors.size()) * world}, DType::kInt64);
  comm_->all_gather(mine, all, {options_.timeout})->wait(options_.timeout);
  const int64_t* rows = all.data<int64_t>();
  const size_t n = tensors.size();
  for (size_t i = 0; i < n; ++i) {
    std::vector<int> differing;
    for (int r = 1; r < world; ++r) {
      if (rows[r * n + i] != rows[i]) differing.push_back(r);
    }
    if (!differing.empty()) {
      DTRAIN_THROW(ValueError, "DistributedDataParallel: the ranks' models differ at '",
                   tensors[i].first, "' (", tensors[i].second.describe(), " on rank ",
                   comm_->rank(), "): rank(s) ", dist::rank_list(differing),
                   " have a different name, shape or dtype there than rank 0");
    }
  }
}

void DistributedDataParallel::broadcast_state(bool parameters, bool buffers) {
  std::vector<Tensor> tensors;
  if (parameters) {
    for (auto& [name, p] : model_.named_parameters()) tensors.push_back(p);
  }
  if (buffers) {
    for (auto& [name, b] : model_.named_buffers()) tensors.push_back(b);
  }
  if (tensors.empty() || comm_->size() == 1) return;
  std::vector<dist::WorkPtr> works;
  for (Tensor& t : tensors) {
    Tensor data = t.detach();  // the same memory, outside autograd
    works.push_back(comm_->broadcast(data, {0, options_.timeout}));
  }
  for (auto& w : works) w->wait(options_.timeout);
}

Tensor DistributedDataParallel::forward(const Tensor& x) {
  if (options_.broadcast_buffers && model_.is_training()) broadcast_state(false, true);
  return model_.forward(x);
}

void DistributedDataParallel::synchronize_gradients() {
  State& s = *state_;
  if (!s.syncing) return;
  if (s.reduced_by_backward) {  // the backward before this call did it
    s.reduced_by_backward = false;
    return;
  }
  s.finish();
}

void DistributedDataParallel::set_gradient_sync(bool enabled) { state_->syncing = enabled; }

bool DistributedDataParallel::gradient_sync() const { return state_->syncing; }

DistributedDataParallel::NoSync::NoSync(DistributedDataParallel& ddp)
    : ddp_(ddp), previous_(ddp.gradient_sync()) {
  ddp_.set_gradient_sync(false);
}

DistributedDataParallel::NoSync::~NoSync() { ddp_.set_gradient_sync(previous_); }

DdpStats DistributedDataParallel::stats() const { return state_->stats; }

const DdpStepTiming& DistributedDataParallel::last_step() const { return state_->last_step; }

void DistributedDataParallel::reset_stats() { state_->stats = DdpStats{}; }

std::vector<Tensor> DistributedDataParallel::parameters() const {
  std::vector<Tensor> out;
  for (const auto& [name, p] : state_->params) out.push_back(p);
  return out;
}

bool DistributedDataParallel::buckets_settled() const { return state_->rebuilt; }

void DistributedDataParallel::set_bucket_cap_mb(double mb) {
  State& s = *state_;
  DTRAIN_CHECK(mb > 0, "DistributedDataParallel::set_bucket_cap_mb: ", mb, " MiB; must be > 0");
  DTRAIN_CHECK(!options_.reduce_scatter,
               "DistributedDataParallel::set_bucket_cap_mb: the buckets of a sharded optimiser "
               "(reduce_scatter) cannot change");
  for (const Bucket& b : s.buckets) {
    DTRAIN_CHECK(!b.work && b.pending == static_cast<int>(b.params.size()),
                 "DistributedDataParallel::set_bucket_cap_mb: called during a step");
  }
  std::vector<size_t> order;
  for (const Bucket& b : s.buckets) order.insert(order.end(), b.params.begin(), b.params.end());
  options_.bucket_cap_mb = mb;
  s.options.bucket_cap_mb = mb;
  s.build_buckets(order);
}

std::vector<nn::ElementRange> DistributedDataParallel::owned_elements() const {
  std::vector<nn::ElementRange> out;
  for (size_t i = 0; i < state_->params.size(); ++i) out.push_back(state_->owned(i));
  return out;
}

void DistributedDataParallel::all_gather_owned(const std::vector<Tensor>& tensors) {
  State& s = *state_;
  DTRAIN_CHECK(tensors.size() == s.params.size(),
               "DistributedDataParallel::all_gather_owned: ", tensors.size(), " tensors for ",
               s.params.size(), " parameters");
  DTRAIN_CHECK(options_.reduce_scatter,
               "DistributedDataParallel::all_gather_owned: needs DdpOptions::reduce_scatter");
  for (size_t i = 0; i < tensors.size(); ++i) {
    DTRAIN_CHECK(!tensors[i].defined() || tensors[i].shape() == s.params[i].second.shape(),
                 "DistributedDataParallel::all_gather_owned: tensor ", i, " is ",
                 tensors[i].describe(), " but parameter '", s.params[i].first, "' is ",
                 s.params[i].second.describe());
  }
  NoGradGuard no_grad;
  const int rank = comm_->rank();
  std::vector<dist::WorkPtr> works(s.buckets.size());
  for (size_t k = 0; k < s.buckets.size(); ++k) {
    Bucket& b = s.buckets[k];
    const int64_t chunk = s.chunk(b);
    if (!b.gather_mine.defined()) {
      b.gather_mine = zeros({chunk}, b.flat.dtype(), b.flat.device());
      b.gather_all = zeros({b.flat.numel()}, b.flat.dtype(), b.flat.device());
    }
    bool any = false;
    for (size_t i : b.params) {
      if (!tensors[i].defined()) continue;
      any = true;
      const nn::ElementRange r = s.owned(i);
      if (r.size() == 0) continue;
      State::slice_of(b.gather_mine, s.offset_in_bucket(i) + r.begin - rank * chunk, r.size())
          .copy_(State::slice_of(tensors[i], r.begin, r.size()));
    }
    if (any) works[k] = comm_->all_gather(b.gather_mine, b.gather_all, {options_.timeout});
  }
  for (size_t k = 0; k < s.buckets.size(); ++k) {
    if (!works[k]) continue;
    works[k]->wait(options_.timeout);
    const Bucket& b = s.buckets[k];
    for (size_t i : b.params) {
      if (!tensors[i].defined()) continue;
      const int64_t n = tensors[i].numel();
      State::slice_of(tensors[i], 0, n)
          .copy_(State::slice_of(b.gather_all, s.offset_in_bucket(i), n));
    }
  }
}

std::vector<std::vector<std::string>> DistributedDataParallel::bucket_layout() const {
  std::vector<std::vector<std::string>> layout;
  for (const Bucket& b : state_->buckets) {
    layout.emplace_back();
    for (size_t i : b.params) layout.back().push_back(state_->params[i].first);
  }
  return layout;
}

}  // namespace dtrain
