// Loopback plumbing for the fuzz targets that act as a Store client or a tcp peer: blocking
// connect, send, and reading until the other side closes, each bounded in time.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "distributed/socket.h"
#include "fuzz/fuzz_util.h"

namespace dtrain::fuzz {

/// A blocking connection to 127.0.0.1:port; aborts when there is none (the server is in this
/// process, so that is a harness failure, not a finding).
inline dist::net::UniqueFd connect_loopback(uint16_t port) {
  dist::net::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  require(fd && ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0,
          "connect to the loopback server");
  return fd;
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
