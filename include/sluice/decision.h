// The answer to "may this key spend this much now?".
#pragma once

#include <chrono>
#include <cstdint>

namespace sluice {

// One decision, the same shape for every algorithm and store. Times are relative to the
// moment of the decision, in microseconds.
struct decision {
  bool allowed = false;
  std::int64_t limit = 0;      // the limit's count
  std::int64_t remaining = 0;  // units still available (after this request, when allowed)
  std::chrono::microseconds retry_after{0};  // until this request would be admitted; 0 if allowed
  std::chrono::microseconds reset_after{0};  // until the key is back to its full limit

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
