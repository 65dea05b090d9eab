// Store server frame handling, driven as a stranger or a client would: each input is sent on a
// fresh loopback connection to a fresh StoreServer. The first byte picks the phase: even, the rest
// is the first thing the server reads (before authentication: handshake frames, wrong tokens,
// oversized lengths); odd, a valid handshake goes first and the rest are an authenticated client's
// frames. Afterwards the server must close that connection once it has read everything, and must
// still serve a real client.
#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "dtrain/distributed/store.h"
#include "fuzz/fuzz_util.h"
#include "fuzz/net_util.h"

namespace {

constexpr char kToken[] = "fuzz-store-token";

/// The length-prefixed handshake a StoreClient sends: StoreRequest{handshake: {token, version 1}}
/// in protobuf wire format (distributed/store.proto), spelt out so that the target does not
/// depend on the generated code.
std::string handshake_frame() {
  std::string handshake = "\x0a";  // field 1 (token), length-delimited
  handshake += char(sizeof kToken - 1);
  handshake += kToken;
  handshake += "\x10\x01";       // field 2 (protocol_version), varint 1
  std::string request = "\x0a";  // field 1 (handshake), length-delimited
  request += char(handshake.size());
  request += handshake;
  const uint32_t len = uint32_t(request.size());
  std::string frame;
  for (int i = 0; i < 4; ++i) frame += char(len >> (8 * i) & 0xFF);
  return frame + request;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dtrain;
  using std::chrono::milliseconds;
  if (size == 0) return 0;
  dist::StoreServerOptions options;
  options.token = kToken;
  dist::StoreServer server(options);
  {
    const dist::net::UniqueFd fd = fuzz::connect_loopback(server.port());
    if (data[0] & 1) {
      fuzz::send_some(fd.get(), handshake_frame());
      // The answer: StoreResponse{ok: true} is 2 bytes behind its 4-byte length.
      char answer[6];
      fuzz::require(fuzz::read_exactly(fd.get(), answer, sizeof answer, milliseconds(10'000)) &&
                        answer[0] == 2 && answer[4] == 0x08 && answer[5] == 1,
                    "the server accepts a valid handshake");
    }
    fuzz::send_some(fd.get(), std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
    // No more requests: the server answers what it has and then closes this connection, even
    // with a request parked on a key that never comes.
    ::shutdown(fd.get(), SHUT_WR);
    fuzz::require(fuzz::drain_until_closed(fd.get(), milliseconds(10'000)),
                  "the server closes a connection whose client has finished sending");
  }
  dist::StoreClientOptions client_options;
  client_options.port = server.port();
  client_options.token = kToken;
  client_options.connect_timeout = milliseconds(10'000);
  client_options.request_timeout = milliseconds(10'000);
  dist::StoreClient client(client_options);
  client.set("after-fuzz", "still serving");
  fuzz::require(client.get("after-fuzz") == "still serving",
                "the server serves a real client after any input");
  return 0;
}
