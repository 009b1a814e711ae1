// `sluice serve`'s configuration: what the YAML file (examples/sluice.yaml) holds, with the
// defaults a flag or a missing field leaves in place.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "sluice/breaker.h"
#include "sluice/error.h"
#include "sluice/limiter.h"

namespace sluice::server {

// Where the gate (`GET /v1/gate/{policy}`) finds the key of a request.
struct key_source {
  std::string header = "X-Forwarded-For";  // used when set and present in the request
  std::string query;                       // a query parameter, used when set and present
};

// A policy as served: the limiter's policy plus what only the server needs.
struct served_policy {
  sluice::policy policy;  // name, limit, algorithm, on_failure, shadow, deny_cache
  key_source gate_key;    // for the gate; defaults to the server's `gate_key`
};

// TLS on the listeners: PEM files, read when the server starts. Off while `cert` is empty.
struct tls_files {
  std::string cert;       // the certificate chain, leaf first
  std::string key;        // its private key (unencrypted)
  std::string client_ca;  // when set, clients must present a certificate this CA signed

  bool enabled() const noexcept { return !cert.empty(); }
};

struct server_config {
  std::string listen = "127.0.0.1:8080";  // host:port; port 0 picks a free one
  // host:port of the gRPC listener (Envoy's rate limit service, grpc.health.v1); empty: off.
  std::string grpc_listen;
  // A directory of envoyproxy/ratelimit's YAML files (src/server/envoy_config.h), answered on
  // `grpc_listen`; empty: none. A relative path in the file is relative to the file.
  std::string envoy_config;
  // TLS on both listeners (HTTPS, and gRPC over TLS); off unless `tls.cert` is set.
  tls_files tls;
  std::size_t io_threads = 0;       // 0: one per core
  std::string store = "memory://";  // a store URI (see open_store)
  breaker_options breaker;
  std::chrono::milliseconds warn_interval{10000};
  // Keys the limiter's deny cache holds, for every `deny_cache: true` policy together; 0
  // turns it off (limiter_options::deny_cache_max_keys).
  std::size_t deny_cache_max_keys = 100000;
  // Limits on clients.
  std::size_t max_connections = 10000;
  std::size_t max_body_bytes = 16 * 1024;          // larger bodies get 413
  std::size_t max_key_bytes = 1024;                // longer keys get 400
  std::chrono::milliseconds header_timeout{5000};  // to read a request's header
  std::chrono::milliseconds body_timeout{5000};    // to read its body
  std::chrono::milliseconds idle_timeout{60000};   // between requests on a kept-alive connection
  std::chrono::milliseconds drain_timeout{10000};  // on SIGTERM, for requests in flight
  // Bearer tokens: empty lists mean no authentication for that kind of call.
  std::vector<std::string> api_tokens;    // acquire, peek, gate
  std::vector<std::string> admin_tokens;  // reset (an API token is not enough)
  // With no admin token, admin calls (reset) are refused (403) unless this is set: then
  // anyone may make them. `auth: {admin_open: true}`, `--admin-open`.
  bool admin_open = false;
  key_source gate_key;
  bool access_log = false;
  std::string log_level = "info";  // trace, debug, info, warn, error, off
  std::vector<served_policy> policies;

  // Where the configuration came from, for messages ("" when built in code).
  std::filesystem::path source;
};

// Returns the configuration in the YAML file at `path`, or `errc::invalid_policy` /
// `errc::invalid_store_uri` / ... with a detail naming the file, line and problem, e.g.
// `sluice.yaml:12: policies.chat.limit: limit "0/hour": count must be at least 1`.
result<server_config> load_config(const std::filesystem::path& path);

// The same from YAML text (`name` stands for the file in messages).
result<server_config> parse_config(std::string_view yaml, const std::string& name = "config");

// Returns what is wrong with `address` as a listen address (`host:port`, `[v6]:port`, port 0
// to 65535), or "" when nothing is. The host is not resolved.
std::string listen_problem(std::string_view address);

// Returns the line of a second YAML document in `yaml` (a sluice config, or an Envoy one, is
// one document), or 0 when there is at most one. Reads at most two documents: yaml-cpp 0.7's
// LoadAll never returns on some inputs (",a:" yields empty documents forever without
// consuming the stream), so this runs before it. Throws YAML::Exception on malformed YAML.
int second_yaml_document_line(const std::string& yaml);

}  // namespace sluice::server
