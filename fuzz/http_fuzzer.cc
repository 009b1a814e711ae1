// Feeds raw bytes to `sluice serve`'s HTTP listener end to end (server/http_server.cc: the
// session's header and body reading, limits and timeouts, then the handler): an in-process
// server on 127.0.0.1, one connection per input, the input written in pieces (their size
// from the first byte, so that requests split across reads are covered), then the write
// side shut. The server must answer and close, or close, within 5 s, and each answer must be
// an HTTP/1.1 response; a crash is the sanitizers'. Aborts, saying why, otherwise.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "server/config.h"
#include "server/serve.h"

namespace {

[[noreturn]] void fail(const std::string& why) {
  std::fprintf(stderr, "http_fuzzer: %s\n", why.c_str());
  std::abort();
}

// One server for the whole run, as a real one serves many connections.
sluice::server::service& server() {
  static const std::unique_ptr<sluice::server::service> svc = [] {
    sluice::server::configure_logging("off");
    auto config = sluice::server::parse_config(R"(
listen: 127.0.0.1:0
io_threads: 1
store: memory://
limits: {header_timeout: 2s, body_timeout: 2s, max_body_bytes: 4096}
auth: {admin_tokens: [fuzz-token]}
policies:
  chat: {limit: 30/hour}
  tiny: {limit: 2/1m, algorithm: gcra}
)",
                                               "http_fuzzer.yaml");
    if (!config) fail("its config: " + config.error().message());
    auto s = std::make_unique<sluice::server::service>(*config);
    s->start();
    return s;
  }();
  return *svc;
}

int connect_to(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fail("socket failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) fail("connect failed");
  return fd;
}

// Writes what the server takes; it may close early (a bad request), which ends the writing.
void send_in_pieces(int fd, std::string_view bytes, std::size_t piece) {
  while (!bytes.empty()) {
    const std::size_t n = std::min(piece, bytes.size());
    const ssize_t w = ::send(fd, bytes.data(), n, MSG_NOSIGNAL);
    if (w <= 0) return;
    bytes.remove_prefix(static_cast<std::size_t>(w));
  }
}

// Returns everything the server sends until it closes; aborts past the deadline.
std::string read_until_closed(int fd) {
  std::string got;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) fail("the server neither answered nor closed within 5 s");
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return got;  // closed (or reset)
    got.append(buf, static_cast<std::size_t>(n));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t piece = 1 + data[0] % 97;
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  const int fd = connect_to(server().port());
  send_in_pieces(fd, bytes, piece);
  ::shutdown(fd, SHUT_WR);
  const std::string answer = read_until_closed(fd);
  ::close(fd);
  if (!answer.empty() && answer.rfind("HTTP/1.1 ", 0) != 0) {
    fail("an answer that is not an HTTP/1.1 response: " + answer.substr(0, 80));
  }
  return 0;
}
