#include <algorithm>
#include <cstdint>

#include "sluice/algorithms.h"

namespace sluice {
namespace {

__extension__ using int128 =
    __int128;  // a GCC/Clang extension; __extension__ keeps -Wpedantic quiet

// ceil(a * b / c) and floor(a * b / c) for non-negative operands; the product needs 128 bits
// (a count up to 2^52 times a window up to 2^52).
std::int64_t mul_div_ceil(std::int64_t a, std::int64_t b, std::int64_t c) {
  const int128 p = static_cast<int128>(a) * b;
  return static_cast<std::int64_t>((p + c - 1) / c);
}
std::int64_t mul_div_floor(std::int64_t a, std::int64_t b, std::int64_t c) {
  return static_cast<std::int64_t>(static_cast<int128>(a) * b / c);
}

// Returns how far into a window `previous` must have decayed so that at most `room`
// of it is left: the least e with ceil(previous * (w - e) / w) ≤ room.
std::int64_t decay_point(std::int64_t previous, std::int64_t room, std::int64_t w) {
  if (previous <= room) return 0;
  return w - mul_div_floor(room, w, previous);
}

}  // namespace

decision sliding_counter_decide(counter_state& s, const limit& l, microseconds now,
                                std::int64_t cost, mode m) noexcept {
  const std::int64_t w = l.window.count();
  const std::int64_t aligned = now.count() - now.count() % w;

  // Roll the stored windows forward to the one holding `now`. A stored window later than
  // `now` (a clock that stepped back, or a changed window) is kept as the current one.
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
  const std::int64_t elapsed = std::max<std::int64_t>(0, now.count() - next.window_start.count());
  const std::int64_t estimate = next.current + mul_div_ceil(next.previous, w - elapsed, w);

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

microseconds expiry(const counter_state& s, const limit& l) noexcept {
  return s.window_start + 2 * l.window;
}

}  // namespace sluice
