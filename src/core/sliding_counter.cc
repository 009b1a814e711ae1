#include <algorithm>
#include <cmath>
#include <cstdint>

#include "sluice/algorithms.h"

namespace sluice {

using std::chrono::microseconds;
namespace {

// Returns the part of `previous` still counted when `rest` of its window overlaps the
// sliding window: ceil(previous * rest / w), and all of it when rest = w. Computed in
// IEEE doubles, in exactly this order, because the Redis scripts (Lua numbers are
// doubles) compute the same expression and every store must decide alike. The rounding
// only matters past 2^53 and is monotonic, so the estimate never grows as time passes.
std::int64_t weighted(std::int64_t previous, std::int64_t rest, std::int64_t w) {
  if (previous == 0 || rest <= 0) return 0;
  if (rest >= w) return previous;
  const double share =
      static_cast<double>(previous) * static_cast<double>(rest) / static_cast<double>(w);
  return static_cast<std::int64_t>(std::ceil(share));
}

// Returns how far into a window `previous` must have decayed so that at most `room` of it
// is left: the least e in [0, w] with weighted(previous, w - e, w) <= room. The closed
// form gives a first guess; the two loops make it exact for `weighted` as computed.
std::int64_t decay_point(std::int64_t previous, std::int64_t room, std::int64_t w) {
  if (previous <= room) return 0;
  const double kept = std::floor(static_cast<double>(room) * static_cast<double>(w) /
                                 static_cast<double>(previous));
  std::int64_t e = std::clamp<std::int64_t>(w - static_cast<std::int64_t>(kept), 1, w);
  while (e > 0 && weighted(previous, w - (e - 1), w) <= room) --e;
  while (weighted(previous, w - e, w) > room) ++e;
  return e;
}

// Returns `s` rolled forward to the window holding `now`. A stored window later than `now`
// (a clock that stepped back, or a changed window) is kept as the current one.
counter_state rolled(const counter_state& s, std::int64_t w, microseconds now) {
  const std::int64_t aligned = now.count() - now.count() % w;
  counter_state next = s;
  if (s.window_start.count() <= aligned) {
    if (s.window_start.count() < aligned - w) {
      next.previous = 0;
      next.current = 0;
    } else if (s.window_start.count() < aligned) {
      next.previous = s.current;
      next.current = 0;
    }
    next.window_start = microseconds{aligned};
  }
  return next;
}

}  // namespace

decision sliding_counter_decide(counter_state& s, const limit& l, microseconds now,
                                std::int64_t cost, mode m) noexcept {
  const std::int64_t w = l.window.count();
  counter_state next = rolled(s, w, now);
  const std::int64_t elapsed = std::max<std::int64_t>(0, now.count() - next.window_start.count());
  const std::int64_t estimate = next.current + weighted(next.previous, w - elapsed, w);

  decision d;
  d.limit = l.count;
  d.allowed = estimate + cost <= l.count;
  if (d.allowed && m == mode::acquire) {
    next.current += cost;
    d.remaining = l.count - estimate - cost;
    s = next;
  } else {
    d.remaining = std::max<std::int64_t>(0, l.count - estimate);
    if (!d.allowed) {
      std::int64_t wait;
      if (next.current + cost <= l.count) {
        wait = decay_point(next.previous, l.count - cost - next.current, w) - elapsed;
      } else {
        // Only once `current` has become the previous window can the request fit.
        wait = (w - elapsed) + decay_point(next.current, l.count - cost, w);
      }
      d.retry_after = microseconds{wait};
    }
  }
  if (next.current > 0) {
    d.reset_after = microseconds{(w - elapsed) + w};
  } else if (next.previous > 0) {
    d.reset_after = microseconds{w - elapsed};
  }
  return d;
}

std::int64_t sliding_counter_refund(counter_state& s, const limit& l, microseconds now,
                                    std::int64_t cost) noexcept {
  counter_state next = rolled(s, l.window.count(), now);
  const std::int64_t from_current = std::min(cost, next.current);
  const std::int64_t from_previous = std::min(cost - from_current, next.previous);
  next.current -= from_current;
  next.previous -= from_previous;
  s = next;
  return from_current + from_previous;
}

microseconds expiry(const counter_state& s, const limit& l) noexcept {
  return s.window_start + 2 * l.window;
}

}  // namespace sluice
