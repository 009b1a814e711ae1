// The decision side of Envoy's rate limit service: a ShouldRateLimit request's descriptors
// matched against the Envoy configuration (envoy_config.h), decided all or nothing by the
// limiter, and answered with Envoy's statuses and the IETF RateLimit header fields.
#include "server/rls.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "server/envoy_config.h"
#include "server/headers.h"

namespace sluice::server {
namespace {

using std::chrono::microseconds;
namespace core_v3 = envoy::config::core::v3;

// The most descriptors, and entries per descriptor, one request may carry. Envoy sends a
// handful; more is a broken or hostile client, answered INVALID_ARGUMENT.
constexpr int kMaxDescriptors = 64;
constexpr int kMaxEntries = 32;

// What one descriptor of a request asks, and how it is answered.
struct asked {
  envoy_match match;
  const policy* p = nullptr;               // limited: the policy deciding it
  std::shared_ptr<const policy> override;  // the descriptor's own limit, when it has one
  std::string override_key;
  std::int64_t cost = 1;
  bool impossible = false;       // cost above the limit: over the limit, whatever the state
  std::size_t item = 0;          // its index among the limiter's items
  rls_series* counts = nullptr;  // where its hits are counted, when limited and counted
};

// Returns the series that counts the hits of descriptor `d` of a request to `domain`, which
// matched `m`: its rule's (with detailed_metric, its entries'), or for a descriptor with its
// own limit and no rule the domain's `_override_`; nullptr when nothing limits it.
rls_series* counts_of(const rls_counters& c, std::string_view domain, const envoy_match& m,
                      bool has_override,
                      const envoy::extensions::common::ratelimit::v3::RateLimitDescriptor& d) {
  const bool limited = m.status == envoy_match_status::limited;
  if (!limited && !has_override) return nullptr;
  rls_rule_counters* rule = m.rate_limit != nullptr ? c.rule(*m.rate_limit) : nullptr;
  if (rule == nullptr && has_override) rule = &c.domain(domain).overrides();
  if (rule == nullptr) return nullptr;
  if (!rule->detailed()) return &rule->series({});
  std::vector<envoy_entry> entries;
  entries.reserve(static_cast<std::size_t>(d.entries_size()));
  for (const auto& e : d.entries()) entries.push_back({e.key(), e.value()});
  return &rule->series(entries);
}

// Returns the sluice limit of a descriptor's limit override, if it names one.
std::optional<sluice::limit> override_limit(
    const envoy::extensions::common::ratelimit::v3::RateLimitDescriptor::RateLimitOverride& o) {
  const microseconds w = window_of(static_cast<envoy_unit>(o.unit()));
  if (w.count() == 0 || o.requests_per_unit() == 0) return std::nullopt;
  auto l = make_limit(o.requests_per_unit(), w);
  if (!l) return std::nullopt;
  return *l;
}

void add_header(rls::RateLimitResponse* response, std::string_view name, std::string value) {
  core_v3::HeaderValue* h = response->add_response_headers_to_add();
  h->set_key(std::string(name));
  h->set_value(std::move(value));
}

// Returns the unit a window equals, for a response's current_limit; unknown for others.
envoy_unit unit_of(microseconds w) {
  for (const envoy_unit u :
       {envoy_unit::second, envoy_unit::minute, envoy_unit::hour, envoy_unit::day, envoy_unit::week,
        envoy_unit::month, envoy_unit::year}) {
    if (window_of(u) == w) return u;
  }
  return envoy_unit::unknown;
}

// Returns the RateLimit-Policy item of `name`: `ratelimit_policy_field`, also for a count of
// 0 (a rate limit that denies everything), which no `limit` can hold.
std::string policy_item(std::string_view name, std::int64_t count, microseconds window) {
  if (auto l = make_limit(count, window)) return ratelimit_policy_field(name, *l);
  const std::int64_t w = std::max<std::int64_t>(1, (window.count() + 999999) / 1000000);
  return sf_string(name) + ";q=" + std::to_string(count) + ";w=" + std::to_string(w);
}

// Fills `response` from the decisions of the limited descriptors, and counts their hits.
void respond(const std::vector<asked>& asks, const std::vector<decision>& ds, bool impossible,
             rls::RateLimitResponse* response) {
  bool over = impossible;
  // Whether the request spent: else a decision that allows says what is left before its hits.
  const bool admitted =
      !impossible && std::all_of(ds.begin(), ds.end(), [](const decision& d) { return d.allowed; });
  std::string policies, fields;
  microseconds longest{0};
  for (const asked& a : asks) {
    rls::RateLimitResponse::DescriptorStatus* st = response->add_statuses();
    st->set_code(rls::RateLimitResponse::OK);
    const envoy_rate_limit* rl = a.match.rate_limit;
    const bool denies_all = a.override == nullptr &&
                            a.match.status == envoy_match_status::limited && rl != nullptr &&
                            rl->denies_all();
    if (a.p == nullptr && !denies_all) continue;  // nothing limits it
    rls::RateLimitResponse::RateLimit* cl = st->mutable_current_limit();
    std::string name;
    std::int64_t count = 0;
    microseconds window{0};
    bool shadow = false;
    if (a.override) {
      count = a.override->limit.count;
      window = a.override->limit.window;
      cl->set_requests_per_unit(static_cast<std::uint32_t>(count));
      cl->set_unit(static_cast<rls::RateLimitResponse::RateLimit::Unit>(unit_of(window)));
      shadow = a.override->shadow;
      name = rl != nullptr && !rl->name.empty() ? rl->name : "override";
    } else {
      count = rl->requests_per_unit;
      window = rl->window;
      cl->set_name(rl->name);
      cl->set_requests_per_unit(rl->requests_per_unit);
      cl->set_unit(static_cast<rls::RateLimitResponse::RateLimit::Unit>(rl->unit));
      shadow = rl->shadow;
      name = rl->name.empty() ? rl->stats_key : rl->name;
    }
    decision d;
    d.limit = count;
    if (denies_all || a.impossible) {
      // Over the limit whatever the state: a limit of 0, or a cost above the limit.
      d.allowed = false;
      d.retry_after = window;
      d.reset_after = window;
    } else {
      d = ds[a.item];
    }
    if (!d.allowed && !shadow) {
      st->set_code(rls::RateLimitResponse::OVER_LIMIT);
      over = true;
      longest = std::max(longest, d.retry_after);
    }
    if (a.counts != nullptr) {
      // A shadow limit's denial comes back allowed, from `decision_source::shadow`.
      const bool denied = !d.allowed || d.source == decision_source::shadow;
      std::int64_t used = 0;
      if (!denied) {
        used = count - std::clamp<std::int64_t>(d.remaining, 0, count) +
               (admitted ? 0 : std::min(a.cost, count));
      }
      a.counts->add(split_hits(a.cost, count, used, denied, shadow));
    }
    st->set_limit_remaining(static_cast<std::uint32_t>(
        std::clamp<std::int64_t>(d.remaining, 0, std::numeric_limits<std::uint32_t>::max())));
    const microseconds until = d.allowed ? d.reset_after : d.retry_after;
    st->mutable_duration_until_reset()->set_seconds(until.count() / 1000000);
    st->mutable_duration_until_reset()->set_nanos(
        static_cast<std::int32_t>(until.count() % 1000000 * 1000));
    if (!policies.empty()) {
      policies += ", ";
      fields += ", ";
    }
    policies += policy_item(name, count, window);
    fields += ratelimit_field(name, d);
  }
  response->set_overall_code(over ? rls::RateLimitResponse::OVER_LIMIT
                                  : rls::RateLimitResponse::OK);
  if (!policies.empty()) {
    add_header(response, "RateLimit-Policy", std::move(policies));
    add_header(response, "RateLimit", std::move(fields));
  }
  if (over) {
    decision d;
    d.retry_after = longest;
    add_header(response, "Retry-After", std::to_string(retry_after_field(d)));
  }
}

// Counts an answered call by its overall code, when counting.
void count_answer(rls_domain_counters* requests, const rls::RateLimitResponse& response) {
  if (requests == nullptr) return;
  requests->count(response.overall_code() == rls::RateLimitResponse::OVER_LIMIT
                      ? rls_code::over_limit
                      : rls_code::ok);
}

}  // namespace

// The policies of one loaded configuration: one per rate limit, unscoped (a match's store
// key is complete), so the limiter's calls can point at them while the configuration lives.
struct envoy_rls_handler::loaded {
  envoy_config config;
  std::unordered_map<const envoy_rate_limit*, policy> policies;
  std::shared_ptr<const rls_counters> counters;  // nullptr: nothing is counted

  loaded(envoy_config c, failure_mode on_failure, rls_metrics* metrics) : config(std::move(c)) {
    if (metrics != nullptr) counters = metrics->install(config);
    for (const envoy_rate_limit& rl : config.rate_limits()) {
      if (!rl.limit) continue;
      policy p;
      p.limit = *rl.limit;
      p.algorithm = rl.algorithm;
      p.on_failure = rl.on_failure.value_or(on_failure);
      p.shadow = rl.shadow;
      policies.emplace(&rl, std::move(p));
    }
  }
};

envoy_rls_handler::envoy_rls_handler(envoy_config config, failure_mode on_failure,
                                     sluice::limiter& lim, rls_metrics* metrics)
    : lim_(lim),
      on_failure_(on_failure),
      metrics_(metrics),
      current_(std::make_shared<loaded>(std::move(config), on_failure, metrics)) {}

envoy_rls_handler::~envoy_rls_handler() = default;

std::shared_ptr<const envoy_rls_handler::loaded> envoy_rls_handler::snapshot() const {
  const std::lock_guard lock(mu_);
  return current_;
}

result<std::size_t> envoy_rls_handler::reload(const std::string& dir) {
  auto config = load_envoy_config(dir);
  if (!config) return fail(config.error());
  const std::size_t files = config->files().size();
  auto next = std::make_shared<loaded>(std::move(*config), on_failure_, metrics_);
  const std::lock_guard lock(mu_);
  current_ = std::move(next);
  return files;
}

void envoy_rls_handler::should_rate_limit(const rls::RateLimitRequest& request,
                                          rls::RateLimitResponse* response, rls_done done) {
  std::shared_ptr<const loaded> cfg = snapshot();
  rls_domain_counters* requests =
      cfg->counters ? &cfg->counters->domain(request.domain()) : nullptr;
  const auto refuse = [&](grpc::Status status) {
    if (requests != nullptr) requests->count(rls_code::invalid_argument);
    done(std::move(status));
  };
  if (request.descriptors_size() > kMaxDescriptors) {
    return refuse(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     "at most " + std::to_string(kMaxDescriptors) + " descriptors per request"));
  }
  const std::int64_t hits = request.hits_addend() == 0 ? 1 : request.hits_addend();
  auto asks =
      std::make_shared<std::vector<asked>>(static_cast<std::size_t>(request.descriptors_size()));
  std::vector<envoy_match> matches;
  matches.reserve(asks->size());
  std::vector<envoy_entry> entries;
  for (int i = 0; i < request.descriptors_size(); ++i) {
    const auto& d = request.descriptors(i);
    if (d.entries_size() > kMaxEntries) {
      return refuse(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "descriptor " + std::to_string(i) + " has " +
                                     std::to_string(d.entries_size()) + " entries; at most " +
                                     std::to_string(kMaxEntries)));
    }
    entries.clear();
    for (const auto& e : d.entries()) entries.push_back({e.key(), e.value()});
    asked& a = (*asks)[static_cast<std::size_t>(i)];
    a.cost = d.has_hits_addend()
                 ? static_cast<std::int64_t>(std::min<std::uint64_t>(
                       d.hits_addend().value(),
                       static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())))
                 : hits;
    matches.push_back(cfg->config.match(request.domain(), entries));
    if (d.has_limit()) {
      if (auto l = override_limit(d.limit())) {
        // The descriptor's own limit replaces the configured one (a matched one, or none).
        auto p = std::make_shared<policy>();
        p->limit = *l;
        p->on_failure = on_failure_;
        if (const envoy_rate_limit* rl = matches.back().rate_limit) {
          p->algorithm = rl->algorithm;
          p->shadow = rl->shadow;
          if (rl->on_failure) p->on_failure = *rl->on_failure;
        }
        a.override_key = envoy_store_key(request.domain(), entries) + "#" +
                         std::to_string(d.limit().requests_per_unit()) + "/" +
                         std::to_string(static_cast<int>(d.limit().unit()));
        a.override = std::move(p);
      }
    }
  }
  apply_replaces(matches);

  std::vector<spend> items;
  bool impossible = false;
  for (std::size_t i = 0; i < asks->size(); ++i) {
    asked& a = (*asks)[i];
    a.match = std::move(matches[i]);
    const bool limited = a.match.status == envoy_match_status::limited;
    if (cfg->counters) {
      a.counts = counts_of(*cfg->counters, request.domain(), a.match, a.override != nullptr,
                           request.descriptors(static_cast<int>(i)));
    }
    if (a.override) {
      a.p = a.override.get();
    } else if (limited && a.match.rate_limit->denies_all()) {
      impossible = impossible || !a.match.rate_limit->shadow;
      continue;
    } else if (limited) {
      a.p = &cfg->policies.at(a.match.rate_limit);
    }
    if (a.p == nullptr) continue;
    if (a.cost > a.p->limit.count) {
      a.impossible = true;
      impossible = impossible || !a.p->shadow;
      continue;
    }
    a.item = items.size();
    items.push_back(
        {a.p, a.override ? std::string_view(a.override_key) : std::string_view(a.match.store_key),
         a.cost});
  }
  // One descriptor given twice counts twice on one key: together its costs may be more than
  // its limit, which no state can admit.
  for (std::size_t i = 0; i < asks->size(); ++i) {
    asked& a = (*asks)[i];
    if (a.p == nullptr || a.impossible || a.item >= items.size() || items[a.item].p != a.p) {
      continue;
    }
    std::int64_t together = 0;
    for (const spend& s : items) {
      if (s.key == items[a.item].key) together += s.cost;
    }
    if (together > a.p->limit.count) {
      a.impossible = true;
      impossible = impossible || !a.p->shadow;
    }
  }
  for (const asked& a : *asks) {
    if (a.impossible && a.p != nullptr && a.item < items.size() && items[a.item].p == a.p) {
      items[a.item].cost = 0;  // a shadow limit's too: it never denies, and spends nothing
    }
  }
  // A request that cannot be admitted (a limit of 0, a cost above a limit) spends nothing:
  // its other limits are only looked at.
  if (impossible) {
    for (spend& s : items) s.cost = 0;
  }
  if (items.empty()) {
    respond(*asks, {}, impossible, response);
    count_answer(requests, *response);
    return done(grpc::Status::OK);
  }
  lim_.async_acquire_all(items, [cfg, asks, impossible, requests, response, done = std::move(done)](
                                    result<std::vector<decision>> got) mutable {
    if (!got) {
      if (requests != nullptr) requests->count(rls_code::unavailable);
      return done(grpc::Status(grpc::StatusCode::UNAVAILABLE, got.error().message()));
    }
    respond(*asks, *got, impossible, response);
    count_answer(requests, *response);
    done(grpc::Status::OK);
  });
}

std::unique_ptr<envoy_rls_handler> make_rls_handler(const server_config& config,
                                                    sluice::limiter& lim, metrics& m) {
  if (config.envoy_config.empty()) return nullptr;
  auto loaded = load_envoy_config(config.envoy_config);
  if (!loaded) throw std::runtime_error("envoy_config: " + loaded.error().message());
  return std::make_unique<envoy_rls_handler>(std::move(*loaded), failure_mode::allow, lim,
                                             &m.rls());
}

}  // namespace sluice::server
