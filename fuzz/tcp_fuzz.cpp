// tcp backend frame parsing, with the fuzzer as rank 1 of a 2-rank group whose rank 0 is a real
// TcpCommunicator on loopback. Input: a mode byte, then (length-prefixed) bytes a stranger sends
// before rank 1 connects, then what rank 1 sends after a valid hello and verdict while rank 0
// runs one collective. Mode bits: 0-1 the collective (all_reduce, broadcast from rank 1, recv from
// rank 1 with tag 7, all_gather), 2 the stranger connects first, 3 rank 1 offers copies by address
// (its probe is readable, as on one host). Rank 0 may fail with a dtrain::Error, never otherwise,
// and must not take longer than its timeouts.
#include <fuzzer/FuzzedDataProvider.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "dtrain/distributed/backends/tcp/tcp_communicator.h"
#include "dtrain/distributed/shared_memory.h"
#include "dtrain/distributed/store.h"
#include "fuzz/fuzz_util.h"
#include "fuzz/net_util.h"

namespace {

using namespace dtrain;
using std::chrono::milliseconds;

constexpr char kToken[] = "fuzz-tcp-token";

/// One Store for the whole run; every input uses keys of its own prefix and removes them.
struct Rendezvous {
  dist::StoreServer server{[] {
    dist::StoreServerOptions o;
    o.token = kToken;
    return o;
  }()};
  std::shared_ptr<dist::StoreClient> client() {
    dist::StoreClientOptions o;
    o.port = server.port();
    o.token = kToken;
    o.connect_timeout = milliseconds(10'000);
    o.request_timeout = milliseconds(10'000);
    return std::make_shared<dist::StoreClient>(o);
  }
};

/// The hello rank 1 sends (the layout of Hello in tcp_communicator.cpp).
std::string hello(const std::string& secret) {
  std::string h = "dtraint1";
  const int32_t rank = 1, size = 2;
  h.append(reinterpret_cast<const char*>(&rank), 4);
  h.append(reinterpret_cast<const char*>(&size), 4);
  return h + secret;
}

/// Rank 0's side: set up, run the chosen collective, and keep what escaped.
void run_rank0(std::shared_ptr<dist::StoreClient> store, const std::string& prefix, int collective,
               std::exception_ptr& unexpected) {
  try {
    dist::TcpOptions options;
    options.key_prefix = prefix;
    options.advertise_address = "127.0.0.1";
    options.connect_timeout = milliseconds(10'000);
    options.hello_timeout = milliseconds(2'000);
    dist::TcpCommunicator comm(std::move(store), 0, 2, options);
    const dist::Timeout timeout(5'000);
    Tensor t({8});
    for (int i = 0; i < 8; ++i) t.data<float>()[i] = float(i);
    switch (collective) {
      case 0:
        comm.all_reduce(t, {dist::ReduceOp::kSum, timeout})->wait();
        break;
      case 1:
        comm.broadcast(t, {1, timeout})->wait();
        break;
      case 2:
        comm.recv(t, 1, {7, timeout})->wait();
        break;
      default: {
        Tensor out({16});
        comm.all_gather(t, out, {timeout})->wait();
      }
    }
  } catch (const Error&) {
  } catch (...) {
    unexpected = std::current_exception();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Rendezvous rendezvous;
  static const std::shared_ptr<dist::StoreClient> store = rendezvous.client();
  // Rank 0's own connection: a Store client serialises its calls, and each side blocks in get()
  // until the other has set its key.
  static const std::shared_ptr<dist::StoreClient> rank0_store = rendezvous.client();
  static const std::string host = dist::host_identity();
  static int64_t run = 0;
  FuzzedDataProvider in(data, size);
  const uint8_t mode = in.ConsumeIntegral<uint8_t>();
  const std::string stranger = in.ConsumeRandomLengthString(256);
  const std::string frames = in.ConsumeRemainingBytesAsString();
  const std::string prefix = "fuzz/" + std::to_string(run++) + "/";

  std::exception_ptr unexpected;
  std::thread rank0(run_rank0, rank0_store, prefix, mode & 3, std::ref(unexpected));
  const std::string secret = store->get(prefix + "secret");
  const auto [address_host, port] =
      dist::net::split_host_port(store->get(prefix + "addr/0"), "rank 0");
  (void)address_host;
  // Rank 0 reads this record to decide on copies by address: the probe must hold the secret.
  const std::string probe = secret;
  std::ostringstream node;
  node << (mode & 8 ? host : std::string("another-host")) << '|' << ::getpid() << '|' << std::hex
       << reinterpret_cast<uintptr_t>(probe.data());
  store->set(prefix + "node/1", node.str());
  if (mode & 4) {
    // Rank 0 reads what the stranger sent until it closes, then turns it away and closes too.
    const dist::net::UniqueFd fd = fuzz::connect_loopback(port);
    fuzz::send_some(fd.get(), stranger);
    ::shutdown(fd.get(), SHUT_WR);
    fuzz::require(fuzz::drain_until_closed(fd.get(), milliseconds(10'000)),
                  "rank 0 closes a connection that sent no valid hello");
  }
  {
    const dist::net::UniqueFd fd = fuzz::connect_loopback(port);
    fuzz::send_some(fd.get(), hello(secret));
    char verdict = 0;
    if (fuzz::read_exactly(fd.get(), &verdict, 1, milliseconds(10'000))) {
      fuzz::send_some(fd.get(), std::string(1, char(mode & 8 ? 1 : 0)));
      fuzz::send_some(fd.get(), frames);
    }
    ::shutdown(fd.get(), SHUT_WR);
    // Rank 0 closes the connection when its communicator goes, after the collective ended.
    fuzz::require(fuzz::drain_until_closed(fd.get(), milliseconds(20'000)),
                  "rank 0 finishes within its timeouts");
  }
  rank0.join();
  for (const char* key : {"secret", "node/0", "node/1", "addr/0"}) store->remove(prefix + key);
  if (unexpected) {
    try {
      std::rethrow_exception(unexpected);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fuzz: rank 0 escaped a non-dtrain exception: %s\n", e.what());
    }
    std::abort();
  }
  return 0;
}
