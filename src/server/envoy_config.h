// envoyproxy/ratelimit's configuration, read as its files are written, and its descriptor
// matching: which rate limit a request descriptor gets, and the store key it is counted under.
//
// A directory holds one YAML file per domain (`domain`, `descriptors` with `key`, `value`,
// nested `descriptors`, `rate_limit: {unit, requests_per_unit, unlimited, name, replaces}`,
// `shadow_mode`, `quota_mode`, `detailed_metric`, `value_to_metric`, `share_threshold`,
// `metadata`). sluice adds three fields to `rate_limit`: `algorithm` (default sliding_log),
// `window` (any duration, instead of `unit`) and `on_failure`. Errors read
// `<file>:<line>: <field path>: <problem>`, as the rest of the config's do. docs/DESIGN.md,
// "The Envoy configuration", gives the matching rules and the store key.
//
//   auto config = load_envoy_config("/etc/sluice/envoy");
//   const envoy_entry entries[] = {{"remote_address", "203.0.113.9"}};
//   envoy_match m = config->match("edge", entries);
//   if (m.status == envoy_match_status::limited) { /* decide on m.store_key */ }
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/error.h"
#include "sluice/limit.h"
#include "sluice/limiter.h"

namespace sluice::server {

// A time unit of envoyproxy/ratelimit. The values are the RLS protocol's
// (RateLimitResponse.RateLimit.Unit), so a gRPC response can take them by a cast.
enum class envoy_unit : std::uint8_t {
  unknown = 0,  // a sluice `window` that is no single unit
  second = 1,
  minute = 2,
  hour = 3,
  day = 4,
  month = 5,
  year = 6,
  week = 7,
};

// Returns the unit's name as the RLS protocol spells it: "SECOND", ..., "UNKNOWN".
std::string_view to_string(envoy_unit u) noexcept;

// Returns the unit's length as envoyproxy/ratelimit counts it (utils.UnitToDivider): a week
// is 7 days, a month 30 days, a year 365 days; 0 for `unknown`.
std::chrono::microseconds window_of(envoy_unit u) noexcept;

// One `rate_limit` block, with the descriptor fields that apply to it. Plain value.
struct envoy_rate_limit {
  std::string name;                   // `name`, which `replaces` refers to; may be empty
  std::vector<std::string> replaces;  // names of the rate limits this one replaces
  // For the RLS response: `unit`, or the unit a sluice `window` equals (else unknown).
  envoy_unit unit = envoy_unit::unknown;
  std::uint32_t requests_per_unit = 0;
  std::chrono::microseconds window{0};  // the unit's length, or sluice's `window`
  // requests_per_unit per window; empty when `unlimited` or `requests_per_unit` is 0.
  std::optional<sluice::limit> limit;
  sluice::algorithm algorithm = sluice::algorithm::sliding_log;  // sluice's `algorithm`
  std::optional<failure_mode> on_failure;  // sluice's `on_failure`; empty: the server's
  bool unlimited = false;                  // every request is allowed, nothing is counted
  bool shadow = false;                     // the descriptor's `shadow_mode`
  bool quota = false;                      // the descriptor's `quota_mode`
  bool detailed_metric = false;            // the descriptor's `detailed_metric`
  // envoyproxy's metric key of the rule: the domain and each level's `key` or `key_value`,
  // joined by dots (`messaging.message_type_marketing.to_number`).
  std::string stats_key;
  std::string domain;  // the `domain` of its file: the prefix of stats_key, before a dot
  std::string source;  // `<file>:<line>` of the `rate_limit` block, for logs

  // Returns whether every request is over the limit: `requests_per_unit: 0` (envoyproxy's
  // README, example 3, blocks an address so). No store call is needed to decide.
  bool denies_all() const noexcept { return !unlimited && requests_per_unit == 0; }
};

// One (key, value) entry of a request descriptor. Borrowed; any bytes.
struct envoy_entry {
  std::string_view key;
  std::string_view value;
};

enum class envoy_match_status : std::uint8_t {
  limited,         // a rate limit applies: decide on `store_key`
  unlimited,       // a rate limit with `unlimited: true` applies: allow, count nothing
  no_match,        // the domain has no rate limit for this descriptor: allow
  unknown_domain,  // no file has this domain: allow
  replaced,        // limited, but another match of the request replaces it (apply_replaces)
};

// Returns the status's name: "limited", "unlimited", "no_match", "unknown_domain", "replaced".
std::string_view to_string(envoy_match_status s) noexcept;

// What one request descriptor matched. `rate_limit` points into the configuration that made
// the match and is valid while a copy of that configuration lives.
struct envoy_match {
  envoy_match_status status = envoy_match_status::no_match;
  const envoy_rate_limit* rate_limit = nullptr;  // set unless no_match or unknown_domain
  std::string store_key;                         // set when limited (and kept when replaced)
};

// Store keys longer than this are replaced by a hash of themselves (envoy_store_key).
inline constexpr std::size_t max_envoy_literal_key = 512;

// Returns the store key of a descriptor's counter: `envoy/`, then the domain and each entry's
// key and value, each as `<length>:<bytes>`:
//   envoy/9:messaging|9:to_number=10:2061111111
// Any bytes may appear; the lengths keep every key unambiguous. A key that would be longer
// than `max_envoy_literal_key` bytes is `envoy/sha256:<64 hex digits>` of it instead.
// `envoy_config::match` builds the same key, with the wildcard in place of the value where
// `share_threshold` applies.
std::string envoy_store_key(std::string_view domain, std::span<const envoy_entry> entries);

// Marks as `replaced` each limited match whose rate limit's name is in the `replaces` of
// another match of the same request (limited, unlimited or itself replaced), as envoyproxy
// does across the descriptors of one RateLimitRequest. Allocates only when some match
// replaces another.
void apply_replaces(std::span<envoy_match> matches);

// A loaded configuration: domains, each a tree of descriptors. Immutable once loaded, so
// thread-safe; copies share the tree (a reload builds a new one and swaps it in).
class envoy_config {
 public:
  // An empty configuration: every domain is unknown.
  envoy_config();

  // Returns what `entries`, one descriptor of a request to `domain`, matches: envoyproxy's
  // rules (docs/DESIGN.md, "The Envoy configuration"). At each level the entry's exact
  // key and value win, then the first wildcard value (in file order) that matches, then the
  // key without a value; a rate limit applies only at the level of the last entry. Walks no
  // more levels than the domain's tree has and allocates only the store key of a limited
  // match.
  envoy_match match(std::string_view domain, std::span<const envoy_entry> entries) const;

  // Returns whether some file defines `domain`.
  bool has_domain(std::string_view domain) const noexcept;
  // Returns the domains, sorted.
  std::vector<std::string_view> domains() const;
  // Returns every rate limit, in file order (files sorted by name).
  std::span<const envoy_rate_limit> rate_limits() const noexcept;
  // Returns the names of the files read, in the order read.
  std::span<const std::string> files() const noexcept;

  struct data;  // the trees; defined in envoy_config.cc

 private:
  explicit envoy_config(std::shared_ptr<const data> d) : data_(std::move(d)) {}
  friend struct envoy_config_builder;

  std::shared_ptr<const data> data_;
};

// One file's name (for messages) and text.
struct envoy_config_file {
  std::string name;
  std::string text;
};

// Returns the configuration of `files`, one domain each, in the order given; fails with a
// `<name>:<line>: <field path>: <problem>` detail at the first problem, e.g.
// `edge.yaml:7: descriptors[1].rate_limit.unit: "seconds" is not a unit; use second, ...`.
result<envoy_config> parse_envoy_config(std::span<const envoy_config_file> files);

// The same for one file's text.
result<envoy_config> parse_envoy_config(std::string_view yaml,
                                        const std::string& name = "envoy.yaml");

// Returns the configuration of every `*.yaml` and `*.yml` file directly in `dir` (sorted by
// name; subdirectories and names starting with `.` skipped; symbolic links followed, as a
// Kubernetes ConfigMap mounts them). Fails on a directory that does not exist or holds no
// such file, on a file over 16 MiB, on two files with one domain, and on any problem
// `parse_envoy_config` reports.
result<envoy_config> load_envoy_config(const std::filesystem::path& dir);

}  // namespace sluice::server
