// The mpi backend: collectives between processes started by mpirun/srun, over host memory.
// MPI's types stay in the .cpp (a pimpl), so including this header does not need mpi.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "dtrain/distributed/host_communicator.h"

namespace dtrain::dist {

/// The order in which the mpi backend combines the ranks' values in a reduction.
enum class MpiReductionOrder {
  /// Each element is reduced as ((r0 + r1) + r2) + ... like the tcp and shared-memory paths, so
  /// mpirun gives the bits `dtrain launch` gives: an exchange of chunks (each rank reduces one
  /// chunk in rank order) and an all-gather; small tensors are all-gathered whole and every rank
  /// reduces them.
  kRank,
  /// Open MPI's own algorithms (MPI_Iallreduce, ...): their order depends on the number of ranks,
  /// the message size and the library, so from 3 ranks on the bits can differ from the other
  /// backends'.
  kNative,
};

struct MpiOptions {
  /// world() takes it from DTRAIN_MPI_REDUCTION_ORDER=rank|native when that is set. Every rank
  /// must use the same order; world() checks that they do.
  MpiReductionOrder reduction_order = MpiReductionOrder::kRank;
};

/// A communicator over a private duplicate of MPI_COMM_WORLD.
///
/// Collectives run in issue order on the base class's worker thread as nonblocking MPI calls
/// polled against each call's timeout. float16 and bfloat16 reductions widen each pair of
/// elements to float, reduce, and round back at every step (like the local backend), so a sum
/// over N ranks is rounded N-1 times.
///
/// A collective that times out cannot be cancelled in MPI: the communicator is unusable
/// afterwards (every later call fails at once) and the job should be stopped (abort()). MPI is
/// then finalised at exit only if the collective has completed since (its peers came late);
/// otherwise the process exits without MPI_Finalize, which makes mpirun stop the whole job.
class MpiCommunicator final : public HostCommunicator {
 public:
  /// A new communicator over all the processes of the job. Initialises MPI on the first call with
  /// MPI_THREAD_MULTIPLE (throws if the library grants less) and finalises it at exit, after the
  /// last MpiCommunicator is gone, only if it was this call that initialised it (an application
  /// that initialised MPI itself finalises it, after destroying every MpiCommunicator). Collective:
  /// every rank calls it the same number of times in the same order. Call from one thread at a
  /// time. Throws ValueError when the ranks' options differ.
  static std::shared_ptr<MpiCommunicator> world(const MpiOptions& options);
  /// world() with the default options, changed by the environment (MpiOptions).
  static std::shared_ptr<MpiCommunicator> world();

  ~MpiCommunicator() override;
  std::string_view backend_name() const override { return "mpi"; }

  /// Stops every process of the job (MPI_Abort); for a top-level handler after a failure, so
  /// peers blocked in a collective do not hang.
  [[noreturn]] void abort(int error_code) const;

  /// The largest element count passed to one MPI call; larger tensors are split into chunks of
  /// this many elements. Defaults to INT_MAX (MPI counts are int); tests lower it to exercise the
  /// chunked paths with small tensors. Set it identically on every rank.
  void set_max_chunk_elements(int64_t n);

  MpiReductionOrder reduction_order() const;

  /// Buffers of up to this many bytes per rank get shared memory when the ranks share a host and
  /// DTRAIN_SHARED_MEMORY_MAX_MB is unset.
  static constexpr double kSharedMemoryDefaultMaxBytes = 4.0 * 1024 * 1024;

 protected:
  /// 4 MiB: small models' gradient buckets are reduced in shared memory, where Open MPI's per-call
  /// cost is most of the time (the MLP's 0.9 MiB bucket: faster in 21 of 27 interleaved pairs of
  /// training runs on two CPUs); larger buffers stay with Open MPI, whose transport trained the
  /// CNN's 13 MB bucket as fast or faster (each rank's caches then hold its own gradients).
  double shared_memory_default_max_bytes() const override { return kSharedMemoryDefaultMaxBytes; }
  bool divides_while_reducing() const override { return true; }
  /// In rank order (not native), as tcp does: a 4 KiB all-reduce costs several times raw
  /// MPI_Allreduce through the communicator's messages, about 1.5x it through shared memory.
  bool small_all_reduces_through_shared_memory() const override;
  void check_usable_for(const CollectiveInfo& info) const override;
  void note_staged_failure(const CollectiveInfo& info, const std::string& what) override;
  void run_all_reduce(Tensor& t, ReduceOp op, const CollectiveInfo& info, Timeout timeout) override;
  void run_broadcast(Tensor& t, int root, const CollectiveInfo& info, Timeout timeout) override;
  void run_reduce(Tensor& t, ReduceOp op, int root, const CollectiveInfo& info,
                  Timeout timeout) override;
  void run_all_gather(const Tensor& in, Tensor& out, const CollectiveInfo& info,
                      Timeout timeout) override;
  void run_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op, const CollectiveInfo& info,
                          Timeout timeout) override;
  void run_barrier(const CollectiveInfo& info, Timeout timeout) override;
  void run_send(const Tensor& t, int peer, int tag, const CollectiveInfo& info,
                Timeout timeout) override;
  void run_recv(Tensor& t, int peer, int tag, const CollectiveInfo& info, Timeout timeout) override;

 private:
  struct Impl;
  MpiCommunicator(std::unique_ptr<Impl> impl, int rank, int size);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dtrain::dist
