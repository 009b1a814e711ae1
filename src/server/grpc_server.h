// `sluice serve`'s gRPC listener: Envoy's rate limit service (RLS v3,
// envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit) and the standard health
// service (grpc.health.v1.Health), on gRPC's callback API. The transport only: what a request
// decides is an `rls_handler`'s (docs/DESIGN.md, "The server and the CLI").
//
// Threads: gRPC runs the calls on its own threads, and a handler answers when it likes, from
// any thread, so a decision waiting on Redis holds no gRPC thread. Every call is answered
// exactly once: by the handler, or CANCELLED as soon as the client gives up or the drain ends,
// or INTERNAL when the handler drops it unanswered; so neither a client nor the shutdown can
// wait forever on a handler.
//
//   my_handler h;  // an rls_handler
//   grpc_server s({.listen = "127.0.0.1:0"}, h);
//   if (auto ok = s.start(); !ok) ...;   // listening on 127.0.0.1:<s.port()>
//   s.shutdown();                         // from any thread: stop accepting, drain
//   s.wait();
#pragma once

#include <grpcpp/support/status.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "envoy/service/ratelimit/v3/rls.pb.h"
#include "sluice/error.h"

namespace sluice::server {

namespace rls = envoy::service::ratelimit::v3;

// The answer to one ShouldRateLimit call. Calling it sends `*response` when the status is OK,
// or the status alone (a gRPC error; the response is dropped) otherwise. Only the first call
// counts, from any thread; later ones do nothing. When every copy is destroyed uncalled, the
// call is answered INTERNAL ("the rate limit handler dropped the call unanswered").
using rls_done = std::function<void(grpc::Status)>;

// Answers ShouldRateLimit calls: the decision side of Envoy's rate limit service.
// Implementations are thread-safe: calls arrive on several gRPC threads at once.
class rls_handler {
 public:
  virtual ~rls_handler() = default;

  // Fills `*response` for `request` and calls `done` once, now or later from any thread (a
  // store's completion, say). Runs on a gRPC thread, which it must not block, and must not
  // throw (an exception is answered INTERNAL).
  //
  // Ownership: `request` and `*response` belong to the call, and stay valid (and untouched by
  // gRPC) until `done` has been called and destroyed, even when the call was cancelled
  // meanwhile (the client's deadline, or the server's drain): `done` then sends nothing.
  // Write `*response` only before calling `done`; it is serialized by that call.
  virtual void should_rate_limit(const rls::RateLimitRequest& request,
                                 rls::RateLimitResponse* response, rls_done done) = 0;
};

struct grpc_server_options {
  // host:port to listen on; port 0 picks a free one (see `port()`); `[::1]:8081` for IPv6.
  // Plaintext HTTP/2 (h2c), as Envoy's rate limit cluster speaks to a local service, unless
  // `tls_cert_pem` is set.
  std::string listen = "127.0.0.1:8081";
  // TLS: the certificate chain and its private key (PEM text, not file names); with
  // `tls_client_ca_pem`, clients must present a certificate that CA signed.
  std::string tls_cert_pem;
  std::string tls_key_pem;
  std::string tls_client_ca_pem;
  // Larger requests are refused with RESOURCE_EXHAUSTED before they are read into a message.
  // Envoy sends a domain and a few descriptors of short entries, well under 4 KiB; 64 KiB
  // leaves room for entries built from long header values while bounding what one call may
  // make the server hold (gRPC's default is 4 MiB).
  std::size_t max_receive_message_bytes = 64 * 1024;
  // Ping a connection idle this long, and close it when the ping is not answered within
  // `keepalive_timeout`: connections of clients that vanished (a deleted pod) do not linger.
  std::chrono::milliseconds keepalive_time{60000};
  std::chrono::milliseconds keepalive_timeout{20000};
  // Clients may ping this often, with or without calls in flight. gRPC's default (5 min)
  // would answer an Envoy cluster's keepalive pings (often every 10 s to 1 min) with GOAWAY.
  std::chrono::milliseconds min_client_ping_interval{10000};
  // On shutdown, how long calls in flight may take before they are answered CANCELLED.
  std::chrono::milliseconds drain_timeout{10000};
  // The health service says SERVING while this returns true (sluice serve: the store's
  // `health().ready`), NOT_SERVING otherwise. Called on gRPC threads: thread-safe, cheap and
  // non-blocking. Empty: always SERVING.
  std::function<bool()> serving;
};

// Thread-safe: `shutdown` and `shutdown_now` may be called from any thread, any number of times;
// the other members from the thread that owns the server.
class grpc_server {
 public:
  // The handler must outlive the server. Does not listen yet: see `start`.
  grpc_server(grpc_server_options options, rls_handler& handler);
  // Shuts down (draining for up to `drain_timeout`) and waits.
  ~grpc_server();
  grpc_server(const grpc_server&) = delete;
  grpc_server& operator=(const grpc_server&) = delete;

  // Returns success once the server listens and serves; or an error naming the address (it
  // is in use, is not an address of this host, or does not parse). Call once.
  result<void> start();
  // Returns the port it listens on (the real one when `listen` said 0); 0 before `start`.
  std::uint16_t port() const;
  // Returns `listen` with the real port: "127.0.0.1:41234", "[::1]:8081".
  std::string local_address() const;
  // Stops accepting calls and connections at once (a call that still arrives is answered
  // UNAVAILABLE, and health says NOT_SERVING); calls in flight may finish for up to
  // `drain_timeout`, then are answered CANCELLED. Does not block.
  void shutdown();
  // The same without the drain: calls in flight are answered CANCELLED now (a second
  // SIGTERM). Does not block.
  void shutdown_now();
  // Returns when the server has stopped: after `shutdown` and the drain. At once when it was
  // never started.
  void wait();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// Turns off abseil's lock-order (deadlock) detection for the whole process. Debian builds
// abseil without NDEBUG, so every absl::Mutex that gRPC takes also updates a graph of lock
// orders (5–8% of a gRPC server's CPU; docs/BENCHMARKS.md, "gRPC"), and a cycle in it aborts
// the process. Call it before gRPC starts (a server, a channel); calling it again is harmless.
void quiet_abseil_mutexes() noexcept;

}  // namespace sluice::server
