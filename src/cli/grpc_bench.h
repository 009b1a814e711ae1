// `sluice bench --grpc`: `run_load` (bench.h) driving Envoy's rate limit service
// (envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit) over gRPC, as Envoy's rate
// limit filter asks it: one request per call, each with one or two descriptors. Built only
// with gRPC (SLUICE_WITH_GRPC).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "cli/bench.h"
#include "sluice/error.h"

namespace sluice::cli {

struct grpc_bench_options : load_options {
  // host:port of the service (plaintext HTTP/2, as `sluice serve --grpc-listen`).
  std::string target;
  // TLS when `tls_ca_pem` is set: the CA certificates that sign the server's (PEM text), and
  // a client certificate and its key for a server that asks for one (both or neither).
  std::string tls_ca_pem;
  std::string tls_cert_pem;
  std::string tls_key_pem;
  // The requests' domain.
  std::string domain = "bench";
  // Descriptors per request: 1, `user=<prefix>:<i>`; or 2, that and
  // `remote_address=10.0.<j / 256>.<j % 256>` with j = i % 1024, decided all or nothing.
  int descriptors = 1;
  std::string prefix = "bench";
  // Every request's hits_addend; 0 means 1, as for Envoy.
  std::uint32_t hits = 0;
  // HTTP/2 connections, each its own channel; calls are spread over them round robin.
  std::size_t channels = 1;
  // Each call's deadline; a call past it counts as a timeout.
  std::chrono::milliseconds timeout{5000};
};

// Returns what a load on the service at `options.target` measured: a decision is a
// request answered OK or OVER_LIMIT (allowed or denied), whatever its descriptors; a gRPC
// error or an overall code of UNKNOWN is an error, DEADLINE_EXCEEDED a timeout. Fails, before
// any load, when one call that spends nothing (every descriptor's hits_addend 0) is not
// answered within `timeout`. Blocks until every call it made has completed.
result<bench_report> run_grpc_bench(const grpc_bench_options& options);

}  // namespace sluice::cli
