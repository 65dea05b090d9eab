// Collective test bodies shared by every backend: the parity suite (parity_test.cpp) runs them on
// thread-ranks of every backend, the MPI suite in real ranks under mpirun. Inputs are small
// multiples of 1/4 (exact in every dtype), so sums are exact whatever the order and results can be
// compared bit for bit.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "dtrain/distributed/communicator.h"
#include "dtrain/tensor/kernels.h"

namespace dtrain::testdist {

using dist::Communicator;
using dist::ReduceOp;

/// Element i of rank r's input: (r + 1) / 2 + (i mod 4) / 4 for sums and min/max; 1 or 2 for
/// products (powers of two stay exact in every dtype); integers are scaled by 4.
inline double input_value(DType dtype, ReduceOp op, int rank, int64_t i) {
  double v = op == ReduceOp::kProduct ? 1.0 + static_cast<double>((rank + i) % 2)
                                      : (rank + 1) * 0.5 + static_cast<double>(i % 4) * 0.25;
  if (dtype == DType::kInt32 || dtype == DType::kInt64) v *= 4;
  return v;
}

inline Tensor rank_input(DType dtype, ReduceOp op, int rank, int64_t count) {
  Tensor t({count}, dtype);
  for (int64_t i = 0; i < count; ++i) {
    kernels::store_element(t.data_ptr(), dtype, i, input_value(dtype, op, rank, i));
  }
  return t;
}

/// The reduction over all ranks of element i, as the dtype stores it.
inline double expected_value(DType dtype, ReduceOp op, int size, int64_t i) {
  double acc = input_value(dtype, op, 0, i);
  for (int r = 1; r < size; ++r) {
    const double v = input_value(dtype, op, r, i);
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAvg:
        acc += v;
        break;
      case ReduceOp::kMin:
        acc = std::min(acc, v);
        break;
      case ReduceOp::kMax:
        acc = std::max(acc, v);
        break;
      case ReduceOp::kProduct:
        acc *= v;
        break;
    }
  }
  if (op == ReduceOp::kAvg) {
    if (dtype == DType::kInt32 || dtype == DType::kInt64) return std::trunc(acc / size);
    if (dtype == DType::kFloat32) return static_cast<float>(acc) / static_cast<float>(size);
    acc /= size;
  }
  // Round through the dtype, as the collective's result is stored.
  Tensor one({1}, dtype);
  kernels::store_element(one.data_ptr(), dtype, 0, acc);
  return kernels::load_element(one.data_ptr(), dtype, 0);
}

inline void expect_values(const Tensor& t, const std::function<double(int64_t)>& expected,
                          const std::string& what) {
  int reported = 0;
  for (int64_t i = 0; i < t.numel() && reported < 3; ++i) {
    const double got = kernels::load_element(t.data_ptr(), t.dtype(), i);
    if (got != expected(i)) {
      ADD_FAILURE() << what << ": element " << i << " is " << got << ", expected " << expected(i);
      ++reported;
    }
  }
}

inline std::string label(const Communicator& c, const char* op, DType dtype, int64_t count) {
  return std::string(op) + " on rank " + std::to_string(c.rank()) + "/" + std::to_string(c.size()) +
         " " + std::string(dtype_name(dtype)) + " x " + std::to_string(count);
}

/// Returns the result so callers can compare it across ranks.
inline Tensor check_all_reduce(Communicator& c, DType dtype, int64_t count, ReduceOp op) {
  Tensor t = rank_input(dtype, op, c.rank(), count);
  c.all_reduce(t, {op})->wait();
  expect_values(
      t, [&](int64_t i) { return expected_value(dtype, op, c.size(), i); },
      label(c, "all_reduce", dtype, count) + " " + std::string(dist::reduce_op_name(op)));
  return t;
}

inline void check_all_reduce_coalesced(Communicator& c, DType dtype) {
  std::vector<Tensor> ts = {rank_input(dtype, ReduceOp::kSum, c.rank(), 5),
                            rank_input(dtype, ReduceOp::kSum, c.rank(), 0),
                            rank_input(dtype, ReduceOp::kSum, c.rank(), 9)};
  c.all_reduce_coalesced(ts, {ReduceOp::kSum})->wait();
  for (const Tensor& t : ts) {
    expect_values(
        t, [&](int64_t i) { return expected_value(dtype, ReduceOp::kSum, c.size(), i); },
        label(c, "all_reduce_coalesced", dtype, t.numel()));
  }
}

inline void check_broadcast(Communicator& c, DType dtype, int64_t count, int root) {
  Tensor t = rank_input(dtype, ReduceOp::kSum, c.rank(), count);
  c.broadcast(t, {root})->wait();
  expect_values(
      t, [&](int64_t i) { return input_value(dtype, ReduceOp::kSum, root, i); },
      label(c, "broadcast", dtype, count) + " from root " + std::to_string(root));
}

inline void check_reduce(Communicator& c, DType dtype, int64_t count, int root) {
  Tensor t = rank_input(dtype, ReduceOp::kSum, c.rank(), count);
  c.reduce(t, {ReduceOp::kSum, root})->wait();
  if (c.rank() != root) return;
  expect_values(
      t, [&](int64_t i) { return expected_value(dtype, ReduceOp::kSum, c.size(), i); },
      label(c, "reduce", dtype, count) + " to root " + std::to_string(root));
}

inline void check_all_gather(Communicator& c, DType dtype, int64_t count) {
  Tensor in = rank_input(dtype, ReduceOp::kSum, c.rank(), count);
  Tensor out({count * c.size()}, dtype);
  c.all_gather(in, out)->wait();
  expect_values(
      out,
      [&](int64_t i) {
        return input_value(dtype, ReduceOp::kSum, static_cast<int>(i / std::max<int64_t>(count, 1)),
                           i % std::max<int64_t>(count, 1));
      },
      label(c, "all_gather", dtype, count));
}

inline void check_reduce_scatter(Communicator& c, DType dtype, int64_t count) {
  // Every rank's input is [size * count]; rank r receives the sum of chunk r.
  Tensor in = rank_input(dtype, ReduceOp::kSum, c.rank(), count * c.size());
  Tensor out({count}, dtype);
  c.reduce_scatter(in, out, {ReduceOp::kSum})->wait();
  expect_values(
      out,
      [&](int64_t i) {
        return expected_value(dtype, ReduceOp::kSum, c.size(), c.rank() * count + i);
      },
      label(c, "reduce_scatter", dtype, count));
}

/// A ring: every rank sends its input to the next rank and receives from the previous one.
inline void check_send_recv_ring(Communicator& c, DType dtype, int64_t count) {
  if (c.size() < 2) return;
  const int next = (c.rank() + 1) % c.size(), prev = (c.rank() + c.size() - 1) % c.size();
  Tensor mine = rank_input(dtype, ReduceOp::kSum, c.rank(), count);
  Tensor theirs({count}, dtype);
  // Even ranks send first, odd ranks receive first, so blocking sends cannot deadlock.
  if (c.rank() % 2 == 0) {
    c.send(mine, next, {7})->wait();
    c.recv(theirs, prev, {7})->wait();
  } else {
    c.recv(theirs, prev, {7})->wait();
    c.send(mine, next, {7})->wait();
  }
  expect_values(
      theirs, [&](int64_t i) { return input_value(dtype, ReduceOp::kSum, prev, i); },
      label(c, "recv", dtype, count));
}

inline const std::vector<DType>& collective_dtypes() {
  static const std::vector<DType> all = {DType::kFloat32,  DType::kFloat64, DType::kFloat16,
                                         DType::kBFloat16, DType::kInt32,   DType::kInt64};
  return all;
}

/// all_reduce on tensors from allocate_symmetric (shared memory where the backend has it): every
/// dtype and op, counts that split unevenly into the ranks' chunks and span several blocks, and a
/// view in the middle of a buffer, which must leave the elements around it alone.
inline void check_symmetric_all_reduce(Communicator& c) {
  for (DType dtype : collective_dtypes()) {
    for (int64_t count : {int64_t{1}, int64_t{4 * c.size() + 3}, int64_t{70001}}) {
      for (ReduceOp op :
           {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax, ReduceOp::kProduct}) {
        Tensor t = c.allocate_symmetric(count, dtype);
        t.copy_(rank_input(dtype, op, c.rank(), count));
        c.all_reduce(t, {op})->wait();
        expect_values(
            t, [&](int64_t i) { return expected_value(dtype, op, c.size(), i); },
            label(c, "symmetric all_reduce", dtype, count) + " " +
                std::string(dist::reduce_op_name(op)));
      }
    }
    Tensor buffer = c.allocate_symmetric(300, dtype);
    buffer.copy_(rank_input(dtype, ReduceOp::kSum, c.rank(), 300));
    Tensor middle(buffer.storage(), 100 * dtype_size(dtype), {100}, dtype);
    c.all_reduce(middle)->wait();
    expect_values(
        buffer,
        [&](int64_t i) {
          return i >= 100 && i < 200 ? expected_value(dtype, ReduceOp::kSum, c.size(), i)
                                     : input_value(dtype, ReduceOp::kSum, c.rank(), i);
        },
        label(c, "symmetric all_reduce of elements 100..199", dtype, 300));
  }
}

/// Large buffers through every collective: 1.6 MB of float32, so with up to 4 ranks every chunk a
/// rank sends a peer is at least 400 KB, above the size from which tcp copies same-host data by
/// address instead of sending it over the socket.
inline void check_large_messages(Communicator& c) {
  constexpr int64_t kCount = 400'000;
  check_all_reduce(c, DType::kFloat32, kCount, ReduceOp::kSum);
  check_all_reduce(c, DType::kFloat64, kCount, ReduceOp::kMax);
  check_broadcast(c, DType::kFloat32, kCount, c.size() - 1);
  check_reduce(c, DType::kFloat32, kCount, 0);
  check_all_gather(c, DType::kFloat32, kCount / 4);
  check_reduce_scatter(c, DType::kFloat32, kCount / 4);
  check_send_recv_ring(c, DType::kFloat32, kCount);
}

/// all_reduce_now against all_reduce(...)->wait() on the same inputs, whose sums round (so the
/// order of the reduction shows): every op on floating dtypes, in an ordinary buffer and in one
/// from allocate_symmetric (shared memory where the backend has it); the bits must be the same.
inline void check_all_reduce_now_matches_all_reduce(Communicator& c) {
  constexpr int64_t kCount = 1001;
  for (DType dtype : {DType::kFloat32, DType::kFloat64, DType::kBFloat16}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kProduct}) {
      for (bool symmetric : {false, true}) {
        Tensor input({kCount}, dtype);
        for (int64_t i = 0; i < kCount; ++i) {
          const double v = 1.0 + (c.rank() + 1) * 0.1 + static_cast<double>(i % 97) * 1e-3;
          kernels::store_element(input.data_ptr(), dtype, i, v);
        }
        Tensor queued = symmetric ? c.allocate_symmetric(kCount, dtype) : Tensor({kCount}, dtype);
        Tensor now = symmetric ? c.allocate_symmetric(kCount, dtype) : Tensor({kCount}, dtype);
        queued.copy_(input);
        now.copy_(input);
        c.all_reduce(queued, {op})->wait();
        c.all_reduce_now(now, {op});
        const std::string what =
            label(c, symmetric ? "symmetric all_reduce_now" : "all_reduce_now", dtype, kCount) +
            " " + std::string(dist::reduce_op_name(op));
        EXPECT_EQ(std::memcmp(now.data_ptr(), queued.data_ptr(), now.nbytes()), 0)
            << what << " differs from all_reduce(...)->wait()";
        if (op == ReduceOp::kSum && c.size() > 1) {
          EXPECT_NE(std::memcmp(now.data_ptr(), input.data_ptr(), now.nbytes()), 0)
              << what << " left its input as it was";
        }
      }
    }
  }
}

/// Notes the sequence number of each start and finish, as "start #3" and "finish #3".
class SequenceRecorder final : public dist::CollectiveObserver {
 public:
  void on_start(int, const dist::CollectiveInfo& info) override { note("start", info); }
  void on_finish(int, const dist::CollectiveInfo& info) override { note("finish", info); }
  std::vector<std::string> events() const {
    std::lock_guard lock(mu_);
    return events_;
  }

 private:
  void note(const char* what, const dist::CollectiveInfo& info) {
    std::lock_guard lock(mu_);
    events_.push_back(std::string(what) + " #" + std::to_string(info.sequence));
  }
  mutable std::mutex mu_;
  std::vector<std::string> events_;
};

/// all_reduce_now issued behind all_reduces still in flight runs after them: they are complete
/// when it returns, observers see the three one after another in issue order, and each tensor
/// holds its own sum.
inline void check_all_reduce_now_keeps_issue_order(Communicator& c) {
  SequenceRecorder recorder;
  c.add_observer(&recorder);
  Tensor a = rank_input(DType::kFloat32, ReduceOp::kSum, c.rank(), 1 << 18);
  Tensor b = rank_input(DType::kFloat64, ReduceOp::kSum, c.rank(), 7);
  Tensor now = rank_input(DType::kInt64, ReduceOp::kSum, c.rank(), 5);
  dist::WorkPtr wa = c.all_reduce(a);
  dist::WorkPtr wb = c.all_reduce(b);
  c.all_reduce_now(now);
  EXPECT_TRUE(wa->is_completed()) << "all_reduce_now returned before an earlier all_reduce ran";
  EXPECT_TRUE(wb->is_completed()) << "all_reduce_now returned before an earlier all_reduce ran";
  c.remove_observer(&recorder);
  const uint64_t first = wa->info().sequence;
  std::vector<std::string> expected;
  for (uint64_t s = first; s < first + 3; ++s) {
    expected.push_back("start #" + std::to_string(s));
    expected.push_back("finish #" + std::to_string(s));
  }
  EXPECT_EQ(recorder.events(), expected) << label(c, "all_reduce_now", DType::kInt64, 5);
  wa->wait();
  wb->wait();
  const auto sum = [&](DType dtype) {
    return [&c, dtype](int64_t i) { return expected_value(dtype, ReduceOp::kSum, c.size(), i); };
  };
  expect_values(a, sum(DType::kFloat32), label(c, "queued all_reduce", DType::kFloat32, 1 << 18));
  expect_values(b, sum(DType::kFloat64), label(c, "queued all_reduce", DType::kFloat64, 7));
  expect_values(now, sum(DType::kInt64), label(c, "all_reduce_now", DType::kInt64, 5));
}

/// Every collective, dtype and op on counts 0, 1 and one not divisible by the world size, then the
/// symmetric all_reduce cases and a barrier.
inline void check_everything(Communicator& c) {
  const std::vector<int64_t> counts = {0, 1, 4 * c.size() + 3};
  for (DType dtype : collective_dtypes()) {
    for (int64_t count : counts) {
      for (ReduceOp op :
           {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax, ReduceOp::kProduct}) {
        check_all_reduce(c, dtype, count, op);
      }
      check_broadcast(c, dtype, count, c.size() - 1);
      check_reduce(c, dtype, count, 0);
      check_reduce(c, dtype, count, c.size() - 1);
      check_all_gather(c, dtype, count);
      check_reduce_scatter(c, dtype, count);
      check_send_recv_ring(c, dtype, count);
    }
    check_all_reduce_coalesced(c, dtype);
  }
  check_symmetric_all_reduce(c);
  c.barrier()->wait();
}

}  // namespace dtrain::testdist
