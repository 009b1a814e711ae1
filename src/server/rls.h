// Envoy's rate limit service in `sluice serve`: where the decision side plugs into the gRPC
// transport (grpc_server.h). Built only with SLUICE_WITH_GRPC.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>

#include "server/config.h"
#include "server/envoy_config.h"
#include "server/grpc_server.h"
#include "server/metrics.h"
#include "server/rls_metrics.h"
#include "sluice/limiter.h"

namespace sluice::server {

// Answers ShouldRateLimit from an Envoy configuration (envoy_config.h): each descriptor of
// a request is matched (envoyproxy's rules), its cost is the descriptor's hits_addend when
// set (0: check only), else the request's (0 means 1), a descriptor's own `limit` override
// replaces the configured limit, and the limited descriptors are decided all or nothing by
// `limiter::async_acquire_all` (a request over any limit spends on none). The response has
// one status per descriptor (OK with no current_limit for a descriptor that matches no
// limit, an unknown domain or an unlimited one; OVER_LIMIT where a limit denies, unless it
// is in shadow mode), the overall code, and the RateLimit-Policy / RateLimit fields and
// Retry-After as the HTTP API writes them. With `rls_metrics`, each call is counted by
// domain and code, and each limited descriptor's hits (its cost) by rule and outcome
// (rls_metrics.h; a store failure counts no hits). Thread-safe; `reload` swaps the
// configuration while calls run (each finishes with the one it started with, and counts
// into its counters).
class envoy_rls_handler final : public rls_handler {
 public:
  // `on_failure` decides for rate limits that name no `on_failure` of their own. `metrics`
  // (nullptr: nothing is counted) gets the configuration installed now and at each reload;
  // it outlives the handler.
  envoy_rls_handler(envoy_config config, failure_mode on_failure, sluice::limiter& lim,
                    rls_metrics* metrics = nullptr);
  ~envoy_rls_handler() override;

  void should_rate_limit(const rls::RateLimitRequest& request, rls::RateLimitResponse* response,
                         rls_done done) override;
  // Loads `dir` again; on success swaps it in and returns the files read, else keeps the
  // configuration it has and returns why.
  result<std::size_t> reload(const std::string& dir);

  struct loaded;  // a configuration and its rate limits' policies

 private:
  std::shared_ptr<const loaded> snapshot() const;

  sluice::limiter& lim_;
  const failure_mode on_failure_;
  rls_metrics* const metrics_;
  mutable std::mutex mu_;
  std::shared_ptr<const loaded> current_;
};

// Returns the handler that answers ShouldRateLimit for `config` with `lim`, or nullptr when
// `config` has no `envoy_config`: `sluice serve` then refuses `grpc_listen` ("grpc_listen
// needs envoy_config"). Throws std::runtime_error when the Envoy configuration does not load
// (`file:line: field: problem`). The handler counts into `m.rls()`. The limiter and the
// metrics outlive the handler, and the handler outlives every call's `done` (serve destroys
// it after the gRPC server).
std::unique_ptr<envoy_rls_handler> make_rls_handler(const server_config& config,
                                                    sluice::limiter& lim, metrics& m);

}  // namespace sluice::server
