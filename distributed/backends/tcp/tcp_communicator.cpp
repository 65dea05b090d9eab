// The tcp backend: mesh set-up through the Store, then every collective as one or two rounds of
// concurrent point-to-point messages driven by poll().
#include "dtrain/distributed/backends/tcp/tcp_communicator.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>
#include <sstream>
#include <string_view>

#include "dtrain/distributed/reduce.h"
#include "dtrain/distributed/shared_memory.h"
#include "dtrain/tensor/check.h"

namespace dtrain::dist {
namespace {

using net::Clock;

constexpr char kMagic[8] = {'d', 't', 'r', 'a', 'i', 'n', 't', '1'};
constexpr size_t kSecretBytes = 32;
// Accepted connections still owing their hello; when full, the oldest is closed (the real ranks
// send theirs at once, so the oldest is the likeliest stranger).
constexpr size_t kMaxPendingHellos = 64;

// Every message starts with a frame: payload bytes (8), sequence (8), tag (4), kind (4), the
// sender's buffer address for kFrameDataByAddress (8), and what it belongs to (64, for errors).
constexpr size_t kFrameBytes = 96;
constexpr size_t kFrameWhatBytes = 64;
constexpr uint32_t kFrameData = 0;           // the payload follows on the socket
constexpr uint32_t kFrameDataByAddress = 1;  // the receiver copies the payload from the sender
constexpr uint32_t kFrameAck = 2;            // "copied": the sender may reuse its buffer
using Frame = std::array<char, kFrameBytes>;
// Below this a message goes over the socket even to a same-host peer: it fits the socket buffers,
// so the sender is done at once, while a copy by address costs the sender a wait for the ack.
constexpr size_t kByAddressMinBytes = 256 << 10;

uint64_t get_u64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(p[i]);
  return v;
}

struct FrameView {
  explicit FrameView(const Frame& f) : f_(f) {}
  uint64_t bytes() const { return get_u64(f_.data()); }
  uint64_t sequence() const { return get_u64(f_.data() + 8); }
  int32_t tag() const { return static_cast<int32_t>(get_u64(f_.data() + 16) & 0xFFFFFFFFu); }
  uint32_t kind() const { return static_cast<uint32_t>(get_u64(f_.data() + 16) >> 32); }
  uint64_t address() const { return get_u64(f_.data() + 24); }
  std::string what() const {
    return std::string(f_.data() + 32, strnlen(f_.data() + 32, kFrameWhatBytes));
  }
  const Frame& f_;
};
/// First bytes on every connection: who is calling, and the group's secret.
struct Hello {
  char magic[8];
  int32_t rank;
  int32_t size;
  char secret[kSecretBytes];
};

/// Throws for a failed set-up transfer (net::send_all / recv_all), naming what it carried.
void check_setup_io(const std::optional<net::IoFailure>& failure, const std::string& what) {
  if (!failure) return;
  switch (failure->kind) {
    case net::IoFailure::kClosed:
      DTRAIN_THROW(DistError, "tcp: ", what, ": connection closed by the other side");
    case net::IoFailure::kError:
      DTRAIN_THROW(DistError, "tcp: ", what, ": ", net::errno_text(failure->err));
    case net::IoFailure::kTimeout:
      DTRAIN_THROW(TimeoutError, "tcp: ", what, ": timed out");
  }
}

/// Gradient buckets are megabytes: kernel buffers that hold a whole chunk let one send() hand it
/// over instead of waking the peer for every 64 KiB.
void set_buffers(int fd) {
  const int bytes = 4 << 20;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
}

/// What a message belongs to, compared on arrival: "collective #12 all_reduce(sum) float32 x 1024".
std::string what_of(const CollectiveInfo& info) {
  std::string s = info.describe();
  if (s.size() > kFrameWhatBytes) s.resize(kFrameWhatBytes);
  return s;
}

void put_u64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}

Frame make_frame(uint32_t kind, uint64_t bytes, uint64_t sequence, int32_t tag, uint64_t address,
                 const std::string& what) {
  Frame f{};
  put_u64(f.data(), bytes);
  put_u64(f.data() + 8, sequence);
  put_u64(f.data() + 16, static_cast<uint32_t>(tag) | uint64_t{kind} << 32);
  put_u64(f.data() + 24, address);
  std::memcpy(f.data() + 32, what.data(), std::min(what.size(), kFrameWhatBytes));
  return f;
}

bool cross_memory_from_env() {
  const char* v = std::getenv("DTRAIN_TCP_CROSS_MEMORY");
  return v == nullptr || std::string(v) != "0";
}

/// What rank r keeps in its memory for same-host peers to read: the group secret binds it to this
/// group, the rank to this process, so a record naming another process (another rank's, say)
/// fails the test.
std::string probe_text(const std::string& secret, int rank) {
  return secret + "/rank " + std::to_string(rank);
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
    : HostCommunicator(rank, size), peers_(size) {
  DTRAIN_CHECK(store != nullptr, "tcp: needs a Store to find its peers");
  connect_mesh(*store, options);
  agree_on_cross_memory(*store, options);
  start_worker();
}

int TcpCommunicator::cross_memory_peers() const {
  int n = 0;
  for (const Peer& p : peers_) n += p.cross_memory ? 1 : 0;
  return n;
}

void TcpCommunicator::agree_on_cross_memory(StoreClient& store, const TcpOptions& options) {
  // 1. Every rank published "host key|pid|address of its probe" (connect_mesh). A rank on the same
  //    host reads the peer's probe with process_vm_readv: the group secret followed by that
  //    peer's rank means the pid is that rank's process, and only then may it read there.
  // 2. Each rank sends its verdict to every peer and reads theirs: a pair uses addresses only if
  //    both can read each other, so both sides frame their messages the same way.
  const bool allowed = options.cross_memory && cross_memory_from_env();
  const auto deadline = Clock::now() + options.connect_timeout;
  const std::string mine = host_identity();
  std::vector<char> verdict(size(), 0);
  for (int p = 0; p < size(); ++p) {
    if (p == rank()) continue;
    const auto fields = [&] {
      std::vector<std::string> out;
      std::string part;
      std::istringstream is(store.get(options.key_prefix + "node/" + std::to_string(p)));
      while (std::getline(is, part, '|')) out.push_back(part);
      return out;
    }();
    DTRAIN_CHECK(fields.size() == 3, "tcp: malformed node record of rank ", p);
    peers_[p].pid = std::stoi(fields[1]);
    peers_[p].probe = std::stoull(fields[2], nullptr, 16);
    if (!allowed || fields[0] != mine) continue;
    verdict[p] = holds_probe(p);
  }
  for (int p = 0; p < size(); ++p) {
    if (p == rank()) continue;
    check_setup_io(net::send_all(peers_[p].fd.get(), &verdict[p], 1, deadline),
                   "cross-memory verdict to rank " + std::to_string(p));
  }
  for (int p = 0; p < size(); ++p) {
    if (p == rank()) continue;
    char theirs = 0;
    check_setup_io(net::recv_all(peers_[p].fd.get(), &theirs, 1, deadline),
                   "cross-memory verdict from rank " + std::to_string(p));
    peers_[p].cross_memory = verdict[p] && theirs;
  }
}

TcpCommunicator::~TcpCommunicator() { stop_worker(); }

bool TcpCommunicator::holds_probe(int peer) const {
  const std::string expected = probe_text(probe_.substr(0, kSecretBytes), peer);
  std::string seen(expected.size(), '\0');
  iovec local{seen.data(), seen.size()};
  iovec remote{reinterpret_cast<void*>(peers_[peer].probe), seen.size()};
  return ::process_vm_readv(peers_[peer].pid, &local, 1, &remote, 1, 0) ==
             static_cast<ssize_t>(seen.size()) &&
         net::constant_time_equal(seen, expected);
}

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
  if (rank() == 0)
    store.set(prefix + "secret", net::random_hex(kSecretBytes / 2, "the tcp connection secret"));
  const std::string secret = store.get(prefix + "secret");
  DTRAIN_CHECK(secret.size() == kSecretBytes, "tcp: malformed connection secret in the store");
  probe_ = probe_text(secret, rank());
  std::ostringstream node;
  node << host_identity() << '|' << ::getpid() << '|' << std::hex
       << reinterpret_cast<uintptr_t>(probe_.data());
  store.set(prefix + "node/" + std::to_string(rank()), node.str());
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
    check_setup_io(net::send_all(fd.get(), &mine, sizeof mine, deadline),
                   "hello to rank " + std::to_string(peer) + " at " + address);
    set_buffers(fd.get());
    peers_[peer] = {std::move(fd), address};
  }
  // 2. Accept every higher rank; a connection without the secret is closed and ignored.
  accept_higher_ranks(listener.get(), secret, deadline, options);
}

void TcpCommunicator::accept_higher_ranks(int listener, const std::string& secret,
                                          Clock::time_point deadline, const TcpOptions& options) {
  // 1. poll() the listener and every accepted connection that still owes its hello;
  // 2. read what each has sent; a complete hello is checked, and the connection becomes the
  //    peer's or is closed;
  // 3. close connections past their hello deadline, or the oldest when too many are pending;
  // 4. accept what is waiting in the backlog.
  struct Pending {
    net::UniqueFd fd;
    std::string from;
    Hello hello{};
    size_t got = 0;  // bytes of `hello` received
    Clock::time_point deadline;
  };
  std::vector<Pending> pending;
  std::vector<pollfd> fds;
  auto refuse = [&](const Pending& p, const char* why) {
    std::fprintf(stderr, "dtrain: tcp rank %d: refused a connection from %s (%s)\n", rank(),
                 p.from.c_str(), why);
  };
  // Reads what has arrived; true when the connection is settled (a peer, or to be closed).
  auto receive = [&](Pending& p) {
    auto* bytes = reinterpret_cast<char*>(&p.hello);
    while (p.got < sizeof(Hello)) {
      const ssize_t n = ::recv(p.fd.get(), bytes + p.got, sizeof(Hello) - p.got, 0);
      if (n > 0) {
        p.got += size_t(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
      return true;  // closed or failed before a whole hello: nothing to answer
    }
    const Hello& h = p.hello;
    const bool valid = std::memcmp(h.magic, kMagic, sizeof kMagic) == 0 &&
                       net::constant_time_equal(std::string_view(h.secret, kSecretBytes), secret) &&
                       h.size == size() && h.rank > rank() && h.rank < size() && !peers_[h.rank].fd;
    if (!valid) {
      refuse(p, "not a rank of this group");
      return true;
    }
    net::set_nodelay(p.fd.get());
    set_buffers(p.fd.get());
    peers_[h.rank] = {std::move(p.fd), p.from};
    return true;
  };
  auto missing = [&] {
    int n = 0;
    for (int r = rank() + 1; r < size(); ++r) n += peers_[r].fd ? 0 : 1;
    return n;
  };
  while (missing() > 0) {
    const auto now = Clock::now();
    if (now >= deadline) {
      std::ostringstream late;
      for (int r = rank() + 1; r < size(); ++r) {
        if (!peers_[r].fd) late << " " << r;
      }
      DTRAIN_THROW(TimeoutError, "tcp: rank ", rank(), " waited ", options.connect_timeout.count(),
                   " ms for rank(s)", late.str(), " to connect; did they start?");
    }
    auto wake = deadline;
    fds.assign(1, {listener, POLLIN, 0});
    for (const Pending& p : pending) {
      fds.push_back({p.fd.get(), POLLIN, 0});
      wake = std::min(wake, p.deadline);
    }
    if (::poll(fds.data(), fds.size(), net::ms_until(wake)) < 0 && errno != EINTR) {
      DTRAIN_THROW(DistError, "tcp: rank ", rank(), ": poll: ", net::errno_text(errno));
    }
    for (size_t i = 0; i < pending.size(); ++i) {
      if (fds[i + 1].revents && receive(pending[i])) pending[i].fd.reset();
    }
    const auto after = Clock::now();
    for (Pending& p : pending) {
      if (p.fd && after >= p.deadline) {
        refuse(p, "no hello in time");
        p.fd.reset();
      }
    }
    std::erase_if(pending, [](const Pending& p) { return !p.fd; });
    if (!(fds[0].revents & POLLIN)) continue;
    for (int i = 0; i < 64 && missing() > 0; ++i) {  // the rest wait for the next round
      sockaddr_storage addr{};
      socklen_t len = sizeof addr;
      net::UniqueFd fd(::accept4(listener, reinterpret_cast<sockaddr*>(&addr), &len,
                                 SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!fd) {
        // Out of descriptors, say: poll() would report the listener again at once.
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
          ::poll(nullptr, 0, 10);
        }
        break;
      }
      if (pending.size() >= kMaxPendingHellos) {
        refuse(pending.front(), "no hello yet, and too many connections are waiting for theirs");
        pending.erase(pending.begin());
      }
      Pending p;
      p.fd = std::move(fd);
      p.from = net::sockaddr_text(reinterpret_cast<sockaddr*>(&addr), len);
      p.deadline = Clock::now() + options.hello_timeout;
      // A rank sends its hello right after connecting: it is usually here already.
      if (!receive(p)) pending.push_back(std::move(p));
    }
  }
}

// One call of exchange(): a state machine over the peers taking part, each with at most one
// message to it and one from it.
// 1. The constructor queues every outgoing message: its frame, then the payload inline (tcp
//    mode), or the frame alone carrying the buffer's address (by address, same-host peers).
// 2. run() sends what each socket takes (flush) and reads what has arrived (receive), spinning for
//    a moment, then blocking in poll(), until nothing is owed either way or the deadline passes.
// 3. An arriving data frame is checked against the transfer expected from that peer before any
//    payload is read, so ranks that issued different collectives get an error, not garbage.
// 4. A message by address is done for its sender only at the receiver's ack: until then the
//    receiver may still be copying out of the sender's buffer.
// Frames and inline payloads leave in queue order; what arrives is parsed frame by frame, and only
// while something is still expected from that peer (the next collective's frames stay in the
// socket).
class TcpCommunicator::Exchange {
 public:
  Exchange(TcpCommunicator& comm, std::vector<Transfer>& transfers, const CollectiveInfo& info,
           Timeout timeout);
  /// Returns once every transfer is done. Throws DistError for a lost peer or a mismatched
  /// message, ValueError for an unexpected ack, TimeoutError at the deadline.
  void run();

 private:
  struct Segment {
    Frame frame{};
    const char* payload = nullptr;  // inline payload after the frame (tcp mode)
    size_t bytes = 0, done = 0;     // of frame + payload
  };
  struct PeerIo {
    int peer = 0;
    Transfer* out = nullptr;
    Transfer* in = nullptr;
    bool out_done = true, in_done = true;
    std::deque<Segment> queue;
    Frame frame{};
    size_t frame_done = 0;
    size_t payload_done = 0;
    bool in_payload = false;
  };

  /// The entry of `peer`, added on first use (io_ is reserved, so references stay valid).
  PeerIo& io_of(int peer);
  /// Step 1 for one transfer.
  void add(Transfer& t);
  /// Flushes and receives on every peer without blocking; true while anything is still owed.
  bool progress();
  /// Blocks in poll() until a socket is ready; throws TimeoutError at the deadline.
  void wait();
  /// Sends what the socket takes now.
  void flush(PeerIo& x);
  /// Receives what has arrived, as long as something is expected from this peer.
  void receive(PeerIo& x);
  /// Acts on a complete frame in x.frame (steps 3 and 4).
  void on_frame(PeerIo& x);
  void check_data_frame(const PeerIo& x) const;
  std::string peer_name(int peer) const;
  [[noreturn]] void lost(int peer, int err) const;
  [[noreturn]] void timed_out() const;

  TcpCommunicator& comm_;
  const CollectiveInfo& info_;
  const Timeout timeout_;
  const Clock::time_point deadline_;
  const bool p2p_;
  const std::string what_;
  std::vector<PeerIo> io_;
  std::vector<pollfd> fds_;
};

TcpCommunicator::Exchange::Exchange(TcpCommunicator& comm, std::vector<Transfer>& transfers,
                                    const CollectiveInfo& info, Timeout timeout)
    : comm_(comm),
      info_(info),
      timeout_(timeout),
      deadline_(Clock::now() + timeout),
      p2p_(info.sequence == 0),
      what_(what_of(info)) {
  io_.reserve(transfers.size());
  for (Transfer& t : transfers) add(t);
}

TcpCommunicator::Exchange::PeerIo& TcpCommunicator::Exchange::io_of(int peer) {
  for (PeerIo& x : io_) {
    if (x.peer == peer) return x;
  }
  io_.push_back(PeerIo{});
  io_.back().peer = peer;
  return io_.back();
}

void TcpCommunicator::Exchange::add(Transfer& t) {
  PeerIo& x = io_of(t.peer);
  if (t.outgoing) {
    x.out = &t;
    x.out_done = false;
    Segment seg;
    const bool cma = comm_.peers_[t.peer].cross_memory && t.bytes >= kByAddressMinBytes;
    seg.frame = make_frame(cma ? kFrameDataByAddress : kFrameData, t.bytes, info_.sequence, t.tag,
                           cma ? reinterpret_cast<uint64_t>(t.data) : 0, what_);
    seg.payload = cma ? nullptr : t.data;
    seg.bytes = kFrameBytes + (cma ? 0 : t.bytes);
    x.queue.push_back(seg);
  } else {
    x.in = &t;
    x.in_done = false;
  }
}

void TcpCommunicator::Exchange::run() {
  // The peer's answer usually comes within microseconds, far sooner than a thread blocked in
  // poll() wakes up on this kind of machine: retry without blocking for a moment first.
  while (!spin_until([this] { return !progress(); })) wait();
}

bool TcpCommunicator::Exchange::progress() {
  bool any = false;
  for (PeerIo& x : io_) {
    flush(x);
    receive(x);
    any = any || !x.out_done || !x.in_done || !x.queue.empty();
  }
  return any;
}

void TcpCommunicator::Exchange::wait() {
  // Wake for room to send what is queued, and for input while a message or an ack is still owed.
  fds_.clear();
  for (const PeerIo& x : io_) {
    const short ev =
        short((x.queue.empty() ? 0 : POLLOUT) | (!x.in_done || !x.out_done ? POLLIN : 0));
    if (ev) fds_.push_back({comm_.peers_[x.peer].fd.get(), ev, 0});
  }
  const int ready = ::poll(fds_.data(), fds_.size(), net::ms_until(deadline_));
  if (ready < 0 && errno == EINTR) return;
  if (ready == 0) timed_out();
}

void TcpCommunicator::Exchange::flush(PeerIo& x) {
  const int fd = comm_.peers_[x.peer].fd.get();
  while (!x.queue.empty()) {
    Segment& seg = x.queue.front();
    const bool in_frame = seg.done < kFrameBytes;
    const char* p = in_frame ? seg.frame.data() + seg.done : seg.payload + (seg.done - kFrameBytes);
    const size_t n = in_frame ? kFrameBytes - seg.done : seg.bytes - seg.done;
    const ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
    if (r > 0) {
      seg.done += size_t(r);
      if (seg.done < seg.bytes) continue;
      // An inline message is done once sent; one by address once the peer has copied it.
      if (seg.payload != nullptr || FrameView(seg.frame).kind() == kFrameData) x.out_done = true;
      x.queue.pop_front();
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    lost(x.peer, errno);
  }
}

void TcpCommunicator::Exchange::receive(PeerIo& x) {
  const int fd = comm_.peers_[x.peer].fd.get();
  while (!x.in_done || !x.out_done) {
    if (x.in_payload) {
      const size_t n = x.in->bytes - x.payload_done;
      const ssize_t r = n == 0 ? 0 : ::recv(fd, x.in->data + x.payload_done, n, 0);
      if (n == 0 || r > 0) {
        x.payload_done += size_t(std::max<ssize_t>(r, 0));
        if (x.payload_done == x.in->bytes) {
          x.in_payload = false;
          x.in_done = true;
        }
        continue;
      }
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      lost(x.peer, r == 0 ? 0 : errno);
    }
    const ssize_t r = ::recv(fd, x.frame.data() + x.frame_done, kFrameBytes - x.frame_done, 0);
    if (r > 0) {
      x.frame_done += size_t(r);
      if (x.frame_done < kFrameBytes) continue;
      x.frame_done = 0;
      on_frame(x);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    lost(x.peer, r == 0 ? 0 : errno);
  }
}

void TcpCommunicator::Exchange::on_frame(PeerIo& x) {
  const FrameView f(x.frame);
  // A by-address frame makes this rank read the sender's memory: only from a peer whose process
  // both sides verified at set-up (agree_on_cross_memory), and never for a kind this build does
  // not know.
  if (f.kind() != kFrameData && f.kind() != kFrameDataByAddress && f.kind() != kFrameAck) {
    DTRAIN_THROW(DistError, "tcp: rank ", comm_.rank(), " in ", info_.describe(), " received from ",
                 peer_name(x.peer), " a message of unknown kind ", f.kind(),
                 "; is every rank running the same dtrain build?");
  }
  if (f.kind() == kFrameDataByAddress && !comm_.peers_[x.peer].cross_memory) {
    DTRAIN_THROW(DistError, "tcp: rank ", comm_.rank(), " in ", info_.describe(), " received from ",
                 peer_name(x.peer),
                 " a message to copy from its memory, but the two ranks did not agree on "
                 "cross-memory copies at set-up; refusing it (is every rank running the same "
                 "dtrain build?)");
  }
  if (f.kind() == kFrameAck) {
    DTRAIN_CHECK(!x.out_done && x.out != nullptr && comm_.peers_[x.peer].cross_memory &&
                     f.sequence() == info_.sequence,
                 "tcp: rank ", comm_.rank(), " in ", info_.describe(),
                 ": unexpected acknowledgement from ", peer_name(x.peer));
    x.out_done = true;
    return;
  }
  if (x.in == nullptr || x.in_done) {
    DTRAIN_THROW(DistError, "tcp: rank ", comm_.rank(), " in ", info_.describe(), " received from ",
                 peer_name(x.peer), " a message for '", f.what(),
                 "' while expecting none from it: the ranks issued different collectives");
  }
  check_data_frame(x);
  if (f.kind() == kFrameData) {
    x.in_payload = true;
    x.payload_done = 0;
    return;
  }
  // By address: copy straight out of the sender's memory, then tell it the buffer is free.
  comm_.read_peer_memory(x.peer, f.address(), x.in->data, x.in->bytes, info_);
  x.in_done = true;
  Segment ack;
  ack.frame = make_frame(kFrameAck, 0, info_.sequence, 0, 0, what_);
  ack.bytes = kFrameBytes;
  x.queue.push_back(ack);
  flush(x);
}

void TcpCommunicator::Exchange::check_data_frame(const PeerIo& x) const {
  const FrameView f(x.frame);
  const bool same =
      p2p_ ? (f.sequence() == 0 && f.tag() == x.in->tag && f.bytes() == x.in->bytes)
           : (f.sequence() == info_.sequence && f.what() == what_ && f.bytes() == x.in->bytes);
  if (!same) {
    DTRAIN_THROW(DistError, "tcp: rank ", comm_.rank(), " in ", info_.describe(), " received from ",
                 peer_name(x.peer), " a message of ", f.bytes(), " bytes for '", f.what(),
                 "' (tag ", f.tag(), ") instead of ", x.in->bytes, " bytes",
                 p2p_ ? " with tag " + std::to_string(x.in->tag) : std::string(),
                 ": the ranks issued different collectives. Every rank must call the same "
                 "collectives in the same order; DTRAIN_DISTRIBUTED_DEBUG=1 lists each call");
  }
}

std::string TcpCommunicator::Exchange::peer_name(int peer) const {
  return "rank " + std::to_string(peer) + " (" + comm_.peers_[peer].address + ")";
}

void TcpCommunicator::Exchange::lost(int peer, int err) const {
  const std::string why =
      err == 0 ? "closed the connection" : "closed the connection (" + net::errno_text(err) + ")";
  DTRAIN_THROW(DistError, "tcp: rank ", comm_.rank(), " in ", info_.describe(), ": ",
               peer_name(peer), " ", why,
               "; that process probably exited or was killed (its own log has the cause)");
}

void TcpCommunicator::Exchange::timed_out() const {
  std::ostringstream waiting;
  for (const PeerIo& x : io_) {
    if (!x.out_done)
      waiting << "\n  sending to " << peer_name(x.peer) << ": " << x.out->bytes << " bytes";
    if (!x.in_done) {
      waiting << "\n  receiving from " << peer_name(x.peer) << ": "
              << (x.in_payload ? x.payload_done : 0) << " of " << x.in->bytes << " bytes";
    }
  }
  DTRAIN_THROW(TimeoutError, "tcp: rank ", comm_.rank(), ": ", info_.describe(),
               " did not complete within ", timeout_.count(), " ms; still", waiting.str(),
               "\nThose ranks are stalled, stopped or slower than the timeout allows.");
}

void TcpCommunicator::exchange(std::vector<Transfer>& transfers, const CollectiveInfo& info,
                               Timeout timeout) {
  if (transfers.empty()) return;
  Exchange(*this, transfers, info, timeout).run();
}

void TcpCommunicator::read_peer_memory(int peer, uint64_t address, char* dst, size_t bytes,
                                       const CollectiveInfo& info) {
  // The pid may have been reused since set-up (the peer died with this message in flight): read
  // only from a process that still holds the peer's probe.
  if (!holds_probe(peer)) {
    DTRAIN_THROW(DistError, "tcp: rank ", rank(), " in ", info.describe(), ": rank ", peer,
                 " (pid ", peers_[peer].pid,
                 ") is no longer the process that joined the group; it probably exited");
  }
  size_t done = 0;
  while (done < bytes) {
    iovec local{dst + done, bytes - done};
    iovec remote{reinterpret_cast<void*>(address + done), bytes - done};
    const ssize_t n = ::process_vm_readv(peers_[peer].pid, &local, 1, &remote, 1, 0);
    if (n <= 0) {
      DTRAIN_THROW(DistError, "tcp: rank ", rank(), " in ", info.describe(),
                   ": cannot read the data of rank ", peer, " (pid ", peers_[peer].pid,
                   ") from its memory: ", net::errno_text(errno),
                   "; it probably exited. DTRAIN_TCP_CROSS_MEMORY=0 sends all data over TCP");
    }
    done += size_t(n);
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
  // An empty chunk (fewer elements than ranks) has no buffer: memmove must not see its null.
  if (my_bytes == 0) return;
  // Rank order, whatever this rank's place: the same bits on every rank and in every run.
  const auto part = [&](int r) {
    return r == me ? data + at[me] * es : scratch_.data() + r * my_bytes;
  };
  char* acc = scratch_.data() + me * my_bytes;
  const int64_t n = at[me + 1] - at[me];
  std::memmove(acc, part(0), my_bytes);
  for (int r = 1; r < size(); ++r) reduce_into(acc, part(r), n, dtype, op);
  if (op == ReduceOp::kAvg) divide_in_place(acc, n, dtype, size());
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
