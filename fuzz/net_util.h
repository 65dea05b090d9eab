// Loopback plumbing for the fuzz targets that act as a Store client or a tcp peer: blocking
// connect, send, and reading until the other side closes, each bounded in time.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "dtrain/distributed/socket.h"
#include "fuzz/fuzz_util.h"

namespace dtrain::fuzz {

/// A blocking connection to 127.0.0.1:port; aborts naming the error when there is none (the
/// server is in this process, so that is a harness failure, not a finding). Thousands of short
/// connections a second can use up loopback's ephemeral ports for a moment (EADDRNOTAVAIL):
/// those attempts are retried for up to 5 s.
inline dist::net::UniqueFd connect_loopback(uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const auto deadline = dist::net::Clock::now() + std::chrono::seconds(5);
  for (;;) {
    dist::net::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd && ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      // close() resets the connection instead of leaving it in TIME_WAIT for a minute, which at
      // this rate would use up the ephemeral ports. The harness closes only after the other side
      // has closed or when abandoning the connection, where a reset is what a crashed peer sends.
      const linger reset{1, 0};
      ::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
      return fd;
    }
    const int err = errno;
    if ((err == EADDRNOTAVAIL || err == EINTR) && dist::net::Clock::now() < deadline) {
      ::poll(nullptr, 0, 10);
      continue;
    }
    std::fprintf(stderr, "fuzz: connect to 127.0.0.1:%u: %s\n", unsigned(port),
                 dist::net::errno_text(err).c_str());
    std::abort();
  }
}

/// Sends what the other side takes; it may close early (that is its right with bad input).
inline void send_some(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n <= 0) return;
    bytes.remove_prefix(size_t(n));
  }
}

/// Reads and discards until the other side closes. False when it has not closed by `limit`.
inline bool drain_until_closed(int fd, std::chrono::milliseconds limit) {
  const auto deadline = dist::net::Clock::now() + limit;
  char buf[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, dist::net::ms_until(deadline));
    if (ready == 0) return false;
    if (ready < 0) continue;  // EINTR
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return true;  // closed or reset
  }
}

/// Reads exactly n bytes; false on close, error or `limit`.
inline bool read_exactly(int fd, char* out, size_t n, std::chrono::milliseconds limit) {
  return !dist::net::recv_all(fd, out, n, dist::net::Clock::now() + limit).has_value();
}

}  // namespace dtrain::fuzz
