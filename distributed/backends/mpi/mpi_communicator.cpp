// The mpi backend: MPI's lifetime (initialised once, finalised at exit after the last
// communicator), dtype and operation mapping (user-defined operations for 16-bit floats), each
// collective as nonblocking MPI calls polled against its deadline, and the reductions in rank
// order.
#include "dtrain/distributed/backends/mpi/mpi_communicator.h"

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/distributed/backends/mpi/mpi_check.h"
#include "dtrain/distributed/reduce.h"
#include "dtrain/tensor/check.h"

namespace dtrain::dist {
namespace {

using Clock = std::chrono::steady_clock;

/// Scratch for the chunked all_gather/reduce_scatter paths (counts > INT_MAX) and for the
/// rank-ordered reductions is capped here.
constexpr int64_t kPackBytes = int64_t{256} << 20;

/// Rank order: up to this many bytes per rank, an all_reduce all-gathers the whole tensor and
/// every rank reduces it (one round of messages instead of two; see all_reduce_in_rank_order).
constexpr int64_t kGatherAllMaxBytes = int64_t{32} << 10;

/// Small all-reduces on groups up to this size exchange point-to-point messages with every rank
/// (one round, size - 1 messages each way per rank); larger groups use MPI's all-gather, whose
/// algorithms need fewer messages per rank.
constexpr int kDirectExchangeMaxRanks = 8;
constexpr int kExchangeTag = 1;

/// The four reductions MPI runs (kAvg runs as kSum, divided afterwards).
constexpr ReduceOp kHalfOps[] = {ReduceOp::kSum, ReduceOp::kMin, ReduceOp::kMax,
                                 ReduceOp::kProduct};

// Process-wide MPI state. Leaked on purpose: a communicator held by a static may be destroyed
// after every static of this file, and it still needs the lock and the counters.
struct Runtime {
  std::mutex mu;
  bool initialized_here = false;  // this backend called MPI_Init_thread, so it finalises
  bool exit_started = false;      // the atexit hook has run
  int live = 0;                   // MpiCommunicators alive
  bool ops_created = false;
  MPI_Op half_ops[2][4] = {};  // [float16, bfloat16][kHalfOps index]
  // Requests given up after a timeout, and their buffers: MPI may still write into them if a late
  // peer arrives, and MPI_Finalize would wait forever for one that never completes.
  std::vector<MPI_Request> abandoned_requests;
  std::vector<Tensor> abandoned_buffers;
};

Runtime& runtime() {
  static Runtime* r = new Runtime();
  return *r;
}

/// True when every abandoned request has completed since (its peers arrived late), polling for
/// at most kReapGrace: they may need a few more progress steps.
bool abandoned_requests_done(Runtime& r) {
  constexpr auto kReapGrace = std::chrono::seconds(1);
  const auto until = Clock::now() + kReapGrace;
  for (;;) {
    int done = 0;
    if (MPI_Testall(static_cast<int>(r.abandoned_requests.size()), r.abandoned_requests.data(),
                    &done, MPI_STATUSES_IGNORE) != MPI_SUCCESS) {
      return false;
    }
    if (done) break;
    if (Clock::now() >= until) return false;
    std::this_thread::yield();
  }
  r.abandoned_requests.clear();
  r.abandoned_buffers.clear();
  return true;
}

/// Finalises once exit has begun and no communicator is left (never under a live one, whose
/// worker thread may be inside MPI). Not with a request still pending after a timeout: MPI_Finalize
/// would wait for it forever, while exiting without it makes mpirun stop the whole job, which is
/// what a failed collective calls for. Called with r.mu held.
void finalize_if_due(Runtime& r) {
  if (!r.initialized_here || !r.exit_started || r.live > 0) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (!r.abandoned_requests.empty() && !abandoned_requests_done(r)) return;
  r.initialized_here = false;
  if (r.ops_created) {
    for (auto& per_dtype : r.half_ops) {
      for (MPI_Op& op : per_dtype) MPI_Op_free(&op);
    }
    r.ops_created = false;
  }
  MPI_Finalize();
}

void finalize_at_exit() {
  Runtime& r = runtime();
  std::lock_guard lock(r.mu);
  r.exit_started = true;
  finalize_if_due(r);
}

const char* thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
  }
  return "an unknown thread level";
}

/// The user-defined MPI operation for a 16-bit float dtype: MPI hands over `in` and `inout`, and
/// reduce_into widens each pair to float, reduces and rounds back.
template <DType D, ReduceOp Op>
void half_reduce(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_into(inout, in, *len, D, Op);
}

template <DType D>
void create_half_ops(MPI_Op (&ops)[4]) {
  // In kHalfOps order.
  MPI_User_function* fns[] = {&half_reduce<D, ReduceOp::kSum>, &half_reduce<D, ReduceOp::kMin>,
                              &half_reduce<D, ReduceOp::kMax>, &half_reduce<D, ReduceOp::kProduct>};
  // commute = 1: every supported op is commutative, which lets MPI pick its faster algorithms.
  for (int i = 0; i < 4; ++i) DTRAIN_MPI_CHECK(MPI_Op_create(fns[i], 1, &ops[i]));
}

/// Open MPI's nonblocking MPI_Iallreduce (libnbc), left to choose, runs every call on fewer than
/// 4 ranks or in place as a binomial reduce followed by a broadcast: each byte crosses twice, one
/// direction at a time. On 2 ranks that measured 0.35-0.6x the bandwidth of the blocking
/// MPI_Allreduce from 1 MiB up; its ring algorithm measured 0.96-1.0x. So the ring is selected
/// through MPI_T when the variable exists (Open MPI) and is still 0 ("choose"); a value set by the
/// user (OMPI_MCA_coll_libnbc_iallreduce_algorithm) is left alone. The ring also reduces each
/// element once and copies the result, so every rank gets the same bits.
void prefer_ring_iallreduce() {
  int provided = 0;
  if (MPI_T_init_thread(MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) return;
  int index = 0;
  MPI_T_cvar_handle handle;
  int count = 0;
  if (MPI_T_cvar_get_index("coll_libnbc_iallreduce_algorithm", &index) == MPI_SUCCESS &&
      MPI_T_cvar_handle_alloc(index, nullptr, &handle, &count) == MPI_SUCCESS) {
    int value = -1;
    if (count == 1 && MPI_T_cvar_read(handle, &value) == MPI_SUCCESS && value == 0) {
      const int ring = 1;
      MPI_T_cvar_write(handle, &ring);
    }
    MPI_T_cvar_handle_free(&handle);
  }
  MPI_T_finalize();
}

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return MPI_FLOAT;
    case DType::kFloat64:
      return MPI_DOUBLE;
    case DType::kInt32:
      return MPI_INT32_T;
    case DType::kInt64:
      return MPI_INT64_T;
    // Moved as opaque 16-bit words; reductions go through the user-defined operations.
    case DType::kFloat16:
    case DType::kBFloat16:
      return MPI_UINT16_T;
    default:
      break;
  }
  DTRAIN_THROW(UnsupportedError, "mpi backend: dtype ", dtype_name(dtype),
               " has no MPI equivalent");
}

MPI_Op mpi_op(DType dtype, ReduceOp op) {
  if (dtype == DType::kFloat16 || dtype == DType::kBFloat16) {
    const ReduceOp as = op == ReduceOp::kAvg ? ReduceOp::kSum : op;
    const size_t i = std::find(std::begin(kHalfOps), std::end(kHalfOps), as) - std::begin(kHalfOps);
    return runtime().half_ops[dtype == DType::kBFloat16][i];
  }
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      return MPI_SUM;
    case ReduceOp::kMin:
      return MPI_MIN;
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kProduct:
      return MPI_PROD;
  }
  return MPI_SUM;
}

char* bytes(const Tensor& t) { return static_cast<char*>(t.data_ptr()); }

/// Calls fn(offset, count) over [0, n) in chunks of at most max_chunk elements; once for n == 0,
/// so an empty collective is still a collective every rank takes part in.
template <class Fn>
void for_each_chunk(int64_t n, int64_t max_chunk, Fn&& fn) {
  int64_t offset = 0;
  do {
    const int count = static_cast<int>(std::min(max_chunk, n - offset));
    fn(offset, count);
    offset += count;
  } while (offset < n);
}

struct Deadline {
  Clock::time_point at;
  Timeout timeout;
};

Deadline deadline_after(Timeout timeout) { return {Clock::now() + timeout, timeout}; }

MpiReductionOrder reduction_order_from_env(MpiReductionOrder fallback) {
  const char* v = std::getenv("DTRAIN_MPI_REDUCTION_ORDER");
  if (v == nullptr || *v == '\0') return fallback;
  const std::string s(v);
  if (s == "rank") return MpiReductionOrder::kRank;
  if (s == "native") return MpiReductionOrder::kNative;
  DTRAIN_THROW(ValueError, "DTRAIN_MPI_REDUCTION_ORDER=", s,
               ": expected rank (the tcp backend's bits) or native (Open MPI's order)");
}

/// dst = ((part(0) + part(1)) + part(2)) + ... over n elements, each element reduced by
/// reduce_into as the tcp and shared-memory backends do (kAvg: that sum, divided by `parts`).
/// Block by block through a buffer that stays in L1, so each part is read once and dst written
/// once; dst may be one of the parts.
template <class Part>
void reduce_in_rank_order(char* dst, int64_t n, DType dtype, ReduceOp op, int parts, Part&& part) {
  constexpr size_t kBlockBytes = 16 * 1024;
  alignas(64) char block[kBlockBytes];
  const size_t es = dtype_size(dtype);
  const int64_t per_block = static_cast<int64_t>(kBlockBytes / es);
  for (int64_t first = 0; first < n; first += per_block) {
    const int64_t m = std::min(per_block, n - first);
    std::memcpy(block, part(0) + first * es, m * es);
    for (int r = 1; r < parts; ++r) reduce_into(block, part(r) + first * es, m, dtype, op);
    if (op == ReduceOp::kAvg) divide_in_place(block, m, dtype, parts);
    std::memcpy(dst + first * es, block, m * es);
  }
}

/// Element offsets of `parts` near-equal chunks of n elements, as MPI counts and displacements.
void even_parts(int n, int parts, std::vector<int>& counts, std::vector<int>& displs) {
  counts.resize(parts);
  displs.resize(parts);
  for (int p = 0; p < parts; ++p) {
    displs[p] = static_cast<int>(int64_t{n} * p / parts);
    counts[p] = static_cast<int>(int64_t{n} * (p + 1) / parts) - displs[p];
  }
}

}  // namespace

struct MpiCommunicator::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0, size = 1;
  int tag_upper_bound = 32767;  // the minimum MPI guarantees; replaced by MPI_TAG_UB
  std::atomic<int64_t> max_chunk{INT_MAX};
  MpiReductionOrder order = MpiReductionOrder::kRank;
  // Where the rank-ordered reductions receive the ranks' parts; kept between calls (reallocating
  // large buffers costs page faults on every call). Worker thread only.
  Tensor scratch;
  // Set on the worker thread when a collective timed out; every later call throws it.
  std::string failure;
  // A second duplicate of MPI_COMM_WORLD for the point-to-point messages of dtrain's own small
  // all-gathers (exchange_with_every_rank), apart from the application's send/recv on `comm`.
  MPI_Comm exchange_comm = MPI_COMM_NULL;
  std::vector<MPI_Request> exchange_requests;  // kept between calls, like scratch

  /// Point-to-point calls also need a tag MPI accepts.
  void check_point_to_point(const CollectiveInfo& info, int tag) const {
    check_usable(info);
    DTRAIN_CHECK(tag >= 0 && tag <= tag_upper_bound, info.describe(), ": tag ", tag,
                 " is outside MPI's range [0, ", tag_upper_bound, "]");
  }

  void check_usable(const CollectiveInfo& info) const {
    if (!failure.empty()) {
      DTRAIN_THROW(Error, info.describe(), " on rank ", rank,
                   ": the mpi communicator is unusable after an earlier failure: ", failure);
    }
  }

  /// Polls `request` until it completes. MPI has no timed wait, and a blocking call could not be
  /// abandoned: MPI_Test both advances the transfer and reports completion. The first kSpinFirst
  /// polls back to back (a small collective's peers usually answer within microseconds, and a
  /// yield on a busy core can cost a whole time slice); after that, yielding between tests leaves
  /// the core to the rank's compute threads (and to other ranks when oversubscribed). On expiry
  /// the request is left pending (MPI cannot cancel a collective); `buffers` are kept alive for
  /// it and the communicator is marked unusable.
  void wait(MPI_Request& request, MPI_Status* status, const CollectiveInfo& info,
            const Deadline& deadline, const std::vector<Tensor>& buffers) {
    wait_all(&request, 1, status, info, deadline, buffers);
  }

  /// wait() for n requests together (MPI_Testall); `statuses` has n entries or is null.
  void wait_all(MPI_Request* requests, int n, MPI_Status* statuses, const CollectiveInfo& info,
                const Deadline& deadline, const std::vector<Tensor>& buffers) {
    constexpr auto kSpinFirst = std::chrono::microseconds(50);
    const auto spin_end = Clock::now() + kSpinFirst;
    for (;;) {
      int done = 0;
      const int rc = MPI_Testall(n, requests, &done, statuses ? statuses : MPI_STATUSES_IGNORE);
      if (rc != MPI_SUCCESS) {
        DTRAIN_THROW(DistError, info.describe(), " failed on rank ", rank,
                     " (mpi backend): ", detail::mpi_error_string(rc));
      }
      if (done) return;
      const auto now = Clock::now();
      if (now >= deadline.at) break;
      if (now >= spin_end) std::this_thread::yield();
    }
    {
      Runtime& r = runtime();
      std::lock_guard lock(r.mu);
      r.abandoned_requests.insert(r.abandoned_requests.end(), requests, requests + n);
      r.abandoned_buffers.insert(r.abandoned_buffers.end(), buffers.begin(), buffers.end());
    }
    failure = info.describe() + " timed out on rank " + std::to_string(rank);
    DTRAIN_THROW(TimeoutError, info.describe(), " timed out after ", deadline.timeout.count(),
                 " ms on rank ", rank, " of ", size,
                 " (mpi backend): a rank it needs has not joined it. MPI cannot cancel a started "
                 "collective, so this communicator is unusable from now on; stop the job "
                 "(MpiCommunicator::abort).");
  }

  /// At least n bytes of scratch (never none: an empty reduction still passes a buffer).
  char* scratch_bytes(size_t n) {
    n = std::max<size_t>(n, 64);
    if (!scratch.defined() || scratch.nbytes() < n) {
      scratch = Tensor({static_cast<int64_t>((n + 7) / 8)}, DType::kFloat64);
    }
    return bytes(scratch);
  }

  /// Rank order's reduce-scatter: rank p gets counts[p] elements of every rank's `send`, from
  /// displs[p] on, and reduces them into `dst` as ((r0 + r1) + r2) + ... (the tcp backend's
  /// reduce_chunk_from_all), so the bits depend on neither the algorithm nor the message timing.
  /// `dst` may be this rank's own part of `send`.
  void reduce_parts_in_rank_order(const char* send, const std::vector<int>& counts,
                                  const std::vector<int>& displs, char* dst, DType dtype,
                                  ReduceOp op, const CollectiveInfo& info, const Deadline& deadline,
                                  const std::vector<Tensor>& buffers) {
    const MPI_Datatype type = mpi_type(dtype);
    const size_t es = dtype_size(dtype);
    const int mine = counts[rank];
    char* parts = scratch_bytes(size_t(mine) * size * es);
    // Slot r of the scratch receives rank r's part; this rank's own part is read where it is.
    std::vector<int> send_counts = counts, recv_counts(size, mine), recv_displs(size);
    send_counts[rank] = recv_counts[rank] = 0;
    for (int r = 0; r < size; ++r) recv_displs[r] = r * mine;
    MPI_Request request;
    DTRAIN_MPI_CHECK(MPI_Ialltoallv(send, send_counts.data(), displs.data(), type, parts,
                                    recv_counts.data(), recv_displs.data(), type, comm, &request),
                     info.describe(), " on rank ", rank);
    std::vector<Tensor> held = buffers;
    held.push_back(scratch);
    wait(request, nullptr, info, deadline, held);
    reduce_in_rank_order(dst, mine, dtype, op, size, [&](int r) {
      return r == rank ? send + size_t(displs[rank]) * es : parts + size_t(r) * mine * es;
    });
  }

  /// An all-gather of `count` elements from every rank into slot r of `all` (this rank's own
  /// slot is left untouched), as one message to and from every other rank. Open MPI's
  /// nonblocking all-gather (libnbc) builds a schedule per call: measured on 2 ranks, 4 KiB took
  /// 10-19 us through it against 3-4 us for the same exchange as point-to-point messages or a
  /// blocking MPI_Allreduce. The messages go over exchange_comm, so they cannot match the
  /// application's send/recv; between two ranks they arrive in order (MPI does not reorder
  /// messages with one tag on one communicator), and collectives run one at a time in the same
  /// order on every rank, so each receive matches its own collective's message.
  void exchange_with_every_rank(const char* data, int count, MPI_Datatype type, char* all,
                                const CollectiveInfo& info, const Deadline& deadline,
                                const Tensor& t) {
    const size_t bytes_per_rank = size_t(count) * dtype_size(t.dtype());
    exchange_requests.resize(2 * size_t(size - 1));
    MPI_Request* request = exchange_requests.data();
    for (int r = 0; r < size; ++r) {
      if (r == rank) continue;
      DTRAIN_MPI_CHECK(MPI_Irecv(all + r * bytes_per_rank, count, type, r, kExchangeTag,
                                 exchange_comm, request++),
                       info.describe(), " on rank ", rank);
    }
    for (int r = 0; r < size; ++r) {
      if (r == rank) continue;
      DTRAIN_MPI_CHECK(MPI_Isend(data, count, type, r, kExchangeTag, exchange_comm, request++),
                       info.describe(), " on rank ", rank);
    }
    wait_all(exchange_requests.data(), static_cast<int>(exchange_requests.size()), nullptr, info,
             deadline, {t, scratch});
  }

  /// Rank order's all_reduce of `count` elements at `data`. Large: a reduce-scatter (each rank
  /// reduces a chunk, receiving (N-1)/N of the data like a ring's) and an all-gather of the
  /// chunks. Small: one all-gather of every rank's whole tensor, which every rank then reduces in
  /// rank order; the same sums, in one round of messages instead of two.
  void all_reduce_in_rank_order(char* data, int count, DType dtype, ReduceOp op,
                                const CollectiveInfo& info, const Deadline& deadline,
                                const Tensor& t) {
    const MPI_Datatype type = mpi_type(dtype);
    const size_t es = dtype_size(dtype);
    MPI_Request request;
    if (int64_t{count} * static_cast<int64_t>(es) <= kGatherAllMaxBytes) {
      char* all = scratch_bytes(size_t(count) * size * es);
      if (size <= kDirectExchangeMaxRanks) {
        exchange_with_every_rank(data, count, type, all, info, deadline, t);
        reduce_in_rank_order(data, count, dtype, op, size, [&](int r) {
          return r == rank ? data : all + size_t(r) * count * es;
        });
        return;
      }
      DTRAIN_MPI_CHECK(MPI_Iallgather(data, count, type, all, count, type, comm, &request),
                       info.describe(), " on rank ", rank);
      wait(request, nullptr, info, deadline, {t, scratch});
      reduce_in_rank_order(data, count, dtype, op, size,
                           [&](int r) { return all + size_t(r) * count * es; });
      return;
    }
    std::vector<int> counts, displs;
    even_parts(count, size, counts, displs);
    reduce_parts_in_rank_order(data, counts, displs, data + size_t(displs[rank]) * es, dtype, op,
                               info, deadline, {t});
    DTRAIN_MPI_CHECK(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, counts.data(),
                                     displs.data(), type, comm, &request),
                     info.describe(), " on rank ", rank);
    wait(request, nullptr, info, deadline, {t});
  }
};

MpiCommunicator::MpiCommunicator(std::unique_ptr<Impl> impl, int rank, int size)
    : HostCommunicator(rank, size), impl_(std::move(impl)) {
  start_worker();
}

std::shared_ptr<MpiCommunicator> MpiCommunicator::world() {
  MpiOptions options;
  options.reduction_order = reduction_order_from_env(options.reduction_order);
  return world(options);
}

std::shared_ptr<MpiCommunicator> MpiCommunicator::world(const MpiOptions& options) {
  Runtime& r = runtime();
  std::lock_guard lock(r.mu);
  int initialized = 0, finalized = 0;
  DTRAIN_MPI_CHECK(MPI_Initialized(&initialized));
  DTRAIN_MPI_CHECK(MPI_Finalized(&finalized));
  DTRAIN_CHECK(!finalized,
               "mpi backend: MPI has already been finalised in this process; "
               "create communicators before MPI_Finalize");
  int provided = 0;
  if (!initialized) {
    DTRAIN_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided));
    r.initialized_here = true;
    std::atexit(finalize_at_exit);
  } else {
    DTRAIN_MPI_CHECK(MPI_Query_thread(&provided));
  }
  // Collectives run on a worker thread per communicator while the caller may use MPI too.
  if (provided < MPI_THREAD_MULTIPLE) {
    DTRAIN_THROW(UnsupportedError, "mpi backend: needs MPI_THREAD_MULTIPLE but the MPI library ",
                 initialized ? "was initialised with " : "granted only ",
                 thread_level_name(provided),
                 initialized ? "; initialise it with MPI_Init_thread(MPI_THREAD_MULTIPLE) or let "
                               "dtrain initialise it"
                             : "; use an MPI build with thread support (Open MPI's default)");
  }
  if (!r.ops_created) {
    create_half_ops<DType::kFloat16>(r.half_ops[0]);
    create_half_ops<DType::kBFloat16>(r.half_ops[1]);
    r.ops_created = true;
    prefer_ring_iallreduce();
  }

  auto impl = std::make_unique<Impl>();
  // A private duplicate: dtrain's traffic cannot match the application's own MPI messages.
  DTRAIN_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &impl->comm));
  DTRAIN_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &impl->exchange_comm));
  // Errors come back as codes (DTRAIN_MPI_CHECK throws) instead of aborting the job.
  DTRAIN_MPI_CHECK(MPI_Comm_set_errhandler(impl->comm, MPI_ERRORS_RETURN));
  DTRAIN_MPI_CHECK(MPI_Comm_set_errhandler(impl->exchange_comm, MPI_ERRORS_RETURN));
  DTRAIN_MPI_CHECK(MPI_Comm_rank(impl->comm, &impl->rank));
  DTRAIN_MPI_CHECK(MPI_Comm_size(impl->comm, &impl->size));
  int* tag_ub = nullptr;
  int has_tag_ub = 0;
  DTRAIN_MPI_CHECK(MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_ub, &has_tag_ub));
  if (has_tag_ub && tag_ub) impl->tag_upper_bound = *tag_ub;
  // Ranks that reduce in different ways would run different collectives and hang; say so now.
  const int order = static_cast<int>(options.reduction_order);
  int orders[2] = {order, -order}, extremes[2] = {};
  DTRAIN_MPI_CHECK(MPI_Allreduce(orders, extremes, 2, MPI_INT, MPI_MAX, impl->comm));
  if (extremes[0] != -extremes[1]) {
    MPI_Comm_free(&impl->comm);
    MPI_Comm_free(&impl->exchange_comm);
    DTRAIN_THROW(ValueError,
                 "mpi backend: the ranks were given different reduction orders (rank on some, "
                 "native on others); set DTRAIN_MPI_REDUCTION_ORDER alike on every rank (mpirun -x "
                 "DTRAIN_MPI_REDUCTION_ORDER)");
  }
  impl->order = options.reduction_order;
  ++r.live;
  const int rank = impl->rank, size = impl->size;
  return std::shared_ptr<MpiCommunicator>(new MpiCommunicator(std::move(impl), rank, size));
}

MpiCommunicator::~MpiCommunicator() {
  stop_worker();  // runs what was issued; no MPI call is in flight after this
  Runtime& r = runtime();
  std::lock_guard lock(r.mu);
  int finalized = 0;
  MPI_Finalized(&finalized);
  // With an abandoned request the communicator stays: freeing it would wait for that request.
  if (!finalized && impl_->failure.empty()) {
    MPI_Comm_free(&impl_->comm);
    MPI_Comm_free(&impl_->exchange_comm);
  }
  --r.live;
  finalize_if_due(r);
}

void MpiCommunicator::abort(int error_code) const {
  MPI_Abort(impl_->comm, error_code);
  std::abort();  // MPI_Abort does not return; this keeps [[noreturn]] honest if it does
}

void MpiCommunicator::set_max_chunk_elements(int64_t n) {
  DTRAIN_CHECK(n >= 1 && n <= INT_MAX, "mpi backend: max chunk must be in [1, ", INT_MAX,
               "] elements; got ", n);
  impl_->max_chunk = n;
}

MpiReductionOrder MpiCommunicator::reduction_order() const { return impl_->order; }

bool MpiCommunicator::small_all_reduces_through_shared_memory() const {
  return impl_->order == MpiReductionOrder::kRank;
}

void MpiCommunicator::check_usable_for(const CollectiveInfo& info) const {
  impl_->check_usable(info);
}

void MpiCommunicator::note_staged_failure(const CollectiveInfo& info, const std::string& what) {
  // The peers' flags in the shared slot no longer agree with this rank's: no later call may use
  // it, as after a timed-out MPI collective.
  if (impl_->failure.empty()) {
    impl_->failure = info.describe() + " failed in shared memory on rank " +
                     std::to_string(rank()) + ": " + what;
  }
}

void MpiCommunicator::run_all_reduce(Tensor& t, ReduceOp op, const CollectiveInfo& info,
                                     Timeout timeout) {
  impl_->check_usable(info);
  const Deadline deadline = deadline_after(timeout);
  const MPI_Datatype type = mpi_type(t.dtype());
  const size_t es = dtype_size(t.dtype());
  if (impl_->order == MpiReductionOrder::kRank) {
    // Chunks of at most kPackBytes, so the scratch stays that small.
    const int64_t chunk = std::min<int64_t>(impl_->max_chunk, kPackBytes / es);
    for_each_chunk(t.numel(), chunk, [&](int64_t offset, int count) {
      impl_->all_reduce_in_rank_order(bytes(t) + offset * es, count, t.dtype(), op, info, deadline,
                                      t);
    });
    return;
  }
  const MPI_Op mop = mpi_op(t.dtype(), op);
  for_each_chunk(t.numel(), impl_->max_chunk, [&](int64_t offset, int count) {
    MPI_Request request;
    DTRAIN_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, bytes(t) + offset * es, count, type, mop,
                                    impl_->comm, &request),
                     info.describe(), " on rank ", rank());
    impl_->wait(request, nullptr, info, deadline, {t});
    if (op == ReduceOp::kAvg) divide_in_place(bytes(t) + offset * es, count, t.dtype(), size());
  });
}

void MpiCommunicator::run_broadcast(Tensor& t, int root, const CollectiveInfo& info,
                                    Timeout timeout) {
  impl_->check_usable(info);
  const Deadline deadline = deadline_after(timeout);
  const MPI_Datatype type = mpi_type(t.dtype());
  const size_t es = dtype_size(t.dtype());
  for_each_chunk(t.numel(), impl_->max_chunk, [&](int64_t offset, int count) {
    MPI_Request request;
    DTRAIN_MPI_CHECK(MPI_Ibcast(bytes(t) + offset * es, count, type, root, impl_->comm, &request),
                     info.describe(), " on rank ", rank());
    impl_->wait(request, nullptr, info, deadline, {t});
  });
}

void MpiCommunicator::run_reduce(Tensor& t, ReduceOp op, int root, const CollectiveInfo& info,
                                 Timeout timeout) {
  impl_->check_usable(info);
  const Deadline deadline = deadline_after(timeout);
  const MPI_Datatype type = mpi_type(t.dtype());
  const size_t es = dtype_size(t.dtype());
  const bool is_root = rank() == root;
  if (impl_->order == MpiReductionOrder::kRank) {
    // all_reduce's reduce-scatter, then root gathers the reduced chunks.
    const int64_t chunk = std::min<int64_t>(impl_->max_chunk, kPackBytes / es);
    std::vector<int> counts, displs;
    for_each_chunk(t.numel(), chunk, [&](int64_t offset, int count) {
      char* p = bytes(t) + offset * es;
      even_parts(count, size(), counts, displs);
      char* mine = p + size_t(displs[rank()]) * es;
      impl_->reduce_parts_in_rank_order(p, counts, displs, mine, t.dtype(), op, info, deadline,
                                        {t});
      MPI_Request request;
      DTRAIN_MPI_CHECK(
          MPI_Igatherv(is_root ? MPI_IN_PLACE : mine, counts[rank()], type, p, counts.data(),
                       displs.data(), type, root, impl_->comm, &request),
          info.describe(), " on rank ", rank());
      impl_->wait(request, nullptr, info, deadline, {t});
    });
    return;
  }
  const MPI_Op mop = mpi_op(t.dtype(), op);
  for_each_chunk(t.numel(), impl_->max_chunk, [&](int64_t offset, int count) {
    char* p = bytes(t) + offset * es;
    MPI_Request request;
    // Root reduces into its own tensor; the others only send theirs.
    DTRAIN_MPI_CHECK(MPI_Ireduce(is_root ? MPI_IN_PLACE : p, is_root ? p : nullptr, count, type,
                                 mop, root, impl_->comm, &request),
                     info.describe(), " on rank ", rank());
    impl_->wait(request, nullptr, info, deadline, {t});
  });
}

void MpiCommunicator::run_all_gather(const Tensor& in, Tensor& out, const CollectiveInfo& info,
                                     Timeout timeout) {
  impl_->check_usable(info);
  const Deadline deadline = deadline_after(timeout);
  const MPI_Datatype type = mpi_type(in.dtype());
  const int64_t n = in.numel(), max_chunk = impl_->max_chunk;
  const size_t es = dtype_size(in.dtype());
  if (n <= max_chunk) {
    MPI_Request request;
    DTRAIN_MPI_CHECK(MPI_Iallgather(bytes(in), static_cast<int>(n), type, bytes(out),
                                    static_cast<int>(n), type, impl_->comm, &request),
                     info.describe(), " on rank ", rank());
    impl_->wait(request, nullptr, info, deadline, {in, out});
    return;
  }
  // Chunk k of every rank lands at a stride of n elements in `out`, which one MPI count cannot
  // describe: gather the chunks contiguously into scratch, then copy each rank's part in place.
  const int64_t chunk =
      std::clamp<int64_t>(kPackBytes / static_cast<int64_t>(es) / size(), 1, max_chunk);
  Tensor scratch({chunk * size()}, in.dtype());
  for_each_chunk(n, chunk, [&](int64_t offset, int count) {
    MPI_Request request;
    DTRAIN_MPI_CHECK(MPI_Iallgather(bytes(in) + offset * es, count, type, bytes(scratch), count,
                                    type, impl_->comm, &request),
                     info.describe(), " on rank ", rank());
    impl_->wait(request, nullptr, info, deadline, {in, out, scratch});
    for (int r = 0; r < size(); ++r) {
      std::memcpy(bytes(out) + (r * n + offset) * es, bytes(scratch) + int64_t{r} * count * es,
                  count * es);
    }
  });
}

void MpiCommunicator::run_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op,
                                         const CollectiveInfo& info, Timeout timeout) {
  impl_->check_usable(info);
  const Deadline deadline = deadline_after(timeout);
  const MPI_Datatype type = mpi_type(out.dtype());
  const int64_t n = out.numel(), max_chunk = impl_->max_chunk;
  const size_t es = dtype_size(out.dtype());
  if (impl_->order == MpiReductionOrder::kRank) {
    // Rank p's block of `in` goes to rank p. Straight from `in` when one call takes it; otherwise
    // chunk k of every rank's block is packed contiguously first, as below.
    const int64_t chunk =
        std::clamp<int64_t>(kPackBytes / static_cast<int64_t>(es) / size(), 1, max_chunk);
    const bool direct = n <= chunk;
    Tensor packed = direct ? Tensor() : Tensor({chunk * size()}, in.dtype());
    std::vector<int> counts(size()), displs(size());
    for_each_chunk(n, chunk, [&](int64_t offset, int count) {
      const char* send = direct ? bytes(in) : bytes(packed);
      for (int r = 0; r < size(); ++r) {
        counts[r] = count;
        displs[r] = r * count;
        if (!direct) {
          std::memcpy(bytes(packed) + int64_t{r} * count * es, bytes(in) + (r * n + offset) * es,
                      count * es);
        }
      }
      impl_->reduce_parts_in_rank_order(send, counts, displs, bytes(out) + offset * es, out.dtype(),
                                        op, info, deadline, {in, out, packed});
    });
    return;
  }
  const MPI_Op mop = mpi_op(out.dtype(), op);
  if (n <= max_chunk) {
    MPI_Request request;
    DTRAIN_MPI_CHECK(MPI_Ireduce_scatter_block(bytes(in), bytes(out), static_cast<int>(n), type,
                                               mop, impl_->comm, &request),
                     info.describe(), " on rank ", rank());
    impl_->wait(request, nullptr, info, deadline, {in, out});
    if (op == ReduceOp::kAvg) divide_in_place(bytes(out), n, out.dtype(), size());
    return;
  }
  // As in all_gather: pack chunk k of every rank's block contiguously, then reduce-scatter that.
  const int64_t chunk =
      std::clamp<int64_t>(kPackBytes / static_cast<int64_t>(es) / size(), 1, max_chunk);
  Tensor scratch({chunk * size()}, in.dtype());
  for_each_chunk(n, chunk, [&](int64_t offset, int count) {
    for (int r = 0; r < size(); ++r) {
      std::memcpy(bytes(scratch) + int64_t{r} * count * es, bytes(in) + (r * n + offset) * es,
                  count * es);
    }
    MPI_Request request;
    DTRAIN_MPI_CHECK(MPI_Ireduce_scatter_block(bytes(scratch), bytes(out) + offset * es, count,
                                               type, mop, impl_->comm, &request),
                     info.describe(), " on rank ", rank());
    impl_->wait(request, nullptr, info, deadline, {in, out, scratch});
    if (op == ReduceOp::kAvg) divide_in_place(bytes(out) + offset * es, count, out.dtype(), size());
  });
}

void MpiCommunicator::run_barrier(const CollectiveInfo& info, Timeout timeout) {
  impl_->check_usable(info);
  MPI_Request request;
  DTRAIN_MPI_CHECK(MPI_Ibarrier(impl_->comm, &request), info.describe(), " on rank ", rank());
  impl_->wait(request, nullptr, info, deadline_after(timeout), {});
}

void MpiCommunicator::run_send(const Tensor& t, int peer, int tag, const CollectiveInfo& info,
                               Timeout timeout) {
  impl_->check_point_to_point(info, tag);
  const Deadline deadline = deadline_after(timeout);
  const MPI_Datatype type = mpi_type(t.dtype());
  const size_t es = dtype_size(t.dtype());
  // Chunks of one message arrive in order: MPI does not reorder messages between two ranks
  // with the same tag on one communicator.
  for_each_chunk(t.numel(), impl_->max_chunk, [&](int64_t offset, int count) {
    MPI_Request request;
    DTRAIN_MPI_CHECK(
        MPI_Isend(bytes(t) + offset * es, count, type, peer, tag, impl_->comm, &request),
        info.describe(), " on rank ", rank());
    impl_->wait(request, nullptr, info, deadline, {t});
  });
}

void MpiCommunicator::run_recv(Tensor& t, int peer, int tag, const CollectiveInfo& info,
                               Timeout timeout) {
  impl_->check_point_to_point(info, tag);
  const Deadline deadline = deadline_after(timeout);
  const MPI_Datatype type = mpi_type(t.dtype());
  const size_t es = dtype_size(t.dtype());
  for_each_chunk(t.numel(), impl_->max_chunk, [&](int64_t offset, int count) {
    MPI_Request request;
    MPI_Status status;
    DTRAIN_MPI_CHECK(
        MPI_Irecv(bytes(t) + offset * es, count, type, peer, tag, impl_->comm, &request),
        info.describe(), " on rank ", rank());
    impl_->wait(request, &status, info, deadline, {t});
    // A longer message fails in MPI_Test (MPI_ERR_TRUNCATE); a shorter one is only visible here.
    int received = 0;
    DTRAIN_MPI_CHECK(MPI_Get_count(&status, type, &received));
    DTRAIN_CHECK(received == count, info.describe(), " on rank ", rank(), ": rank ", peer, " sent ",
                 received, " elements but the receive expects ", count,
                 "; send and recv must use tensors of the same dtype and size");
  });
}

}  // namespace dtrain::dist
