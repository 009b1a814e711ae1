// The server's counters, rendered in the Prometheus text exposition format (version 0.0.4)
// when `GET /metrics` is scraped. Written by hand: a few lines, no library.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/striped.h"
#include "sluice/limiter.h"
#include "sluice/store.h"

namespace sluice::server {

class rls_metrics;  // server/rls_metrics.h

// The routes of the HTTP API, as metrics label them.
enum class route : std::uint8_t {
  acquire,  // POST /v1/acquire
  peek,     // POST /v1/peek
  reset,    // DELETE /v1/keys/{policy}/{key}
  gate,     // GET /v1/gate/{policy}
  metrics,  // GET /metrics
  healthz,  // GET /healthz
  readyz,   // GET /readyz
  other,    // unknown paths, and requests refused before routing (malformed, too large)
  refund,   // POST /v1/refund
};
inline constexpr std::size_t route_count = 9;

// Returns the route's label: "/v1/acquire", ..., "other".
std::string_view to_string(route r) noexcept;

// What became of one decision.
enum class outcome : std::uint8_t {
  allowed,
  denied,
  shadow_denied,  // denied by a policy in shadow mode, and allowed
};

// Counters of decisions, HTTP requests and connections. Thread-safe and lock-free: every
// count is a relaxed atomic, and the per-request ones are striped per thread (two I/O
// threads never write one cache line to count); `render` sums them without stopping the
// writers, so one scrape may see a request counted in one series and not yet in another.
class metrics {
 public:
  // Upper bounds of the request duration histogram's buckets, in seconds (50 µs to 1 s).
  static constexpr std::array<double, 14> duration_buckets = {
      0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
      0.01,    0.025,  0.05,    0.1,    0.25,  0.5,    1.0};

  // One decision slot per name in `policies`, in that order, and one more for inline limits
  // (`inline_slot()`), labelled `(inline)`.
  explicit metrics(std::vector<std::string> policies);
  ~metrics();
  metrics(const metrics&) = delete;
  metrics& operator=(const metrics&) = delete;

  std::size_t inline_slot() const noexcept { return policies_.size(); }
  // Returns the policies' names, in slot order.
  const std::vector<std::string>& policies() const noexcept { return policies_; }
  // Returns the slot of policy `name`, or the inline slot when there is none.
  std::size_t slot(std::string_view name) const noexcept;

  // Counts a decision of the policy in `slot` (< inline_slot() + 1).
  void count_decision(std::size_t slot, outcome o) noexcept;
  // Counts an HTTP response with `status` on route `r`, which took `took` to produce.
  void count_request(route r, unsigned status, std::chrono::nanoseconds took) noexcept;
  void connection_opened() noexcept { open_.fetch_add(1, std::memory_order_relaxed); }
  void connection_closed() noexcept { open_.fetch_sub(1, std::memory_order_relaxed); }
  // Counts a connection closed at once because `max_connections` were open.
  void connection_refused() noexcept { refused_.fetch_add(1, std::memory_order_relaxed); }

  // Returns the counters of Envoy's rate limit service (rls_metrics.h), which its handler
  // installs; rendered by render_rls_metrics.
  rls_metrics& rls() noexcept { return *rls_; }
  const rls_metrics& rls() const noexcept { return *rls_; }

  std::int64_t open_connections() const noexcept { return open_.load(std::memory_order_relaxed); }
  std::uint64_t decisions(std::size_t slot, outcome o) const noexcept;
  std::uint64_t requests(route r, unsigned status) const noexcept;

  // Returns every metric in the text format, with the limiter's counters (`stats`) for store
  // errors, fallbacks and the breakers (one per failure domain of the store):
  //   sluice_decisions_total{policy,outcome}      sluice_store_errors_total
  //   sluice_fallbacks_total{mode}                sluice_breaker_opened_total (sum)
  //   sluice_breaker_state (the worst: 0 closed, 1 open, 2 half_open; open is worst)
  //   sluice_breakers                             sluice_breakers_open (not closed)
  //   sluice_http_requests_total{route,code}      sluice_request_duration_seconds{route}
  //   sluice_open_connections                     sluice_connections_refused_total
  std::string render(const limiter_stats& stats) const;

 private:
  // The status codes the server sends; any other is counted as "other".
  static constexpr std::array<unsigned, 14> codes_ = {200, 204, 400, 401, 403, 404, 405,
                                                      408, 413, 429, 431, 500, 503, 0};
  static std::size_t code_index(unsigned status) noexcept;

  // Every per-request count lives in `counts_`, striped per thread (core/striped.h): the
  // decisions (3 per slot), then per route its codes, duration buckets (the last +Inf only)
  // and duration sum in ns.
  static constexpr std::size_t kPerRoute = codes_.size() + duration_buckets.size() + 2;
  static constexpr std::size_t route_base(route r) noexcept {
    return static_cast<std::size_t>(r) * kPerRoute;
  }
  static constexpr std::size_t code_counter(route r, std::size_t code) noexcept {
    return route_base(r) + code;
  }
  static constexpr std::size_t bucket_counter(route r, std::size_t b) noexcept {
    return route_base(r) + codes_.size() + b;
  }
  static constexpr std::size_t sum_counter(route r) noexcept {
    return route_base(r) + kPerRoute - 1;
  }
  std::size_t decision_counter(std::size_t slot, outcome o) const noexcept {
    return route_count * kPerRoute + slot * 3 + static_cast<std::size_t>(o);
  }

  std::vector<std::string> policies_;
  std::unique_ptr<internal::striped_counters> counts_;
  std::atomic<std::int64_t> open_{0};
  std::atomic<std::uint64_t> refused_{0};
  std::unique_ptr<rls_metrics> rls_;
};

// Appends the limiter's deny cache metrics (`policy::deny_cache`) in the text format:
//   sluice_deny_cache_hits_total{policy}: decisions it answered, for each of `policies`
//     registered in `lim` with deny_cache on;
//   sluice_deny_cache_keys: the keys it holds now (every policy together).
void render_deny_cache_metrics(std::string& out, const limiter& lim,
                               const std::vector<std::string>& policies);

// Appends the store's own metrics (`store::visit_metrics`) in the text format: for a
// Redis store sluice_redis_*, for a cluster also sluice_redis_cluster_*, for the memory
// store sluice_memory_*.
void render_store_metrics(std::string& out, const store& s);

// Appends the counters of Envoy's rate limit service (rls_metrics.h) in the text format,
// nothing before a configuration is installed:
//   sluice_rls_requests_total{domain,code}: ShouldRateLimit calls by domain (`_unknown_` for
//     one the configuration lacks) and code (OK, OVER_LIMIT, INVALID_ARGUMENT, UNAVAILABLE);
//   sluice_rls_hits_total{domain,descriptor[,entries],outcome}: the hits of each rule by
//     outcome (within_limit, near_limit, over_limit, shadow_mode); `entries` with
//     detailed_metric. The configuration's series are always there, zeros included; the
//     `_unknown_` domain, `_override_` descriptors and each `entries` value appear once they
//     count something.
void render_rls_metrics(std::string& out, const rls_metrics& m);

// The process's own figures, read from /proc/self at the moment of the call (Linux).
struct process_stats {
  std::uint64_t resident_memory_bytes = 0;  // RSS
  std::uint64_t virtual_memory_bytes = 0;   // the address space's size
  std::uint64_t open_fds = 0;               // entries of /proc/self/fd
  std::uint64_t max_fds = 0;                // RLIMIT_NOFILE's soft limit
  double cpu_seconds = 0;                   // user + system time
  double start_time_seconds = 0;            // when the process started, Unix time
};

// Returns the process's figures, or nothing when /proc cannot be read (not Linux, or a
// sandbox without it).
std::optional<process_stats> read_process_stats();

// Appends the standard process metrics under Prometheus's conventional names and types
// (process_resident_memory_bytes, process_virtual_memory_bytes, process_open_fds,
// process_max_fds, process_cpu_seconds_total, process_start_time_seconds), nothing when
// read_process_stats() has nothing, and sluice_build_info{version,build_type,compiler} 1.
void render_process_metrics(std::string& out);

// Appends `bytes` to `out` as text that a Prometheus label value may hold (before the text
// format's escaping), whatever they are: valid UTF-8 is copied, except control characters
// (below U+0020, and U+007F); those and every byte of malformed UTF-8 become `\xNN` (two
// lower-case hex digits). Stops before `out` would pass `max_bytes`, and returns whether all
// of `bytes` went in.
bool append_label_text(std::string& out, std::string_view bytes, std::size_t max_bytes);
// Returns `bytes` as label text (append_label_text, uncut): "a\xffb" for a, 0xFF, b.
std::string label_text(std::string_view bytes);
// Returns `text` escaped for a label value of the text format: backslash, double quote and
// line feed as `\\`, `\"` and `\n`.
std::string escape_label(std::string_view text);

}  // namespace sluice::server
