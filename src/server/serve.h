// `sluice serve` put together: the store, the limiter, the request handler, the HTTP server
// and, with `grpc_listen`, the gRPC listener (Envoy's rate limit service), built from a
// server_config and taken down in the order their references need.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <string_view>

#include "server/config.h"
#include "sluice/limiter.h"
#include "sluice/store.h"

namespace sluice::server {

class http_server;
class metrics;
class request_handler;
class rls_handler;  // server/grpc_server.h, with SLUICE_WITH_GRPC

// Returns the rate limit handler of `config` on `lim`, or nullptr when the config has none
// (make_rls_handler in server/rls.h is the one `sluice serve` uses).
using rls_handler_factory = std::function<std::unique_ptr<rls_handler>(
    const server_config& config, sluice::limiter& lim, metrics& m)>;

// Returns a limiter on `s` with the breaker, warnings and policies of `config`; throws
// std::runtime_error naming the policy when one is refused. `warn` receives the limiter's
// (rate-limited) warnings about store failures.
std::unique_ptr<limiter> make_limiter(const server_config& config, std::shared_ptr<store> s,
                                      std::function<void(std::string_view)> warn = {});

// Sends spdlog's default logger to stderr at `level` (trace, debug, info, warn, error, off),
// so that stdout carries only what scripts read.
void configure_logging(const std::string& level);

// Everything `sluice serve` runs. The destructor drains (up to drain_timeout) servers that
// are still running, then stops the limiter and its store (whose late completions land in
// stopped io_contexts, or reach the rate limit handler, which outlives it), then the
// servers. Not thread-safe, except `shutdown`.
class service {
 public:
  // Opens the store, builds the limiter, the handler and the server, and listens; throws
  // std::runtime_error naming what is wrong. With `grpc_listen`, also builds the rate limit
  // handler (make_rls_handler; "grpc_listen needs envoy_config" without one) and serves gRPC
  // at once, or throws saying this build has no gRPC. With `handle_signals`, SIGTERM and
  // SIGINT drain both servers once started. `make_rls` replaces make_rls_handler (tests).
  explicit service(const server_config& config, bool handle_signals = false,
                   rls_handler_factory make_rls = {});
  ~service();
  service(const service&) = delete;
  service& operator=(const service&) = delete;

  std::string local_address() const;
  std::uint16_t port() const;
  // Returns the gRPC listener's address with its real port, or "" without `grpc_listen`.
  std::string grpc_address() const;
  void start();
  void shutdown();
  void wait();

  // Returns "listening on ..., store ..., N I/O threads, policies: chat (30/1h sliding_log,
  // on_failure allow), ..." (and "; gRPC on ..." with a gRPC listener) for the start-up log.
  std::string summary() const;

  server::metrics& counters() { return *metrics_; }
  sluice::limiter& limiter() { return *limiter_; }
  const request_handler& handler() const { return *handler_; }

 private:
  server_config config_;
  std::size_t io_threads_ = 1;
  std::unique_ptr<server::metrics> metrics_;
  std::unique_ptr<sluice::limiter> limiter_;
  std::unique_ptr<request_handler> handler_;
  struct grpc_listener;  // the rate limit handler and the gRPC server, in serve.cc
  std::unique_ptr<grpc_listener> grpc_;
  std::unique_ptr<http_server> server_;
  bool started_ = false;
  bool stopped_ = false;

  // Builds and starts the gRPC listener of `grpc_listen` with the handler `make_rls` (or
  // make_rls_handler) builds; throws naming what is wrong.
  void start_grpc(const rls_handler_factory& make_rls);
  // Loads envoy_config again (SIGHUP); a bad one keeps the last and logs why.
  void reload_envoy_config();
  // Starts the gRPC listener's drain (`now`: ends it), if there is one.
  void stop_grpc(bool now);
  // Returns when the gRPC listener, if any, has stopped.
  void wait_grpc();
};

// Runs `sluice serve`: logs to stderr, starts the service, prints
// `sluice listening on <address>` as the first line of `out` once SIGTERM/SIGINT are
// handled (then `sluice grpc listening on <address>` with a gRPC listener), and serves until a
// signal and the drain. Returns the exit status: 0, or 1 when start-up failed (the reason on
// stderr).
int serve(const server_config& config, std::ostream& out);

}  // namespace sluice::server
