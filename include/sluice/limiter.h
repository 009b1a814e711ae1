// The front door: named policies bound to a store, with the failure policy that decides
// while the store is down (docs/DESIGN.md, invariant 3 and "The limiter contract").
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "sluice/algorithms.h"
#include "sluice/breaker.h"
#include "sluice/clock.h"
#include "sluice/decision.h"
#include "sluice/error.h"
#include "sluice/limit.h"
#include "sluice/memory_store.h"
#include "sluice/store.h"

namespace sluice {

// What a policy decides when its store fails (`store_unavailable`, `timeout`,
// `store_error`) or the circuit breaker keeps the store out of the call.
enum class failure_mode : std::uint8_t {
  allow,  // fail open: admit, as the reference limiter does
  deny,   // fail closed: refuse until the store is back
  local,  // decide in-process, on a memory store with the same limit and algorithm
};

// Returns the failure mode named `allow`, `deny` or `local`, else `errc::invalid_policy`.
result<failure_mode> parse_failure_mode(std::string_view name);
// Returns the mode's name, as `parse_failure_mode` accepts it.
std::string_view to_string(failure_mode m) noexcept;
// Returns the failure mode that made a decision of source `s` (fallback_allow → allow, ...),
// or nothing when the store made it or a shadow policy answered it.
std::optional<failure_mode> fallback_of(decision_source s) noexcept;

// A named limit and algorithm, e.g. `chat: 30/hour sliding_log`. The name scopes the keys:
// key `user:42` under policy `chat` is stored as `chat:user:42`.
struct policy {
  std::string name;  // [A-Za-z0-9_.-]{1,64}; may be empty for an inline, unscoped policy
  sluice::limit limit;
  sluice::algorithm algorithm = sluice::algorithm::sliding_log;
  failure_mode on_failure = failure_mode::allow;
  // Record only: a decision this policy denies is answered as allowed (retry_after 0) with
  // `decision_source::shadow`, so a new limit can be watched before it is enforced. Its
  // denials still spend nothing.
  bool shadow = false;
  // Keep the store's denials of a key in this process until the wait they give is over, and
  // deny the same or a larger cost from there, without calling the store (source
  // `deny_cache`). Never admits more than the store would; a reset or refund made by
  // another process is seen only once the wait is over (docs/DESIGN.md, "Deny cache").
  bool deny_cache = false;
};

// One limit of a decision over several: a policy (registered or not; it must outlive the
// call, and for the async form its completion), a key under it, and what it costs there
// (0: only check that one unit is available, spend nothing).
struct spend {
  const policy* p = nullptr;
  std::string_view key;
  std::int64_t cost = 1;
};

struct limiter_options {
  // Where decisions are made. Required.
  std::shared_ptr<sluice::store> store;
  // The clock of the breaker, the warnings and the local store; must outlive the limiter.
  const clock* time_source = &system_clock();
  // When to stop calling a failing store, and how to probe it.
  breaker_options breaker;
  // Receives warnings about store failures, at most one per `warn_interval`; may be empty.
  // Called on the thread that saw the failure (the store's I/O thread for async calls), with
  // no lock held; must be thread-safe and must not throw.
  std::function<void(std::string_view)> warn;
  // The shortest time between two warnings; the events in between are counted in the next.
  std::chrono::milliseconds warn_interval{10000};
  // The store of `failure_mode::local`, built with the limiter (its `time_source` is
  // replaced by the one above). Keys it cannot hold get its error while the store fails.
  memory_store_options local;
  // The most keys the deny cache of `policy::deny_cache` policies holds (for all of them
  // together); at the cap, keys whose wait is nearly over make room. 0 turns the cache off.
  std::size_t deny_cache_max_keys = 100000;
};

// Counters since the limiter was built, for metrics.
struct limiter_stats {
  std::uint64_t decisions = 0;        // decisions returned (acquire and peek), fallbacks too
  std::uint64_t allowed = 0;          // of which allowed
  std::uint64_t denied = 0;           // of which denied
  std::uint64_t store_errors = 0;     // store calls that failed (resets too)
  std::uint64_t fallbacks_allow = 0;  // decisions made by failure_mode::allow
  std::uint64_t fallbacks_deny = 0;   // decisions made by failure_mode::deny
  std::uint64_t fallbacks_local = 0;  // decisions made by failure_mode::local
  // The circuit breakers, one per failure domain of the store (`limiter::breakers()`):
  std::uint64_t breaker_opened = 0;  // times any of them tripped open (the sum)
  // The worst state now: open if any is open, else half_open if any is, else closed.
  breaker_state breaker = breaker_state::closed;
  std::size_t breakers_open = 0;  // how many are not closed now (open or half_open)
  std::size_t breakers = 1;       // how many there are (fixed for the limiter's life)
  // The deny cache (`policy::deny_cache`):
  std::uint64_t deny_cache_hits = 0;  // decisions it answered (counted in `denied` too)
  std::size_t deny_cache_keys = 0;    // keys it holds now
};

// Binds a store and named policies. Policies are added before the limiter is shared;
// after that every call is thread-safe.
//
// Every decision asks a circuit breaker first: the one of the key's failure domain, the
// part of the store that holds it (`store::failure_domain`; one breaker per domain, so a
// cluster master that is down leaves the other masters' keys alone). When it refuses, or
// the store fails, the policy's failure mode decides at once: allow → {allowed, limit, remaining =
// limit, 0, 0}; deny → {denied, limit, 0, retry_after = reset_after = time until the breaker probes
// the store's domain again (at least 1 ms; 1 s while it is not open)}; local → the local memory
// store's decision. Bad input is an error in every case, and says nothing to the breaker. Each
// fallback is counted in `stats()` and warned about (rate-limited). Every decision says how it
// was made in `decision::source`.
//
//   limiter lim{std::make_shared<memory_store>()};
//   lim.add_policy({"chat", *parse_limit("30/hour"), algorithm::sliding_log});
//   result<decision> d = lim.acquire("chat", "user:42");
class limiter {
 public:
  using completion = sluice::store::completion;
  using reset_completion = sluice::store::reset_completion;
  using all_completion = sluice::store::all_completion;

  // Precondition: `options.store` is not null.
  explicit limiter(limiter_options options);
  // The same with the default options.
  explicit limiter(std::shared_ptr<sluice::store> s);
  ~limiter();
  limiter(limiter&&) noexcept;
  limiter& operator=(limiter&&) noexcept;

  // Adds `p`; fails with `errc::invalid_policy` on a bad or duplicate name.
  result<void> add_policy(policy p);
  // Returns the policy named `name`, or nullptr.
  const policy* find_policy(std::string_view name) const noexcept;

  // Each call fails with `errc::unknown_policy` when no policy has that name.
  result<decision> acquire(std::string_view policy_name, std::string_view key,
                           std::int64_t cost = 1);
  result<decision> peek(std::string_view policy_name, std::string_view key, std::int64_t cost = 1);
  // Forgets the key in the store and in the local store. While the store fails (or the
  // breaker of the key's domain is open: `errc::store_unavailable`) it returns the error:
  // state kept there is not forgotten.
  result<void> reset(std::string_view policy_name, std::string_view key);

  // The same for a policy that need not be registered (inline limits). An explicit
  // `now` replaces the store's clock (tests, replay).
  result<decision> acquire(const policy& p, std::string_view key, std::int64_t cost = 1,
                           std::optional<std::chrono::microseconds> now = {});
  result<decision> peek(const policy& p, std::string_view key, std::int64_t cost = 1,
                        std::optional<std::chrono::microseconds> now = {});
  result<void> reset(const policy& p, std::string_view key);

  // Async forms: `done` runs exactly once, possibly before the call returns, possibly on the
  // store's I/O thread, with the same decision or error as the sync form. The key is only
  // borrowed for the call (a `local` policy keeps a copy for its fallback); the limiter must
  // outlive every pending `done`.
  void async_acquire(std::string_view policy_name, std::string_view key, std::int64_t cost,
                     completion done);
  void async_peek(std::string_view policy_name, std::string_view key, std::int64_t cost,
                  completion done);
  // The same for a policy that need not be registered (inline limits). `p` is read until
  // `done` runs, so it must stay valid that long (a copy owned by `done` is fine).
  void async_acquire(const policy& p, std::string_view key, std::int64_t cost, completion done);
  void async_peek(const policy& p, std::string_view key, std::int64_t cost, completion done);
  // Async `reset`: `done` runs exactly once, as for the decisions, with what `reset` returns.
  void async_reset(std::string_view policy_name, std::string_view key, reset_completion done);
  void async_reset(const policy& p, std::string_view key, reset_completion done);

  // All or nothing over several limits (docs/DESIGN.md, "The limiter contract"): returns one
  // decision per item, in order. The request is admitted only when every item's decision is
  // allowed; then every item was spent, and when any is denied none was (each decision
  // says what that item alone would get now, so the caller can name the ones that denied
  // and take the longest retry_after). The items of policies that are not shadow are one
  // `store::acquire_all`; when the store cannot make it (a breaker of one of their keys'
  // domains is open, or the call fails), every such item falls back by its own policy's
  // failure mode, still all or nothing (`local` items are one `acquire_all` on the local
  // store, spent only when no `deny` item denies). Shadow policies' items are decided after,
  // one by one: acquired when the rest was admitted, else peeked; they never deny.
  // Errors: `errc::invalid_key` (empty key, a key twice with different policies' limits),
  // `invalid_cost`, `cost_exceeds_limit`, no items or more than `max_requests_per_call`.
  result<std::vector<decision>> acquire_all(std::span<const spend> items,
                                            std::optional<std::chrono::microseconds> now = {});
  // The async form: `done` runs exactly once, as for `async_acquire`. The keys are only
  // borrowed for the call; the policies are read until `done` runs.
  void async_acquire_all(std::span<const spend> items, all_completion done);

  // Gives back up to `cost` units that acquires of `key` spent under the policy (a chat
  // request that reserved its largest token count and used fewer), in the store and in the
  // local store; never more than the full limit. Returns what `peek` of one unit answers
  // then. Like `reset`, it fails while the store does (or the key's breaker is open):
  // `errc::store_unavailable`, and nothing is given back there.
  result<decision> refund(std::string_view policy_name, std::string_view key, std::int64_t cost);
  result<decision> refund(const policy& p, std::string_view key, std::int64_t cost,
                          std::optional<std::chrono::microseconds> now = {});
  void async_refund(const policy& p, std::string_view key, std::int64_t cost, completion done);
  void async_refund(std::string_view policy_name, std::string_view key, std::int64_t cost,
                    completion done);

  sluice::store& store() noexcept { return *store_; }
  // Returns how many circuit breakers there are: the store's `failure_domains()` when the
  // limiter was built, clamped to [1, 1024] (a store with more shares them: domain d uses
  // breaker d % 1024).
  std::size_t breakers() const noexcept;
  // Returns the breaker of failure domain `domain` (taken modulo `breakers()`, as the
  // domains the store reports are).
  const circuit_breaker& breaker(std::size_t domain) const noexcept;
  // Returns domain 0's breaker: the only one for a store that fails as a whole.
  const circuit_breaker& breaker() const noexcept { return breaker(0); }
  limiter_stats stats() const noexcept;
  // Returns how many decisions the deny cache answered for policy `policy_name`, including
  // inline policies of that name; 0 for a name never registered.
  std::uint64_t deny_cache_hits(std::string_view policy_name) const noexcept;

 private:
  struct failover;  // the breakers, the local store, counters and warnings
  struct multi;     // one acquire_all in progress

  // Installs the store's listener (store::set_listener), which reaches the breakers, and
  // removes it.
  void listen();
  void stop_listening() noexcept;

  result<decision> decide(const policy& p, std::string_view key, std::int64_t cost,
                          std::optional<std::chrono::microseconds> now, mode m);
  void async_decide(const policy& p, std::string_view key, std::int64_t cost, mode m,
                    completion done);
  // Checks an acquire_all's items and builds its state; on bad input calls `done` with the
  // error and returns it.
  result<std::shared_ptr<multi>> make_multi(std::span<const spend> items,
                                            std::optional<std::chrono::microseconds> now, bool sync,
                                            all_completion done);

  // Lets find_policy look names up by string_view without building a std::string.
  struct name_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };

  std::shared_ptr<sluice::store> store_;
  std::unique_ptr<failover> failover_;  // on the heap: pending completions point at it
  std::unordered_map<std::string, policy, name_hash, std::equal_to<>> policies_;
};

}  // namespace sluice
