#include "sluice/limiter.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/striped.h"
#include "core/text.h"
#include "limiter/deny_cache.h"
#include "sluice/algorithms.h"

namespace sluice {
namespace {

using internal::quote;
using internal::valid_policy_name;
using std::chrono::microseconds;

// The store key of `key` under policy `scope`: `scope:key`, or `key` when unscoped. Short
// keys are built on the stack so that a decision allocates nothing.
class scoped_key {
 public:
  scoped_key(std::string_view scope, std::string_view key) {
    if (scope.empty()) {
      view_ = key;
      return;
    }
    const std::size_t n = scope.size() + 1 + key.size();
    char* out = n <= small_.size() ? small_.data() : (large_.resize(n), large_.data());
    std::memcpy(out, scope.data(), scope.size());
    out[scope.size()] = ':';
    if (!key.empty()) std::memcpy(out + scope.size() + 1, key.data(), key.size());
    view_ = std::string_view(out, n);
  }
  scoped_key(const scoped_key&) = delete;
  scoped_key& operator=(const scoped_key&) = delete;

  std::string_view view() const { return view_; }

 private:
  std::array<char, 256> small_;
  std::string large_;
  std::string_view view_;
};

unexpected<error> unknown(std::string_view name) {
  return make_error(errc::unknown_policy,
                    "no policy named \"" + std::string(name.substr(0, 64)) + "\"");
}

std::string describe_error(const error& e) {
  std::string out = e.code.message();
  if (!e.detail.empty()) out += " (" + e.detail + ")";
  return out;
}

std::string_view consequence(failure_mode m) {
  switch (m) {
    case failure_mode::allow:
      return "failed open (on_failure: allow)";
    case failure_mode::deny:
      return "failed closed (on_failure: deny)";
    case failure_mode::local:
      return "decided in-process (on_failure: local)";
  }
  return "?";
}

constexpr std::int64_t kNever = std::numeric_limits<std::int64_t>::min();

// The most circuit breakers a limiter keeps; a store with more failure domains shares them.
constexpr std::size_t kMaxBreakers = 1024;

}  // namespace

result<failure_mode> parse_failure_mode(std::string_view name) {
  for (const auto m : {failure_mode::allow, failure_mode::deny, failure_mode::local}) {
    if (name == to_string(m)) return m;
  }
  return make_error(errc::invalid_policy,
                    "failure mode " + quote(name) + ": use allow, deny or local");
}

std::optional<failure_mode> fallback_of(decision_source s) noexcept {
  switch (s) {
    case decision_source::fallback_allow:
      return failure_mode::allow;
    case decision_source::fallback_deny:
      return failure_mode::deny;
    case decision_source::fallback_local:
      return failure_mode::local;
    case decision_source::store:
    case decision_source::shadow:
    case decision_source::deny_cache:
      break;
  }
  return std::nullopt;
}

std::string_view to_string(failure_mode m) noexcept {
  switch (m) {
    case failure_mode::allow:
      return "allow";
    case failure_mode::deny:
      return "deny";
    case failure_mode::local:
      return "local";
  }
  return "unknown";
}

// What the limiter needs when the store fails, on the heap so that it stays put while
// async completions point at it and at its domains. Thread-safe.
struct limiter::failover {
  // One part of the store that fails on its own: its breaker, and its last error for the
  // warnings while that breaker is open. Never moves once built.
  struct domain {
    domain(std::size_t i, const breaker_options& o, const clock& c) : index(i), breaker(o, c) {}

    const std::size_t index;
    circuit_breaker breaker;
    std::mutex last_error_mu;
    std::string last_error;  // the last store failure here
  };

  failover(const limiter_options& o, sluice::store* s)
      : time(o.time_source != nullptr ? o.time_source : &system_clock()),
        remote(s),
        domains(make_domains(o, *s, *time)),
        single(domains.size() == 1),
        local(local_options(o, *time)),
        cache(o.deny_cache_max_keys > 0
                  ? std::make_unique<internal::deny_cache>(o.deny_cache_max_keys)
                  : nullptr),
        warn(o.warn),
        warn_interval(std::chrono::duration_cast<microseconds>(o.warn_interval).count()) {}

  static std::vector<std::unique_ptr<domain>> make_domains(const limiter_options& o,
                                                           const sluice::store& s, const clock& c) {
    const std::size_t n = std::clamp<std::size_t>(s.failure_domains(), 1, kMaxBreakers);
    std::vector<std::unique_ptr<domain>> out;
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i) out.push_back(std::make_unique<domain>(i, o.breaker, c));
    return out;
  }

  static memory_store_options local_options(const limiter_options& o, const clock& c) {
    memory_store_options l = o.local;
    l.time_source = &c;
    return l;
  }

  // Returns the domain that holds `store_key` now. A store with one domain is not asked; a
  // domain out of range (a store that breaks its contract) folds back into range.
  domain& domain_of(std::string_view store_key) const noexcept {
    if (single) return *domains.front();
    const std::size_t d = remote->failure_domain(store_key);
    return *domains[d < domains.size() ? d : d % domains.size()];
  }

  void count(const decision& d) noexcept { counters.add(d.allowed ? kAllowed : kDenied); }

  // Returns the deny cache's answer to `r` under `p` at `at`, counted and shadowed as the
  // store's would be, or nothing; `*t` is then the ticket to record the store's answer with,
  // or nothing when `p` does not use the cache (or `r` is bad input, the store's to refuse).
  std::optional<decision> cached(const policy& p, const request& r, microseconds at,
                                 std::optional<internal::deny_cache::ticket>& t) noexcept {
    if (!p.deny_cache || !cache || !request_in_range(r.limit, r.cost, at)) return std::nullopt;
    t = cache->locate(r.key);
    std::optional<decision> hit = cache->find(*t, r.key, r.limit, r.algorithm, r.cost, at);
    if (!hit) return std::nullopt;
    count(*hit);
    return shadowed(p, *hit);
  }

  // Keeps the store's answer `got` to `r` in the deny cache when it is a denial. `now` is
  // the request's explicit time, else the limiter's clock is read now: when the answer came
  // back, so the wait runs from a little after the store decided (by the round trip).
  void remember(const std::optional<internal::deny_cache::ticket>& t, const policy& p,
                const request& r, const result<decision>& got) noexcept {
    if (!t || !got || got->allowed) return;
    const microseconds at = r.now ? *r.now : time->now();
    cache->record(*t, r.key, r.limit, r.algorithm, r.cost, *got, at, hits_for(p.name));
  }

  // Clears `store_key` from the deny cache: a reset or a refund made through this limiter.
  void forget(std::string_view store_key) noexcept {
    if (cache) cache->erase(store_key);
  }

  // Returns the hit counter of policies named `name`: a registered one's, else the inline
  // policies' counter.
  std::atomic<std::uint64_t>* hits_for(std::string_view name) noexcept {
    const auto it = hits_by_policy.find(name);
    return it == hits_by_policy.end() ? &inline_hits : it->second.get();
  }

  // Records a failed store call in `d`: counts it, tells the breaker, keeps the message for
  // the warnings that follow while the breaker is open.
  void store_failed(domain& d, const error& e) {
    counters.add(kStoreErrors);
    d.breaker.on_failure();
    if (warn) {
      std::string text = describe_error(e);
      const std::lock_guard lock(d.last_error_mu);
      d.last_error = std::move(text);
    }
  }

  // Returns how long a denied caller should wait: until `d`'s breaker lets a probe through.
  static microseconds deny_wait(const domain& d) noexcept {
    if (d.breaker.state() != breaker_state::open) return std::chrono::seconds(1);
    return std::max<microseconds>(d.breaker.next_probe_in(), std::chrono::milliseconds(1));
  }

  // Returns the failure mode's decision for `r`, or the error of bad input. `cause` is the
  // store's error, or null when the breaker of `dom` kept the store out of the call.
  result<decision> fall_back(domain& dom, const policy& p, const request& r, mode m,
                             const error* cause) {
    const microseconds now = r.now ? *r.now : time->now();
    if (auto ok = check_request(r.limit, r.cost, now); !ok) return fail(ok.error());
    decision d;
    switch (p.on_failure) {
      case failure_mode::allow:
        d = {true,
             r.limit.count,
             r.limit.count,
             microseconds(0),
             microseconds(0),
             decision_source::fallback_allow};
        counters.add(kFallbacksAllow);
        break;
      case failure_mode::deny: {
        const microseconds wait = deny_wait(dom);
        d = {false, r.limit.count, 0, wait, wait, decision_source::fallback_deny};
        counters.add(kFallbacksDeny);
        break;
      }
      case failure_mode::local: {
        result<decision> l = m == mode::acquire ? local.acquire(r) : local.peek(r);
        if (!l) return l;
        d = *l;
        d.source = decision_source::fallback_local;
        counters.add(kFallbacksLocal);
        break;
      }
    }
    count(d);
    warn_about(dom, p, cause);
    return shadowed(p, d);
  }

  // Returns `d` as a shadow policy answers it: a denial becomes an admission, marked.
  static decision shadowed(const policy& p, decision d) noexcept {
    if (p.shadow && !d.allowed) {
      d.allowed = true;
      d.retry_after = microseconds(0);
      d.source = decision_source::shadow;
    }
    return d;
  }

  // Settles a reset's result with the breaker of `dom`, the one that let the call through.
  void settle_reset(domain& dom, const result<void>& r) {
    if (r) {
      dom.breaker.on_success();
    } else if (is_store_failure(r.error().code)) {
      store_failed(dom, r.error());
    } else {
      dom.breaker.on_abandoned();
    }
  }

  // Settles a refund's result with the breaker of `dom`: the store's answer, or its error
  // (a refund has no failure mode: what it would give back stays spent).
  result<decision> settle_refund(domain& dom, result<decision> got) {
    if (got) {
      dom.breaker.on_success();
      got->source = decision_source::store;
    } else if (is_store_failure(got.error().code)) {
      store_failed(dom, got.error());
    } else {
      dom.breaker.on_abandoned();
    }
    return got;
  }

  // Settles a store call's result: tells the breaker of `dom` (the one that let the call
  // through), and falls back on a store failure.
  result<decision> settle(domain& dom, const policy& p, const request& r, mode m,
                          result<decision> got) {
    if (got) {
      dom.breaker.on_success();
      count(*got);
      got->source = decision_source::store;
      return shadowed(p, *got);
    }
    if (!is_store_failure(got.error().code)) {
      dom.breaker.on_abandoned();
      return got;
    }
    store_failed(dom, got.error());
    return fall_back(dom, p, r, m, &got.error());
  }

  // The error of a reset that the breaker of `d` kept from the store.
  unexpected<error> breaker_open(const domain& d) const {
    return make_error(errc::store_unavailable, store_name(d) + " not called: circuit breaker open");
  }

  // Returns "store URI", with the failure domain when the store has more than one.
  std::string store_name(const domain& d) const {
    std::string out = "store " + remote->describe();
    if (!single) {
      out += " (failure domain " + std::to_string(d.index) + " of " +
             std::to_string(domains.size()) + ")";
    }
    return out;
  }

  // What the store says outside any call (store::set_listener): a domain that answers again
  // probes at once, a domain with no keys left has its breaker closed, a warning is passed on.
  void on_store_event(const store_event& e) {
    switch (e.what) {
      case store_event::kind::reachable:
        domains[e.domain % domains.size()]->breaker.probe_now();
        return;
      case store_event::kind::retired:
        domains[e.domain % domains.size()]->breaker.reset();
        return;
      case store_event::kind::warning:
        if (warn) warn("sluice: store " + remote->describe() + ": " + std::string(e.text));
        return;
    }
  }

  // Counts a fallback of `p` for the warnings, and calls `warn` when the last warning is
  // `warn_interval` old. One interval for all domains: a cluster losing a master warns once,
  // not once per master. A warning says what failed now (or, while the breaker keeps the
  // store out, the domain's last error), and how many fallbacks there were since the last
  // warning, by policy.
  void warn_about(domain& dom, const policy& p, const error* cause) {
    if (!warn) return;
    fallbacks_of(p.name).fetch_add(1, std::memory_order_relaxed);
    const std::int64_t now = time->now().count();
    std::int64_t last = last_warn_at.load(std::memory_order_relaxed);
    for (;;) {
      // A clock that stepped back before the last warning must not silence them.
      const bool due = last == kNever || now < last || now - last >= warn_interval;
      if (!due) return;
      if (last_warn_at.compare_exchange_weak(last, now, std::memory_order_relaxed)) break;
    }

    std::string text = "sluice: " + store_name(dom);
    if (cause != nullptr) {
      text += " failed: " + describe_error(*cause);
    } else {
      text += " not called: circuit breaker ";
      text += to_string(dom.breaker.state());
      const std::lock_guard lock(dom.last_error_mu);
      if (!dom.last_error.empty()) text += " after: " + dom.last_error;
    }
    text += "; policy ";
    text += p.name.empty() ? std::string("(inline)") : quote(p.name);
    text += ' ';
    text += consequence(p.on_failure);
    text += "; " + fallback_summary(last == kNever ? -1 : std::max<std::int64_t>(0, now - last));
    warn(text);
  }

  // Returns the fallbacks counted since the last warning, `ago` µs back (-1: there was
  // none), and takes them: "12 fallbacks in the last 10 s: policy "a" 8, "b" 4".
  std::string fallback_summary(std::int64_t ago) {
    std::vector<std::pair<std::uint64_t, std::string_view>> by_policy;
    std::uint64_t total = 0;
    const auto take = [&](std::string_view name, std::atomic<std::uint64_t>& n) {
      const std::uint64_t got = n.exchange(0, std::memory_order_relaxed);
      if (got == 0) return;
      total += got;
      by_policy.emplace_back(got, name);
    };
    for (const auto& [name, n] : fallbacks_by_policy) take(name, *n);
    take("(inline)", inline_fallbacks);
    std::sort(by_policy.begin(), by_policy.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    std::string out = std::to_string(total) + (total == 1 ? " fallback" : " fallbacks");
    if (ago < 0) {
      out += " so far";
    } else {
      out += " in the last " + std::to_string(ago / 1'000'000) + " s";
    }
    constexpr std::size_t kNamed = 8;  // a warning stays one line
    for (std::size_t i = 0; i < by_policy.size() && i < kNamed; ++i) {
      out += i == 0 ? ": policy " : ", ";
      const std::string_view name = by_policy[i].second;
      out += name == "(inline)" ? std::string(name) : quote(name);
      out += ' ' + std::to_string(by_policy[i].first);
    }
    if (by_policy.size() > kNamed) {
      out += " and " + std::to_string(by_policy.size() - kNamed) + " more policies";
    }
    return out;
  }

  // Returns the fallback counter of policies named `name` for the warnings: a registered
  // one's, else the inline policies' counter.
  std::atomic<std::uint64_t>& fallbacks_of(std::string_view name) noexcept {
    const auto it = fallbacks_by_policy.find(name);
    return it == fallbacks_by_policy.end() ? inline_fallbacks : *it->second;
  }

  const clock* time;
  sluice::store* remote;
  // Sized once, never resized: completions in flight point at the domains.
  const std::vector<std::unique_ptr<domain>> domains;
  const bool single;  // one domain: `failure_domain` is not called
  memory_store local;
  // The deny cache; null when `deny_cache_max_keys` is 0.
  const std::unique_ptr<internal::deny_cache> cache;
  // Its hits by registered policy name; filled by add_policy, before the limiter is shared.
  std::unordered_map<std::string, std::unique_ptr<std::atomic<std::uint64_t>>, name_hash,
                     std::equal_to<>>
      hits_by_policy;
  std::atomic<std::uint64_t> inline_hits{0};  // inline policies of names not registered
  const std::function<void(std::string_view)> warn;
  const std::int64_t warn_interval;  // µs

  // Bumped on every decision, so striped: each thread adds on cache lines of its own.
  enum counter : std::size_t {
    kAllowed,
    kDenied,
    kStoreErrors,
    kFallbacksAllow,
    kFallbacksDeny,
    kFallbacksLocal,
    kCounters
  };
  internal::striped_counters counters{kCounters};

  std::atomic<std::int64_t> last_warn_at{kNever};  // µs
  // Fallbacks since the last warning, by registered policy name (filled by add_policy,
  // before the limiter is shared) and for inline policies.
  std::unordered_map<std::string, std::unique_ptr<std::atomic<std::uint64_t>>, name_hash,
                     std::equal_to<>>
      fallbacks_by_policy;
  std::atomic<std::uint64_t> inline_fallbacks{0};
};

limiter::limiter(limiter_options options)
    : store_(std::move(options.store)),
      failover_(std::make_unique<failover>(options, store_.get())) {
  listen();
}

void limiter::listen() {
  failover* f = failover_.get();
  store_->set_listener([f](const store_event& e) { f->on_store_event(e); });
}

void limiter::stop_listening() noexcept {
  // The store may outlive this limiter (another owner holds it): it must not call into
  // the failover state once that is gone.
  if (store_) store_->set_listener({});
}

limiter::limiter(std::shared_ptr<sluice::store> s)
    : limiter([&] {
        limiter_options o;
        o.store = std::move(s);
        return o;
      }()) {}

limiter::~limiter() {
  stop_listening();
  // The store goes first: its destructor answers what is still in flight and joins its I/O
  // thread, and those completions reach the breakers, which must outlive them.
  store_.reset();
}
limiter::limiter(limiter&&) noexcept = default;

limiter& limiter::operator=(limiter&& other) noexcept {
  if (this == &other) return *this;
  stop_listening();
  store_.reset();  // as in the destructor: before the breakers its completions reach
  store_ = std::move(other.store_);
  failover_ = std::move(other.failover_);
  policies_ = std::move(other.policies_);
  return *this;
}

std::size_t limiter::breakers() const noexcept { return failover_->domains.size(); }

const circuit_breaker& limiter::breaker(std::size_t domain) const noexcept {
  const auto& d = failover_->domains;
  return d[domain % d.size()]->breaker;
}

limiter_stats limiter::stats() const noexcept {
  const failover& f = *failover_;
  limiter_stats s;
  s.allowed = f.counters.sum(failover::kAllowed);
  s.denied = f.counters.sum(failover::kDenied);
  s.decisions = s.allowed + s.denied;
  s.store_errors = f.counters.sum(failover::kStoreErrors);
  s.fallbacks_allow = f.counters.sum(failover::kFallbacksAllow);
  s.fallbacks_deny = f.counters.sum(failover::kFallbacksDeny);
  s.fallbacks_local = f.counters.sum(failover::kFallbacksLocal);
  s.breakers = f.domains.size();
  bool half_open = false;
  for (const auto& d : f.domains) {
    s.breaker_opened += d->breaker.stats().opened;
    const breaker_state state = d->breaker.state();
    if (state == breaker_state::closed) continue;
    ++s.breakers_open;
    half_open = half_open || state == breaker_state::half_open;
    if (state == breaker_state::open) s.breaker = breaker_state::open;
  }
  if (s.breaker != breaker_state::open && half_open) s.breaker = breaker_state::half_open;
  s.deny_cache_hits = f.inline_hits.load(std::memory_order_relaxed);
  for (const auto& [name, hits] : f.hits_by_policy) {
    s.deny_cache_hits += hits->load(std::memory_order_relaxed);
  }
  s.deny_cache_keys = f.cache ? f.cache->size() : 0;
  return s;
}

std::uint64_t limiter::deny_cache_hits(std::string_view policy_name) const noexcept {
  const auto& m = failover_->hits_by_policy;
  const auto it = m.find(policy_name);
  return it == m.end() ? 0 : it->second->load(std::memory_order_relaxed);
}

result<void> limiter::add_policy(policy p) {
  if (!valid_policy_name(p.name)) {
    return make_error(errc::invalid_policy, "policy name \"" + p.name.substr(0, 64) +
                                                "\": use 1 to 64 of A-Z a-z 0-9 _ . -");
  }
  if (auto ok = make_limit(p.limit.count, p.limit.window); !ok) {
    return make_error(errc::invalid_policy, "policy \"" + p.name + "\": " + ok.error().message());
  }
  if (policies_.contains(p.name)) {
    return make_error(errc::invalid_policy, "policy \"" + p.name + "\" is defined twice");
  }
  failover_->hits_by_policy.try_emplace(p.name, std::make_unique<std::atomic<std::uint64_t>>(0));
  failover_->fallbacks_by_policy.try_emplace(p.name,
                                             std::make_unique<std::atomic<std::uint64_t>>(0));
  std::string name = p.name;
  policies_.emplace(std::move(name), std::move(p));
  return {};
}

const policy* limiter::find_policy(std::string_view name) const noexcept {
  const auto it = policies_.find(name);
  return it == policies_.end() ? nullptr : &it->second;
}

result<decision> limiter::acquire(std::string_view policy_name, std::string_view key,
                                  std::int64_t cost) {
  const policy* p = find_policy(policy_name);
  if (p == nullptr) return unknown(policy_name);
  return acquire(*p, key, cost);
}

result<decision> limiter::peek(std::string_view policy_name, std::string_view key,
                               std::int64_t cost) {
  const policy* p = find_policy(policy_name);
  if (p == nullptr) return unknown(policy_name);
  return peek(*p, key, cost);
}

result<void> limiter::reset(std::string_view policy_name, std::string_view key) {
  const policy* p = find_policy(policy_name);
  if (p == nullptr) return unknown(policy_name);
  return reset(*p, key);
}

result<decision> limiter::decide(const policy& p, std::string_view key, std::int64_t cost,
                                 std::optional<std::chrono::microseconds> now, mode m) {
  if (key.empty()) return make_error(errc::invalid_key, "key is empty");
  const scoped_key k(p.name, key);
  const request r{k.view(), p.limit, p.algorithm, cost, now};
  failover& f = *failover_;
  std::optional<internal::deny_cache::ticket> ticket;
  if (p.deny_cache) {
    if (auto hit = f.cached(p, r, now ? *now : f.time->now(), ticket)) return *hit;
  }
  failover::domain& d = f.domain_of(r.key);
  if (!d.breaker.allow()) return f.fall_back(d, p, r, m, nullptr);
  result<decision> got = m == mode::acquire ? store_->acquire(r) : store_->peek(r);
  f.remember(ticket, p, r, got);
  return f.settle(d, p, r, m, std::move(got));
}

void limiter::async_decide(const policy& p, std::string_view key, std::int64_t cost, mode m,
                           completion done) {
  if (key.empty()) return done(make_error(errc::invalid_key, "key is empty"));
  const scoped_key k(p.name, key);
  const request r{k.view(), p.limit, p.algorithm, cost, {}};
  failover* f = failover_.get();
  std::optional<internal::deny_cache::ticket> ticket;
  if (p.deny_cache) {
    if (auto hit = f->cached(p, r, f->time->now(), ticket)) return done(*hit);
  }
  failover::domain* d = &f->domain_of(r.key);
  if (!d->breaker.allow()) return done(f->fall_back(*d, p, r, m, nullptr));
  // The store may complete after this frame is gone. Only the local fallback and the deny
  // cache need the key then; allow and deny decide from the limit alone.
  std::string owned =
      p.on_failure == failure_mode::local || ticket ? std::string(k.view()) : std::string();
  // The result goes to the breaker that let the call through, even if the key has moved to
  // another domain by then.
  completion settle = [f, d, pp = &p, cost, m, ticket, owned = std::move(owned),
                       done = std::move(done)](result<decision> got) {
    const request later{owned, pp->limit, pp->algorithm, cost, {}};
    f->remember(ticket, *pp, later, got);
    done(f->settle(*d, *pp, later, m, std::move(got)));
  };
  if (m == mode::acquire) {
    store_->async_acquire(r, std::move(settle));
  } else {
    store_->async_peek(r, std::move(settle));
  }
}

result<decision> limiter::acquire(const policy& p, std::string_view key, std::int64_t cost,
                                  std::optional<std::chrono::microseconds> now) {
  return decide(p, key, cost, now, mode::acquire);
}

result<decision> limiter::peek(const policy& p, std::string_view key, std::int64_t cost,
                               std::optional<std::chrono::microseconds> now) {
  return decide(p, key, cost, now, mode::peek);
}

result<void> limiter::reset(const policy& p, std::string_view key) {
  if (key.empty()) return make_error(errc::invalid_key, "key is empty");
  const scoped_key k(p.name, key);
  failover& f = *failover_;
  // State the local store kept through an outage goes too (a key too long for it has none).
  (void)f.local.reset(k.view());
  // The cached denial goes before the call, so that no later decision is answered from it,
  // and again after, so that none the store made before the reset is kept.
  f.forget(k.view());
  failover::domain& d = f.domain_of(k.view());
  if (!d.breaker.allow()) return f.breaker_open(d);
  result<void> r = store_->reset(k.view());
  f.forget(k.view());
  f.settle_reset(d, r);
  return r;
}

void limiter::async_reset(const policy& p, std::string_view key, reset_completion done) {
  if (key.empty()) return done(make_error(errc::invalid_key, "key is empty"));
  const scoped_key k(p.name, key);
  failover* f = failover_.get();
  (void)f->local.reset(k.view());
  f->forget(k.view());
  failover::domain* d = &f->domain_of(k.view());
  if (!d->breaker.allow()) return done(f->breaker_open(*d));
  std::string owned = f->cache ? std::string(k.view()) : std::string();
  store_->async_reset(k.view(),
                      [f, d, owned = std::move(owned), done = std::move(done)](result<void> r) {
                        f->forget(owned);
                        f->settle_reset(*d, r);
                        done(std::move(r));
                      });
}

// One acquire_all in progress: the items, their store keys, what has been decided, and the
// continuation. Shared by the store's completion and the shadow items' completions; the
// sync form runs the same steps with the store's sync calls, inline.
struct limiter::multi : std::enable_shared_from_this<multi> {
  limiter* lim;
  bool sync;
  std::optional<microseconds> now;
  std::vector<spend> items;                // keys point into `keys` once owned
  std::vector<std::string> keys;           // the store keys (policy:key), owned for async calls
  std::vector<std::string> raw_keys;       // the keys as given, for the shadow items' calls
  std::vector<std::size_t> enforced;       // items of policies that are not shadow
  std::vector<std::size_t> shadowing;      // items of shadow policies
  std::vector<failover::domain*> domains;  // the enforced items' domains, each once
  std::vector<decision> out;
  std::size_t shadow_left = 0;
  all_completion done;

  std::vector<request> requests(const std::vector<std::size_t>& which) const {
    std::vector<request> rs;
    rs.reserve(which.size());
    for (const std::size_t i : which) {
      const spend& it = items[i];
      rs.push_back({keys[i], it.p->limit, it.p->algorithm, it.cost, now});
    }
    return rs;
  }

  void start() {
    if (items.size() == 1) return decide_one();
    failover& f = *lim->failover_;
    if (enforced.empty()) return after_enforced(true);
    for (const std::size_t i : enforced) {
      failover::domain* d = &f.domain_of(keys[i]);
      if (std::find(domains.begin(), domains.end(), d) == domains.end()) domains.push_back(d);
    }
    for (std::size_t k = 0; k < domains.size(); ++k) {
      if (domains[k]->breaker.allow()) continue;
      for (std::size_t j = 0; j < k; ++j) domains[j]->breaker.on_abandoned();
      return fall_back(nullptr);
    }
    const std::vector<request> rs = requests(enforced);
    if (sync) return settle(lim->store_->acquire_all(rs));
    lim->store_->async_acquire_all(rs,
                                   [self = shared_from_this()](result<std::vector<decision>> got) {
                                     self->settle(std::move(got));
                                   });
  }

  // One limit is all or nothing by itself: it takes the single-key path, whose store call
  // is cheaper (on Redis a single-key script, which batches with the others) and which
  // decides exactly as the multi-key one would, fallbacks and shadow included.
  void decide_one() {
    const spend& it = items.front();
    const std::int64_t cost = std::max<std::int64_t>(it.cost, 1);
    const mode m = it.cost == 0 ? mode::peek : mode::acquire;
    auto one = [](result<decision> d) -> result<std::vector<decision>> {
      if (!d) return fail(d.error());
      return std::vector<decision>{*d};
    };
    if (sync) return finish(one(lim->decide(*it.p, raw_keys.front(), cost, now, m)));
    lim->async_decide(
        *it.p, raw_keys.front(), cost, m,
        [self = shared_from_this(), one](result<decision> d) { self->finish(one(std::move(d))); });
  }

  void settle(result<std::vector<decision>> got) {
    failover& f = *lim->failover_;
    if (got && got->size() == enforced.size()) {
      bool all = true;
      for (std::size_t k = 0; k < enforced.size(); ++k) {
        decision d = (*got)[k];
        d.source = decision_source::store;
        all = all && d.allowed;
        out[enforced[k]] = d;
      }
      count(all);
      for (failover::domain* d : domains) d->breaker.on_success();
      return after_enforced(all);
    }
    if (!got && !is_store_failure(got.error().code)) {
      for (failover::domain* d : domains) d->breaker.on_abandoned();
      return finish(fail(got.error()));
    }
    const error e =
        got ? make_error(errc::store_error, "acquire_all: " + std::to_string(got->size()) +
                                                " decisions for " +
                                                std::to_string(enforced.size()) + " requests")
                  .error()
            : got.error();
    for (failover::domain* d : domains) f.store_failed(*d, e);
    fall_back(&e);
  }

  // Every enforced item decided by its policy's failure mode, all or nothing. `cause` is the
  // store's error, or null when a breaker kept the store out of the call.
  void fall_back(const error* cause) {
    failover& f = *lim->failover_;
    const microseconds at = now ? *now : f.time->now();
    bool any_deny = false;
    std::vector<std::size_t> local;
    for (const std::size_t i : enforced) {
      const policy& p = *items[i].p;
      failover::domain& dom = f.domain_of(keys[i]);
      decision d;
      switch (p.on_failure) {
        case failure_mode::allow:
          d = {true,
               p.limit.count,
               p.limit.count,
               microseconds(0),
               microseconds(0),
               decision_source::fallback_allow};
          f.counters.add(failover::kFallbacksAllow);
          break;
        case failure_mode::deny: {
          const microseconds wait = failover::deny_wait(dom);
          d = {false, p.limit.count, 0, wait, wait, decision_source::fallback_deny};
          f.counters.add(failover::kFallbacksDeny);
          any_deny = true;
          break;
        }
        case failure_mode::local:
          local.push_back(i);
          f.counters.add(failover::kFallbacksLocal);
          continue;
      }
      out[i] = d;
    }
    bool all = !any_deny;
    if (!local.empty()) {
      std::vector<request> rs = requests(local);
      for (request& r : rs) r.now = at;
      result<std::vector<decision>> got;
      if (any_deny) {  // the request is denied: the local items are only looked at
        got = std::vector<decision>{};
        for (request r : rs) {
          r.cost = std::max<std::int64_t>(r.cost, 1);
          result<decision> d = f.local.peek(r);
          if (!d) {
            got = fail(d.error());
            break;
          }
          got->push_back(*d);
        }
      } else {
        got = f.local.acquire_all(rs);
      }
      if (!got) return finish(fail(got.error()));
      for (std::size_t k = 0; k < local.size(); ++k) {
        decision d = (*got)[k];
        d.source = decision_source::fallback_local;
        all = all && d.allowed;
        out[local[k]] = d;
      }
    }
    count(all);
    f.warn_about(f.domain_of(keys[enforced.front()]), *items[enforced.front()].p, cause);
    after_enforced(all);
  }

  // Counts each enforced item in the limiter's statistics as the request went: allowed
  // when it was admitted, denied when it was not (also the items that alone would pass).
  void count(bool admitted) {
    lim->failover_->counters.add(admitted ? failover::kAllowed : failover::kDenied,
                                 enforced.size());
  }

  // Decides the shadow items now that the rest is known: spent when it was admitted.
  void after_enforced(bool admitted) {
    if (shadowing.empty()) return finish(std::move(out));
    const mode m = admitted ? mode::acquire : mode::peek;
    if (sync) {
      for (const std::size_t i : shadowing) {
        const spend& it = items[i];
        result<decision> d = lim->decide(*it.p, raw_keys[i], std::max<std::int64_t>(it.cost, 1),
                                         now, it.cost == 0 ? mode::peek : m);
        if (!d) return finish(fail(d.error()));
        out[i] = *d;
      }
      return finish(std::move(out));
    }
    shadow_left = shadowing.size();
    for (const std::size_t i : shadowing) {
      const spend& it = items[i];
      lim->async_decide(*it.p, raw_keys[i], std::max<std::int64_t>(it.cost, 1),
                        it.cost == 0 ? mode::peek : m,
                        [self = shared_from_this(), i](result<decision> d) {
                          self->shadow_done(i, std::move(d));
                        });
    }
  }

  void shadow_done(std::size_t i, result<decision> d) {
    std::unique_lock lock(shadow_mu);
    if (!d && !failed) failed = d.error();
    if (d) out[i] = *d;
    if (--shadow_left > 0) return;
    lock.unlock();
    if (failed) return finish(fail(*failed));
    finish(std::move(out));
  }

  void finish(result<std::vector<decision>> r) {
    all_completion call = std::move(done);
    call(std::move(r));
  }

  std::mutex shadow_mu;
  std::optional<error> failed;
};

result<std::vector<decision>> limiter::acquire_all(std::span<const spend> items,
                                                   std::optional<std::chrono::microseconds> now) {
  result<std::vector<decision>> out = make_error(errc::store_error, "acquire_all: no answer");
  auto m =
      make_multi(items, now, true, [&out](result<std::vector<decision>> r) { out = std::move(r); });
  if (!m) return fail(m.error());
  (*m)->start();
  return out;
}

void limiter::async_acquire_all(std::span<const spend> items, all_completion done) {
  auto m = make_multi(items, {}, false, std::move(done));
  if (!m) return;  // `done` has been called with the error
  (*m)->start();
}

result<std::shared_ptr<limiter::multi>> limiter::make_multi(
    std::span<const spend> items, std::optional<std::chrono::microseconds> now, bool sync,
    all_completion done) {
  auto bad = [&done](unexpected<error> e) -> result<std::shared_ptr<multi>> {
    done(e);
    return e;
  };
  if (items.empty()) return bad(make_error(errc::invalid_cost, "acquire_all: no limits"));
  if (items.size() > max_requests_per_call) {
    return bad(make_error(errc::invalid_cost, std::to_string(items.size()) +
                                                  " limits in one call; the most is " +
                                                  std::to_string(max_requests_per_call)));
  }
  auto m = std::make_shared<multi>();
  m->lim = this;
  m->sync = sync;
  m->now = now;
  m->items.assign(items.begin(), items.end());
  m->out.resize(items.size());
  m->keys.reserve(items.size());
  m->raw_keys.reserve(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    const spend& it = items[i];
    if (it.p == nullptr) return bad(make_error(errc::unknown_policy, "acquire_all: no policy"));
    if (it.key.empty()) return bad(make_error(errc::invalid_key, "key is empty"));
    if (it.cost < 0) return bad(make_error(errc::invalid_cost, "cost must not be negative"));
    const scoped_key k(it.p->name, it.key);
    m->keys.emplace_back(k.view());
    m->raw_keys.emplace_back(it.key);
    (it.p->shadow ? m->shadowing : m->enforced).push_back(i);
  }
  m->done = std::move(done);
  return m;
}

result<decision> limiter::refund(std::string_view policy_name, std::string_view key,
                                 std::int64_t cost) {
  const policy* p = find_policy(policy_name);
  if (p == nullptr) return unknown(policy_name);
  return refund(*p, key, cost);
}

result<decision> limiter::refund(const policy& p, std::string_view key, std::int64_t cost,
                                 std::optional<std::chrono::microseconds> now) {
  if (key.empty()) return make_error(errc::invalid_key, "key is empty");
  const scoped_key k(p.name, key);
  const request r{k.view(), p.limit, p.algorithm, cost, now};
  failover& f = *failover_;
  (void)f.local.refund(r);  // what the local store spent through an outage goes back too
  f.forget(r.key);          // before and after the call, as for reset
  failover::domain& d = f.domain_of(r.key);
  if (!d.breaker.allow()) return f.breaker_open(d);
  result<decision> got = store_->refund(r);
  f.forget(r.key);
  return f.settle_refund(d, std::move(got));
}

void limiter::async_refund(const policy& p, std::string_view key, std::int64_t cost,
                           completion done) {
  if (key.empty()) return done(make_error(errc::invalid_key, "key is empty"));
  const scoped_key k(p.name, key);
  const request r{k.view(), p.limit, p.algorithm, cost, {}};
  failover* f = failover_.get();
  (void)f->local.refund(r);
  f->forget(r.key);
  failover::domain* d = &f->domain_of(r.key);
  if (!d->breaker.allow()) return done(f->breaker_open(*d));
  std::string owned = f->cache ? std::string(k.view()) : std::string();
  store_->async_refund(
      r, [f, d, owned = std::move(owned), done = std::move(done)](result<decision> got) {
        f->forget(owned);
        done(f->settle_refund(*d, std::move(got)));
      });
}

void limiter::async_refund(std::string_view policy_name, std::string_view key, std::int64_t cost,
                           completion done) {
  const policy* p = find_policy(policy_name);
  if (p == nullptr) return done(unknown(policy_name));
  async_refund(*p, key, cost, std::move(done));
}

void limiter::async_reset(std::string_view policy_name, std::string_view key,
                          reset_completion done) {
  const policy* p = find_policy(policy_name);
  if (p == nullptr) return done(unknown(policy_name));
  async_reset(*p, key, std::move(done));
}

void limiter::async_acquire(std::string_view policy_name, std::string_view key, std::int64_t cost,
                            completion done) {
  const policy* p = find_policy(policy_name);
  if (p == nullptr) return done(unknown(policy_name));
  async_decide(*p, key, cost, mode::acquire, std::move(done));
}

void limiter::async_peek(std::string_view policy_name, std::string_view key, std::int64_t cost,
                         completion done) {
  const policy* p = find_policy(policy_name);
  if (p == nullptr) return done(unknown(policy_name));
  async_decide(*p, key, cost, mode::peek, std::move(done));
}

void limiter::async_acquire(const policy& p, std::string_view key, std::int64_t cost,
                            completion done) {
  async_decide(p, key, cost, mode::acquire, std::move(done));
}

void limiter::async_peek(const policy& p, std::string_view key, std::int64_t cost,
                         completion done) {
  async_decide(p, key, cost, mode::peek, std::move(done));
}

}  // namespace sluice
