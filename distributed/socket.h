// TCP plumbing shared by the Store and the tcp backend: an owning file descriptor, listening,
// connecting and blocking transfers with deadlines, and the text forms of addresses used in errors.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace dtrain::dist::net {

using Clock = std::chrono::steady_clock;

std::string errno_text(int err);

/// Owns a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

/// "host:port", with brackets around IPv6 literals.
std::string host_port(const std::string& host, uint16_t port);
/// Numeric "host:port" of a socket address.
std::string sockaddr_text(const sockaddr* addr, socklen_t len);
/// Splits "host:port" (or "[v6]:port"); throws ValueError naming `what` when it is malformed.
std::pair<std::string, uint16_t> split_host_port(const std::string& text, const std::string& what);

/// True when `host` resolves, and only to loopback addresses (127.0.0.0/8, ::1): other machines
/// cannot reach a server bound there. Debian maps the machine's own name to 127.0.1.1.
bool resolves_only_to_loopback(const std::string& host);

/// Milliseconds from now to `deadline` for poll(), 0 when it has passed.
int ms_until(Clock::time_point deadline);

/// True when `received` equals `secret`, in time that does not depend on where they differ (so a
/// secret cannot be guessed byte by byte from response times); the loop runs over `received`.
bool constant_time_equal(std::string_view received, std::string_view secret);

/// Small messages alternate on these sockets; Nagle would delay each by up to 40 ms.
void set_nodelay(int fd);

/// Why send_all or recv_all stopped short of n bytes. The caller words the error (each speaks of
/// its peer in its own terms); the stream may be mid-message, so the connection is unusable.
struct IoFailure {
  enum Kind {
    kClosed,   // the peer closed the connection (recv, or send, returned 0)
    kError,    // send or recv failed with errno `err` (e.g. ECONNRESET, EPIPE)
    kTimeout,  // `deadline` passed with bytes still to go
  };
  Kind kind;
  int err = 0;  // kError only
};

/// Sends exactly n bytes on a non-blocking socket before `deadline`, blocking the calling thread:
/// retries after EINTR, and on EAGAIN waits in poll() for at most the time left. MSG_NOSIGNAL: a
/// peer that has gone is an error here, not a SIGPIPE. Returns nothing once all bytes are sent.
[[nodiscard]] std::optional<IoFailure> send_all(int fd, const void* buf, size_t n,
                                                Clock::time_point deadline);
/// Receives exactly n bytes into buf, as send_all sends them.
[[nodiscard]] std::optional<IoFailure> recv_all(int fd, void* buf, size_t n,
                                                Clock::time_point deadline);

/// A non-blocking listening socket on bind_address:port (port 0: a free one, reported in
/// *bound_port). Throws ValueError naming `who` and the address, with a hint for the cause (port
/// in use, not an address of this machine, privileged port).
UniqueFd listen_tcp(const std::string& bind_address, uint16_t port, uint16_t* bound_port,
                    const std::string& who);

/// One attempt to connect (non-blocking socket, TCP_NODELAY) before `deadline`; on failure returns
/// an empty fd and sets `error`. A name that does not resolve is a failure too (it may resolve
/// later), as is a socket connected to itself (nothing listening on a port in the ephemeral range).
UniqueFd try_connect_tcp(const std::string& host, uint16_t port, Clock::time_point deadline,
                         std::string& error);

/// `bytes` random bytes from /dev/urandom as lowercase hex (tokens, connection secrets); throws
/// Error naming `what` when the device cannot be read.
std::string random_hex(size_t bytes, const std::string& what);

/// The local address this machine uses to reach host:port (a UDP connect; nothing is sent):
/// what a worker advertises to peers that reach it the same way. Throws ValueError on failure.
std::string local_address_towards(const std::string& host, uint16_t port);

}  // namespace dtrain::dist::net
