// Tests of the TCP Store: key-value semantics, blocking get/wait across clients, the token
// handshake, and that bad or slow peers (garbage, oversized, half-open, not reading) affect only
// their own connection. Everything binds to 127.0.0.1 with a kernel-chosen port.
#include "dtrain/distributed/store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/tensor/check.h"

namespace dtrain::dist {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

const std::string kToken = "test-token-5f2c9a";

StoreServerOptions server_options() {
  StoreServerOptions o;
  o.bind_address = "127.0.0.1";
  o.port = 0;
  o.token = kToken;
  return o;
}

StoreClientOptions client_options(uint16_t port, const std::string& token = kToken) {
  StoreClientOptions o;
  o.host = "127.0.0.1";
  o.port = port;
  o.token = token;
  o.connect_timeout = milliseconds(5'000);
  o.request_timeout = milliseconds(10'000);
  return o;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no exception>";
}

/// A plain TCP socket for speaking (or not speaking) the protocol by hand. Receives time out
/// after 5 s so that a failing test cannot hang.
class RawSocket {
 public:
  explicit RawSocket(uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~RawSocket() { ::close(fd_); }
  void send_bytes(const std::string& bytes) {
    ASSERT_EQ(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL), ssize_t(bytes.size()));
  }
  /// Everything the server sends until it closes the connection; nullopt if it stays open 5 s.
  std::optional<std::string> read_until_closed() {
    std::string got;
    char buf[4096];
    for (int i = 0; i < 10'000; ++i) {
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n > 0) {
        got.append(buf, size_t(n));
        continue;
      }
      if (n == 0 || errno == ECONNRESET) return got;
      return std::nullopt;  // timed out (EAGAIN) or another error
    }
    return std::nullopt;
  }

 private:
  int fd_;
};

/// A length-prefixed frame around hand-encoded protobuf bytes.
std::string frame(const std::string& body) {
  std::string out;
  for (int i = 0; i < 4; ++i) out.push_back(char((body.size() >> (8 * i)) & 0xFF));
  return out + body;
}
/// Protobuf field `number` with wire type 2 (length-delimited), for lengths below 128.
std::string field(int number, const std::string& bytes) {
  return std::string{char(number << 3 | 2), char(bytes.size())} + bytes;
}
std::string handshake_frame(const std::string& token) {
  // Handshake{token = 1, protocol_version = 2 (varint 1)} in StoreRequest field 1.
  return frame(field(1, field(1, token) + std::string{char(2 << 3 | 0), 1}));
}
std::string get_frame(const std::string& key) { return frame(field(3, field(1, key))); }
/// A length prefix announcing `bytes`, just inside the limit for authenticated clients.
std::string length_prefix(uint32_t bytes) {
  std::string out;
  for (int i = 0; i < 4; ++i) out.push_back(char((bytes >> (8 * i)) & 0xFF));
  return out;
}

/// Sets an environment variable for one scope and restores the previous value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    value ? ::setenv(name, value, 1) : ::unsetenv(name);
  }
  ~ScopedEnv() { old_ ? ::setenv(name_, old_->c_str(), 1) : ::unsetenv(name_); }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(StoreTest, SetGetTryGetRemoveNumKeys) {
  StoreServer server(server_options());
  StoreClient client(client_options(server.port()));
  EXPECT_EQ(client.num_keys(), 0);
  EXPECT_EQ(client.try_get("a"), std::nullopt);
  client.set("a", "1");
  client.set("b", std::string("x\0y", 3));  // values are bytes
  EXPECT_EQ(client.get("a"), "1");
  EXPECT_EQ(client.try_get("b"), std::string("x\0y", 3));
  client.set("a", "2");  // overwrite
  EXPECT_EQ(client.get("a"), "2");
  EXPECT_EQ(client.num_keys(), 2);
  EXPECT_TRUE(client.remove("a"));
  EXPECT_FALSE(client.remove("a"));
  EXPECT_EQ(client.try_get("a"), std::nullopt);
  EXPECT_EQ(client.num_keys(), 1);
  client.set("empty", "");
  EXPECT_EQ(client.try_get("empty"), "");
  EXPECT_EQ(client.address(), "127.0.0.1:" + std::to_string(server.port()));
}

TEST(StoreTest, AddCountsAndRefusesNonIntegers) {
  StoreServer server(server_options());
  StoreClient client(client_options(server.port()));
  EXPECT_EQ(client.add("n", 5), 5);  // missing counts as 0
  EXPECT_EQ(client.add("n", -7), -2);
  EXPECT_EQ(client.get("n"), "-2");
  client.set("s", "abc");
  const std::string msg = message_of([&] { client.add("s", 1); });
  EXPECT_NE(msg.find("add('s', 1)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not an integer"), std::string::npos) << msg;
  EXPECT_THROW(client.add("s", 1), ValueError);
  EXPECT_EQ(client.add("n", 2), 0) << "the connection stays usable after a refused request";
}

TEST(StoreTest, CompareSetSemantics) {
  StoreServer server(server_options());
  StoreClient client(client_options(server.port()));
  EXPECT_EQ(client.compare_set("k", "", "first"), "first");   // "" matches a missing key
  EXPECT_EQ(client.compare_set("k", "", "second"), "first");  // no match: current value
  EXPECT_EQ(client.compare_set("k", "first", "third"), "third");
  EXPECT_EQ(client.get("k"), "third");
  EXPECT_EQ(client.compare_set("missing", "x", "y"), "");  // no match, still missing
  EXPECT_EQ(client.try_get("missing"), std::nullopt);
}

TEST(StoreTest, GetWaitsUntilAnotherClientSetsTheKey) {
  StoreServer server(server_options());
  StoreClient getter(client_options(server.port()));
  StoreClient setter(client_options(server.port()));
  std::string got;
  std::thread t([&] { got = getter.get("late"); });  // bounded by request_timeout (10 s)
  setter.set("late", "value");
  t.join();
  EXPECT_EQ(got, "value");
}

TEST(StoreTest, WaitReturnsOnceEveryKeyExists) {
  StoreServer server(server_options());
  StoreClient waiter(client_options(server.port()));
  StoreClient setter(client_options(server.port()));
  std::atomic<bool> done{false};
  std::thread t([&] {
    waiter.wait({"a", "b"}, milliseconds(10'000));
    done = true;
  });
  setter.set("a", "1");
  setter.add("b", 1);
  t.join();
  EXPECT_TRUE(done);
  waiter.wait({}, milliseconds(0));  // nothing to wait for
}

TEST(StoreTest, WaitTimeoutListsMissingKeys) {
  StoreServer server(server_options());
  StoreClient client(client_options(server.port()));
  client.set("present", "1");
  const auto start = Clock::now();
  std::string msg;
  try {
    client.wait({"present", "gone1", "gone2"}, milliseconds(200));
    ADD_FAILURE() << "wait() returned";
  } catch (const TimeoutError& e) {
    msg = e.what();
  }
  EXPECT_GE(Clock::now() - start, milliseconds(190));
  EXPECT_NE(msg.find("missing keys: 'gone1', 'gone2'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("store 127.0.0.1:" + std::to_string(server.port())), std::string::npos);
  client.set("gone1", "x");  // still usable afterwards
  EXPECT_EQ(client.get("gone1"), "x");
}

TEST(StoreTest, GetTimesOutNamingTheKey) {
  StoreServer server(server_options());
  auto options = client_options(server.port());
  options.request_timeout = milliseconds(150);
  StoreClient client(options);
  std::string msg;
  try {
    client.get("never");
    ADD_FAILURE() << "get() returned";
  } catch (const TimeoutError& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("get('never')"), std::string::npos) << msg;
}

TEST(StoreTest, LargeValuesAndLimits) {
  StoreServer server(server_options());
  StoreClient client(client_options(server.port()));
  std::string big(3 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = char(i * 7919 % 251);
  client.set("big", big);
  EXPECT_EQ(client.get("big"), big);
  const std::string too_big(kStoreMaxMessageBytes + 1, 'x');
  const std::string msg = message_of([&] { client.set("huge", too_big); });
  EXPECT_NE(msg.find("set('huge')"), std::string::npos) << msg;
  EXPECT_NE(msg.find("limit"), std::string::npos) << msg;
  EXPECT_THROW(client.set("bad\xff", "v"), ValueError);  // keys must be UTF-8
  EXPECT_EQ(client.num_keys(), 1) << "refused requests leave the connection usable";
}

TEST(StoreSecurity, WrongTokenIsRefusedAndLoggedWithoutTheToken) {
  StoreServer server(server_options());
  testing::internal::CaptureStderr();
  const std::string msg =
      message_of([&] { StoreClient bad(client_options(server.port(), "not-the-token")); });
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_NE(msg.find("unauthorized"), std::string::npos) << msg;
  EXPECT_NE(msg.find("DTRAIN_STORE_TOKEN"), std::string::npos) << msg;
  EXPECT_EQ(server.rejected_connections(), 1);
  EXPECT_NE(log.find("store " + server.address() + ": refused connection from 127.0.0.1:"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("wrong token"), std::string::npos) << log;
  EXPECT_EQ(log.find("not-the-token"), std::string::npos) << "the token must never be printed";
  EXPECT_EQ(log.find(kToken), std::string::npos) << "the token must never be printed";

  StoreClient good(client_options(server.port()));
  good.set("k", "v");
  EXPECT_EQ(good.get("k"), "v");
}

/// This process's stderr goes into a pipe for one scope, so a test can wait for a line to come.
class StderrPipe {
 public:
  StderrPipe() {
    EXPECT_EQ(::pipe2(fds_, O_CLOEXEC | O_NONBLOCK), 0);
    std::fflush(stderr);
    saved_ = ::dup(2);
    ::dup2(fds_[1], 2);
  }
  ~StderrPipe() {
    std::fflush(stderr);
    ::dup2(saved_, 2);
    for (int fd : {saved_, fds_[0], fds_[1]}) ::close(fd);
  }
  /// Reads until `text` has arrived or `limit` has passed; true when it arrived.
  bool read_until(const std::string& text, milliseconds limit) {
    const auto deadline = Clock::now() + limit;
    while (got_.find(text) == std::string::npos) {
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fds_[0], POLLIN, 0};
      if (::poll(&p, 1, int(left.count())) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::read(fds_[0], buf, sizeof buf);
      if (n > 0) got_.append(buf, size_t(n));
    }
    return true;
  }
  const std::string& text() const { return got_; }

 private:
  int fds_[2] = {-1, -1};
  int saved_ = -1;
  std::string got_;
};

TEST(StoreSecurity, RefusalsBeyondTheBurstAreSummarisedOncePerPeriod) {
  StoreServerOptions o = server_options();
  o.log_burst = 3;
  o.log_summary_period = milliseconds(2'000);
  StoreServer server(o);
  StderrPipe log;
  for (int i = 0; i < 10; ++i) {
    RawSocket raw(server.port());
    raw.send_bytes(handshake_frame("not-the-token"));
    EXPECT_TRUE(raw.read_until_closed().has_value());
  }
  EXPECT_EQ(server.rejected_connections(), 10);
  // Nothing else happens now: the server must wake up by itself to print the summary.
  ASSERT_TRUE(
      log.read_until("not printed; the latest: refused connection from", milliseconds(10'000)))
      << log.text();
  size_t full = 0;
  for (size_t at = 0; (at = log.text().find(": refused connection from", at)) != std::string::npos;
       ++at) {
    ++full;
  }
  EXPECT_EQ(full, 4u) << "3 lines in full and the latest in the summary:\n" << log.text();
  EXPECT_NE(log.text().find("7 more connection message(s) in the last 2 s not printed"),
            std::string::npos)
      << log.text();
}

TEST(StoreSecurity, OnlyTheWholeTokenIsAccepted) {
  StoreServer server(server_options());
  // A comparison that stops at the shorter string would let each of these in.
  const std::vector<std::string> near_misses = {kToken.substr(0, 1),
                                                kToken.substr(0, kToken.size() - 1), kToken + "x",
                                                kToken + kToken.back()};
  int64_t refused = 0;
  for (const std::string& token : near_misses) {
    SCOPED_TRACE("a token of " + std::to_string(token.size()) + " characters (the right one has " +
                 std::to_string(kToken.size()) + ")");
    testing::internal::CaptureStderr();
    const std::string msg =
        message_of([&] { StoreClient bad(client_options(server.port(), token)); });
    const std::string log = testing::internal::GetCapturedStderr();
    EXPECT_NE(msg.find("unauthorized"), std::string::npos) << msg;
    EXPECT_NE(msg.find("DTRAIN_STORE_TOKEN"), std::string::npos) << msg;
    EXPECT_NE(log.find("wrong token"), std::string::npos) << log;
    EXPECT_EQ(server.rejected_connections(), ++refused);
  }
  StoreClient good(client_options(server.port()));
  good.set("k", "v");
  EXPECT_EQ(good.get("k"), "v");
  EXPECT_EQ(server.rejected_connections(), refused);
}

TEST(StoreSecurity, RequestWithoutHandshakeIsRefused) {
  StoreServer server(server_options());
  RawSocket raw(server.port());
  raw.send_bytes(get_frame("k"));
  const auto answer = raw.read_until_closed();
  ASSERT_TRUE(answer.has_value()) << "the server kept the connection open";
  EXPECT_NE(answer->find("unauthorized"), std::string::npos);
  EXPECT_EQ(server.rejected_connections(), 1);
}

TEST(StoreSecurity, LargeFrameBeforeTheHandshakeIsClosedOnItsLengthPrefix) {
  StoreServer server(server_options());
  testing::internal::CaptureStderr();
  RawSocket raw(server.port());
  // Within the limit for authenticated clients, far beyond what a handshake needs: the server
  // must not wait for (and buffer) the body.
  raw.send_bytes(length_prefix(kStoreMaxMessageBytes - 1) + std::string(1024, 'x'));
  const auto answer = raw.read_until_closed();
  const std::string log = testing::internal::GetCapturedStderr();
  ASSERT_TRUE(answer.has_value()) << "the server kept the connection open, buffering its body";
  EXPECT_NE(log.find("before the handshake"), std::string::npos) << log;
  StoreClient client(client_options(server.port()));
  client.set("k", "v");
  EXPECT_EQ(client.get("k"), "v");
}

TEST(StoreSecurity, ConnectionWithoutAHandshakeIsClosedAfterTheHandshakeTimeout) {
  auto options = server_options();
  options.handshake_timeout = milliseconds(200);
  StoreServer server(options);
  testing::internal::CaptureStderr();
  RawSocket idle(server.port());
  const auto answer = idle.read_until_closed();  // gives up after 5 s
  const std::string log = testing::internal::GetCapturedStderr();
  ASSERT_TRUE(answer.has_value()) << "the server kept an idle unauthenticated connection open";
  EXPECT_NE(log.find("no handshake within 200 ms"), std::string::npos) << log;
}

TEST(StoreSecurity, IdleAndOversizedUnauthenticatedSocketsDoNotLockOutTheTokenHolder) {
  auto options = server_options();
  options.max_clients = 2;
  options.max_pending_handshakes = 4;
  options.handshake_timeout = milliseconds(60'000);  // the deadline must not be what lets it in
  StoreServer server(options);
  testing::internal::CaptureStderr();
  std::vector<std::unique_ptr<RawSocket>> idle;
  for (int i = 0; i < 16; ++i) idle.push_back(std::make_unique<RawSocket>(server.port()));
  RawSocket huge(server.port());
  huge.send_bytes(length_prefix(kStoreMaxMessageBytes - 1));
  StoreClient client(client_options(server.port()));
  client.set("k", "v");
  EXPECT_EQ(client.get("k"), "v");
  StoreClient second(client_options(server.port()));
  EXPECT_EQ(second.get("k"), "v");
  // The oldest idle socket made room for newer connections; the huge frame was refused.
  EXPECT_TRUE(idle.front()->read_until_closed().has_value());
  EXPECT_TRUE(huge.read_until_closed().has_value());
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("max_pending_handshakes"), std::string::npos) << log;
  EXPECT_EQ(server.rejected_connections(), 0);
}

TEST(StoreSecurity, MaxClientsCountsOnlyAuthenticatedConnections) {
  auto options = server_options();
  options.max_clients = 1;
  options.handshake_timeout = milliseconds(60'000);
  StoreServer server(options);
  RawSocket idle_a(server.port()), idle_b(server.port()), idle_c(server.port());
  StoreClient first(client_options(server.port()));
  first.set("k", "v");
  testing::internal::CaptureStderr();
  const std::string msg = message_of([&] { StoreClient second(client_options(server.port())); });
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_NE(msg.find("too many clients (max_clients 1)"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("DTRAIN_STORE_TOKEN"), std::string::npos) << "the token was right: " << msg;
  EXPECT_NE(log.find("too many clients"), std::string::npos) << log;
  EXPECT_EQ(first.get("k"), "v");
}

TEST(StoreSecurity, TokenComesFromTheEnvironmentAndIsRequired) {
  {
    ScopedEnv env("DTRAIN_STORE_TOKEN", nullptr);
    auto options = server_options();
    options.token.clear();
    const std::string msg = message_of([&] { StoreServer server(options); });
    EXPECT_NE(msg.find("DTRAIN_STORE_TOKEN"), std::string::npos) << msg;
  }
  ScopedEnv env("DTRAIN_STORE_TOKEN", "from-env");
  auto options = server_options();
  options.token.clear();
  StoreServer server(options);
  StoreClient client(client_options(server.port(), ""));
  client.set("k", "v");
  EXPECT_THROW(StoreClient(client_options(server.port(), kToken)), ValueError);
}

TEST(StoreRobustness, GarbageBytesCloseOnlyThatConnection) {
  StoreServer server(server_options());
  StoreClient client(client_options(server.port()));
  client.set("k", "v");
  testing::internal::CaptureStderr();
  RawSocket raw(server.port());
  raw.send_bytes(frame(std::string(16, '\xff')));  // a valid length, an unparsable body
  const auto answer = raw.read_until_closed();
  const std::string log = testing::internal::GetCapturedStderr();
  ASSERT_TRUE(answer.has_value()) << "the server kept the connection open";
  EXPECT_TRUE(answer->empty());
  EXPECT_NE(log.find("malformed"), std::string::npos) << log;
  EXPECT_EQ(client.get("k"), "v");
  StoreClient another(client_options(server.port()));
  EXPECT_EQ(another.get("k"), "v");
}

TEST(StoreRobustness, OversizedLengthPrefixClosesThatConnection) {
  StoreServer server(server_options());
  testing::internal::CaptureStderr();
  RawSocket raw(server.port());
  raw.send_bytes(handshake_frame(kToken));
  raw.send_bytes(std::string("\xff\xff\xff\xff", 4));  // 4 GiB announced
  const auto answer = raw.read_until_closed();
  const std::string log = testing::internal::GetCapturedStderr();
  ASSERT_TRUE(answer.has_value()) << "the server kept the connection open";
  EXPECT_NE(log.find("exceeds the limit"), std::string::npos) << log;
  EXPECT_NE(log.find("from 127.0.0.1:"), std::string::npos) << log;
  StoreClient client(client_options(server.port()));
  client.set("k", "v");
  EXPECT_EQ(client.get("k"), "v");
}

TEST(StoreRobustness, HalfOpenAndSlowPeersDoNotBlockOthers) {
  StoreServer server(server_options());
  StoreClient client(client_options(server.port()));
  client.set("big", std::string(1 << 20, 'b'));
  RawSocket silent(server.port());  // connects and never sends
  RawSocket partial(server.port());
  partial.send_bytes(std::string("\x40\x00", 2));  // half a length prefix
  RawSocket half_message(server.port());
  half_message.send_bytes(handshake_frame(kToken) + std::string("\x10\x00\x00\x00\x1a", 5));
  // Asks for 1 MiB forty times and never reads: the server's send buffer for it stays full.
  RawSocket not_reading(server.port());
  std::string requests = handshake_frame(kToken);
  for (int i = 0; i < 40; ++i) requests += get_frame("big");
  not_reading.send_bytes(requests);

  StoreClient other(client_options(server.port()));
  other.set("k", "v");
  EXPECT_EQ(client.get("k"), "v");
  EXPECT_EQ(other.get("big").size(), size_t(1) << 20);
  EXPECT_EQ(other.num_keys(), 2);
}

TEST(StoreRobustness, ParkedGetDoesNotBlockOtherClients) {
  StoreServer server(server_options());
  StoreClient waiter(client_options(server.port()));
  StoreClient other(client_options(server.port()));
  std::string got;
  std::thread t([&] { got = waiter.get("release"); });
  for (int i = 0; i < 20; ++i) other.set(std::string("k") + std::to_string(i), "v");
  EXPECT_EQ(other.get("k3"), "v");
  other.set("release", "now");
  t.join();
  EXPECT_EQ(got, "now");
}

TEST(StoreConcurrency, HundredClientsAddToOneCounter) {
  StoreServer server(server_options());
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < 100; ++i) {
    threads.emplace_back([&] {
      try {
        StoreClient client(client_options(server.port()));
        for (int j = 0; j < 10; ++j) client.add("counter", 1);
      } catch (const std::exception& e) {
        ++failures;
        ADD_FAILURE() << e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures, 0);
  StoreClient client(client_options(server.port()));
  EXPECT_EQ(client.get("counter"), "1000");
}

TEST(StoreServerTest, PortZeroPicksAFreePort) {
  StoreServer a(server_options());
  StoreServer b(server_options());
  EXPECT_NE(a.port(), 0);
  EXPECT_NE(a.port(), b.port());
  EXPECT_EQ(a.address(), "127.0.0.1:" + std::to_string(a.port()));
}

TEST(StoreServerTest, BindingAPortInUseNamesHostAndPort) {
  StoreServer first(server_options());
  auto options = server_options();
  options.port = first.port();
  const std::string msg = message_of([&] { StoreServer second(options); });
  EXPECT_NE(msg.find("127.0.0.1:" + std::to_string(first.port())), std::string::npos) << msg;
  EXPECT_NE(msg.find("already in use"), std::string::npos) << msg;
}

TEST(StoreClientTest, ServerGoneMakesTheNextCallSaySo) {
  auto server = std::make_unique<StoreServer>(server_options());
  const std::string address = server->address();
  StoreClient client(client_options(server->port()));
  client.set("k", "v");
  server.reset();
  const std::string msg = message_of([&] { client.get("k"); });
  EXPECT_NE(msg.find("store " + address + ": get('k')"), std::string::npos) << msg;
  EXPECT_NE(msg.find("closed"), std::string::npos) << msg;
  const std::string again = message_of([&] { client.set("k", "v"); });
  EXPECT_NE(again.find("closed"), std::string::npos) << again;
}

TEST(StoreClientTest, ConnectTimeoutNamesTheAddress) {
  // A bound socket that does not listen: connections to its port are refused, and no other
  // process can take the port during the test.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const uint16_t port = ntohs(addr.sin_port);
  auto options = client_options(port);
  options.connect_timeout = milliseconds(300);
  const auto start = Clock::now();
  std::string msg;
  try {
    StoreClient client(options);
    ADD_FAILURE() << "connected to a port nobody listens on";
  } catch (const TimeoutError& e) {
    msg = e.what();
  }
  const auto elapsed = Clock::now() - start;
  ::close(fd);
  EXPECT_GE(elapsed, milliseconds(290));
  EXPECT_LT(elapsed, milliseconds(2'000));
  EXPECT_NE(msg.find("store 127.0.0.1:" + std::to_string(port)), std::string::npos) << msg;
  EXPECT_NE(msg.find("refused"), std::string::npos) << msg;
}

TEST(StoreClientTest, HandshakeClosedBeforeAnAnswerIsRetried) {
  // A stand-in server: it closes the first connection unanswered (as the store does to its oldest
  // pending handshake when too many are waiting) and accepts the handshake on the second.
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener, 4), 0);
  socklen_t len = sizeof addr;
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  timeval tv{5, 0};  // accept() and recv() give up after 5 s, so a failing test cannot hang
  ::setsockopt(listener, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::atomic<int> served{0};
  std::thread fake([&] {
    ::close(::accept(listener, nullptr, nullptr));
    const int fd = ::accept(listener, nullptr, nullptr);
    if (fd < 0) return;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char header[4];
    if (::recv(fd, header, 4, MSG_WAITALL) == 4) {
      std::string body(size_t(uint8_t(header[0])), '\0');
      if (::recv(fd, body.data(), body.size(), MSG_WAITALL) == ssize_t(body.size())) {
        const std::string ok = frame(std::string{char(1 << 3 | 0), 1});  // StoreResponse{ok}
        if (::send(fd, ok.data(), ok.size(), MSG_NOSIGNAL) == ssize_t(ok.size())) ++served;
      }
    }
    char rest;
    while (::recv(fd, &rest, 1, 0) > 0) {  // until the client closes
    }
    ::close(fd);
  });
  std::string error;
  try {
    StoreClient client(client_options(ntohs(addr.sin_port)));
  } catch (const std::exception& e) {
    error = e.what();
  }
  fake.join();
  ::close(listener);
  EXPECT_EQ(error, "");
  EXPECT_EQ(served, 1);
}

TEST(StoreClientTest, ConnectRetriesUntilTheServerStarts) {
  // Reserve a free port, release it, then start the server on it after the client is retrying.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const uint16_t port = ntohs(addr.sin_port);
  std::string got;
  std::string error;
  std::thread t([&] {
    try {
      StoreClient client(client_options(port));  // retries for up to 5 s
      got = client.get("k");
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  ::close(fd);
  auto options = server_options();
  options.port = port;
  StoreServer server(options);
  StoreClient setter(client_options(port));
  setter.set("k", "hello");
  t.join();
  EXPECT_EQ(error, "");
  EXPECT_EQ(got, "hello");
}

// A job's Store is sized from its ranks: beyond the default 1,024 connections (about 500 ranks
// with two watchdog connections each) the clients of a bigger job are all served, and the
// server raised its open-file limit for them.
TEST(StoreCapacity, AJobOfTwoThousandRanksIsServedBeyondTheDefaultConnectionLimit) {
  EXPECT_EQ(store_max_clients(1), 1024);
  EXPECT_EQ(store_max_clients(2000), 8064);
  EXPECT_GE(store_max_clients(100000), 400000);
  rlimit files{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &files), 0);
  constexpr int kClients = 1100;
  if (files.rlim_max != RLIM_INFINITY && files.rlim_max < 2 * kClients + 256) {
    GTEST_SKIP() << "the hard open-file limit " << files.rlim_max << " is below the "
                 << 2 * kClients + 256 << " descriptors this test needs";
  }
  StoreServerOptions so = server_options();
  so.max_clients = store_max_clients(2000);
  StoreServer server(so);
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &files), 0);
  EXPECT_TRUE(files.rlim_cur == RLIM_INFINITY ||
              files.rlim_cur >= static_cast<rlim_t>(std::min<int64_t>(
                                    so.max_clients + so.max_pending_handshakes + 64,
                                    files.rlim_max == RLIM_INFINITY ? INT64_MAX : files.rlim_max)));
  std::vector<std::unique_ptr<StoreClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<StoreClient>(client_options(server.port())));
    clients.back()->set("rank/" + std::to_string(i), "here");
  }
  EXPECT_EQ(clients.front()->get("rank/" + std::to_string(kClients - 1)), "here");
}

}  // namespace
}  // namespace dtrain::dist
