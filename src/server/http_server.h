// The HTTP/1.1 listener and its sessions: reading requests with timeouts and limits, handing
// them to a request_handler, writing the responses, keep-alive, the connection cap and the
// graceful drain.
//
// Threads: one io_context per I/O thread (docs/DESIGN.md, "The server and the CLI"). The
// acceptor runs on the first; each accepted connection goes round-robin to one io_context
// and stays there, so a session's handlers never run concurrently and need no strand, and
// no lock is shared by connections on different threads. A decision that completes on the
// store's I/O thread is handed back to the session's io_context before anything is written.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "server/config.h"

namespace sluice::server {

class metrics;
class request_handler;

struct http_server_options {
  // host:port to listen on; port 0 picks a free one. `[::1]:8080` for IPv6; an empty host
  // means every IPv4 address.
  std::string listen = "127.0.0.1:8080";
  // I/O threads, one io_context each; 0: one per core.
  std::size_t io_threads = 0;
  // Connections open at once. One more is accepted, answered `503` at once and closed, so
  // a client over the cap hears so instead of waiting in the kernel's backlog.
  std::size_t max_connections = 10000;
  // Larger bodies get 413 (and the connection is closed: the body is not read).
  std::size_t max_body_bytes = 16 * 1024;
  // Larger request headers get 431.
  std::size_t max_header_bytes = 16 * 1024;
  // From a new connection, or from the first byte of a request, to its complete header.
  std::chrono::milliseconds header_timeout{5000};
  // From the header to the complete body; also the deadline of writing a response.
  std::chrono::milliseconds body_timeout{5000};
  // A kept-alive connection may wait this long for its next request.
  std::chrono::milliseconds idle_timeout{60000};
  // On shutdown, how long requests in flight may take before their connections are closed.
  std::chrono::milliseconds drain_timeout{10000};
  // HTTPS when `tls.cert` is set: the certificate chain and key (PEM files), and with
  // `tls.client_ca` clients must present a certificate that CA signed. TLS 1.2 or later.
  tls_files tls;
  // Log one line per request (spdlog, info).
  bool access_log = false;
  // SIGTERM and SIGINT start the drain; a second one closes every connection at once.
  bool handle_signals = false;
  // Called on an I/O thread when the drain begins (`now` false: from `shutdown` or a signal),
  // and when the connections still open are closed at once (`now` true: a second signal, or
  // the drain's end): `sluice serve` stops its gRPC listener with it. Must not block.
  std::function<void(bool now)> on_shutdown;
  // With `handle_signals`, SIGHUP calls this (on an I/O thread; it must not block for long):
  // `sluice serve` reloads its Envoy configuration. Empty: SIGHUP is not handled.
  std::function<void()> on_reload;
};

// Returns the server options of `config`.
http_server_options server_options(const server_config& config);

// Thread-safe: `shutdown` may be called from any thread, any number of times; the other
// members from the thread that owns the server.
class http_server {
 public:
  // Binds and listens; throws std::runtime_error naming the address and the problem. The
  // handler and the metrics must outlive the server.
  http_server(http_server_options options, const request_handler& handler, metrics& m);
  // Shuts down (closing every connection at once if the server is still running) and waits.
  ~http_server();
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  // Returns the address it listens on, with the real port: "127.0.0.1:41234", "[::1]:8080".
  std::string local_address() const;
  std::uint16_t port() const;
  // Starts the I/O threads and accepting. Call once.
  void start();
  // Stops accepting; closes idle connections; lets requests in flight finish (their
  // responses say `Connection: close`) for up to `drain_timeout`, then closes the rest.
  void shutdown();
  // Returns when the server has stopped: after `shutdown` (or a signal) and the drain. The
  // I/O threads are joined; the io_contexts live on until the destructor, so completions
  // that still arrive (from a store) are queued and dropped, never run.
  void wait();

  struct impl;  // in http_server.cc, where the sessions use it

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace sluice::server
