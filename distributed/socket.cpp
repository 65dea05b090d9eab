// TCP plumbing shared by the Store and the tcp backend.
#include "dtrain/distributed/socket.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <system_error>

#include "dtrain/tensor/check.h"

namespace dtrain::dist::net {
namespace {

using AddrList = std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)>;

AddrList resolve(const std::string& host, uint16_t port, int flags, std::string& error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = flags | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const char* name = host.empty() ? nullptr : host.c_str();
  if (int rc = ::getaddrinfo(name, std::to_string(port).c_str(), &hints, &found); rc != 0) {
    error = ::gai_strerror(rc);
    return AddrList(nullptr, ::freeaddrinfo);
  }
  return AddrList(found, ::freeaddrinfo);
}

uint16_t port_of(const sockaddr_storage& a) {
  return a.ss_family == AF_INET6 ? ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port)
                                 : ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
}

/// The loop of send_all and recv_all: `step(done)` sends or receives from byte `done` on, and
/// `events` is what poll() waits for when the socket cannot take or give more yet.
template <class Step>
std::optional<IoFailure> transfer_all(int fd, size_t n, short events, Clock::time_point deadline,
                                      const Step& step) {
  size_t done = 0;
  while (done < n) {
    const ssize_t r = step(done);
    if (r > 0) {
      done += size_t(r);
      continue;
    }
    if (r == 0) return IoFailure{IoFailure::kClosed};
    const int err = errno;
    if (err == EINTR) continue;
    if (err != EAGAIN && err != EWOULDBLOCK) return IoFailure{IoFailure::kError, err};
    // Wait for the socket, but only until the deadline. A poll() that is interrupted, or that
    // reports an error or a hang-up, goes round again, and send/recv says what happened.
    pollfd pfd{fd, events, 0};
    if (::poll(&pfd, 1, ms_until(deadline)) == 0) return IoFailure{IoFailure::kTimeout};
  }
  return std::nullopt;
}

}  // namespace

std::string errno_text(int err) { return std::generic_category().message(err); }

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

std::string host_port(const std::string& host, uint16_t port) {
  const bool ipv6 = host.find(':') != std::string::npos;
  return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

bool resolves_only_to_loopback(const std::string& host) {
  std::string error;
  const AddrList list = resolve(host, 0, 0, error);
  if (!list) return false;
  for (addrinfo* ai = list.get(); ai; ai = ai->ai_next) {
    if (ai->ai_family == AF_INET) {
      const auto* a = reinterpret_cast<const sockaddr_in*>(ai->ai_addr);
      if ((ntohl(a->sin_addr.s_addr) >> 24) != 127) return false;
    } else if (ai->ai_family == AF_INET6) {
      const auto* a = reinterpret_cast<const sockaddr_in6*>(ai->ai_addr);
      if (!IN6_IS_ADDR_LOOPBACK(&a->sin6_addr)) return false;
    }
  }
  return true;
}

std::string sockaddr_text(const sockaddr* addr, socklen_t len) {
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (::getnameinfo(addr, len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "<unknown peer>";
  }
  return host_port(host, static_cast<uint16_t>(std::atoi(serv)));
}

std::pair<std::string, uint16_t> split_host_port(const std::string& text, const std::string& what) {
  const size_t colon = text.rfind(':');
  std::string host = colon == std::string::npos ? "" : text.substr(0, colon);
  const std::string port = colon == std::string::npos ? "" : text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  bool ok = !host.empty() && !port.empty() && port.size() <= 5;
  long value = 0;
  for (char c : port) {
    ok = ok && c >= '0' && c <= '9';
    if (ok) value = value * 10 + (c - '0');
  }
  if (!ok || value < 1 || value > 65535) {
    DTRAIN_THROW(ValueError, what, " '", text,
                 "' is not HOST:PORT with a port from 1 to 65535 (e.g. 10.0.0.1:29500)");
  }
  return {host, static_cast<uint16_t>(value)};
}

int ms_until(Clock::time_point deadline) {
  const auto now = Clock::now();
  if (deadline <= now) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

std::optional<IoFailure> send_all(int fd, const void* buf, size_t n, Clock::time_point deadline) {
  const char* p = static_cast<const char*>(buf);
  return transfer_all(fd, n, POLLOUT, deadline,
                      [&](size_t done) { return ::send(fd, p + done, n - done, MSG_NOSIGNAL); });
}

std::optional<IoFailure> recv_all(int fd, void* buf, size_t n, Clock::time_point deadline) {
  char* p = static_cast<char*>(buf);
  return transfer_all(fd, n, POLLIN, deadline,
                      [&](size_t done) { return ::recv(fd, p + done, n - done, 0); });
}

bool constant_time_equal(std::string_view received, std::string_view secret) {
  unsigned char diff = received.size() == secret.size() ? 0 : 1;
  for (size_t i = 0; i < received.size(); ++i) {
    diff |= static_cast<unsigned char>(received[i] ^ (i < secret.size() ? secret[i] : 0));
  }
  return diff == 0;
}

void set_nodelay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

UniqueFd listen_tcp(const std::string& bind_address, uint16_t port, uint16_t* bound_port,
                    const std::string& who) {
  const std::string where = host_port(bind_address, port);
  std::string error = "no address";
  const AddrList list = resolve(bind_address, port, AI_PASSIVE, error);
  int last_errno = 0;
  for (addrinfo* ai = list.get(); ai; ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) {
      last_errno = errno;
      error = errno_text(errno);
      continue;
    }
    // Lets a restarted server reuse its port while old connections sit in TIME_WAIT; a port with
    // a live listener still fails with "address already in use".
    const int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd.get(), SOMAXCONN) != 0) {
      last_errno = errno;
      error = errno_text(errno);
      continue;
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len);
    if (bound_port) *bound_port = port_of(bound);
    return fd;
  }
  std::string hint;
  switch (last_errno) {
    case EADDRINUSE:
      hint = "Is another job using this port? Choose another one";
      break;
    case EADDRNOTAVAIL:
      hint = "That is not an address of this machine; use one of its own (`ip addr` lists them)";
      break;
    case EACCES:
      hint = "Ports below 1024 need privileges; choose one from 1024 up";
      break;
    default:
      hint = list ? "Check the address and port" : "Check the host name";
  }
  DTRAIN_THROW(ValueError, who, ": cannot listen on ", where, ": ", error, ". ", hint);
}

UniqueFd try_connect_tcp(const std::string& host, uint16_t port, Clock::time_point deadline,
                         std::string& error) {
  const AddrList list = resolve(host, port, 0, error);
  for (addrinfo* ai = list.get(); ai; ai = ai->ai_next) {
    UniqueFd s(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!s) {
      error = errno_text(errno);
      continue;
    }
    if (::connect(s.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        error = errno_text(errno);
        continue;
      }
      pollfd p{s.get(), POLLOUT, 0};
      // poll() fails with EINTR when a signal handler runs (SA_RESTART does not restart it), e.g.
      // the stop-signal handler while a worker starts: wait on, or the attempt counts as failed.
      int ready;
      do {
        ready = ::poll(&p, 1, ms_until(deadline));
      } while (ready < 0 && errno == EINTR);
      if (ready <= 0) {
        error = ready == 0 ? "connection attempt timed out" : errno_text(errno);
        continue;
      }
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        error = errno_text(err);
        continue;
      }
    }
    // A port in the ephemeral range with nobody listening can be picked as this socket's own
    // source port, and TCP then connects the socket to itself; treat that as "not up yet".
    sockaddr_storage self{}, peer{};
    socklen_t self_len = sizeof self, peer_len = sizeof peer;
    if (::getsockname(s.get(), reinterpret_cast<sockaddr*>(&self), &self_len) == 0 &&
        ::getpeername(s.get(), reinterpret_cast<sockaddr*>(&peer), &peer_len) == 0 &&
        self_len == peer_len && std::memcmp(&self, &peer, self_len) == 0) {
      error = "connected to itself (nothing listening yet)";
      continue;
    }
    set_nodelay(s.get());
    return s;
  }
  return UniqueFd();
}

std::string random_hex(size_t bytes, const std::string& what) {
  std::string raw(bytes, '\0');
  std::ifstream urandom("/dev/urandom", std::ios::binary);
  urandom.read(raw.data(), static_cast<std::streamsize>(raw.size()));
  DTRAIN_CHECK(urandom.good(), "cannot read /dev/urandom for ", what);
  std::string hex;
  for (unsigned char b : raw) {
    constexpr char kDigits[] = "0123456789abcdef";
    hex += kDigits[b >> 4];
    hex += kDigits[b & 15];
  }
  return hex;
}

std::string local_address_towards(const std::string& host, uint16_t port) {
  std::string error = "no address";
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found); rc != 0) {
    DTRAIN_THROW(ValueError, "cannot resolve ", host_port(host, port), ": ", ::gai_strerror(rc));
  }
  const AddrList list(found, ::freeaddrinfo);
  for (addrinfo* ai = list.get(); ai; ai = ai->ai_next) {
    UniqueFd s(::socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!s || ::connect(s.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      error = errno_text(errno);
      continue;
    }
    sockaddr_storage self{};
    socklen_t len = sizeof self;
    ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&self), &len);
    char name[NI_MAXHOST];
    if (::getnameinfo(reinterpret_cast<sockaddr*>(&self), len, name, sizeof name, nullptr, 0,
                      NI_NUMERICHOST) == 0) {
      return name;
    }
  }
  DTRAIN_THROW(ValueError, "no local address routes to ", host_port(host, port), ": ", error);
}

}  // namespace dtrain::dist::net
