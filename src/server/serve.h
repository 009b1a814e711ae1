// `sluice serve` put together: the store, the limiter, the request handler and the HTTP
// server, built from a server_config and taken down in the order their references need.
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

// Returns a limiter on `s` with the breaker, warnings and policies of `config`; throws
// std::runtime_error naming the policy when one is refused. `warn` receives the limiter's
// (rate-limited) warnings about store failures.
std::unique_ptr<limiter> make_limiter(const server_config& config, std::shared_ptr<store> s,
                                      std::function<void(std::string_view)> warn = {});

// Sends spdlog's default logger to stderr at `level` (trace, debug, info, warn, error, off),
// so that stdout carries only what scripts read.
void configure_logging(const std::string& level);

// Everything `sluice serve` runs. The destructor drains (up to drain_timeout) a server that
// is still running, then stops the limiter and its store (whose late completions land in
// stopped io_contexts), then the server. Not thread-safe, except
// `shutdown`.
class service {
 public:
  // Opens the store, builds the limiter, the handler and the server, and listens; throws
  // std::runtime_error naming what is wrong. With `handle_signals`, SIGTERM and SIGINT
  // drain the server once it has started.
  explicit service(const server_config& config, bool handle_signals = false);
  ~service();
  service(const service&) = delete;
  service& operator=(const service&) = delete;

  std::string local_address() const;
  std::uint16_t port() const;
  void start();
  void shutdown();
  void wait();

  // Returns "listening on ..., store ..., N I/O threads, policies: chat (30/1h sliding_log,
  // on_failure allow), ..." for the start-up log.
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
  std::unique_ptr<http_server> server_;
  bool started_ = false;
  bool stopped_ = false;
};

// Runs `sluice serve`: logs to stderr, starts the service, prints
// `sluice listening on <address>` as the first line of `out` once SIGTERM/SIGINT are
// handled, and serves until a signal and the drain. Returns the exit status: 0, or 1 when
// start-up failed (the reason on stderr).
int serve(const server_config& config, std::ostream& out);

}  // namespace sluice::server
