// The HTTP API of `sluice serve` as a function from a request to a response: routing,
// authentication, validation, decisions, and the response with its RateLimit header fields.
// What it says of the store (`/readyz`, the store's metrics) it asks the limiter's store:
// `store::health` and `store::visit_metrics`.
// No I/O of its own: the sessions in http_server.cc read and write, so tests call `handle`
// with no socket at all.
//
//   POST   /v1/acquire              {"key", "policy"} or {"key", "limit", "algorithm"},
//   POST   /v1/peek                 optional "cost" -> 200 {"allowed", "limit", "remaining",
//                                   "retry_after_ms", "reset_after_ms", "policy"}
//   POST   /v1/acquire              {"limits": [{"key", "policy" | "limit", "cost"}, ...]}
//                                   all or nothing -> 200 {"allowed", "retry_after_ms",
//                                   "denied": [index, ...], "limits": [decision, ...]}
//   POST   /v1/refund               {"key", "policy" | "limit", "cost"} -> 200 decision
//   DELETE /v1/keys/{policy}/{key}  admin token; key %-decoded -> 204
//   *      /v1/gate/{policy}        key from a header or query parameter -> 204 | 429
//   GET    /metrics, /healthz, /readyz
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>
#include <nlohmann/json_fwd.hpp>

#include "server/body.h"
#include "server/config.h"
#include "server/metrics.h"
#include "sluice/limiter.h"

namespace sluice::server {

namespace http = boost::beast::http;
using http_request = http::request<http::string_body>;
using http_response = http::response<http::string_body>;

// Returns a JSON error response, `{"error": message, "field": field}` (no "field" when
// `field` is empty).
http_response error_response(http::status status, std::string_view message,
                             std::string_view field = {});

// Thread-safe: `handle` may run on any number of threads at once. Holds the configuration's
// policies, the token digests and the precomputed RateLimit-Policy fields; reads the limiter
// and counts in `metrics`.
class request_handler {
 public:
  // Takes the response by rvalue reference: it is moved on, never copied.
  using respond = std::function<void(http_response&&)>;

  // Every policy of `config` must be registered in `lim` (see make_limiter in serve.h);
  // throws std::invalid_argument when one is not. `lim` and `m` must outlive the handler and
  // every `respond` it has not called yet.
  request_handler(const server_config& config, limiter& lim, metrics& m);
  ~request_handler();
  request_handler(const request_handler&) = delete;
  request_handler& operator=(const request_handler&) = delete;

  // Calls `done` exactly once with the response to `req`: before returning when the store
  // answers at once (memory), else later on the store's I/O thread. The handler owns `done` until
  // then; nothing cancels a call (the store's deadline bounds it). The response has its status,
  // header fields and body; the caller sets the version, keep-alive and Content-Length. Counts it
  // in the metrics.
  void handle(http_request req, respond done) const;

 private:
  struct served;         // a configured policy, ready to answer
  struct decision_call;  // one decision request, parsed
  class reply;           // counts the response in the metrics, then calls `done`

  enum class op : std::uint8_t { acquire, peek, refund };

  void decide(const http_request& req, op what, reply r) const;
  void decide_all(const nlohmann::json& limits, reply r) const;
  // Reads one limit of a request (`f`: its fields) into `call`; returns the 4xx response
  // when the fields are wrong. `where` prefixes field names ("limits[2].").
  std::optional<http_response> read_call(const body_fields& f, decision_call& call,
                                         std::int64_t min_cost, const std::string& where) const;
  void gate(const http_request& req, std::string_view rest, reply r) const;
  void reset(std::string_view rest, reply r) const;
  void run_decision(const decision_call& call, op what, bool gate, reply r) const;
  bool authorized(const http_request& req, bool admin) const;
  const served* find(std::string_view name) const noexcept;

  struct name_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };

  limiter& limiter_;
  metrics& metrics_;
  std::size_t max_key_bytes_;
  bool admin_open_;  // no admin token: admin calls open to anyone (else refused)
  std::vector<std::array<unsigned char, 32>> api_digests_;    // SHA-256 of each API token
  std::vector<std::array<unsigned char, 32>> admin_digests_;  // and of each admin token
  std::unordered_map<std::string, std::unique_ptr<served>, name_hash, std::equal_to<>> policies_;
};

}  // namespace sluice::server
