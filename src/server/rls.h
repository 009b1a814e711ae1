// Envoy's rate limit service in `sluice serve`: where the decision side plugs into the gRPC
// transport (grpc_server.h). Built only with SLUICE_WITH_GRPC.
#pragma once

#include <memory>

#include "server/config.h"
#include "server/grpc_server.h"
#include "server/metrics.h"
#include "sluice/limiter.h"

namespace sluice::server {

// Returns the handler that answers ShouldRateLimit for `config` with `lim`, or nullptr when
// `config` says nothing of how Envoy's descriptors map to limits: `sluice serve` then refuses
// `grpc_listen` ("grpc_listen needs envoy_config"). The limiter and the metrics outlive the
// handler, and the handler outlives every call's `done` (serve destroys it after the limiter).
//
// The hook for the decision side (`envoy_config:`): today no config has one, so this returns
// nullptr.
std::unique_ptr<rls_handler> make_rls_handler(const server_config& config, sluice::limiter& lim,
                                              metrics& m);

}  // namespace sluice::server
