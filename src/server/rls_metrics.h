// The counters of Envoy's rate limit service as envoyproxy/ratelimit's operators know them
// (its `ratelimit.service.rate_limit.<domain>.<key>.*` stats), with labels bounded by the
// configuration: hits per rule of the Envoy configuration by outcome, and requests per domain
// by code. `metrics` holds one `rls_metrics`, and `render_rls_metrics` (metrics.h) writes it
// at `GET /metrics`. No gRPC in here: the handler (rls.h) counts, this only keeps the counts.
//
//   rls_metrics m;
//   auto counters = m.install(config);        // at load, and again at each reload
//   rls_rule_counters* rule = counters->rule(*match.rate_limit);
//   rule->series(entries).add(split_hits(hits, count, used, over, shadow));
//   counters->domain("edge").count(rls_code::ok);
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "server/envoy_config.h"

namespace sluice::server {

// Where the hits of one descriptor went. The four partition the hits of the rules' limits, so
// their sum is envoyproxy's total_hits; its within_limit is within_limit + near_limit, its
// over_limit is over_limit + shadow_mode.
enum class rls_outcome : std::uint8_t {
  within_limit,  // admitted by the limit, with its use at or below the near-limit threshold
  near_limit,    // admitted by the limit, taking its use above the threshold (80%)
  over_limit,    // over the limit: the descriptor was answered OVER_LIMIT
  shadow_mode,   // over the limit of a rule in shadow mode: answered OK all the same
};
inline constexpr std::size_t rls_outcome_count = 4;

// Returns the outcome's label: "within_limit", "near_limit", "over_limit", "shadow_mode".
std::string_view to_string(rls_outcome o) noexcept;

// What became of one ShouldRateLimit call.
enum class rls_code : std::uint8_t {
  ok,                // answered, overall_code OK
  over_limit,        // answered, overall_code OVER_LIMIT
  invalid_argument,  // refused: too many descriptors, or entries in one
  unavailable,       // the limiter answered an error instead of decisions
};
inline constexpr std::size_t rls_code_count = 4;

// Returns the code's label, as Envoy and gRPC spell it: "OK", "OVER_LIMIT",
// "INVALID_ARGUMENT", "UNAVAILABLE".
std::string_view to_string(rls_code c) noexcept;

// The most distinct `entries` label values a rule with `detailed_metric` counts apart; the
// rest are counted under `rls_other_entries`.
inline constexpr std::size_t default_detailed_values = 100;
// The `entries` label value of the hits past the cap.
inline constexpr std::string_view rls_other_entries = "_other_";
// The longest `entries` label value, in bytes; a longer one is cut and ends with "...".
inline constexpr std::size_t max_entries_label = 256;
// The `descriptor` label of descriptors that carry their own limit and match no rule.
inline constexpr std::string_view rls_override_descriptor = "_override_";
// The `domain` label of requests to a domain the configuration does not have.
inline constexpr std::string_view rls_unknown_domain = "_unknown_";

// Returns the use of a limit of `count` above which hits are near the limit:
// floor(count × 0.8), envoyproxy's default NEAR_LIMIT_RATIO, in integers (10 → 8, 3 → 2).
constexpr std::int64_t near_limit_threshold(std::int64_t count) noexcept {
  return count / 5 * 4 + count % 5 * 4 / 5;
}

// The hits of one descriptor by outcome.
struct rls_hits {
  std::array<std::uint64_t, rls_outcome_count> n = {};

  std::uint64_t operator[](rls_outcome o) const noexcept { return n[static_cast<std::size_t>(o)]; }
  friend bool operator==(const rls_hits&, const rls_hits&) = default;
};

// Returns how the `hits` of one descriptor divide among the outcomes, for a limit of `count`
// whose use is `used` after them (count − remaining of an admitted decision):
//   - `over` (its limit refused it): all are shadow_mode when `shadow`, else over_limit;
//   - else the hits that took the use above near_limit_threshold(count) are near_limit, the
//     rest within_limit, as envoyproxy splits one request's hits_addend.
// A limit of 10 used 7 → 10 by 3 hits: 1 within_limit, 2 near_limit.
rls_hits split_hits(std::int64_t hits, std::int64_t count, std::int64_t used, bool over,
                    bool shadow) noexcept;

// Hits by outcome of one label set. Thread-safe and lock-free (relaxed atomics).
class rls_series {
 public:
  void add(const rls_hits& h) noexcept;
  std::uint64_t hits(rls_outcome o) const noexcept {
    return n_[static_cast<std::size_t>(o)].load(std::memory_order_relaxed);
  }
  // Returns whether every outcome is still 0.
  bool empty() const noexcept;

 private:
  std::atomic<std::uint64_t> n_[rls_outcome_count] = {};
};

// Returns the `entries` label value of a descriptor: envoyproxy's detailed metric key without
// the domain, each entry `key_value`, joined by dots (`remote_address_203.0.113.9`), made
// printable (`label_text`, metrics.h) and cut to max_entries_label bytes.
std::string entries_label(std::span<const envoy_entry> entries);

// The counters of one rule of the Envoy configuration, labelled by its domain and descriptor
// (its stats_key without the domain). Without `detailed_metric`, one series. With it, one per
// distinct `entries` label of the requests, up to `cap`, and `_other_` for the rest: bounded
// whatever the requests hold. Thread-safe: finding an `entries` series already counted takes
// no lock (a lock-free probe of a table twice the cap); a new one takes the rule's mutex once,
// and no lock is taken once the cap is reached.
class rls_rule_counters {
 public:
  rls_rule_counters(std::string domain, std::string descriptor, bool detailed, std::size_t cap);
  ~rls_rule_counters();
  rls_rule_counters(const rls_rule_counters&) = delete;
  rls_rule_counters& operator=(const rls_rule_counters&) = delete;

  // Returns the `domain` and `descriptor` labels, printable (label_text).
  const std::string& domain() const noexcept { return domain_; }
  const std::string& descriptor() const noexcept { return descriptor_; }
  bool detailed() const noexcept { return detailed_; }

  // Returns the series that counts a descriptor with `entries`: the rule's one, or with
  // `detailed_metric` the one of entries_label(entries), added when new and under the cap,
  // else `_other_`. Allocates only with `detailed_metric`.
  rls_series& series(std::span<const envoy_entry> entries);
  // The same by the `entries` label itself (detailed rules).
  rls_series& series_of(std::string_view label);

  // Returns how many distinct `entries` labels are counted apart (at most the cap).
  std::size_t distinct() const;
  // Calls `visit(entries, series)` for each series: without `detailed_metric` once, with ""
  // for the label; with it, for each `entries` label in the order they came, then `_other_`.
  void visit(const std::function<void(std::string_view, const rls_series&)>& visit) const;

 private:
  struct detail;

  const std::string domain_;
  const std::string descriptor_;
  const bool detailed_;
  const std::size_t cap_;
  rls_series series_;  // the rule's, or `_other_` with detailed_metric
  // Detailed only: open addressing, linear probing; a slot is written once, under `mu_`.
  std::size_t mask_ = 0;
  std::unique_ptr<std::atomic<detail*>[]> slots_;
  std::atomic<bool> full_{false};  // the cap is reached: new labels go to `_other_`
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<detail>> details_;  // guarded by mu_; in the order they came
};

// The counters of one domain: its ShouldRateLimit calls by code, and the hits of its
// descriptors that carry their own limit and match no rule (`_override_`). Thread-safe.
class rls_domain_counters {
 public:
  rls_domain_counters(std::string domain, std::shared_ptr<rls_rule_counters> overrides)
      : domain_(std::move(domain)), overrides_(std::move(overrides)) {}

  void count(rls_code c) noexcept {
    n_[static_cast<std::size_t>(c)].fetch_add(1, std::memory_order_relaxed);
  }
  std::uint64_t requests(rls_code c) const noexcept {
    return n_[static_cast<std::size_t>(c)].load(std::memory_order_relaxed);
  }
  // Returns the `domain` label, printable (label_text).
  const std::string& domain() const noexcept { return domain_; }
  rls_rule_counters& overrides() const noexcept { return *overrides_; }

 private:
  const std::string domain_;
  const std::shared_ptr<rls_rule_counters> overrides_;
  std::atomic<std::uint64_t> n_[rls_code_count] = {};
};

// The counters of one installed Envoy configuration: each rule's and each domain's, found by
// the configuration's own rules and by domain name. Immutable once made (the counters in it
// count), so thread-safe; it keeps every counter it points to alive.
class rls_counters {
 public:
  // Returns the counters of `rl`, a rule of the configuration these were installed for, or
  // nullptr for an unlimited rule (it counts no hits) or a rule of another configuration.
  rls_rule_counters* rule(const envoy_rate_limit& rl) const noexcept;
  // Returns the counters of `domain`, or those of `_unknown_` when the configuration has none.
  rls_domain_counters& domain(std::string_view domain) const noexcept;

  // Calls `visit(counters, configured)` for each domain (`_unknown_` too), sorted by label;
  // `configured` is false for `_unknown_` unless a domain has that name.
  void visit_domains(const std::function<void(const rls_domain_counters&, bool)>& visit) const;
  // Calls `visit(counters, configured)` for each rule, sorted by domain, descriptor and
  // detailed; `configured` is false for the `_override_` ones unless a rule has that label.
  void visit_rules(const std::function<void(const rls_rule_counters&, bool)>& visit) const;

 private:
  friend class rls_metrics;
  // A rule's labels: printable domain and descriptor, and whether it is detailed.
  using rule_key = std::tuple<std::string, std::string, bool>;
  template <class T>
  struct entry {
    std::shared_ptr<T> counters;
    bool configured = false;
  };

  std::span<const envoy_rate_limit> rate_limits_;  // the configuration's, for `rule`
  std::vector<rls_rule_counters*> by_rule_;        // parallel to rate_limits_
  std::map<std::string, rls_domain_counters*, std::less<>> by_name_;  // raw domain names
  rls_domain_counters* unknown_ = nullptr;
  std::map<rule_key, entry<rls_rule_counters>> rules_;
  std::map<std::string, entry<rls_domain_counters>> domains_;  // by printable label
};

// The rate limit service's counters across reloads. `install` registers a configuration's
// rules and domains (bounded by its size) and makes them the ones rendered; a label set that
// stays across a reload keeps its counter (no reset), one that vanishes leaves the page (and
// is freed when the last call counting into it is done). Thread-safe: install and render
// take a mutex; counting does not touch this object. One handler installs into it.
class rls_metrics {
 public:
  // `detailed_values`: the cap of distinct `entries` labels per detailed rule.
  explicit rls_metrics(std::size_t detailed_values = default_detailed_values);
  ~rls_metrics();
  rls_metrics(const rls_metrics&) = delete;
  rls_metrics& operator=(const rls_metrics&) = delete;

  // Returns the counters of `config`'s rules and domains, the ones now rendered. The
  // configuration must outlive them (its rules are looked up by address).
  std::shared_ptr<const rls_counters> install(const envoy_config& config);
  // Returns the counters last installed, or nullptr before any.
  std::shared_ptr<const rls_counters> current() const;

 private:
  const std::size_t detailed_values_;
  mutable std::mutex mu_;
  std::shared_ptr<const rls_counters> current_;
};

}  // namespace sluice::server
