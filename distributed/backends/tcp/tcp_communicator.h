// The tcp backend: processes on one or many machines exchanging data over a full mesh of TCP
// connections, set up through the Store. It is what workers of `dtrain launch` use (no MPI there).
// Every reduction is done by the rank that owns a chunk, in rank order, so results are
// bit-identical on every rank and to the local backend's.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "dtrain/distributed/host_communicator.h"
#include "dtrain/distributed/socket.h"
#include "dtrain/distributed/store.h"

namespace dtrain::dist {

struct TcpOptions {
  /// Store keys of this group start with it; a new group (e.g. after a restart) needs a new one.
  std::string key_prefix = "dtrain/tcp/";
  /// The address peers dial to reach this rank; empty: the local address that routes to the Store.
  std::string advertise_address;
  /// How long to wait for every rank to join.
  Timeout connect_timeout{300'000};
  /// How long an accepted connection may take to send its hello before it is closed. Ranks send
  /// theirs as soon as they connect, and connections are served concurrently, so this only bounds
  /// what idle strangers hold.
  Timeout hello_timeout{2'000};
  /// Ranks on the same host copy each other's buffers directly (process_vm_readv, one copy) and
  /// use the socket only for small frames; off, or where the system forbids it, all data goes
  /// over TCP. Default: on unless DTRAIN_TCP_CROSS_MEMORY=0.
  bool cross_memory = true;
};

class TcpCommunicator final : public HostCommunicator {
 public:
  /// Collective: every rank of the group calls it with the same store and prefix.
  /// 1. each rank listens on a free port of its advertised address and publishes it with a
  ///    connection secret that only Store clients (token holders) can read;
  /// 2. rank r connects to every lower rank and accepts every higher one; the first bytes on a
  ///    connection name its rank and carry the secret, so strangers are turned away. Accepted
  ///    connections wait for their hello together, each for at most hello_timeout, so idle ones
  ///    do not delay the real peers.
  /// Throws TimeoutError naming the ranks that did not join within connect_timeout.
  TcpCommunicator(std::shared_ptr<StoreClient> store, int rank, int size, TcpOptions options = {});
  ~TcpCommunicator() override;
  std::string_view backend_name() const override { return "tcp"; }
  /// Peers whose data this rank copies from their memory instead of receiving it over TCP.
  int cross_memory_peers() const;

 protected:
  /// A 4 KiB all-reduce over loopback sockets took ~8x raw MPI_Allreduce; through the shared
  /// slot it takes about what MPI does.
  bool small_all_reduces_through_shared_memory() const override { return true; }
  bool divides_while_reducing() const override { return true; }
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

 public:
  /// One message of an exchange: to or from `peer`, `bytes` long.
  struct Transfer {
    int peer = 0;
    bool outgoing = false;
    char* data = nullptr;
    size_t bytes = 0;
    int tag = 0;
  };

 private:
  struct Peer {
    net::UniqueFd fd;
    std::string address;
    bool cross_memory = false;  // both sides can read the other's memory
    int pid = 0;
    uint64_t probe = 0;  // address of the peer's probe_ in process `pid`
  };
  void connect_mesh(StoreClient& store, const TcpOptions& options);
  /// Step 2 of the mesh: accepts until every higher rank has sent a valid hello.
  void accept_higher_ranks(int listener, const std::string& secret, net::Clock::time_point deadline,
                           const TcpOptions& options);
  /// After the mesh: decides per pair of ranks on one host whether data goes by address.
  void agree_on_cross_memory(StoreClient& store, const TcpOptions& options);
  /// True when process peers_[peer].pid holds that rank's probe at the published address.
  bool holds_probe(int peer) const;
  void read_peer_memory(int peer, uint64_t address, char* dst, size_t bytes,
                        const CollectiveInfo& info);

  /// Runs every transfer concurrently (so no pair of ranks waits on each other) until all are done
  /// or the deadline passes. Each message carries a header with its size and collective, checked
  /// on arrival, so ranks that issued different calls get an error instead of garbage.
  void exchange(std::vector<Transfer>& transfers, const CollectiveInfo& info, Timeout timeout);
  /// The state of one exchange() call: per-peer queues and frames; defined in the .cpp.
  class Exchange;
  /// Reduce-scatter in rank order: afterwards `mine` holds op over every rank's chunk rank()
  /// (kAvg: their sum divided by size()).
  void reduce_chunk_from_all(const char* data, int64_t count, DType dtype, ReduceOp op, char* mine,
                             const CollectiveInfo& info, Timeout timeout);
  std::vector<Peer> peers_;
  std::vector<char> scratch_;
  std::string probe_;  // probe_text(secret, rank): read by same-host peers to test process_vm_readv
};

}  // namespace dtrain::dist
