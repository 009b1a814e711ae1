// The answer to "may this key spend this much now?".
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

namespace sluice {

// How a decision was made (docs/DESIGN.md, "Failure is a policy").
enum class decision_source : std::uint8_t {
  store,           // by the store, from the key's state: the exact answer
  fallback_allow,  // the store failed or its breaker was open; on_failure: allow admitted
  fallback_deny,   // the same, and on_failure: deny refused
  fallback_local,  // the same, and on_failure: local decided on the in-process store
  shadow,          // a shadow policy's denial, answered as allowed (the policy only records)
  deny_cache,      // a denial the store gave earlier, replayed by the limiter's deny cache
};

// Returns "store", "fallback_allow", "fallback_deny", "fallback_local", "shadow" or
// "deny_cache".
constexpr std::string_view to_string(decision_source s) noexcept {
  switch (s) {
    case decision_source::store:
      return "store";
    case decision_source::fallback_allow:
      return "fallback_allow";
    case decision_source::fallback_deny:
      return "fallback_deny";
    case decision_source::fallback_local:
      return "fallback_local";
    case decision_source::shadow:
      return "shadow";
    case decision_source::deny_cache:
      return "deny_cache";
  }
  return "unknown";
}

// One decision, the same shape for every algorithm and store. Times are relative to the
// moment of the decision, in microseconds.
struct decision {
  bool allowed = false;
  std::int64_t limit = 0;      // the limit's count
  std::int64_t remaining = 0;  // units still available (after this request, when allowed)
  std::chrono::microseconds retry_after{0};  // until this request would be admitted; 0 if allowed
  std::chrono::microseconds reset_after{0};  // until the key is back to its full limit
  decision_source source = decision_source::store;  // set by the limiter; stores leave it

  friend bool operator==(const decision&, const decision&) = default;
};

// Returns `retry_after` in whole seconds the way the reference limiter reports it:
// 0 when allowed, else `floor(seconds) + 1` (so at least 1).
constexpr std::int64_t retry_after_seconds(const decision& d) noexcept {
  if (d.allowed) return 0;
  return d.retry_after.count() / 1000000 + 1;
}

// Returns `d` in milliseconds, rounded up, so that waiting that long is always enough.
constexpr std::int64_t ceil_ms(std::chrono::microseconds d) noexcept {
  return d.count() <= 0 ? 0 : (d.count() + 999) / 1000;
}

}  // namespace sluice
