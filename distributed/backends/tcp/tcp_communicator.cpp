// The tcp backend: mesh set-up through the Store, then every collective as one or two rounds of
// concurrent point-to-point messages driven by poll().
#include "distributed/backends/tcp/tcp_communicator.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "distributed/reduce.h"
#include "tensor/check.h"

namespace dtrain::dist {
namespace {

using net::Clock;

constexpr char kMagic[8] = {'d', 't', 'r', 'a', 'i', 'n', 't', '1'};
constexpr size_t kSecretBytes = 32;
constexpr size_t kHeaderBytes = 64;
constexpr size_t kWhatAt = 20;  // header: size (8 bytes), sequence (8), tag (4), what
constexpr size_t kWhatBytes = kHeaderBytes - kWhatAt;

/// First bytes on every connection: who is calling, and the group's secret.
struct Hello {
  char magic[8];
  int32_t rank;
  int32_t size;
  char secret[kSecretBytes];
};

std::string random_secret() {
  std::array<unsigned char, kSecretBytes / 2> bytes{};
  std::ifstream urandom("/dev/urandom", std::ios::binary);
  urandom.read(reinterpret_cast<char*>(bytes.data()), bytes.size());
  DTRAIN_CHECK(urandom.good(), "tcp: cannot read /dev/urandom for the connection secret");
  std::string hex;
  for (unsigned char b : bytes) {
    constexpr char kDigits[] = "0123456789abcdef";
    hex += kDigits[b >> 4];
    hex += kDigits[b & 15];
  }
  return hex;
}

/// Sends or receives exactly n bytes on a non-blocking socket before the deadline (set-up only).
void blocking_io(int fd, char* p, size_t n, bool out, Clock::time_point deadline,
                 const std::string& what) {
  size_t done = 0;
  while (done < n) {
    const ssize_t r =
        out ? ::send(fd, p + done, n - done, MSG_NOSIGNAL) : ::recv(fd, p + done, n - done, 0);
    if (r > 0) {
      done += size_t(r);
      continue;
    }
    if (r == 0) DTRAIN_THROW(DistError, "tcp: ", what, ": connection closed by the other side");
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      DTRAIN_THROW(DistError, "tcp: ", what, ": ", net::errno_text(errno));
    }
    pollfd pfd{fd, short(out ? POLLOUT : POLLIN), 0};
    if (::poll(&pfd, 1, net::ms_until(deadline)) == 0) {
      DTRAIN_THROW(TimeoutError, "tcp: ", what, ": timed out");
    }
  }
}

/// What a message belongs to, compared on arrival: "#12 all_reduce(sum) float32 x 1024".
std::string what_of(const CollectiveInfo& info) {
  std::string s = info.describe();
  if (s.size() > kWhatBytes) s.resize(kWhatBytes);
  return s;
}

void put_u64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
uint64_t get_u64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(p[i]);
  return v;
}

/// Element offsets of `parts` near-equal chunks of n elements: chunk c is [at[c], at[c+1]).
std::vector<int64_t> even_chunks(int64_t n, int parts) {
  std::vector<int64_t> at(parts + 1);
  for (int c = 0; c <= parts; ++c) at[c] = n * c / parts;
  return at;
}

}  // namespace

TcpCommunicator::TcpCommunicator(std::shared_ptr<StoreClient> store, int rank, int size,
                                 TcpOptions options)
    : AsyncCommunicator(rank, size), peers_(size) {
  DTRAIN_CHECK(store != nullptr, "tcp: needs a Store to find its peers");
  connect_mesh(*store, options);
  start_worker();
}

TcpCommunicator::~TcpCommunicator() { stop_worker(); }

void TcpCommunicator::connect_mesh(StoreClient& store, const TcpOptions& options) {
  const auto deadline = Clock::now() + options.connect_timeout;
  const std::string& prefix = options.key_prefix;
  std::string host = options.advertise_address;
  if (host.empty()) {
    const auto [store_host, store_port] = net::split_host_port(store.address(), "store address");
    host = net::local_address_towards(store_host, store_port);
  }
  uint16_t port = 0;
  net::UniqueFd listener = net::listen_tcp(host, 0, &port, "tcp rank " + std::to_string(rank()));
  if (rank() == 0) store.set(prefix + "secret", random_secret());
  const std::string secret = store.get(prefix + "secret");
  DTRAIN_CHECK(secret.size() == kSecretBytes, "tcp: malformed connection secret in the store");
  store.set(prefix + "addr/" + std::to_string(rank()), net::host_port(host, port));

  Hello mine{};
  std::memcpy(mine.magic, kMagic, sizeof kMagic);
  mine.rank = rank();
  mine.size = size();
  std::memcpy(mine.secret, secret.data(), kSecretBytes);

  // 1. Dial every lower rank (their listeners exist before their addresses are published, so the
  //    connection waits in the backlog even if they are still dialling others).
  for (int peer = 0; peer < rank(); ++peer) {
    std::vector<std::string> key = {prefix + "addr/" + std::to_string(peer)};
    try {
      store.wait(key,
                 std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
    } catch (const TimeoutError&) {
      DTRAIN_THROW(TimeoutError, "tcp: rank ", rank(), " waited ", options.connect_timeout.count(),
                   " ms for rank ", peer,
                   " to publish its address; did it start, and does it use the same store?");
    }
    const std::string address = store.get(key[0]);
    const auto [peer_host, peer_port] = net::split_host_port(address, "tcp peer address");
    std::string error = "no attempt";
    net::UniqueFd fd;
    while (!(fd = net::try_connect_tcp(peer_host, peer_port, deadline, error))) {
      if (Clock::now() >= deadline) {
        DTRAIN_THROW(TimeoutError, "tcp: rank ", rank(), " cannot connect to rank ", peer, " at ",
                     address, ": ", error, ". Is that address reachable from this machine?");
      }
      ::usleep(20'000);
    }
    blocking_io(fd.get(), reinterpret_cast<char*>(&mine), sizeof mine, true, deadline,
                "hello to rank " + std::to_string(peer) + " at " + address);
    peers_[peer] = {std::move(fd), address};
  }
  // 2. Accept every higher rank; a connection without the secret is closed and ignored.
  int missing = size() - 1 - rank();
  while (missing > 0) {
    pollfd p{listener.get(), POLLIN, 0};
    if (::poll(&p, 1, net::ms_until(deadline)) == 0) {
      std::ostringstream late;
      for (int r = rank() + 1; r < size(); ++r) {
        if (!peers_[r].fd) late << " " << r;
      }
      DTRAIN_THROW(TimeoutError, "tcp: rank ", rank(), " waited ", options.connect_timeout.count(),
                   " ms for rank(s)", late.str(), " to connect; did they start?");
    }
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    net::UniqueFd fd(::accept4(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len,
                               SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) continue;
    const std::string from = net::sockaddr_text(reinterpret_cast<sockaddr*>(&addr), len);
    Hello hello{};
    try {
      blocking_io(fd.get(), reinterpret_cast<char*>(&hello), sizeof hello, false,
                  std::min(deadline, Clock::now() + std::chrono::seconds(10)),
                  "hello from " + from);
    } catch (const Error&) {
      continue;
    }
    const bool valid = std::memcmp(hello.magic, kMagic, sizeof kMagic) == 0 &&
                       std::memcmp(hello.secret, secret.data(), kSecretBytes) == 0 &&
                       hello.size == size() && hello.rank > rank() && hello.rank < size() &&
                       !peers_[hello.rank].fd;
    if (!valid) {
      std::fprintf(stderr,
                   "dtrain: tcp rank %d: refused a connection from %s (not a rank of "
                   "this group)\n",
                   rank(), from.c_str());
      continue;
    }
    net::set_nodelay(fd.get());
    peers_[hello.rank] = {std::move(fd), from};
    --missing;
  }
}

void TcpCommunicator::exchange(std::vector<Transfer>& transfers, const CollectiveInfo& info,
                               Timeout timeout) {
  if (transfers.empty()) return;
  const auto deadline = Clock::now() + timeout;
  const bool p2p = info.sequence == 0;
  const std::string what = what_of(info);
  struct State {
    Transfer* t;
    std::array<char, kHeaderBytes> header{};
    size_t done = 0;  // bytes of header + payload moved so far
    size_t total() const { return kHeaderBytes + t->bytes; }
  };
  std::vector<State> states;
  states.reserve(transfers.size());
  for (Transfer& t : transfers) {
    State s{&t};
    if (t.outgoing) {
      put_u64(s.header.data(), t.bytes);
      put_u64(s.header.data() + 8, info.sequence);
      const auto tag = static_cast<uint32_t>(t.tag);
      std::memcpy(s.header.data() + 16, &tag, 4);
      std::memcpy(s.header.data() + kWhatAt, what.data(), what.size());
    }
    states.push_back(s);
  }
  const auto peer_name = [&](int peer) {
    return "rank " + std::to_string(peer) + " (" + peers_[peer].address + ")";
  };
  const auto check_header = [&](State& s) {
    const uint64_t bytes = get_u64(s.header.data());
    const uint64_t sequence = get_u64(s.header.data() + 8);
    int32_t tag = 0;
    std::memcpy(&tag, s.header.data() + 16, 4);
    const std::string theirs(s.header.data() + kWhatAt,
                             strnlen(s.header.data() + kWhatAt, kWhatBytes));
    const bool same = p2p ? (tag == s.t->tag && bytes == s.t->bytes)
                          : (sequence == info.sequence && theirs == what && bytes == s.t->bytes);
    if (!same) {
      DTRAIN_THROW(DistError, "tcp: rank ", rank(), " in ", info.describe(), " received from ",
                   peer_name(s.t->peer), " a message of ", bytes, " bytes for '", theirs, "' (tag ",
                   tag, ") instead of ", s.t->bytes, " bytes",
                   p2p ? " with tag " + std::to_string(s.t->tag) : std::string(),
                   ": the ranks issued different collectives. Every rank must call the same "
                   "collectives in the same order; DTRAIN_DISTRIBUTED_DEBUG=1 lists each call");
    }
  };
  // Moves as many bytes as the socket takes now; false when it would block.
  const auto step = [&](State& s) {
    const int fd = peers_[s.t->peer].fd.get();
    while (s.done < s.total()) {
      const bool in_header = s.done < kHeaderBytes;
      char* p = in_header ? s.header.data() + s.done : s.t->data + (s.done - kHeaderBytes);
      const size_t n = in_header ? kHeaderBytes - s.done : s.total() - s.done;
      const ssize_t r = s.t->outgoing ? ::send(fd, p, n, MSG_NOSIGNAL) : ::recv(fd, p, n, 0);
      if (r > 0) {
        s.done += size_t(r);
        if (!s.t->outgoing && in_header && s.done == kHeaderBytes) check_header(s);
        continue;
      }
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      const std::string why = r == 0 ? "closed the connection"
                                     : "closed the connection (" + net::errno_text(errno) + ")";
      DTRAIN_THROW(DistError, "tcp: rank ", rank(), " in ", info.describe(), ": ",
                   peer_name(s.t->peer), " ", why,
                   "; that process probably exited or was killed (its own log has the cause)");
    }
  };
  std::vector<pollfd> fds;
  for (;;) {
    bool pending = false;
    for (State& s : states) {
      step(s);
      pending = pending || s.done < s.total();
    }
    if (!pending) return;
    fds.clear();
    for (const State& s : states) {
      if (s.done == s.total()) continue;
      const int fd = peers_[s.t->peer].fd.get();
      const short ev = s.t->outgoing ? POLLOUT : POLLIN;
      auto it = std::find_if(fds.begin(), fds.end(), [&](const pollfd& p) { return p.fd == fd; });
      if (it == fds.end()) {
        fds.push_back({fd, ev, 0});
      } else {
        it->events |= ev;
      }
    }
    const int ready = ::poll(fds.data(), fds.size(), net::ms_until(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      std::ostringstream waiting;
      for (const State& s : states) {
        if (s.done < s.total()) {
          waiting << "\n  " << (s.t->outgoing ? "sending to " : "receiving from ")
                  << peer_name(s.t->peer) << ": " << s.done << " of " << s.total() << " bytes";
        }
      }
      DTRAIN_THROW(TimeoutError, "tcp: rank ", rank(), ": ", info.describe(),
                   " did not complete within ", timeout.count(), " ms; still", waiting.str(),
                   "\nThose ranks are stalled, stopped or slower than the timeout allows.");
    }
  }
}

void TcpCommunicator::reduce_chunk_from_all(const char* data, int64_t count, DType dtype,
                                            ReduceOp op, char* mine, const CollectiveInfo& info,
                                            Timeout timeout) {
  const size_t es = dtype_size(dtype);
  const auto at = even_chunks(count, size());
  const int me = rank();
  const size_t my_bytes = size_t(at[me + 1] - at[me]) * es;
  scratch_.resize(my_bytes * size());
  std::vector<Transfer> transfers;
  for (int p = 0; p < size(); ++p) {
    if (p == me) continue;
    transfers.push_back(
        {p, true, const_cast<char*>(data) + at[p] * es, size_t(at[p + 1] - at[p]) * es, 0});
    transfers.push_back({p, false, scratch_.data() + p * my_bytes, my_bytes, 0});
  }
  exchange(transfers, info, timeout);
  // Rank order, whatever this rank's place: the same bits on every rank and in every run.
  const auto part = [&](int r) {
    return r == me ? data + at[me] * es : scratch_.data() + r * my_bytes;
  };
  char* acc = scratch_.data() + me * my_bytes;
  const int64_t n = at[me + 1] - at[me];
  std::memmove(acc, part(0), my_bytes);
  for (int r = 1; r < size(); ++r) reduce_into(acc, part(r), n, dtype, op);
  std::memmove(mine, acc, my_bytes);
}

void TcpCommunicator::run_all_reduce(Tensor& t, ReduceOp op, const CollectiveInfo& info,
                                     Timeout timeout) {
  if (size() == 1) return;
  const auto deadline = Clock::now() + timeout;
  char* data = static_cast<char*>(t.data_ptr());
  const size_t es = dtype_size(t.dtype());
  const auto at = even_chunks(t.numel(), size());
  reduce_chunk_from_all(data, t.numel(), t.dtype(), op, data + at[rank()] * es, info, timeout);
  std::vector<Transfer> transfers;
  for (int p = 0; p < size(); ++p) {
    if (p == rank()) continue;
    transfers.push_back(
        {p, true, data + at[rank()] * es, size_t(at[rank() + 1] - at[rank()]) * es, 0});
    transfers.push_back({p, false, data + at[p] * es, size_t(at[p + 1] - at[p]) * es, 0});
  }
  exchange(transfers, info,
           std::max(Timeout(0), std::chrono::duration_cast<Timeout>(deadline - Clock::now())));
}

void TcpCommunicator::run_reduce(Tensor& t, ReduceOp op, int root, const CollectiveInfo& info,
                                 Timeout timeout) {
  if (size() == 1) return;
  const auto deadline = Clock::now() + timeout;
  char* data = static_cast<char*>(t.data_ptr());
  const size_t es = dtype_size(t.dtype());
  const auto at = even_chunks(t.numel(), size());
  reduce_chunk_from_all(data, t.numel(), t.dtype(), op, data + at[rank()] * es, info, timeout);
  std::vector<Transfer> transfers;
  const auto chunk = [&](int r) -> Transfer {
    return {r, false, data + at[r] * es, size_t(at[r + 1] - at[r]) * es, 0};
  };
  if (rank() == root) {
    for (int p = 0; p < size(); ++p) {
      if (p != root) transfers.push_back(chunk(p));
    }
  } else {
    Transfer mine = chunk(rank());
    mine.peer = root;
    mine.outgoing = true;
    transfers.push_back(mine);
  }
  exchange(transfers, info,
           std::max(Timeout(0), std::chrono::duration_cast<Timeout>(deadline - Clock::now())));
}

void TcpCommunicator::run_broadcast(Tensor& t, int root, const CollectiveInfo& info,
                                    Timeout timeout) {
  std::vector<Transfer> transfers;
  char* data = static_cast<char*>(t.data_ptr());
  if (rank() == root) {
    for (int p = 0; p < size(); ++p) {
      if (p != root) transfers.push_back({p, true, data, t.nbytes(), 0});
    }
  } else {
    transfers.push_back({root, false, data, t.nbytes(), 0});
  }
  exchange(transfers, info, timeout);
}

void TcpCommunicator::run_all_gather(const Tensor& in, Tensor& out, const CollectiveInfo& info,
                                     Timeout timeout) {
  const size_t bytes = in.nbytes();
  char* dst = static_cast<char*>(out.data_ptr());
  char* src = const_cast<char*>(static_cast<const char*>(in.data_ptr()));
  std::memmove(dst + rank() * bytes, src, bytes);
  std::vector<Transfer> transfers;
  for (int p = 0; p < size(); ++p) {
    if (p == rank()) continue;
    transfers.push_back({p, true, dst + rank() * bytes, bytes, 0});
    transfers.push_back({p, false, dst + p * bytes, bytes, 0});
  }
  exchange(transfers, info, timeout);
}

void TcpCommunicator::run_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op,
                                         const CollectiveInfo& info, Timeout timeout) {
  // Chunks of exactly out.numel() elements, which even_chunks gives for in.numel() = size * m.
  reduce_chunk_from_all(static_cast<const char*>(in.data_ptr()), in.numel(), in.dtype(), op,
                        static_cast<char*>(out.data_ptr()), info, timeout);
}

void TcpCommunicator::run_barrier(const CollectiveInfo& info, Timeout timeout) {
  std::vector<Transfer> transfers;
  for (int p = 0; p < size(); ++p) {
    if (p == rank()) continue;
    transfers.push_back({p, true, nullptr, 0, 0});
    transfers.push_back({p, false, nullptr, 0, 0});
  }
  exchange(transfers, info, timeout);
}

void TcpCommunicator::run_send(const Tensor& t, int peer, int tag, const CollectiveInfo& info,
                               Timeout timeout) {
  std::vector<Transfer> transfers = {
      {peer, true, const_cast<char*>(static_cast<const char*>(t.data_ptr())), t.nbytes(), tag}};
  exchange(transfers, info, timeout);
}

void TcpCommunicator::run_recv(Tensor& t, int peer, int tag, const CollectiveInfo& info,
                               Timeout timeout) {
  std::vector<Transfer> transfers = {
      {peer, false, static_cast<char*>(t.data_ptr()), t.nbytes(), tag}};
  exchange(transfers, info, timeout);
}

}  // namespace dtrain::dist
