#include "sluice/algorithms.h"

#include <string>

namespace sluice {

using std::chrono::microseconds;

result<void> check_request(const limit& l, std::int64_t cost, microseconds now) {
  if (l.count < 1 || l.window.count() < 1 || l.window > max_window || l.count > l.window.count()) {
    return make_error(errc::invalid_limit, "limit " + std::to_string(l.count) + "/" +
                                               std::to_string(l.window.count()) +
                                               "us is out of range (see make_limit)");
  }
  if (cost < 1) {
    return make_error(errc::invalid_cost, "cost " + std::to_string(cost) + " must be at least 1");
  }
  if (cost > l.count) {
    return make_error(errc::cost_exceeds_limit, "cost " + std::to_string(cost) +
                                                    " exceeds the limit " + to_string(l) +
                                                    ": it can never be admitted");
  }
  if (now.count() < 0 || now > max_time) {
    return make_error(errc::invalid_time,
                      "time " + std::to_string(now.count()) + "us is outside 0..2^62us");
  }
  return {};
}

}  // namespace sluice
