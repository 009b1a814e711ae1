// The front door: named policies bound to a store.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "sluice/decision.h"
#include "sluice/error.h"
#include "sluice/limit.h"
#include "sluice/store.h"

namespace sluice {

// A named limit and algorithm, e.g. `chat: 30/hour sliding_log`. The name scopes the keys:
// key `user:42` under policy `chat` is stored as `chat:user:42`.
struct policy {
  std::string name;  // [A-Za-z0-9_.-]{1,64}; may be empty for an inline, unscoped policy
  sluice::limit limit;
  sluice::algorithm algorithm = sluice::algorithm::sliding_log;
};

// Binds a store and named policies. Policies are added before the limiter is shared;
// after that every call is thread-safe.
//
//   limiter lim{std::make_shared<memory_store>()};
//   lim.add_policy({"chat", *parse_limit("30/hour"), algorithm::sliding_log});
//   result<decision> d = lim.acquire("chat", "user:42");
class limiter {
 public:
  using completion = sluice::store::completion;

  explicit limiter(std::shared_ptr<sluice::store> s);

  // Adds `p`; fails with `errc::invalid_policy` on a bad or duplicate name.
  result<void> add_policy(policy p);
  // Returns the policy named `name`, or nullptr.
  const policy* find_policy(std::string_view name) const noexcept;

  // Each call fails with `errc::unknown_policy` when no policy has that name.
  result<decision> acquire(std::string_view policy_name, std::string_view key,
                           std::int64_t cost = 1);
  result<decision> peek(std::string_view policy_name, std::string_view key, std::int64_t cost = 1);
  result<void> reset(std::string_view policy_name, std::string_view key);

  // The same for a policy that need not be registered (inline limits). An explicit
  // `now` replaces the store's clock (tests, replay).
  result<decision> acquire(const policy& p, std::string_view key, std::int64_t cost = 1,
                           std::optional<std::chrono::microseconds> now = {});
  result<decision> peek(const policy& p, std::string_view key, std::int64_t cost = 1,
                        std::optional<std::chrono::microseconds> now = {});
  result<void> reset(const policy& p, std::string_view key);

  // Async forms: `done` runs exactly once, possibly before the call returns.
  void async_acquire(std::string_view policy_name, std::string_view key, std::int64_t cost,
                     completion done);
  void async_peek(std::string_view policy_name, std::string_view key, std::int64_t cost,
                  completion done);

  sluice::store& store() noexcept { return *store_; }

 private:
  // Lets find_policy look names up by string_view without building a std::string.
  struct name_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };

  std::shared_ptr<sluice::store> store_;
  std::unordered_map<std::string, policy, name_hash, std::equal_to<>> policies_;
};

}  // namespace sluice
