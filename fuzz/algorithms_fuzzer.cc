// Fuzzes the three algorithms with sequences of (time step, cost, mode) and checks the
// properties every decision must have:
//  - the fields are in range (0 ≤ remaining ≤ count, retry_after is 0 exactly when allowed);
//  - retry_after is exact: a peek at now + retry_after is allowed, one at one µs before is not;
//  - the sliding log never admits more than `count` in any window.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <utility>

#include "sluice/algorithms.h"

namespace {

using std::chrono::microseconds;

struct reader {
  const std::uint8_t* p;
  std::size_t n;
  std::uint64_t next(int bytes) {
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) {
      v <<= 8;
      if (n > 0) {
        v |= *p++;
        --n;
      }
    }
    return v;
  }
};

void check_fields(const sluice::decision& d, const sluice::limit& l) {
  if (d.limit != l.count) std::abort();
  if (d.remaining < 0 || d.remaining > l.count) std::abort();
  if (d.allowed != (d.retry_after.count() == 0)) std::abort();
  if (d.retry_after.count() < 0 || d.reset_after.count() < 0) std::abort();
}

// Checks that `state` admits `cost` at now + retry_after and not one µs before.
template <class State, class Decide>
void check_retry(const State& state, const sluice::limit& l, microseconds now, std::int64_t cost,
                 const sluice::decision& d, Decide decide) {
  if (d.allowed) return;
  State at = state;
  if (!decide(at, l, now + d.retry_after, cost, sluice::mode::peek).allowed) std::abort();
  State before = state;
  if (decide(before, l, now + d.retry_after - microseconds{1}, cost, sluice::mode::peek).allowed) {
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  reader in{data, size};
  const auto count = static_cast<std::int64_t>(in.next(1) % 20 + 1);
  const auto window = microseconds{static_cast<std::int64_t>(in.next(2) % 5000) + count};
  const sluice::limit l{count, window};
  const int which = static_cast<int>(in.next(1) % 3);

  sluice::gcra_state gcra;
  sluice::counter_state counter;
  sluice::sliding_log_state log;
  std::deque<std::pair<microseconds, std::int64_t>> admitted;  // for the window check
  microseconds now{static_cast<std::int64_t>(in.next(3))};

  while (in.n > 0) {
    const std::uint64_t op = in.next(2);
    now += microseconds{static_cast<std::int64_t>(op % 1024)};
    const std::int64_t cost = static_cast<std::int64_t>((op >> 10) % count) + 1;
    const auto m = (op >> 15) & 1 ? sluice::mode::peek : sluice::mode::acquire;
    sluice::decision d;
    switch (which) {
      case 0: {
        const sluice::gcra_state before = gcra;
        d = sluice::gcra_decide(gcra, l, now, cost, m);
        check_retry(before, l, now, cost, d, sluice::gcra_decide);
        break;
      }
      case 1: {
        const sluice::counter_state before = counter;
        d = sluice::sliding_counter_decide(counter, l, now, cost, m);
        check_retry(before, l, now, cost, d, sluice::sliding_counter_decide);
        break;
      }
      default: {
        d = sluice::sliding_log_decide(log, l, now, cost, m);
        if (d.allowed && m == sluice::mode::acquire) admitted.emplace_back(now, cost);
        while (!admitted.empty() && admitted.front().first <= now - window) admitted.pop_front();
        std::int64_t in_window = 0;
        for (const auto& a : admitted) in_window += a.second;
        if (in_window > count || in_window != log.total()) std::abort();
        break;
      }
    }
    check_fields(d, l);
  }
  return 0;
}
