// Where rate limit state lives: the interface every store implements, and `open_store`.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "sluice/clock.h"
#include "sluice/decision.h"
#include "sluice/error.h"
#include "sluice/limit.h"

namespace sluice {

// One question for a store. The key is only borrowed: stores copy what they keep before
// returning (also from the async calls).
struct request {
  std::string_view key;  // binary-safe, 1..max key length bytes
  sluice::limit limit;
  sluice::algorithm algorithm = sluice::algorithm::sliding_log;
  std::int64_t cost = 1;
  std::optional<std::chrono::microseconds> now;  // when empty, the store's own clock
};

// A place where decisions are made atomically, one key at a time. Every decision on one
// key is one atomic step (invariant 1 of DESIGN.md). Implementations are thread-safe.
//
// The async forms call `done` exactly once: inline for stores that never wait (memory),
// or later on the store's I/O thread. They exist so that callers written against them
// keep working when the store is remote.
class store {
 public:
  using completion = std::function<void(result<decision>)>;
  using reset_completion = std::function<void(result<void>)>;

  virtual ~store() = default;

  // Returns the decision for `r`, recording it when allowed.
  virtual result<decision> acquire(const request& r) = 0;
  // Returns the decision `acquire` would give, spending nothing.
  virtual result<decision> peek(const request& r) = 0;
  // Forgets all state of `key`, for every algorithm.
  virtual result<void> reset(std::string_view key) = 0;
  // Returns the store's URI, without credentials.
  virtual std::string describe() const = 0;

  // How many parts of the store fail on their own (a cluster's masters): the limiter keeps
  // one circuit breaker per part, so one part failing leaves the others' keys alone. At
  // least 1, fixed for the store's life. Stores that fail as a whole keep the default.
  virtual std::size_t failure_domains() const noexcept { return 1; }
  // Returns the part (below `failure_domains()`) that holds `key`'s state now; it may
  // change when the store's layout does (a cluster's failover or resharding).
  virtual std::size_t failure_domain(std::string_view /*key*/) const noexcept { return 0; }

  virtual void async_acquire(const request& r, completion done) { done(acquire(r)); }
  virtual void async_peek(const request& r, completion done) { done(peek(r)); }
  virtual void async_reset(std::string_view key, reset_completion done) { done(reset(key)); }
};

}  // namespace sluice
