// Store: the control plane. A TCP key-value server (hosted by the launcher or rank 0) and its
// client, for rendezvous, exchanging NCCL ids and publishing progress for the watchdog. Messages
// are length-prefixed Protocol Buffers (distributed/store.proto); every connection starts with a
// handshake carrying the shared token, and a client without the right token is dropped.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace dtrain::dist {

/// Messages larger than this are refused (and the connection closed) by both sides.
inline constexpr size_t kStoreMaxMessageBytes = 64 << 20;
/// Before its handshake is accepted a connection may send no larger message (a token and a
/// version need far less), so strangers cannot make the server buffer kStoreMaxMessageBytes.
inline constexpr size_t kStoreMaxHandshakeBytes = 4 << 10;

/// Connections a Store serving `world_size` ranks needs at once: each rank's watchdog holds two,
/// a tcp rendezvous one more, every launcher one; with room to spare, and never below the default.
int store_max_clients(int64_t world_size);

struct StoreServerOptions {
  std::string bind_address = "127.0.0.1";
  uint16_t port = 0;  // 0: pick a free port; port() reports it
  std::string token;  // required from clients; from DTRAIN_STORE_TOKEN when empty
  /// Authenticated connections at once; a handshake beyond it is refused ("too many clients").
  /// The server raises its process's open-file limit towards what this needs, and warns when
  /// the hard limit is lower. Jobs size it with store_max_clients().
  int max_clients = 1024;
  /// Connections still owing their handshake, counted apart from max_clients. When full, the
  /// oldest of them is closed to make room: a client sends its handshake as soon as it connects,
  /// so the oldest is the likeliest to be idle, and a flood of idle sockets cannot keep a client
  /// with the token out. Together with kStoreMaxHandshakeBytes this bounds what strangers make the
  /// server buffer (64 x 4 KiB at the defaults).
  int max_pending_handshakes = 64;
  /// A connection that has not completed its handshake by then is closed.
  std::chrono::milliseconds handshake_timeout{5'000};
  /// Messages about single connections (refusals, closes, accept pauses) go to stderr in full up
  /// to this many; beyond it they are counted, and one summary line per log_summary_period says
  /// how many there were. After a period without any, they are printed in full again.
  int log_burst = 20;
  std::chrono::milliseconds log_summary_period{10'000};
};

/// Serves on a background thread until destroyed. Malformed input, oversized messages, wrong
/// tokens, half-open connections and slow clients affect only their own connection.
class StoreServer {
 public:
  explicit StoreServer(const StoreServerOptions& options);
  ~StoreServer();
  StoreServer(const StoreServer&) = delete;
  StoreServer& operator=(const StoreServer&) = delete;
  uint16_t port() const;
  /// "host:port" as clients should dial it (the host name when bound to 0.0.0.0 or ::).
  std::string address() const;
  /// Connections refused for a wrong or missing token so far (they are also logged to stderr).
  int64_t rejected_connections() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct StoreClientOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string token;  // from DTRAIN_STORE_TOKEN when empty
  std::chrono::milliseconds connect_timeout{30'000};
  std::chrono::milliseconds request_timeout{300'000};
};

/// One connection; calls are serialised (thread-safe). Connecting retries, until connect_timeout,
/// both a server that is not up yet and one that closes the connection before answering the
/// handshake (it may have dropped it among many pending ones); a refused handshake is final. Every
/// error names host:port and the operation (e.g. "store 127.0.0.1:29500: get('x'): connection
/// closed by the server"). Throws TimeoutError for timeouts, ValueError for requests the server or
/// client refuses (wrong token, add to a non-integer, a message over kStoreMaxMessageBytes, a key
/// that is not UTF-8), and Error when the connection fails; after a connection failure or a
/// timed-out answer every later call throws too (no reconnect: a restarted server has lost the
/// keys).
class StoreClient {
 public:
  explicit StoreClient(const StoreClientOptions& options);
  ~StoreClient();
  StoreClient(const StoreClient&) = delete;
  StoreClient& operator=(const StoreClient&) = delete;

  void set(const std::string& key, const std::string& value);
  /// Waits (up to the request timeout) for the key to exist, then returns its value.
  std::string get(const std::string& key);
  /// The value, or nullopt at once when the key does not exist.
  std::optional<std::string> try_get(const std::string& key);
  /// Blocks until every key exists; throws TimeoutError listing the missing keys after `timeout`.
  void wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout);
  /// Atomically adds `delta` to the integer at key (missing: 0) and returns the new value.
  int64_t add(const std::string& key, int64_t delta);
  /// Sets key to `desired` if its current value is `expected` ("" matches a missing key); returns
  /// the value after the call.
  std::string compare_set(const std::string& key, const std::string& expected,
                          const std::string& desired);
  /// True when the key existed.
  bool remove(const std::string& key);
  int64_t num_keys();
  std::string address() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dtrain::dist
