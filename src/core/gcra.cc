#include <algorithm>
#include <cstdint>

#include "sluice/algorithms.h"

namespace sluice {

using std::chrono::microseconds;

// Every quantity below is bounded by now + 2 * max_window < 2^63, given the preconditions
// (now ≤ 2^62, cost ≤ count ≤ window ≤ max_window), so no sum can overflow.
decision gcra_decide(gcra_state& s, const limit& l, microseconds now, std::int64_t cost,
                     mode m) noexcept {
  const std::int64_t t = (l.window.count() + l.count - 1) / l.count;  // emission interval
  const std::int64_t burst = t * l.count;  // window, rounded up to whole intervals
  const std::int64_t tat = std::max(s.tat.count(), now.count());
  const std::int64_t new_tat = tat + cost * t;

  decision d;
  d.limit = l.count;
  if (new_tat - now.count() <= burst) {
    d.allowed = true;
    if (m == mode::acquire) {
      s.tat = microseconds{new_tat};
      d.remaining = (burst - (new_tat - now.count())) / t;
      d.reset_after = microseconds{new_tat - now.count()};
      return d;
    }
  } else {
    d.retry_after = microseconds{new_tat - now.count() - burst};
  }
  // A clock that stepped back, or a smaller limit, can leave tat further ahead than burst.
  d.remaining = std::max<std::int64_t>(0, (burst - (tat - now.count())) / t);
  d.reset_after = microseconds{tat - now.count()};
  return d;
}

std::int64_t gcra_refund(gcra_state& s, const limit& l, microseconds now,
                         std::int64_t cost) noexcept {
  const std::int64_t t = (l.window.count() + l.count - 1) / l.count;
  const std::int64_t spent_until = s.tat.count() - now.count();  // time still owed
  if (spent_until <= 0) return 0;
  const std::int64_t back = std::min(spent_until, cost * t);
  s.tat = microseconds{s.tat.count() - back};
  return (back + t - 1) / t;
}

}  // namespace sluice
