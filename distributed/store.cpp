// The TCP Store: a server whose one poll() thread serves every connection from non-blocking
// sockets and per-connection buffers, and a client that sends one request at a time. Both speak
// length-prefixed StoreRequest/StoreResponse messages (distributed/store.proto).
#include "dtrain/distributed/store.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>

#include "distributed/store.pb.h"
#include "dtrain/distributed/socket.h"
#include "dtrain/tensor/check.h"

namespace dtrain::dist {
namespace {

using namespace net;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr uint32_t kProtocolVersion = 1;
constexpr size_t kHeaderBytes = 4;
// The most an unauthenticated connection has buffered: one handshake frame.
constexpr size_t kHandshakeFrameBytes = kHeaderBytes + kStoreMaxHandshakeBytes;
// How long a client waits for an answer beyond the server-side timeout of a blocking request
// before it gives up on a server that stopped answering.
constexpr milliseconds kResponseGrace{5'000};
// Reads per connection and loop iteration are capped so that one fast sender cannot starve the
// others (poll is level-triggered: what is left is read on the next iteration).
constexpr size_t kReadBudgetBytes = 1 << 20;

std::string token_or_env(const std::string& token) {
  if (!token.empty()) return token;
  const char* env = std::getenv("DTRAIN_STORE_TOKEN");
  return env ? env : "";
}

/// Quoted for error messages; very long keys are cut.
std::string quote(const std::string& key) {
  constexpr size_t kMax = 120;
  return "'" + (key.size() <= kMax ? key : key.substr(0, kMax) + "...") + "'";
}

/// Well-formed UTF-8 (no overlong forms, surrogates or code points above U+10FFFF): protobuf
/// refuses to parse `string` fields that are not, so keys and tokens are checked before sending.
bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    const size_t n = c >= 0xC2 && c <= 0xDF   ? 1
                     : c >= 0xE0 && c <= 0xEF ? 2
                     : c >= 0xF0 && c <= 0xF4 ? 3
                                              : 0;
    if (n == 0 || i + n >= s.size()) return false;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
    for (size_t k = 1; k <= n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return false;
    }
    i += n + 1;
  }
  return true;
}

/// Appends the 4-byte little-endian length and the serialised message.
void append_frame(const google::protobuf::MessageLite& msg, std::string& out) {
  const size_t size = msg.ByteSizeLong();
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((size >> (8 * i)) & 0xFF));
  const size_t at = out.size();
  out.resize(at + size);
  msg.SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(out.data() + at));
}

uint32_t read_length(const char* p) {
  uint32_t n = 0;
  for (int i = 0; i < 4; ++i) n |= uint32_t(static_cast<unsigned char>(p[i])) << (8 * i);
  return n;
}

/// Notices clients whose host vanished (power loss, partition) within about two minutes; without
/// it such a connection would keep its slot, and its parked request, until that request's deadline.
void set_keepalive(int fd) {
  const int on = 1, idle_s = 60, interval_s = 10, probes = 6;
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof idle_s);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof interval_s);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
}

void log_line(const std::string& text) {
  const std::string line = text + "\n";  // one write, so lines from threads do not interleave
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Server

struct StoreServer::Impl {
  /// A get-with-wait or wait request that is answered once all its keys exist or at its deadline.
  struct Parked {
    std::vector<std::string> keys;
    bool is_get = false;  // answer with the value of keys[0]
    Clock::time_point deadline;
  };
  struct Conn {
    UniqueFd fd;
    std::string peer;
    std::string in;   // received bytes not yet handled
    std::string out;  // answer bytes not yet sent
    size_t out_sent = 0;
    bool authed = false;
    bool closing = false;  // close once `out` is sent (refused handshake)
    bool dead = false;     // close at the end of this loop iteration
    Clock::time_point handshake_deadline;
    std::optional<Parked> parked;
    bool has_output() const { return out_sent < out.size(); }
  };

  StoreServerOptions options;
  std::string token;
  std::string address;
  uint16_t port = 0;
  UniqueFd listen_fd;
  UniqueFd wake_read, wake_write;  // self-pipe: the destructor writes a byte to end poll()
  std::atomic<bool> stopping{false};
  std::atomic<int64_t> rejected{0};
  std::thread thread;

  // Owned by the loop thread only.
  std::unordered_map<std::string, std::string> data;
  std::vector<std::unique_ptr<Conn>> conns;
  std::vector<Conn*> resumed;  // unparked this iteration; their buffered requests run next
  Clock::time_point accept_paused_until{};
  int notes_printed = 0;      // in full since the log was last quiet for a period
  int64_t notes_counted = 0;  // since the last summary, not printed
  std::string latest_note;    // the newest of those
  Clock::time_point summary_due{}, last_note{};

  void log(const std::string& text) const { log_line("store " + address + ": " + text); }
  /// Logs a message about one connection (a refusal, a close, an accept pause), rate-limited:
  /// see StoreServerOptions::log_burst.
  void note(const std::string& text);
  /// Prints the summary of the messages note() only counted, once their period has ended.
  void summarise_notes(Clock::time_point now);

  void bind_and_listen();
  void run();
  void accept_new();
  void read_from(Conn& c);
  void flush(Conn& c);
  void process_input(Conn& c);
  void handle(Conn& c, const proto::StoreRequest& req);
  void respond(Conn& c, const proto::StoreResponse& resp);
  void wake_waiters();
  void expire(Clock::time_point now);
  /// Live connections with (true) or still without (false) an accepted handshake.
  size_t count_conns(bool authed) const {
    return std::count_if(conns.begin(), conns.end(),
                         [&](const auto& c) { return !c->dead && c->authed == authed; });
  }
  bool all_exist(const std::vector<std::string>& keys) const {
    return std::all_of(keys.begin(), keys.end(), [&](const auto& k) { return data.count(k); });
  }
};

void StoreServer::Impl::bind_and_listen() {
  listen_fd = listen_tcp(options.bind_address, options.port, &port, "store");
}

void StoreServer::Impl::run() {
  std::vector<pollfd> fds;
  while (!stopping.load()) {
    const auto now = Clock::now();
    auto next = Clock::time_point::max();  // nearest deadline: poll() must wake up for it
    const bool accept_paused = now < accept_paused_until;
    if (accept_paused) next = accept_paused_until;
    fds.clear();
    fds.push_back({wake_read.get(), POLLIN, 0});
    fds.push_back({listen_fd.get(), short(accept_paused ? 0 : POLLIN), 0});
    for (const auto& c : conns) {
      const short events = short((c->closing ? 0 : POLLIN) | (c->has_output() ? POLLOUT : 0));
      fds.push_back({c->fd.get(), events, 0});
      if (c->parked) next = std::min(next, c->parked->deadline);
      if (!c->authed && !c->closing) next = std::min(next, c->handshake_deadline);
    }
    if (notes_counted > 0) next = std::min(next, summary_due);
    const int timeout = next == Clock::time_point::max() ? -1 : ms_until(next);
    if (::poll(fds.data(), fds.size(), timeout) < 0) {
      if (errno == EINTR) continue;
      log("poll failed: " + errno_text(errno) + "; the store stops serving");
      return;
    }
    if (fds[0].revents) {
      char buf[64];
      while (::read(wake_read.get(), buf, sizeof buf) > 0) {
      }
    }
    if (stopping.load()) return;
    const size_t polled = conns.size();  // accept_new() below appends after these
    for (size_t i = 0; i < polled; ++i) {
      Conn& c = *conns[i];
      const short rev = fds[i + 2].revents;
      if (c.dead || rev == 0) continue;
      if (c.closing && (rev & (POLLERR | POLLHUP))) c.dead = true;
      if (!c.closing && (rev & (POLLIN | POLLERR | POLLHUP))) read_from(c);
      if (!c.dead && (rev & POLLOUT)) {
        flush(c);
        process_input(c);  // requests held back while the answer was being sent
      }
    }
    if (fds[1].revents & POLLIN) accept_new();
    expire(Clock::now());
    summarise_notes(Clock::now());
    // Requests that arrived while a connection was parked run now; they may unpark others.
    for (size_t i = 0; i < resumed.size(); ++i) process_input(*resumed[i]);
    resumed.clear();
    std::erase_if(conns, [](const auto& c) { return c->dead; });
  }
}

void StoreServer::Impl::note(const std::string& text) {
  // Strangers decide how many of these there are, and a write to a stderr pipe nobody drains
  // blocks this, the store's only thread: print the first ones, then count them.
  const auto now = Clock::now();
  summarise_notes(now);
  if (notes_counted == 0 && now - last_note >= options.log_summary_period) notes_printed = 0;
  last_note = now;
  if (notes_printed < options.log_burst) {
    ++notes_printed;
    log(text);
    return;
  }
  if (notes_counted++ == 0) summary_due = now + options.log_summary_period;
  latest_note = text;
}

void StoreServer::Impl::summarise_notes(Clock::time_point now) {
  if (notes_counted == 0 || now < summary_due) return;
  const int64_t ms = options.log_summary_period.count();
  log(std::to_string(notes_counted) + " more connection message(s) in the last " +
      (ms % 1000 == 0 ? std::to_string(ms / 1000) + " s" : std::to_string(ms) + " ms") +
      " not printed; the latest: " + latest_note);
  notes_counted = 0;
}

void StoreServer::Impl::accept_new() {
  for (int i = 0; i < 64; ++i) {  // the rest wait for the next iteration
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    UniqueFd fd(::accept4(listen_fd.get(), reinterpret_cast<sockaddr*>(&addr), &len,
                          SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      const int err = errno;
      if (err == EINTR || err == ECONNABORTED) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      // Out of descriptors: poll() would report the listener as ready at once, forever.
      note("accept failed: " + errno_text(err) + "; pausing new connections for 100 ms");
      accept_paused_until = Clock::now() + milliseconds(100);
      return;
    }
    const std::string peer = sockaddr_text(reinterpret_cast<sockaddr*>(&addr), len);
    // Unauthenticated connections have slots of their own, so they never take those of clients
    // with the token; when full, the oldest goes (conns is in accept order; see
    // StoreServerOptions::max_pending_handshakes). Its client, if real, connects again.
    if (count_conns(false) >= size_t(options.max_pending_handshakes)) {
      for (const auto& old : conns) {
        if (old->dead || old->authed) continue;
        note("closing connection from " + old->peer + ": no handshake yet, and " +
             std::to_string(options.max_pending_handshakes) +
             " connections are waiting for theirs (max_pending_handshakes)");
        old->dead = true;
        break;
      }
    }
    set_nodelay(fd.get());
    set_keepalive(fd.get());
    auto c = std::make_unique<Conn>();
    c->fd = std::move(fd);
    c->peer = peer;
    c->handshake_deadline = Clock::now() + options.handshake_timeout;
    conns.push_back(std::move(c));
    // A client sends its handshake right after connecting; taking it now makes the connection
    // authenticated before later arrivals can push it out of the pending slots.
    read_from(*conns.back());
  }
}

void StoreServer::Impl::read_from(Conn& c) {
  char buf[64 << 10];
  // Before its handshake is accepted a connection gets no more than one handshake frame read: a
  // client waits for the answer before sending more, and strangers cannot grow the buffer.
  const size_t budget = c.authed
                            ? kReadBudgetBytes
                            : kHandshakeFrameBytes - std::min(c.in.size(), kHandshakeFrameBytes);
  size_t total = 0;
  while (total < budget) {
    const ssize_t n = ::recv(c.fd.get(), buf, std::min(sizeof buf, budget - total), 0);
    if (n > 0) {
      c.in.append(buf, size_t(n));
      total += size_t(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    c.dead = true;  // the peer closed or reset its side: nothing is left to answer
    return;
  }
  // A client sends its next request only after the answer to the previous one; more than a
  // full message waiting behind a parked request is a misbehaving peer.
  if ((c.parked || c.has_output()) && c.in.size() > kStoreMaxMessageBytes + 2 * kHeaderBytes) {
    note("closing connection from " + c.peer + ": it sent more requests while one was pending");
    c.dead = true;
    return;
  }
  process_input(c);
}

void StoreServer::Impl::flush(Conn& c) {
  while (c.has_output()) {
    const ssize_t n =
        ::send(c.fd.get(), c.out.data() + c.out_sent, c.out.size() - c.out_sent, MSG_NOSIGNAL);
    if (n > 0) {
      c.out_sent += size_t(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;  // POLLOUT resumes it
    c.dead = true;
    return;
  }
  c.out.clear();
  c.out_sent = 0;
  if (c.closing) c.dead = true;
}

void StoreServer::Impl::process_input(Conn& c) {
  // One request at a time per connection: the next one is handled after the answer to this one
  // has gone out, which keeps answers in order and lets a slow reader push back.
  size_t pos = 0;  // consumed bytes are erased once at the end, not per message
  while (!c.dead && !c.closing && !c.parked && !c.has_output()) {
    if (c.in.size() - pos < kHeaderBytes) break;
    const uint32_t len = read_length(c.in.data() + pos);
    // Checked on the length prefix, before any of the body is buffered.
    const size_t limit = c.authed ? kStoreMaxMessageBytes : kStoreMaxHandshakeBytes;
    if (len > limit) {
      note("closing connection from " + c.peer + ": message of " + std::to_string(len) +
           " bytes exceeds the limit of " + std::to_string(limit) +
           (c.authed ? "" : " before the handshake"));
      c.dead = true;
      return;
    }
    if (c.in.size() - pos < kHeaderBytes + len) break;
    proto::StoreRequest req;
    if (!req.ParseFromArray(c.in.data() + pos + kHeaderBytes, int(len))) {
      note("closing connection from " + c.peer + ": malformed message of " + std::to_string(len) +
           " bytes (not a StoreRequest)");
      c.dead = true;
      return;
    }
    pos += kHeaderBytes + len;
    try {
      handle(c, req);
    } catch (const std::exception& e) {
      // E.g. out of memory for a large value: only this connection is dropped.
      note("closing connection from " + c.peer + ": " + e.what());
      c.dead = true;
      return;
    }
  }
  c.in.erase(0, pos);
}

void StoreServer::Impl::respond(Conn& c, const proto::StoreResponse& resp) {
  append_frame(resp, c.out);
  flush(c);
}

void StoreServer::Impl::handle(Conn& c, const proto::StoreRequest& req) {
  using Req = proto::StoreRequest;
  proto::StoreResponse resp;
  if (!c.authed) {
    const bool ok = req.op_case() == Req::kHandshake &&
                    req.handshake().protocol_version() == kProtocolVersion &&
                    constant_time_equal(req.handshake().token(), token);
    if (ok && count_conns(true) >= size_t(options.max_clients)) {
      const std::string why =
          "too many clients (max_clients " + std::to_string(options.max_clients) + ")";
      note("refused connection from " + c.peer + ": " + why);
      resp.set_error(why);
      c.closing = true;
      respond(c, resp);
      return;
    }
    if (ok) {
      c.authed = true;
      resp.set_ok(true);
      respond(c, resp);
      return;
    }
    const std::string reason = req.op_case() != Req::kHandshake ? "no handshake"
                               : req.handshake().protocol_version() != kProtocolVersion
                                   ? "protocol version " +
                                         std::to_string(req.handshake().protocol_version()) +
                                         " (expected " + std::to_string(kProtocolVersion) + ")"
                                   : "wrong token";
    rejected.fetch_add(1);
    note("refused connection from " + c.peer + ": " + reason);
    resp.set_error("unauthorized");
    c.closing = true;  // set first: respond() must not go on to read further requests
    respond(c, resp);
    return;
  }

  bool created = false;  // a key may have come into existence: parked requests may be answerable
  switch (req.op_case()) {
    case Req::kSet: {
      created = data.insert_or_assign(req.set().key(), req.set().value()).second;
      resp.set_ok(true);
      break;
    }
    case Req::kGet: {
      const auto& get = req.get();
      if (auto it = data.find(get.key()); it != data.end()) {
        resp.set_ok(true);
        resp.set_found(true);
        resp.set_value(it->second);
      } else if (get.wait()) {
        // Clamped so that the deadline arithmetic cannot overflow (about 11 days).
        const int64_t ms = std::clamp<int64_t>(get.timeout_ms(), 0, int64_t(1) << 30);
        c.parked = Parked{{get.key()}, true, Clock::now() + milliseconds(ms)};
        return;  // answered by wake_waiters() or expire()
      } else {
        resp.set_ok(true);
      }
      break;
    }
    case Req::kWait: {
      std::vector<std::string> keys(req.wait().keys().begin(), req.wait().keys().end());
      if (!all_exist(keys)) {
        const int64_t ms = std::clamp<int64_t>(req.wait().timeout_ms(), 0, int64_t(1) << 30);
        c.parked = Parked{std::move(keys), false, Clock::now() + milliseconds(ms)};
        return;
      }
      resp.set_ok(true);
      break;
    }
    case Req::kAdd: {
      const auto& add = req.add();
      auto [it, inserted] = data.try_emplace(add.key(), "0");
      created = inserted;
      int64_t current = 0;
      const std::string& text = it->second;
      const char* end = text.data() + text.size();
      auto [ptr, ec] = std::from_chars(text.data(), end, current);
      int64_t next = 0;
      if (ec != std::errc() || ptr != end || text.empty()) {
        resp.set_error("add(" + quote(add.key()) + "): the value " + quote(text) +
                       " is not an integer");
      } else if (__builtin_add_overflow(current, add.delta(), &next)) {
        resp.set_error("add(" + quote(add.key()) + "): " + text + " + " +
                       std::to_string(add.delta()) + " overflows int64");
      } else {
        it->second = std::to_string(next);
        resp.set_ok(true);
        resp.set_number(next);
      }
      break;
    }
    case Req::kCompareSet: {
      const auto& cas = req.compare_set();
      auto it = data.find(cas.key());
      const bool matches = it == data.end() ? cas.expected().empty() : it->second == cas.expected();
      if (matches) {
        created = it == data.end();
        data.insert_or_assign(cas.key(), cas.desired());
        resp.set_value(cas.desired());
        resp.set_found(true);
      } else if (it != data.end()) {
        resp.set_value(it->second);
        resp.set_found(true);
      }
      resp.set_ok(true);
      break;
    }
    case Req::kDelete:
      resp.set_found(data.erase(req.delete_().key()) > 0);
      resp.set_ok(true);
      break;
    case Req::kNumKeys:
      resp.set_number(int64_t(data.size()));
      resp.set_ok(true);
      break;
    case Req::kHandshake:
      resp.set_error("handshake sent twice on one connection");
      break;
    case Req::OP_NOT_SET:
      resp.set_error("empty or unknown request (is the client newer than this server?)");
      break;
  }
  respond(c, resp);
  if (created) wake_waiters();
}

void StoreServer::Impl::wake_waiters() {
  for (auto& c : conns) {
    if (!c->parked || c->dead || !all_exist(c->parked->keys)) continue;
    proto::StoreResponse resp;
    resp.set_ok(true);
    if (c->parked->is_get) {
      resp.set_found(true);
      resp.set_value(data.at(c->parked->keys.front()));
    }
    c->parked.reset();
    respond(*c, resp);
    resumed.push_back(c.get());
  }
}

void StoreServer::Impl::expire(Clock::time_point now) {
  for (auto& c : conns) {
    if (c->dead) continue;
    if (!c->authed && !c->closing && now >= c->handshake_deadline) {
      note("closing connection from " + c->peer + ": no handshake within " +
           std::to_string(options.handshake_timeout.count()) + " ms");
      c->dead = true;
      continue;
    }
    if (!c->parked || now < c->parked->deadline) continue;
    proto::StoreResponse resp;
    resp.set_timed_out(true);
    resp.set_error("timed out");
    for (const auto& k : c->parked->keys) {
      if (!data.count(k)) resp.add_missing(k);
    }
    c->parked.reset();
    respond(*c, resp);
    resumed.push_back(c.get());
  }
}

int store_max_clients(int64_t world_size) {
  return static_cast<int>(std::clamp<int64_t>(4 * world_size + 64, 1024, 1 << 22));
}

namespace {
/// The soft open-file limit raised towards `needed` descriptors (up to the hard limit); a warning
/// when even the hard limit is lower.
void ensure_file_limit(int64_t needed) {
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) != 0 || files.rlim_cur == RLIM_INFINITY ||
      static_cast<int64_t>(files.rlim_cur) >= needed) {
    return;
  }
  const rlim_t want = files.rlim_max == RLIM_INFINITY
                          ? static_cast<rlim_t>(needed)
                          : std::min(files.rlim_max, static_cast<rlim_t>(needed));
  files.rlim_cur = want;
  ::setrlimit(RLIMIT_NOFILE, &files);
  if (static_cast<int64_t>(want) < needed) {
    std::fprintf(stderr,
                 "store server: the open-file limit (hard %llu) is below the %lld descriptors "
                 "its clients may need; raise it (ulimit -n) or connections will be refused\n",
                 static_cast<unsigned long long>(files.rlim_max), static_cast<long long>(needed));
  }
}
}  // namespace

StoreServer::StoreServer(const StoreServerOptions& options) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.options = options;
  s.token = token_or_env(options.token);
  DTRAIN_CHECK(!s.token.empty(),
               "store server: no token; set DTRAIN_STORE_TOKEN (or StoreServerOptions::token) to a "
               "shared secret, e.g. `export DTRAIN_STORE_TOKEN=$(openssl rand -hex 16)`");
  DTRAIN_CHECK(options.max_clients > 0, "store server: max_clients must be positive, got ",
               options.max_clients);
  ensure_file_limit(int64_t{options.max_clients} + options.max_pending_handshakes + 64);
  DTRAIN_CHECK(options.max_pending_handshakes > 0,
               "store server: max_pending_handshakes must be positive, got ",
               options.max_pending_handshakes);
  DTRAIN_CHECK(options.log_burst >= 0 && options.log_summary_period.count() > 0,
               "store server: log_burst must be >= 0 and log_summary_period positive, got ",
               options.log_burst, " and ", options.log_summary_period.count(), " ms");
  DTRAIN_CHECK(options.handshake_timeout.count() > 0,
               "store server: handshake_timeout must be positive, got ",
               options.handshake_timeout.count(), " ms");
  s.bind_and_listen();
  const bool any = options.bind_address.empty() || options.bind_address == "0.0.0.0" ||
                   options.bind_address == "::";
  std::string host = options.bind_address;
  if (any) {
    char name[256] = {};
    host = ::gethostname(name, sizeof name - 1) == 0 ? name : "localhost";
  }
  s.address = host_port(host, s.port);
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    DTRAIN_THROW(ValueError, "store ", s.address,
                 ": cannot create the wake-up pipe: ", errno_text(errno));
  }
  s.wake_read.reset(pipe_fds[0]);
  s.wake_write.reset(pipe_fds[1]);
  s.thread = std::thread([&s] {
    try {
      s.run();
    } catch (const std::exception& e) {
      s.log(std::string("the store stops serving: ") + e.what());
    }
  });
}

StoreServer::~StoreServer() {
  impl_->stopping.store(true);
  const char byte = 1;
  [[maybe_unused]] ssize_t n = ::write(impl_->wake_write.get(), &byte, 1);
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->summarise_notes(Clock::time_point::max());  // what was only counted so far
  // impl_'s destructor closes the listener and every connection.
}

uint16_t StoreServer::port() const { return impl_->port; }
std::string StoreServer::address() const { return impl_->address; }
int64_t StoreServer::rejected_connections() const { return impl_->rejected.load(); }

// ------------------------------------------------------------------------------------------------
// Client

struct StoreClient::Impl {
  StoreClientOptions options;
  std::string address;
  std::mutex mutex;  // one request in flight per connection
  UniqueFd fd;
  std::string broken;  // why the connection was dropped; the client cannot be used after that

  std::string prefix(const std::string& op) const { return "store " + address + ": " + op + ": "; }

  void connect(const std::string& token);
  bool try_connect(Clock::time_point deadline, std::string& error);
  proto::StoreResponse call(const std::string& op, const proto::StoreRequest& req,
                            Clock::time_point deadline);
  /// Drops the connection and throws; the stream may be mid-message, so it cannot be reused.
  [[noreturn]] void drop(const std::string& op, const std::string& why, bool timeout);
  /// Drops the connection after a failed send_all / recv_all, and throws what went wrong;
  /// `timed_out` is the message for a deadline that passed (it differs by direction).
  [[noreturn]] void drop_after(const std::string& op, const IoFailure& failure,
                               const char* timed_out);
  void check_key(const std::string& op, const std::string& key) const {
    DTRAIN_CHECK(valid_utf8(key), prefix(op),
                 "keys must be valid UTF-8 (protobuf string fields); encode binary keys, e.g. as "
                 "hex");
  }
  Clock::time_point request_deadline() const { return Clock::now() + options.request_timeout; }
};

void StoreClient::Impl::drop(const std::string& op, const std::string& why, bool timeout) {
  fd.reset();
  broken = why;
  if (timeout) DTRAIN_THROW(TimeoutError, prefix(op), why);
  DTRAIN_THROW(Error, prefix(op), why);
}

bool StoreClient::Impl::try_connect(Clock::time_point deadline, std::string& error) {
  fd = try_connect_tcp(options.host, options.port, deadline, error);
  return static_cast<bool>(fd);
}

void StoreClient::Impl::connect(const std::string& token) {
  // Retried with a growing pause until connect_timeout: the server may not be up yet (workers
  // often start before the launcher's store), or may close the connection before answering the
  // handshake (it drops the oldest pending handshakes when many connections arrive at once).
  const auto deadline = Clock::now() + options.connect_timeout;
  proto::StoreRequest req;
  req.mutable_handshake()->set_token(token);
  req.mutable_handshake()->set_protocol_version(kProtocolVersion);
  const std::string own_prefix = "store " + address + ": ";
  std::string error = "no attempt made";
  milliseconds pause{10};
  int attempts = 0;
  std::optional<proto::StoreResponse> resp;
  for (;;) {
    if (try_connect(deadline, error)) {
      try {
        resp = call("handshake", req, request_deadline());
      } catch (const TimeoutError&) {
        throw;  // the server accepted and stopped answering: trying again would not help
      } catch (const Error& e) {
        error = e.message().starts_with(own_prefix) ? e.message().substr(own_prefix.size())
                                                    : e.message();
      }
    }
    if (resp) break;
    ++attempts;
    const auto now = Clock::now();
    if (now >= deadline) {
      DTRAIN_THROW(TimeoutError, prefix("connect"), "could not connect within ",
                   options.connect_timeout.count(), " ms (", attempts,
                   " attempts, last error: ", error,
                   "). Is the store server running, and is this address reachable from here?");
    }
    std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - now));
    pause = std::min(pause * 2, milliseconds(1'000));
  }
  broken.clear();
  if (!resp->ok()) {
    fd.reset();
    broken = "the server refused the handshake: " + resp->error();
    const bool token_refused = resp->error() == "unauthorized";
    DTRAIN_THROW(
        ValueError, prefix("handshake"), "the server refused the connection: ", resp->error(),
        token_refused ? ". Does DTRAIN_STORE_TOKEN match the token the store was started with?"
                      : "");
  }
}

void StoreClient::Impl::drop_after(const std::string& op, const IoFailure& failure,
                                   const char* timed_out) {
  if (failure.kind == IoFailure::kTimeout) drop(op, timed_out, true);
  if (failure.kind == IoFailure::kClosed) {
    drop(op, "connection closed by the server; is the store still running?", false);
  }
  drop(op,
       "connection closed by the server (" + errno_text(failure.err) +
           "); is the store still running?",
       false);
}

proto::StoreResponse StoreClient::Impl::call(const std::string& op, const proto::StoreRequest& req,
                                             Clock::time_point deadline) {
  if (!fd) DTRAIN_THROW(Error, prefix(op), "not connected: ", broken);
  const size_t size = req.ByteSizeLong();
  DTRAIN_CHECK(size <= kStoreMaxMessageBytes, prefix(op), "the request has ", size,
               " bytes, more than the store's limit of ", kStoreMaxMessageBytes,
               "; store large data elsewhere and publish its location");
  std::string frame;
  append_frame(req, frame);
  constexpr char kNoAnswer[] = "no answer from the server in time; the connection was dropped";
  if (auto failure = net::send_all(fd.get(), frame.data(), frame.size(), deadline)) {
    drop_after(op, *failure, "could not send the request in time; the server is not reading");
  }
  char header[kHeaderBytes];
  if (auto failure = net::recv_all(fd.get(), header, kHeaderBytes, deadline)) {
    drop_after(op, *failure, kNoAnswer);
  }
  const uint32_t len = read_length(header);
  if (len > kStoreMaxMessageBytes) {
    drop(op,
         "the server sent a message of " + std::to_string(len) + " bytes (limit " +
             std::to_string(kStoreMaxMessageBytes) + "); is this a dtrain store?",
         false);
  }
  std::string body(len, '\0');
  if (auto failure = net::recv_all(fd.get(), body.data(), len, deadline)) {
    drop_after(op, *failure, kNoAnswer);
  }
  proto::StoreResponse resp;
  if (!resp.ParseFromString(body)) {
    drop(op, "malformed answer from the server; is this a dtrain store?", false);
  }
  return resp;
}

StoreClient::StoreClient(const StoreClientOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->options = options;
  impl_->address = host_port(options.host, options.port);
  const std::string token = token_or_env(options.token);
  DTRAIN_CHECK(
      !token.empty(), impl_->prefix("connect"),
      "no token; set DTRAIN_STORE_TOKEN (or StoreClientOptions::token) to the store's token");
  DTRAIN_CHECK(valid_utf8(token), impl_->prefix("connect"), "the token must be valid UTF-8");
  impl_->connect(token);
}

StoreClient::~StoreClient() = default;

std::string StoreClient::address() const { return impl_->address; }

void StoreClient::set(const std::string& key, const std::string& value) {
  const std::string op = "set(" + quote(key) + ")";
  impl_->check_key(op, key);
  proto::StoreRequest req;
  req.mutable_set()->set_key(key);
  req.mutable_set()->set_value(value);
  std::lock_guard lock(impl_->mutex);
  const auto resp = impl_->call(op, req, impl_->request_deadline());
  if (!resp.ok()) DTRAIN_THROW(ValueError, impl_->prefix(op), resp.error());
}

std::string StoreClient::get(const std::string& key) {
  const std::string op = "get(" + quote(key) + ")";
  impl_->check_key(op, key);
  const auto timeout = impl_->options.request_timeout;
  proto::StoreRequest req;
  req.mutable_get()->set_key(key);
  req.mutable_get()->set_wait(true);
  req.mutable_get()->set_timeout_ms(timeout.count());
  std::lock_guard lock(impl_->mutex);
  const auto resp = impl_->call(op, req, Clock::now() + timeout + kResponseGrace);
  if (resp.timed_out()) {
    DTRAIN_THROW(TimeoutError, impl_->prefix(op), "the key was not set within ", timeout.count(),
                 " ms (request_timeout)");
  }
  if (!resp.ok()) DTRAIN_THROW(ValueError, impl_->prefix(op), resp.error());
  return resp.value();
}

std::optional<std::string> StoreClient::try_get(const std::string& key) {
  const std::string op = "try_get(" + quote(key) + ")";
  impl_->check_key(op, key);
  proto::StoreRequest req;
  req.mutable_get()->set_key(key);
  std::lock_guard lock(impl_->mutex);
  const auto resp = impl_->call(op, req, impl_->request_deadline());
  if (!resp.ok()) DTRAIN_THROW(ValueError, impl_->prefix(op), resp.error());
  if (!resp.found()) return std::nullopt;
  return resp.value();
}

void StoreClient::wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) {
  std::string op = "wait(";
  for (size_t i = 0; i < keys.size(); ++i) op += (i ? ", " : "") + quote(keys[i]);
  op += ")";
  DTRAIN_CHECK(timeout.count() >= 0, impl_->prefix(op), "negative timeout ", timeout.count(),
               " ms");
  if (keys.empty()) return;
  proto::StoreRequest req;
  for (const auto& key : keys) {
    impl_->check_key(op, key);
    req.mutable_wait()->add_keys(key);
  }
  req.mutable_wait()->set_timeout_ms(timeout.count());
  std::lock_guard lock(impl_->mutex);
  const auto resp = impl_->call(op, req, Clock::now() + timeout + kResponseGrace);
  if (resp.timed_out()) {
    std::string missing;
    for (int i = 0; i < resp.missing_size(); ++i)
      missing += (i ? ", " : "") + quote(resp.missing(i));
    DTRAIN_THROW(TimeoutError, impl_->prefix(op), "timed out after ", timeout.count(),
                 " ms; missing keys: ", missing);
  }
  if (!resp.ok()) DTRAIN_THROW(ValueError, impl_->prefix(op), resp.error());
}

int64_t StoreClient::add(const std::string& key, int64_t delta) {
  const std::string op = "add(" + quote(key) + ", " + std::to_string(delta) + ")";
  impl_->check_key(op, key);
  proto::StoreRequest req;
  req.mutable_add()->set_key(key);
  req.mutable_add()->set_delta(delta);
  std::lock_guard lock(impl_->mutex);
  const auto resp = impl_->call(op, req, impl_->request_deadline());
  if (!resp.ok()) DTRAIN_THROW(ValueError, impl_->prefix(op), resp.error());
  return resp.number();
}

std::string StoreClient::compare_set(const std::string& key, const std::string& expected,
                                     const std::string& desired) {
  const std::string op = "compare_set(" + quote(key) + ")";
  impl_->check_key(op, key);
  proto::StoreRequest req;
  req.mutable_compare_set()->set_key(key);
  req.mutable_compare_set()->set_expected(expected);
  req.mutable_compare_set()->set_desired(desired);
  std::lock_guard lock(impl_->mutex);
  const auto resp = impl_->call(op, req, impl_->request_deadline());
  if (!resp.ok()) DTRAIN_THROW(ValueError, impl_->prefix(op), resp.error());
  return resp.value();
}

bool StoreClient::remove(const std::string& key) {
  const std::string op = "remove(" + quote(key) + ")";
  impl_->check_key(op, key);
  proto::StoreRequest req;
  req.mutable_delete_()->set_key(key);
  std::lock_guard lock(impl_->mutex);
  const auto resp = impl_->call(op, req, impl_->request_deadline());
  if (!resp.ok()) DTRAIN_THROW(ValueError, impl_->prefix(op), resp.error());
  return resp.found();
}

int64_t StoreClient::num_keys() {
  proto::StoreRequest req;
  req.mutable_num_keys();
  std::lock_guard lock(impl_->mutex);
  const auto resp = impl_->call("num_keys()", req, impl_->request_deadline());
  if (!resp.ok()) DTRAIN_THROW(ValueError, impl_->prefix("num_keys()"), resp.error());
  return resp.number();
}

}  // namespace dtrain::dist
