// Tests of the three algorithms as pure functions: hand-computed tables of decisions, edge
// cases (window boundaries, clocks stepping back, huge windows, many entries), and
// properties over fixed-seed random sequences checked against a plain model of the spec.
#include "sluice/algorithms.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory_resource>
#include <ostream>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "sluice/decision.h"
#include "sluice/limit.h"

#include "support/test_util.h"

namespace {

using sluice::decision;
using sluice::mode;
using std::chrono::microseconds;

constexpr mode acq = mode::acquire;
constexpr mode pk = mode::peek;

constexpr microseconds us(std::int64_t n) { return microseconds(n); }

sluice::limit make(std::int64_t count, std::int64_t window_us) {
  const sluice::result<sluice::limit> l = sluice::make_limit(count, us(window_us));
  EXPECT_TRUE(l) << l.error().message();
  return l ? *l : sluice::limit{1, us(1)};
}

std::string trace(std::size_t i, std::int64_t now, std::int64_t cost, mode m) {
  return "step " + std::to_string(i) + ": now=" + std::to_string(now) +
         " cost=" + std::to_string(cost) + (m == acq ? " acquire" : " peek");
}

// One row of a decision table: the request, then the decision expected for it.
struct step {
  std::int64_t now;
  std::int64_t cost;
  mode m;
  bool allowed;
  std::int64_t remaining;
  std::int64_t retry_after;
  std::int64_t reset_after;
};

// Uniform access to the three algorithms, for tables and typed property tests.
template <class State>
struct algo;

template <>
struct algo<sluice::gcra_state> {
  static decision decide(sluice::gcra_state& s, const sluice::limit& l, std::int64_t now,
                         std::int64_t cost, mode m) {
    return sluice::gcra_decide(s, l, us(now), cost, m);
  }
  static sluice::gcra_state clone(const sluice::gcra_state& s) { return s; }
  static bool has_expiry(const sluice::gcra_state&) { return true; }
  static std::int64_t expiry(const sluice::gcra_state& s, const sluice::limit&) {
    return sluice::expiry(s).count();
  }
  static bool exact_after_clock_steps_back() { return true; }
};

template <>
struct algo<sluice::counter_state> {
  static decision decide(sluice::counter_state& s, const sluice::limit& l, std::int64_t now,
                         std::int64_t cost, mode m) {
    return sluice::sliding_counter_decide(s, l, us(now), cost, m);
  }
  static sluice::counter_state clone(const sluice::counter_state& s) { return s; }
  static bool has_expiry(const sluice::counter_state&) { return true; }
  static std::int64_t expiry(const sluice::counter_state& s, const sluice::limit& l) {
    return sluice::expiry(s, l).count();
  }
  // After a step back the counter measures from the newer window's start, so retry_after
  // is only an estimate there.
  static bool exact_after_clock_steps_back() { return false; }
};

template <>
struct algo<sluice::sliding_log_state> {
  static decision decide(sluice::sliding_log_state& s, const sluice::limit& l, std::int64_t now,
                         std::int64_t cost, mode m) {
    return sluice::sliding_log_decide(s, l, us(now), cost, m);
  }
  static sluice::sliding_log_state clone(const sluice::sliding_log_state& s) {
    sluice::sliding_log_state c;
    for (std::size_t i = 0; i < s.size(); ++i) EXPECT_TRUE(c.push_back(s[i].at, s[i].count));
    return c;
  }
  static bool has_expiry(const sluice::sliding_log_state& s) { return !s.empty(); }
  static std::int64_t expiry(const sluice::sliding_log_state& s, const sluice::limit& l) {
    return sluice::expiry(s, l).count();
  }
  static bool exact_after_clock_steps_back() { return true; }
};

template <class State>
void run_steps(State& s, const sluice::limit& l, const std::vector<step>& steps) {
  for (std::size_t i = 0; i < steps.size(); ++i) {
    const step& st = steps[i];
    SCOPED_TRACE(trace(i, st.now, st.cost, st.m));
    const decision expected{st.allowed, l.count, st.remaining, us(st.retry_after),
                            us(st.reset_after)};
    EXPECT_EQ(algo<State>::decide(s, l, st.now, st.cost, st.m), expected);
  }
}

// ---------------------------------------------------------------------------------------
// Models: the spec written as plainly as possible, for comparison on random sequences.

struct model_log {
  std::vector<std::pair<std::int64_t, std::int64_t>> entries;  // (at, count), oldest first
};

decision model_decide(model_log& s, const sluice::limit& l, std::int64_t now, std::int64_t cost,
                      mode m) {
  const std::int64_t w = l.window.count();
  while (!s.entries.empty() && s.entries.front().first <= now - w) {
    s.entries.erase(s.entries.begin());
  }
  std::int64_t total = 0;
  for (const auto& e : s.entries) total += e.second;
  decision d;
  d.limit = l.count;
  d.allowed = total + cost <= l.count;
  if (d.allowed && m == acq) {
    const std::int64_t at = s.entries.empty() ? now : std::max(now, s.entries.back().first);
    if (!s.entries.empty() && s.entries.back().first == at) {
      s.entries.back().second += cost;
    } else {
      s.entries.emplace_back(at, cost);
    }
    d.remaining = l.count - total - cost;
  } else {
    d.remaining = std::max<std::int64_t>(0, l.count - total);
  }
  if (!d.allowed) {
    const std::int64_t need = total + cost - l.count;
    std::int64_t sum = 0;
    for (const auto& e : s.entries) {
      sum += e.second;
      if (sum >= need) {
        d.retry_after = us(e.first + w - now);
        break;
      }
    }
  }
  d.reset_after = s.entries.empty() ? us(0) : us(s.entries.back().first + w - now);
  return d;
}

struct model_gcra {
  std::int64_t tat = 0;
};

decision model_decide(model_gcra& s, const sluice::limit& l, std::int64_t now, std::int64_t cost,
                      mode m) {
  const std::int64_t w = l.window.count();
  const std::int64_t t = (w + l.count - 1) / l.count;
  const std::int64_t w_eff = t * l.count;
  const std::int64_t tat0 = std::max(s.tat, now);
  const std::int64_t new_tat = tat0 + cost * t;
  decision d;
  d.limit = l.count;
  d.allowed = new_tat - now <= w_eff;
  if (d.allowed && m == acq) {
    s.tat = new_tat;
    d.remaining = (w_eff - (new_tat - now)) / t;
    d.reset_after = us(new_tat - now);
  } else {
    // Clamped: after the clock steps back, tat0 - now may exceed the window.
    d.remaining = std::max<std::int64_t>(0, (w_eff - (tat0 - now)) / t);
    d.reset_after = us(tat0 - now);
  }
  if (!d.allowed) d.retry_after = us(new_tat - now - w_eff);
  return d;
}

struct model_counter {
  std::int64_t window_start = 0;
  std::int64_t previous = 0;
  std::int64_t current = 0;
};

__extension__ typedef __int128 int128;  // the model's products may need 128 bits

std::int64_t floor_div_128(int128 a, int128 b) { return static_cast<std::int64_t>(a / b); }

decision model_decide(model_counter& s, const sluice::limit& l, std::int64_t now, std::int64_t cost,
                      mode m) {
  const std::int64_t w = l.window.count();
  const std::int64_t ws = now / w * w;
  model_counter r = s;
  if (r.window_start == ws || r.window_start > ws) {
    // keep
  } else if (r.window_start >= ws - w) {
    r.previous = r.current;
    r.current = 0;
    r.window_start = ws;
  } else {
    r.previous = 0;
    r.current = 0;
    r.window_start = ws;
  }
  const std::int64_t elapsed = std::max<std::int64_t>(0, now - r.window_start);
  const std::int64_t weighted =
      floor_div_128(static_cast<int128>(r.previous) * (w - elapsed) + (w - 1), w);
  const std::int64_t estimate = r.current + weighted;
  decision d;
  d.limit = l.count;
  d.allowed = estimate + cost <= l.count;
  if (d.allowed && m == acq) {
    r.current += cost;
    d.remaining = l.count - estimate - cost;
  } else {
    d.remaining = std::max<std::int64_t>(0, l.count - estimate);
  }
  if (!d.allowed) {
    if (r.current + cost <= l.count) {
      const std::int64_t e =
          w - floor_div_128(static_cast<int128>(l.count - cost - r.current) * w, r.previous);
      d.retry_after = us(e - elapsed);
    } else {
      const std::int64_t p = r.current;
      const std::int64_t a = l.count - cost;
      const std::int64_t e2 = p > 0 ? w - floor_div_128(static_cast<int128>(a) * w, p) : 0;
      d.retry_after = us((w - elapsed) + e2);
    }
  }
  if (r.current > 0) {
    d.reset_after = us((w - elapsed) + w);
  } else if (r.previous > 0) {
    d.reset_after = us(w - elapsed);
  }
  // Only an admission changes the state: a denied request does not even roll the windows.
  if (d.allowed && m == acq) s = r;
  return d;
}

template <class State>
struct model_of;
template <>
struct model_of<sluice::sliding_log_state> {
  using type = model_log;
};
template <>
struct model_of<sluice::gcra_state> {
  using type = model_gcra;
};
template <>
struct model_of<sluice::counter_state> {
  using type = model_counter;
};

// A random request sequence: limits small enough that windows fill up and empty often.
struct random_request {
  std::int64_t now;
  std::int64_t cost;
  mode m;
};

sluice::limit random_limit(std::mt19937_64& rng) {
  const std::int64_t count = std::uniform_int_distribution<std::int64_t>(1, 12)(rng);
  const std::int64_t window =
      std::uniform_int_distribution<std::int64_t>(count, count * 50 + 7)(rng);
  return make(count, window);
}

// Returns a sequence starting at `start`; times never go back unless `steps_back`.
std::vector<random_request> random_requests(std::mt19937_64& rng, const sluice::limit& l,
                                            std::int64_t start, std::size_t n, bool steps_back) {
  const std::int64_t w = l.window.count();
  std::uniform_int_distribution<int> pct(0, 99);
  std::vector<random_request> out;
  std::int64_t now = start;
  for (std::size_t i = 0; i < n; ++i) {
    const int r = pct(rng);
    if (r < 25) {
      // same instant
    } else if (r < 85) {
      now += std::uniform_int_distribution<std::int64_t>(1, std::max<std::int64_t>(1, w / 3))(rng);
    } else if (r < 95) {
      now += std::uniform_int_distribution<std::int64_t>(w / 2, 3 * w)(rng);
    } else if (steps_back) {
      now = std::max<std::int64_t>(0, now - std::uniform_int_distribution<std::int64_t>(1, w)(rng));
    }
    // Costs lean small so that keys fill up gradually, with an occasional large one.
    const std::int64_t cost =
        pct(rng) < 70 ? 1 : std::uniform_int_distribution<std::int64_t>(1, l.count)(rng);
    out.push_back({now, cost, pct(rng) < 80 ? acq : pk});
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// check_request and the decision helpers.

// Verifies that check_request accepts costs 1..count and times 0..max_time.
TEST(CheckRequest, AcceptsInRangeRequests) {
  const sluice::limit l = make(10, 1'000'000);
  EXPECT_TRUE(sluice::check_request(l, 1, us(0)));
  EXPECT_TRUE(sluice::check_request(l, 10, us(0)));
  EXPECT_TRUE(sluice::check_request(l, 5, sluice::max_time));
  EXPECT_TRUE(sluice::check_request(l, 1, us(1'700'000'000'000'000)));
}

// Verifies that check_request names each kind of bad request with its own code.
TEST(CheckRequest, RejectsBadCostAndTime) {
  const sluice::limit l = make(10, 1'000'000);
  struct bad {
    std::int64_t cost;
    std::int64_t now;
    sluice::errc expected;
  };
  const std::vector<bad> cases = {
      {0, 0, sluice::errc::invalid_cost},
      {-1, 0, sluice::errc::invalid_cost},
      {INT64_MIN, 0, sluice::errc::invalid_cost},
      {11, 0, sluice::errc::cost_exceeds_limit},
      {INT64_MAX, 0, sluice::errc::cost_exceeds_limit},
      {1, -1, sluice::errc::invalid_time},
      {1, INT64_MIN, sluice::errc::invalid_time},
      {1, sluice::max_time.count() + 1, sluice::errc::invalid_time},
      {1, INT64_MAX, sluice::errc::invalid_time},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE("cost=" + std::to_string(c.cost) + " now=" + std::to_string(c.now));
    const sluice::result<void> r = sluice::check_request(l, c.cost, us(c.now));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, c.expected);
  }
}

// Verifies that retry_after_seconds matches the reference's int(seconds) + 1, and 0 if allowed.
TEST(Decision, RetryAfterSecondsLikeReference) {
  decision d;
  d.allowed = true;
  d.retry_after = us(5'000'000);
  EXPECT_EQ(sluice::retry_after_seconds(d), 0);
  d.allowed = false;
  const std::vector<std::pair<std::int64_t, std::int64_t>> cases = {
      {0, 1}, {1, 1}, {999'999, 1}, {1'000'000, 2}, {1'500'000, 2}, {3'600'000'000, 3601}};
  for (const auto& [retry_us, seconds] : cases) {
    d.retry_after = us(retry_us);
    EXPECT_EQ(sluice::retry_after_seconds(d), seconds) << retry_us << "us";
  }
}

// Verifies that ceil_ms rounds up to whole milliseconds and never goes below 0.
TEST(Decision, CeilMsRoundsUp) {
  EXPECT_EQ(sluice::ceil_ms(us(0)), 0);
  EXPECT_EQ(sluice::ceil_ms(us(-5)), 0);
  EXPECT_EQ(sluice::ceil_ms(us(1)), 1);
  EXPECT_EQ(sluice::ceil_ms(us(1000)), 1);
  EXPECT_EQ(sluice::ceil_ms(us(1001)), 2);
  EXPECT_EQ(sluice::ceil_ms(us(2'500'000)), 2500);
}

// ---------------------------------------------------------------------------------------
// sliding_log

// Verifies a hand-computed run of the sliding log: costs, peeks, denials and the boundary.
TEST(SlidingLog, FollowsDecisionTable) {
  const sluice::limit l = make(3, 100);
  sluice::sliding_log_state s;
  run_steps(s, l,
            {
                // now, cost, mode, allowed, remaining, retry_after, reset_after
                {0, 1, acq, true, 2, 0, 100},
                {10, 1, acq, true, 1, 0, 100},
                {20, 1, pk, true, 1, 0, 90},
                {20, 2, acq, false, 1, 80, 90},  // needs the entry at 0 to expire
                {20, 1, acq, true, 0, 0, 100},
                {50, 1, acq, false, 0, 50, 70},
                {50, 3, pk, false, 0, 70, 70},  // needs all three entries to expire
                {99, 1, acq, false, 0, 1, 21},
                {100, 1, acq, true, 0, 0, 100},  // the entry at 0 expires exactly now
                {100, 1, acq, false, 0, 10, 100},
                {130, 2, acq, true, 0, 0, 100},
                {130, 1, pk, false, 0, 70, 100},
                {250, 3, pk, true, 3, 0, 0},  // everything expired: full and nothing to reset
                {250, 3, acq, true, 0, 0, 100},
            });
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s.total(), 3);
  EXPECT_EQ(sluice::expiry(s, l), us(350));
}

// Verifies that the limit admits `count` in a window and denies the next with the exact wait.
TEST(SlidingLog, DeniesWhenWindowFull) {
  const sluice::limit l = make(30, 3'600'000'000);
  sluice::sliding_log_state s;
  const std::int64_t t0 = 1'700'000'000'000'000;
  for (std::int64_t i = 0; i < 30; ++i) {
    const decision d = sluice::sliding_log_decide(s, l, us(t0 + i * 1'000'000), 1, acq);
    ASSERT_TRUE(d.allowed) << i;
    EXPECT_EQ(d.remaining, 29 - i);
  }
  const decision d = sluice::sliding_log_decide(s, l, us(t0 + 60'000'000), 1, acq);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.remaining, 0);
  EXPECT_EQ(d.retry_after, us(3'600'000'000 - 60'000'000));
  EXPECT_EQ(d.reset_after, us(29'000'000 + 3'600'000'000 - 60'000'000));
  EXPECT_EQ(sluice::retry_after_seconds(d), 3541);
  EXPECT_EQ(s.total(), 30);
}

// Verifies that an entry at t stops counting exactly at t + window, not one microsecond before.
TEST(SlidingLog, EntryExpiresExactlyAtWindowBoundary) {
  const sluice::limit l = make(1, 1'000'000);
  sluice::sliding_log_state s;
  ASSERT_TRUE(sluice::sliding_log_decide(s, l, us(5'000'000), 1, acq).allowed);
  EXPECT_FALSE(sluice::sliding_log_decide(s, l, us(5'999'999), 1, acq).allowed);
  EXPECT_TRUE(sluice::sliding_log_decide(s, l, us(6'000'000), 1, pk).allowed);
  EXPECT_TRUE(sluice::sliding_log_decide(s, l, us(6'000'000), 1, acq).allowed);
  EXPECT_EQ(sluice::expiry(s, l), us(7'000'000));
}

// Verifies that denied requests are not recorded and peeks record nothing.
TEST(SlidingLog, DeniedAndPeekedRequestsRecordNothing) {
  const sluice::limit l = make(2, 1000);
  sluice::sliding_log_state s;
  ASSERT_TRUE(sluice::sliding_log_decide(s, l, us(10), 1, acq).allowed);
  ASSERT_TRUE(sluice::sliding_log_decide(s, l, us(10), 1, pk).allowed);
  EXPECT_EQ(s.total(), 1);
  ASSERT_FALSE(sluice::sliding_log_decide(s, l, us(20), 2, acq).allowed);
  EXPECT_EQ(s.total(), 1);
  EXPECT_EQ(s.size(), 1u);
  ASSERT_TRUE(sluice::sliding_log_decide(s, l, us(20), 1, acq).allowed);
  EXPECT_EQ(s.total(), 2);
  EXPECT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].at, us(10));
  EXPECT_EQ(s[1].at, us(20));
}

// Verifies that admissions at one instant merge into one entry.
TEST(SlidingLog, MergesAdmissionsAtTheSameTime) {
  const sluice::limit l = make(10, 1000);
  sluice::sliding_log_state s;
  ASSERT_TRUE(sluice::sliding_log_decide(s, l, us(7), 3, acq).allowed);
  ASSERT_TRUE(sluice::sliding_log_decide(s, l, us(7), 4, acq).allowed);
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].at, us(7));
  EXPECT_EQ(s[0].count, 7);
  EXPECT_EQ(s.total(), 7);
}

// Verifies that a clock stepping back records at the newest time and still limits exactly.
TEST(SlidingLog, ClockSteppingBackRecordsAtNewestTime) {
  const sluice::limit l = make(2, 100);
  sluice::sliding_log_state s;
  run_steps(s, l,
            {
                {1000, 1, acq, true, 1, 0, 100},
                {950, 1, acq, true, 0, 0, 150},  // recorded at 1000, not 950
                {960, 1, acq, false, 0, 140, 140},
                {1099, 1, acq, false, 0, 1, 1},
                {1100, 1, acq, true, 1, 0, 100},
            });
  EXPECT_EQ(s.size(), 1u);
  EXPECT_EQ(s.total(), 1);
  EXPECT_EQ(s.back().at, us(1100));
}

// Verifies a one-per-century limit near today's time: no overflow, exact waits.
TEST(SlidingLog, HugeWindowNearPresent) {
  const std::int64_t w = 36500LL * 86'400'000'000;
  const sluice::limit l = make(1, w);
  const std::int64_t now = 1'800'000'000'000'000;
  sluice::sliding_log_state s;
  run_steps(s, l,
            {
                {now, 1, acq, true, 0, 0, w},
                {now + 1, 1, acq, false, 0, w - 1, w - 1},
                {now + w - 1, 1, acq, false, 0, 1, 1},
                {now + w, 1, acq, true, 0, 0, w},
            });
  EXPECT_EQ(sluice::expiry(s, l), us(now + 2 * w));
}

// Verifies that the largest window works at the latest supported time.
TEST(SlidingLog, MaxWindowAtMaxTime) {
  const sluice::limit l = make(5, sluice::max_window.count());
  const std::int64_t w = l.window.count();
  const std::int64_t t = sluice::max_time.count();
  sluice::sliding_log_state s;
  run_steps(s, l,
            {
                {t - 1, 5, acq, true, 0, 0, w},
                {t, 1, acq, false, 0, w - 1, w - 1},
            });
  EXPECT_EQ(sluice::expiry(s, l), us(t - 1 + w));
}

// Verifies that a limit of 100000 keeps one entry per distinct admission time.
TEST(SlidingLog, HoldsManyEntries) {
  const std::int64_t count = 100'000;
  const std::int64_t w = 3'600'000'000;
  const sluice::limit l = make(count, w);
  sluice::sliding_log_state s;
  for (std::int64_t i = 0; i < count; ++i) {
    const decision d = sluice::sliding_log_decide(s, l, us(i), 1, acq);
    ASSERT_TRUE(d.allowed) << i;
    ASSERT_EQ(d.remaining, count - i - 1) << i;
  }
  EXPECT_EQ(s.size(), static_cast<std::size_t>(count));
  EXPECT_EQ(s.total(), count);
  EXPECT_GE(s.capacity_bytes(), static_cast<std::size_t>(count) * sizeof(s[0]));
  EXPECT_EQ(s[0].at, us(0));
  EXPECT_EQ(s.back().at, us(count - 1));

  const decision denied = sluice::sliding_log_decide(s, l, us(count), 1, acq);
  EXPECT_FALSE(denied.allowed);
  EXPECT_EQ(denied.retry_after, us(w - count));

  // The oldest entry expires at w; a cost of 3 needs the three oldest gone.
  const decision big = sluice::sliding_log_decide(s, l, us(w), 3, pk);
  EXPECT_FALSE(big.allowed);
  EXPECT_EQ(big.retry_after, us(2));
  const decision one = sluice::sliding_log_decide(s, l, us(w), 1, acq);
  EXPECT_TRUE(one.allowed);
  EXPECT_EQ(s.size(), static_cast<std::size_t>(count));
  EXPECT_EQ(s.total(), count);
}

// Verifies that a full limit spent at one instant takes one entry.
TEST(SlidingLog, ManyAdmissionsAtOneInstantTakeOneEntry) {
  const std::int64_t count = 100'000;
  const sluice::limit l = make(count, 3'600'000'000);
  sluice::sliding_log_state s;
  for (std::int64_t i = 0; i < count; ++i) {
    ASSERT_TRUE(sluice::sliding_log_decide(s, l, us(42), 1, acq).allowed) << i;
  }
  EXPECT_FALSE(sluice::sliding_log_decide(s, l, us(42), 1, acq).allowed);
  EXPECT_EQ(s.size(), 1u);
  EXPECT_EQ(s.total(), count);
}

// A memory resource that counts what passes through it.
class counting_resource final : public std::pmr::memory_resource {
 public:
  std::size_t live_bytes = 0;
  std::size_t allocations = 0;

 private:
  void* do_allocate(std::size_t bytes, std::size_t align) override {
    ++allocations;
    live_bytes += bytes;
    return std::pmr::new_delete_resource()->allocate(bytes, align);
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t align) override {
    live_bytes -= bytes;
    std::pmr::new_delete_resource()->deallocate(p, bytes, align);
  }
  bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override {
    return this == &o;
  }
};

// Verifies that the log allocates from its resource, gives everything back, and moves cleanly.
TEST(SlidingLogState, UsesItsMemoryResourceAndMoves) {
  counting_resource mr;
  {
    sluice::sliding_log_state s{&mr};
    for (std::int64_t i = 0; i < 1000; ++i) ASSERT_TRUE(s.push_back(us(i), 1));
    EXPECT_GT(mr.allocations, 0u);
    EXPECT_GE(mr.live_bytes, s.capacity_bytes());
    EXPECT_EQ(s.size(), 1000u);
    EXPECT_EQ(s.total(), 1000);

    sluice::sliding_log_state moved{std::move(s)};
    EXPECT_EQ(moved.size(), 1000u);
    EXPECT_EQ(moved.total(), 1000);
    EXPECT_EQ(moved[999].at, us(999));
  }
  EXPECT_EQ(mr.live_bytes, 0u);
}

// Verifies push_back merging, pop_front order and total across a ring buffer wrap-around.
TEST(SlidingLogState, PushPopKeepsOrderAndTotal) {
  sluice::sliding_log_state s;
  ASSERT_TRUE(s.push_back(us(1), 2));
  ASSERT_TRUE(s.push_back(us(1), 3));
  ASSERT_TRUE(s.push_back(us(2), 1));
  EXPECT_EQ(s.size(), 2u);
  EXPECT_EQ(s.total(), 6);
  EXPECT_EQ(s[0].count, 5);
  s.pop_front();
  EXPECT_EQ(s.size(), 1u);
  EXPECT_EQ(s.total(), 1);
  EXPECT_EQ(s[0].at, us(2));
  // Push and pop enough to wrap the ring several times.
  std::int64_t next = 3;
  for (int round = 0; round < 100; ++round) {
    for (int k = 0; k < 5; ++k) ASSERT_TRUE(s.push_back(us(next++), 1));
    for (int k = 0; k < 4; ++k) s.pop_front();
  }
  EXPECT_EQ(s.size(), 101u);
  EXPECT_EQ(s.total(), 101);
  for (std::size_t i = 1; i < s.size(); ++i) EXPECT_EQ(s[i].at - s[i - 1].at, us(1)) << i;
  EXPECT_EQ(s.back().at, us(next - 1));
}

// Verifies that shrink gives memory back once the log is mostly empty and keeps the entries.
TEST(SlidingLogState, ShrinkReleasesMemory) {
  counting_resource mr;
  sluice::sliding_log_state s{&mr};
  for (std::int64_t i = 0; i < 4096; ++i) ASSERT_TRUE(s.push_back(us(i), 1));
  const std::size_t big = s.capacity_bytes();
  for (int i = 0; i < 4090; ++i) s.pop_front();
  s.shrink();
  EXPECT_LT(s.capacity_bytes(), big);
  EXPECT_LT(mr.live_bytes, big);
  ASSERT_EQ(s.size(), 6u);
  EXPECT_EQ(s.total(), 6);
  for (std::size_t i = 0; i < s.size(); ++i) EXPECT_EQ(s[i].at, us(4090 + std::int64_t(i)));
}

// Verifies that a failed allocation is reported and leaves the log unchanged.
TEST(SlidingLogState, PushBackFailsCleanlyWithoutMemory) {
  sluice::sliding_log_state s{std::pmr::null_memory_resource()};
  EXPECT_FALSE(s.push_back(us(1), 1));
  EXPECT_TRUE(s.empty());
  EXPECT_EQ(s.total(), 0);
  EXPECT_EQ(s.capacity_bytes(), 0u);
}

// Verifies that when no memory can be had, the log admits nothing it cannot record.
TEST(SlidingLog, OutOfMemoryNeverAdmitsUnrecorded) {
  const sluice::limit l = make(3, 100);
  sluice::sliding_log_state s{std::pmr::null_memory_resource()};
  const decision d = sluice::sliding_log_decide(s, l, us(10), 1, acq);
  EXPECT_EQ(d.allowed, s.total() == 1);
  EXPECT_EQ(s.total(), 0);
  EXPECT_EQ(d.limit, 3);
  EXPECT_GE(d.remaining, 0);
  EXPECT_EQ(d.allowed, d.retry_after == us(0));
}

// Verifies that no window (t - W, t] admits over count and that no denial was needless.
TEST(SlidingLog, RandomSequencesNeverExceedAndNeverDenyNeedlessly) {
  std::mt19937_64 rng(20240601);
  for (int run = 0; run < 300; ++run) {
    const sluice::limit l = random_limit(rng);
    const std::int64_t w = l.window.count();
    sluice::sliding_log_state s;
    std::vector<std::pair<std::int64_t, std::int64_t>> admitted;
    const auto in_window = [&](std::int64_t t) {
      std::int64_t sum = 0;
      for (const auto& [at, c] : admitted) {
        if (at > t - w && at <= t) sum += c;
      }
      return sum;
    };
    for (const random_request& r : random_requests(rng, l, 1000, 200, false)) {
      const decision d = sluice::sliding_log_decide(s, l, us(r.now), r.cost, acq);
      if (d.allowed) {
        admitted.emplace_back(r.now, r.cost);
        ASSERT_LE(in_window(r.now), l.count) << "run " << run << " now " << r.now;
        ASSERT_EQ(s.total(), in_window(r.now)) << "run " << run << " now " << r.now;
      } else {
        ASSERT_GT(in_window(r.now) + r.cost, l.count) << "run " << run << " now " << r.now;
      }
    }
  }
}

// Verifies that a clock stepping back records at the newest time and never exceeds count.
TEST(SlidingLog, ClockSteppingBackNeverAdmitsMoreThanCount) {
  // The bound is on the window ending at the latest time the log has seen. A window ending
  // earlier is not bounded: a request at a later time may already have pruned entries that
  // an earlier `now` would still count.
  std::mt19937_64 rng(77);
  for (int run = 0; run < 300; ++run) {
    const sluice::limit l = random_limit(rng);
    const std::int64_t w = l.window.count();
    sluice::sliding_log_state s;
    std::vector<std::pair<std::int64_t, std::int64_t>> recorded;
    std::int64_t last = -1;
    std::int64_t horizon = 0;
    for (const random_request& r : random_requests(rng, l, 5000, 200, true)) {
      horizon = std::max(horizon, r.now);
      const decision d = sluice::sliding_log_decide(s, l, us(r.now), r.cost, acq);
      ASSERT_LE(s.total(), l.count);
      if (!d.allowed) continue;
      const std::int64_t at = s.back().at.count();
      ASSERT_GE(at, r.now);
      ASSERT_GE(at, last);
      ASSERT_LE(at, horizon);
      last = at;
      recorded.emplace_back(at, r.cost);
      std::int64_t sum = 0;
      for (const auto& [t, c] : recorded) {
        if (t > horizon - w) sum += c;
      }
      ASSERT_LE(sum, l.count) << "run " << run << " at " << at << " horizon " << horizon;
    }
  }
}

// ---------------------------------------------------------------------------------------
// gcra

// Verifies a hand-computed GCRA run: burst, smooth refill, peeks and denials.
TEST(Gcra, FollowsDecisionTable) {
  const sluice::limit l = make(4, 100);  // emission interval 25
  sluice::gcra_state s;
  run_steps(s, l,
            {
                // now, cost, mode, allowed, remaining, retry_after, reset_after
                {1000, 1, acq, true, 3, 0, 25},
                {1000, 2, acq, true, 1, 0, 75},
                {1000, 1, pk, true, 1, 0, 75},
                {1000, 2, acq, false, 1, 25, 75},
                {1000, 1, acq, true, 0, 0, 100},
                {1010, 1, acq, false, 0, 15, 90},
                {1025, 1, acq, true, 0, 0, 100},  // exactly one interval later
                {1100, 4, pk, false, 3, 25, 25},
                {1100, 3, acq, true, 0, 0, 100},
                {5000, 4, acq, true, 0, 0, 100},  // idle long enough: full burst again
            });
  EXPECT_EQ(s.tat, us(5100));
  EXPECT_EQ(sluice::expiry(s), us(5100));
}

// Verifies that the emission interval rounds up so the sustained rate never exceeds the limit.
TEST(Gcra, RoundsEmissionIntervalUp) {
  const sluice::limit l = make(3, 100);  // interval 34, effective window 102
  sluice::gcra_state s;
  run_steps(s, l,
            {
                {0, 3, acq, true, 0, 0, 102},
                {0, 1, acq, false, 0, 34, 102},
                {33, 1, acq, false, 0, 1, 69},
                {34, 1, acq, true, 0, 0, 102},
            });
}

// Verifies that a fresh key admits a burst of count at once, then one per interval.
TEST(Gcra, BurstThenOnePerInterval) {
  const sluice::limit l = make(10, 10'000'000);  // one per second
  sluice::gcra_state s;
  const std::int64_t t0 = 1'000'000'000;
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(sluice::gcra_decide(s, l, us(t0), 1, acq).allowed) << i;
  }
  const decision d = sluice::gcra_decide(s, l, us(t0), 1, acq);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after, us(1'000'000));
  for (int i = 1; i <= 5; ++i) {
    EXPECT_FALSE(sluice::gcra_decide(s, l, us(t0 + i * 1'000'000 - 1), 1, acq).allowed) << i;
    EXPECT_TRUE(sluice::gcra_decide(s, l, us(t0 + i * 1'000'000), 1, acq).allowed) << i;
  }
}

// Verifies that a clock stepping back only delays admission, never adds any.
TEST(Gcra, ClockSteppingBackDelays) {
  const sluice::limit l = make(4, 100);
  sluice::gcra_state s;
  run_steps(s, l,
            {
                {1000, 4, acq, true, 0, 0, 100},
                {900, 1, acq, false, 0, 125, 200},
                {1025, 1, acq, true, 0, 0, 100},
            });
  EXPECT_EQ(s.tat, us(1125));
}

// Verifies GCRA with a one-per-century limit near today's time and at the latest time.
TEST(Gcra, HugeWindows) {
  const std::int64_t w = 36500LL * 86'400'000'000;
  const std::int64_t now = 1'800'000'000'000'000;
  {
    sluice::gcra_state s;
    run_steps(s, make(1, w),
              {
                  {now, 1, acq, true, 0, 0, w},
                  {now + 1, 1, acq, false, 0, w - 1, w - 1},
                  {now + w, 1, acq, true, 0, 0, w},
              });
  }
  {
    const sluice::limit l = make(1'000'000'000, w);  // interval exactly 3153600 us
    sluice::gcra_state s;
    run_steps(s, l,
              {
                  {now, 1'000'000'000, acq, true, 0, 0, w},
                  {now, 1, pk, false, 0, 3'153'600, w},
                  {now + w / 2, 500'000'000, acq, true, 0, 0, w},
              });
  }
  {
    const sluice::limit l = make(7, sluice::max_window.count());
    const std::int64_t t = sluice::max_time.count();
    sluice::gcra_state s;
    const decision d = sluice::gcra_decide(s, l, us(t), 7, acq);
    EXPECT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 0);
    const decision d2 = sluice::gcra_decide(s, l, us(t), 1, pk);
    EXPECT_FALSE(d2.allowed);
    EXPECT_GT(d2.retry_after, us(0));
  }
}

// ---------------------------------------------------------------------------------------
// sliding_counter

// Verifies a hand-computed sliding counter run across several aligned windows.
TEST(SlidingCounter, FollowsDecisionTable) {
  const sluice::limit l = make(10, 100);
  sluice::counter_state s;
  run_steps(s, l,
            {
                // now, cost, mode, allowed, remaining, retry_after, reset_after
                {1050, 4, acq, true, 6, 0, 150},
                {1099, 6, acq, true, 0, 0, 101},
                {1099, 1, acq, false, 0, 11, 101},  // must wait into the next window
                {1110, 1, pk, true, 1, 0, 90},      // estimate 0 + ceil(10 * 90 / 100) = 9
                {1110, 1, acq, true, 0, 0, 190},
                {1150, 3, acq, true, 1, 0, 150},    // estimate 1 + 5
                {1150, 2, acq, false, 1, 10, 150},  // estimate 4 + 5; fits once weight is 4
                {1160, 2, acq, true, 0, 0, 140},
                {1200, 4, acq, true, 0, 0, 200},     // exactly at a boundary: previous = 6
                {1300, 10, pk, false, 6, 100, 100},  // waits for the previous 4 to fade
                {1450, 10, acq, true, 0, 0, 150},
                {1450, 10, acq, false, 0, 150, 150},
                {5000, 1, acq, true, 9, 0, 200},  // long idle: fresh
            });
  EXPECT_EQ(s.window_start, us(5000));
  EXPECT_EQ(s.previous, 0);
  EXPECT_EQ(s.current, 1);
  EXPECT_EQ(sluice::expiry(s, l), us(5200));
}

// Verifies that after waiting the returned retry_after in the table above, the request fits.
TEST(SlidingCounter, RetryAfterLandsOnFirstAdmissibleMicrosecond) {
  const sluice::limit l = make(10, 100);
  const sluice::counter_state full{us(1000), 0, 10};
  {
    sluice::counter_state s = full;
    const decision d = sluice::sliding_counter_decide(s, l, us(1099), 1, acq);
    ASSERT_FALSE(d.allowed);
    ASSERT_EQ(d.retry_after, us(11));
    sluice::counter_state early = full;
    EXPECT_FALSE(sluice::sliding_counter_decide(early, l, us(1109), 1, acq).allowed);
    EXPECT_TRUE(sluice::sliding_counter_decide(s, l, us(1110), 1, acq).allowed);
  }
  {
    const sluice::counter_state mid{us(1100), 10, 4};
    sluice::counter_state s = mid;
    const decision d = sluice::sliding_counter_decide(s, l, us(1150), 2, acq);
    ASSERT_FALSE(d.allowed);
    ASSERT_EQ(d.retry_after, us(10));
    sluice::counter_state early = mid;
    EXPECT_FALSE(sluice::sliding_counter_decide(early, l, us(1159), 2, acq).allowed);
    EXPECT_TRUE(sluice::sliding_counter_decide(s, l, us(1160), 2, acq).allowed);
  }
}

// Verifies window alignment: a boundary rolls current into previous; two boundaries clear both.
TEST(SlidingCounter, RollsAtAlignedBoundaries) {
  const sluice::limit l = make(10, 100);
  {
    sluice::counter_state s{us(200), 3, 7};
    const decision d = sluice::sliding_counter_decide(s, l, us(300), 1, acq);
    EXPECT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 2);  // 10 - 7 - 1
    EXPECT_EQ(s.window_start, us(300));
    EXPECT_EQ(s.previous, 7);
    EXPECT_EQ(s.current, 1);
  }
  {
    sluice::counter_state s{us(200), 3, 7};
    const decision d = sluice::sliding_counter_decide(s, l, us(399), 1, acq);
    EXPECT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 8);  // 10 - ceil(7 * 1 / 100) - 1
    EXPECT_EQ(s.previous, 7);
  }
  {
    sluice::counter_state s{us(200), 3, 7};
    const decision d = sluice::sliding_counter_decide(s, l, us(400), 1, acq);
    EXPECT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 9);
    EXPECT_EQ(s.window_start, us(400));
    EXPECT_EQ(s.previous, 0);
    EXPECT_EQ(s.current, 1);
  }
  {
    sluice::counter_state s{us(200), 3, 7};
    const decision d = sluice::sliding_counter_decide(s, l, us(299), 1, acq);
    EXPECT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 1);  // 10 - (7 + ceil(3 * 1 / 100)) - 1
    EXPECT_EQ(s.current, 8);
  }
}

// Verifies that a clock stepping back keeps the newer window and counts from its start.
TEST(SlidingCounter, ClockSteppingBackKeepsState) {
  const sluice::limit l = make(10, 100);
  {
    sluice::counter_state s{us(5000), 5, 3};
    // elapsed is taken as 0: estimate = 3 + 5 = 8.
    run_steps(s, l,
              {
                  {4990, 3, acq, false, 2, 20, 200},
                  {4990, 2, pk, true, 2, 0, 200},
                  {4990, 2, acq, true, 0, 0, 200},
              });
    EXPECT_EQ(s.window_start, us(5000));
    EXPECT_EQ(s.previous, 5);
    EXPECT_EQ(s.current, 5);
  }
  {
    sluice::counter_state s{us(5000), 0, 1};
    run_steps(s, l, {{4950, 2, acq, true, 7, 0, 200}});
    EXPECT_EQ(s.window_start, us(5000));
    EXPECT_EQ(s.current, 3);
  }
}

// Verifies that the weighted estimate and waits stay exact where products exceed 64 bits.
TEST(SlidingCounter, LargeCountsAndWindowsDoNotOverflow) {
  const std::int64_t w = 36500LL * 86'400'000'000;  // 3153600000000000 us
  const std::int64_t count = 1'000'000'000;
  const sluice::limit l = make(count, w);
  const sluice::counter_state start{us(0), 0, count};  // a full window that just ended
  {
    sluice::counter_state s = start;
    // At W + W/2: previous = 1e9 weighted by one half.
    run_steps(s, l,
              {
                  {w + w / 2, 1, pk, true, 500'000'000, 0, w / 2},
                  {w + w / 2, 600'000'000, acq, false, 500'000'000, 315'360'000'000'000, w / 2},
                  {w + w / 2, 500'000'000, acq, true, 0, 0, w / 2 + w},
              });
  }
  {
    sluice::counter_state s;
    const std::int64_t now = 1'800'000'000'000'000;  // window [0, w), elapsed 1.8e15
    run_steps(s, make(1, w),
              {
                  {now, 1, acq, true, 0, 0, (w - now) + w},
                  {now + 1, 1, acq, false, 0, (w - now - 1) + w, (w - now - 1) + w},
              });
  }
}

// Verifies that the counter works with the largest window at the latest supported time.
TEST(SlidingCounter, MaxWindowAtMaxTime) {
  const sluice::limit l = make(3, sluice::max_window.count());
  const std::int64_t w = l.window.count();
  const std::int64_t t = sluice::max_time.count();
  sluice::counter_state s;
  const decision d = sluice::sliding_counter_decide(s, l, us(t), 3, acq);
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(s.window_start, us(t / w * w));
  EXPECT_EQ(sluice::expiry(s, l), us(t / w * w + 2 * w));
  const decision d2 = sluice::sliding_counter_decide(s, l, us(t), 1, acq);
  EXPECT_FALSE(d2.allowed);
  EXPECT_GT(d2.retry_after, us(0));
}

// ---------------------------------------------------------------------------------------
// Properties shared by the three algorithms.

template <class State>
class Algorithms : public ::testing::Test {};

using algorithm_states =
    ::testing::Types<sluice::sliding_log_state, sluice::gcra_state, sluice::counter_state>;

class state_names {
 public:
  template <class T>
  static std::string GetName(int) {
    if (std::is_same_v<T, sluice::sliding_log_state>) return "SlidingLog";
    if (std::is_same_v<T, sluice::gcra_state>) return "Gcra";
    return "SlidingCounter";
  }
};

TYPED_TEST_SUITE(Algorithms, algorithm_states, state_names);

// Verifies that every decision on random sequences equals a plain model of the spec.
TYPED_TEST(Algorithms, MatchesModelOnRandomSequences) {
  // Basic invariants are checked too: limit echoed, remaining in range, retry iff denied.
  using State = TypeParam;
  using Model = typename model_of<State>::type;
  std::mt19937_64 rng(0x5eed);
  for (int run = 0; run < 400; ++run) {
    const sluice::limit l = random_limit(rng);
    State s;
    Model m;
    const bool back = run % 2 == 1;
    const auto reqs = random_requests(rng, l, 10'000, 150, back);
    for (std::size_t i = 0; i < reqs.size(); ++i) {
      const random_request& r = reqs[i];
      SCOPED_TRACE("run " + std::to_string(run) + " limit " + sluice::to_string(l) + " " +
                   trace(i, r.now, r.cost, r.m));
      const decision want = model_decide(m, l, r.now, r.cost, r.m);
      const decision got = algo<State>::decide(s, l, r.now, r.cost, r.m);
      ASSERT_EQ(got, want);
      ASSERT_EQ(got.limit, l.count);
      ASSERT_GE(got.remaining, 0);
      ASSERT_LE(got.remaining, l.count);
      ASSERT_EQ(got.allowed, got.retry_after == us(0));
      ASSERT_GE(got.reset_after, us(0));
    }
  }
}

// Verifies that waiting retry_after admits the same request and one microsecond less does not.
TYPED_TEST(Algorithms, WaitingRetryAfterIsEnoughAndNecessary) {
  using State = TypeParam;
  std::mt19937_64 rng(12345);
  int checked = 0;
  for (int run = 0; run < 300; ++run) {
    const sluice::limit l = random_limit(rng);
    State s;
    const bool back = run % 3 == 2 && algo<State>::exact_after_clock_steps_back();
    std::int64_t newest = 0;
    for (const random_request& r : random_requests(rng, l, 10'000, 150, back)) {
      newest = std::max(newest, r.now);
      State probe = algo<State>::clone(s);
      const decision d = algo<State>::decide(probe, l, r.now, r.cost, pk);
      if (!d.allowed && (r.now == newest || algo<State>::exact_after_clock_steps_back())) {
        SCOPED_TRACE("run " + std::to_string(run) + " limit " + sluice::to_string(l) + " " +
                     trace(0, r.now, r.cost, acq) +
                     " retry_after=" + std::to_string(d.retry_after.count()));
        ASSERT_GT(d.retry_after, us(0));
        State later = algo<State>::clone(s);
        EXPECT_TRUE(
            algo<State>::decide(later, l, r.now + d.retry_after.count(), r.cost, acq).allowed);
        State earlier = algo<State>::clone(s);
        EXPECT_FALSE(algo<State>::decide(earlier, l, r.now + d.retry_after.count() - 1, r.cost, acq)
                         .allowed);
        ++checked;
      }
      algo<State>::decide(s, l, r.now, r.cost, r.m);
    }
  }
  EXPECT_GT(checked, 1000);
}

// Verifies that a state at or past its expiry decides exactly like a fresh state.
TYPED_TEST(Algorithms, ExpiredStateDecidesLikeFresh) {
  using State = TypeParam;
  std::mt19937_64 rng(999);
  int checked = 0;
  for (int run = 0; run < 300; ++run) {
    const sluice::limit l = random_limit(rng);
    State s;
    for (const random_request& r : random_requests(rng, l, 10'000, 40, false)) {
      algo<State>::decide(s, l, r.now, r.cost, r.m);
    }
    if (!algo<State>::has_expiry(s)) continue;
    const std::int64_t e = algo<State>::expiry(s, l);
    for (const std::int64_t now : {e, e + 1, e + l.window.count() + 3}) {
      const std::int64_t cost = std::uniform_int_distribution<std::int64_t>(1, l.count)(rng);
      for (const mode m : {pk, acq}) {
        State old_state = algo<State>::clone(s);
        State fresh;
        SCOPED_TRACE("run " + std::to_string(run) + " expiry " + std::to_string(e) + " " +
                     trace(0, now, cost, m));
        EXPECT_EQ(algo<State>::decide(old_state, l, now, cost, m),
                  algo<State>::decide(fresh, l, now, cost, m));
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 1000);
}

// Verifies that expiry is not early: just before it, a full-cost request is still denied.
TYPED_TEST(Algorithms, ExpiryIsNotEarly) {
  using State = TypeParam;
  std::mt19937_64 rng(4242);
  for (int run = 0; run < 300; ++run) {
    const sluice::limit l = random_limit(rng);
    State s;
    const std::int64_t now = 10'000 + run;
    ASSERT_TRUE(algo<State>::decide(s, l, now, l.count, acq).allowed);
    const std::int64_t e = algo<State>::expiry(s, l);
    ASSERT_GT(e, now);
    State fresh;
    const decision from_fresh = algo<State>::decide(fresh, l, e - 1, l.count, pk);
    const decision from_state = algo<State>::decide(s, l, e - 1, l.count, pk);
    EXPECT_TRUE(from_fresh.allowed);
    EXPECT_FALSE(from_state.allowed)
        << "run " << run << " limit " << sluice::to_string(l) << " expiry " << e;
  }
}

// Verifies that peeks leave no trace: interleaving them changes no acquire's decision.
TYPED_TEST(Algorithms, PeekChangesNothing) {
  using State = TypeParam;
  std::mt19937_64 rng(31337);
  for (int run = 0; run < 300; ++run) {
    const sluice::limit l = random_limit(rng);
    State with_peeks;
    State without;
    for (const random_request& r : random_requests(rng, l, 10'000, 100, run % 2 == 0)) {
      const std::int64_t peek_cost = std::uniform_int_distribution<std::int64_t>(1, l.count)(rng);
      algo<State>::decide(with_peeks, l, r.now, peek_cost, pk);
      const decision a = algo<State>::decide(with_peeks, l, r.now, r.cost, acq);
      const decision b = algo<State>::decide(without, l, r.now, r.cost, acq);
      ASSERT_EQ(a, b) << "run " << run << " " << trace(0, r.now, r.cost, acq);
    }
  }
}

// Verifies that peek answers `allowed` and `retry_after` exactly as acquire would.
TYPED_TEST(Algorithms, PeekAgreesWithAcquire) {
  using State = TypeParam;
  std::mt19937_64 rng(8080);
  for (int run = 0; run < 300; ++run) {
    const sluice::limit l = random_limit(rng);
    State s;
    for (const random_request& r : random_requests(rng, l, 10'000, 100, run % 2 == 0)) {
      State probe = algo<State>::clone(s);
      const decision p = algo<State>::decide(probe, l, r.now, r.cost, pk);
      const decision a = algo<State>::decide(s, l, r.now, r.cost, acq);
      ASSERT_EQ(p.allowed, a.allowed) << "run " << run << " " << trace(0, r.now, r.cost, acq);
      ASSERT_EQ(p.retry_after, a.retry_after) << "run " << run;
      if (!a.allowed) {
        ASSERT_EQ(p, a) << "run " << run;
      } else {
        ASSERT_EQ(p.remaining - r.cost, a.remaining) << "run " << run;
      }
    }
  }
}

}  // namespace
