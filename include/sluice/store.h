// Where rate limit state lives: the interface every store implements, and the two bases a
// store derives from, one per primitive form (docs/DESIGN.md, "The store contract").
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
#include <vector>

#include "sluice/clock.h"
#include "sluice/decision.h"
#include "sluice/error.h"
#include "sluice/limit.h"

namespace sluice {

// One question for a store. The key is only borrowed: stores copy what they keep before
// returning (also from the async calls).
struct request {
  std::string_view key{};  // binary-safe, 1..max key length bytes
  sluice::limit limit{};
  sluice::algorithm algorithm = sluice::algorithm::sliding_log;
  std::int64_t cost = 1;
  std::optional<std::chrono::microseconds> now = std::nullopt;  // empty: the store's own clock
};

// What a store says of itself, for readiness probes.
struct store_health {
  // Decisions can be made now (on a cluster: some master answers). False sends every
  // decision to the policies' failure modes.
  bool ready = true;
  // Empty when every part of the store is well; else what is wrong ("2 of 3 masters
  // reachable", "not connected: AUTH refused"), also while `ready`.
  std::string detail;
};

// One of a store's own counters or gauges, as `store::visit_metrics` reports it. The views
// are valid during the visitor's call only.
struct store_metric {
  enum class kind : std::uint8_t { counter, gauge };
  std::string_view name;  // Prometheus style: `sluice_redis_requests_total`
  std::string_view help;  // one line
  kind type = kind::counter;
  std::string_view label;        // a label's name, or empty for none
  std::string_view label_value;  // its value
  std::uint64_t value = 0;
};

// What a store tells its owner (the limiter) on its own, outside any call:
// `store::set_listener`.
struct store_event {
  enum class kind : std::uint8_t {
    // Failure domain `domain` answers again (a connection to it came back, or it became a
    // master): a breaker open on it may probe at once instead of waiting out its period.
    reachable,
    // Failure domain `domain` holds no keys now (a failover or resharding moved its slots
    // away): nothing will call it, so its breaker says nothing true any more.
    retired,
    // Something the operator should know, in `text` (a Redis that keeps no data across a
    // restart). Each is said once.
    warning,
  };
  kind what = kind::warning;
  std::size_t domain = 0;
  std::string_view text;  // valid during the listener's call only
};

// A place where decisions are made atomically, one key at a time. Every decision on one
// key is one atomic step (docs/DESIGN.md, invariant 1). Implementations are thread-safe.
//
// Every call has a synchronous and an asynchronous form. A store implements one of them,
// its primitive, by deriving from `sync_store` (decides on the caller's thread: memory) or
// `async_store` (answers on its own I/O thread: Redis); the base derives the other form
// once for all stores. The async forms call `done` exactly once, inline or later on the
// store's I/O thread, by the call's deadline; `done` must not throw.
class store {
 public:
  using completion = std::function<void(result<decision>)>;
  using reset_completion = std::function<void(result<void>)>;
  using all_completion = std::function<void(result<std::vector<decision>>)>;
  using metric_visitor = std::function<void(const store_metric&)>;
  using event_listener = std::function<void(const store_event&)>;

  virtual ~store() = default;

  // Returns the decision for `r`, recording it when allowed.
  virtual result<decision> acquire(const request& r) = 0;
  // Returns the decision `acquire` would give, spending nothing.
  virtual result<decision> peek(const request& r) = 0;
  // Forgets all state of `key`, for every algorithm.
  virtual result<void> reset(std::string_view key) = 0;
  // Returns one decision per request, in order, made as one atomic step over all their keys
  // (all or nothing): when every request is allowed, every one is recorded; when any is
  // denied, none is, and each decision says what that request alone would get now (as
  // `peek`). A request of cost 0 only checks: it spends nothing and is allowed while one unit
  // is available. Requests on one key must agree on limit and algorithm (else
  // `errc::invalid_key`); their costs are added and each gets the key's one decision
  // (`merge_requests`). At most `max_requests_per_call` requests.
  virtual result<std::vector<decision>> acquire_all(std::span<const request> rs) = 0;
  // Gives back up to `r.cost` units that earlier acquires of `r.key` spent (on its limit and
  // algorithm), never making more than the full limit available; a key with nothing spent is
  // left alone. A cost above the limit's count gives back everything (at least 1 is
  // required). Returns what `peek` of one unit answers afterwards.
  virtual result<decision> refund(const request& r) = 0;

  virtual void async_acquire(const request& r, completion done) = 0;
  virtual void async_peek(const request& r, completion done) = 0;
  virtual void async_reset(std::string_view key, reset_completion done) = 0;
  // The requests are only borrowed for the call, as a single request's key is.
  virtual void async_acquire_all(std::span<const request> rs, all_completion done) = 0;
  virtual void async_refund(const request& r, completion done) = 0;

  // Returns the store's URI, without credentials.
  virtual std::string describe() const = 0;
  // Returns whether decisions can be made now, and what is wrong if anything is. Cheap
  // (no I/O): reads what the store already knows.
  virtual store_health health() const { return {}; }
  // Calls `visit` once per metric of the store's own (connections, errors, keys held),
  // samples of one name one after the other. Cheap; no I/O. Default: none.
  virtual void visit_metrics(const metric_visitor& /*visit*/) const {}

  // How many parts of the store fail on their own (a cluster's masters): the limiter keeps
  // one circuit breaker per part, so one part failing leaves the others' keys alone. At
  // least 1, fixed for the store's life. Stores that fail as a whole keep the default.
  virtual std::size_t failure_domains() const noexcept { return 1; }
  // Returns the part (below `failure_domains()`) that holds `key`'s state now; it may
  // change when the store's layout does (a cluster's failover or resharding).
  virtual std::size_t failure_domain(std::string_view /*key*/) const noexcept { return 0; }

  // Installs `listen` to receive the store's events (`store_event`), replacing any earlier
  // listener; an empty one removes it, and once this returns the old one is not running and
  // will not be called. Warnings raised while none was installed go to the next one. The
  // store calls it from its own thread, one event at a time; it must be quick and must not
  // call the store. Default: a store with nothing to say ignores it.
  virtual void set_listener(event_listener /*listen*/) {}
};

// The base of stores that decide on the caller's thread and never wait on I/O (memory):
// they implement the synchronous forms; the async forms call them and `done` inline.
class sync_store : public store {
 public:
  void async_acquire(const request& r, completion done) final { done(acquire(r)); }
  void async_peek(const request& r, completion done) final { done(peek(r)); }
  void async_reset(std::string_view key, reset_completion done) final { done(reset(key)); }
  void async_acquire_all(std::span<const request> rs, all_completion done) final {
    done(acquire_all(rs));
  }
  void async_refund(const request& r, completion done) final { done(refund(r)); }
};

// The base of stores that answer on an I/O thread of their own (Redis): they implement the
// asynchronous forms; the synchronous forms start one and block the caller until it
// completes, which the store guarantees by the call's deadline. A synchronous call made on
// the store's own I/O thread (from a completion) would wait for itself: it fails at once
// with `errc::store_error` instead.
class async_store : public store {
 public:
  result<decision> acquire(const request& r) final;
  result<decision> peek(const request& r) final;
  result<void> reset(std::string_view key) final;
  result<std::vector<decision>> acquire_all(std::span<const request> rs) final;
  result<decision> refund(const request& r) final;

 protected:
  // Returns whether the calling thread is one the store completes calls on.
  virtual bool on_io_thread() const noexcept = 0;
};

// The most requests one `acquire_all` takes.
inline constexpr std::size_t max_requests_per_call = 64;

// Returns the requests of an `acquire_all` with those on one key merged, in order of first
// appearance: one request per key, its cost the sum (0 when all only check). `group[i]` is
// the index, in the result, of `rs[i]`'s key. Fails with `errc::invalid_key` when two
// requests on one key differ in limit or algorithm, `errc::invalid_cost` for a negative
// cost or more than `max_requests_per_call` requests, and `errc::cost_exceeds_limit` when a
// key's summed cost is above its count. Keys are checked by the store.
result<std::vector<request>> merge_requests(std::span<const request> rs,
                                            std::vector<std::size_t>& group);

}  // namespace sluice
