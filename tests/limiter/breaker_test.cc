// Tests of the circuit breaker's state machine, driven by a manual clock: the threshold,
// the open period, the single probe while half-open, doubling and its cap, and recovery.
#include "sluice/breaker.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <latch>
#include <thread>
#include <vector>

#include "sluice/clock.h"

namespace {

using sluice::breaker_state;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::seconds;

class CircuitBreaker : public ::testing::Test {
 protected:
  // Fails `n` calls, each let through first.
  void fail(sluice::circuit_breaker& b, int n) {
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(b.allow()) << i;
      b.on_failure();
    }
  }

  sluice::manual_clock clock_{seconds(1'700'000'000)};
};

// Verifies that a new breaker is closed, lets every call through and reports nothing yet.
TEST_F(CircuitBreaker, StartsClosed) {
  sluice::circuit_breaker b{{}, clock_};
  EXPECT_EQ(b.state(), breaker_state::closed);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(b.allow());
  EXPECT_EQ(b.next_probe_in(), microseconds(0));
  const sluice::breaker_stats s = b.stats();
  EXPECT_EQ(s.opened, 0u);
  EXPECT_EQ(s.probes, 0u);
  EXPECT_EQ(s.probes_failed, 0u);
}

// Verifies probe_now: while open it makes the probe due at once (one caller through, the
// others refused), without touching the clock; a failed probe still doubles the period; it
// changes nothing on a closed or half-open breaker. reset closes an open breaker.
TEST_F(CircuitBreaker, ProbeNowMakesTheProbeDueAtOnce) {
  sluice::circuit_breaker b{
      {.failures_to_open = 1, .open_for = seconds(8), .max_open_for = seconds(30)}, clock_};
  b.probe_now();
  EXPECT_EQ(b.state(), breaker_state::closed);
  fail(b, 1);
  ASSERT_EQ(b.state(), breaker_state::open);
  EXPECT_FALSE(b.allow());
  b.probe_now();
  EXPECT_EQ(b.next_probe_in(), microseconds(0));
  EXPECT_TRUE(b.allow());
  EXPECT_EQ(b.state(), breaker_state::half_open);
  EXPECT_FALSE(b.allow());
  b.probe_now();  // half-open: the probe is out, nothing changes
  EXPECT_FALSE(b.allow());
  b.on_failure();
  EXPECT_EQ(b.next_probe_in(), seconds(16));
  b.probe_now();
  EXPECT_TRUE(b.allow());
  b.on_success();
  EXPECT_EQ(b.state(), breaker_state::closed);

  fail(b, 1);
  ASSERT_EQ(b.state(), breaker_state::open);
  b.reset();
  EXPECT_EQ(b.state(), breaker_state::closed);
  EXPECT_TRUE(b.allow());
}

// Verifies the documented defaults.
TEST_F(CircuitBreaker, DefaultOptions) {
  const sluice::breaker_options o;
  EXPECT_EQ(o.failures_to_open, 5u);
  EXPECT_EQ(o.open_for, seconds(1));
  EXPECT_EQ(o.max_open_for, seconds(30));
}

// Verifies that the breaker opens at exactly `failures_to_open` consecutive failures.
TEST_F(CircuitBreaker, OpensAtThreshold) {
  sluice::circuit_breaker b{{.failures_to_open = 3}, clock_};
  fail(b, 2);
  EXPECT_EQ(b.state(), breaker_state::closed);
  EXPECT_TRUE(b.allow());
  b.on_failure();
  EXPECT_EQ(b.state(), breaker_state::open);
  EXPECT_FALSE(b.allow());
  EXPECT_EQ(b.stats().opened, 1u);
}

// Verifies that a success in between restarts the count: only consecutive failures open it.
TEST_F(CircuitBreaker, SuccessRestartsTheCount) {
  sluice::circuit_breaker b{{.failures_to_open = 3}, clock_};
  for (int round = 0; round < 5; ++round) {
    fail(b, 2);
    b.on_success();
  }
  EXPECT_EQ(b.state(), breaker_state::closed);
  fail(b, 3);
  EXPECT_EQ(b.state(), breaker_state::open);
}

// Verifies that calls that say nothing about the store neither count nor restart the count.
TEST_F(CircuitBreaker, AbandonedCallsDoNotCount) {
  sluice::circuit_breaker b{{.failures_to_open = 2}, clock_};
  fail(b, 1);
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(b.allow());
    b.on_abandoned();
  }
  EXPECT_EQ(b.state(), breaker_state::closed);
  fail(b, 1);
  EXPECT_EQ(b.state(), breaker_state::open);
}

// Verifies that an open breaker refuses calls for exactly `open_for`, counting down.
TEST_F(CircuitBreaker, RefusesForTheOpenPeriod) {
  sluice::circuit_breaker b{{.failures_to_open = 1, .open_for = seconds(2)}, clock_};
  fail(b, 1);
  EXPECT_EQ(b.next_probe_in(), seconds(2));
  clock_.advance(milliseconds(1500));
  EXPECT_FALSE(b.allow());
  EXPECT_EQ(b.next_probe_in(), milliseconds(500));
  clock_.advance(milliseconds(500) - microseconds(1));
  EXPECT_FALSE(b.allow());
  EXPECT_EQ(b.next_probe_in(), microseconds(1));
  clock_.advance(microseconds(1));
  EXPECT_EQ(b.next_probe_in(), microseconds(0));
  EXPECT_EQ(b.state(), breaker_state::open);  // until someone asks
  EXPECT_TRUE(b.allow());
  EXPECT_EQ(b.state(), breaker_state::half_open);
}

// Verifies that half-open lets exactly one probe through, and nobody else until it reports.
TEST_F(CircuitBreaker, HalfOpenLetsOneProbeThrough) {
  sluice::circuit_breaker b{{.failures_to_open = 1}, clock_};
  fail(b, 1);
  clock_.advance(seconds(1));
  EXPECT_TRUE(b.allow());
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(b.allow());
  clock_.advance(seconds(60));  // however long the probe takes
  EXPECT_FALSE(b.allow());
  EXPECT_EQ(b.state(), breaker_state::half_open);
  EXPECT_EQ(b.next_probe_in(), microseconds(0));
  EXPECT_EQ(b.stats().probes, 1u);
}

// Verifies that a probe abandoned on bad input frees the slot for the next caller.
TEST_F(CircuitBreaker, AbandonedProbeFreesTheSlot) {
  sluice::circuit_breaker b{{.failures_to_open = 1}, clock_};
  fail(b, 1);
  clock_.advance(seconds(1));
  ASSERT_TRUE(b.allow());
  b.on_abandoned();
  EXPECT_EQ(b.state(), breaker_state::half_open);
  EXPECT_TRUE(b.allow());
  EXPECT_FALSE(b.allow());
  EXPECT_EQ(b.stats().probes, 2u);
}

// Verifies that of many threads asking at once when the probe is due, exactly one gets it.
TEST_F(CircuitBreaker, OneProbeAmongConcurrentCallers) {
  constexpr int kThreads = 8;
  constexpr int kAsksPerThread = 1000;
  for (int round = 0; round < 20; ++round) {
    SCOPED_TRACE(round);
    sluice::circuit_breaker b{{.failures_to_open = 1}, clock_};
    fail(b, 1);
    clock_.advance(seconds(1));
    std::atomic<int> allowed{0};
    std::latch start{kThreads};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        start.arrive_and_wait();
        for (int i = 0; i < kAsksPerThread; ++i) {
          if (b.allow()) allowed.fetch_add(1);
        }
      });
    }
    for (std::thread& t : threads) t.join();
    EXPECT_EQ(allowed.load(), 1);
    EXPECT_EQ(b.state(), breaker_state::half_open);
  }
}

// Verifies that a successful probe closes the breaker and restores the initial period.
TEST_F(CircuitBreaker, SuccessfulProbeCloses) {
  sluice::circuit_breaker b{{.failures_to_open = 2}, clock_};
  fail(b, 2);
  clock_.advance(seconds(1));
  ASSERT_TRUE(b.allow());
  b.on_failure();  // the first probe fails: 2 s now
  clock_.advance(seconds(2));
  ASSERT_TRUE(b.allow());
  b.on_success();
  EXPECT_EQ(b.state(), breaker_state::closed);
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(b.allow());
  // The count and the period start afresh: one failure is not enough, two open it for 1 s.
  fail(b, 1);
  EXPECT_EQ(b.state(), breaker_state::closed);
  fail(b, 1);
  EXPECT_EQ(b.state(), breaker_state::open);
  EXPECT_EQ(b.next_probe_in(), seconds(1));
  EXPECT_EQ(b.stats().opened, 2u);
}

// Verifies that each failed probe doubles the open period, up to max_open_for.
TEST_F(CircuitBreaker, FailedProbesDoubleUpToTheCap) {
  sluice::circuit_breaker b{{.failures_to_open = 1}, clock_};
  fail(b, 1);
  const std::vector<seconds> periods = {seconds(1),  seconds(2),  seconds(4),  seconds(8),
                                        seconds(16), seconds(30), seconds(30), seconds(30)};
  for (std::size_t i = 0; i < periods.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(b.next_probe_in(), periods[i]);
    clock_.advance(periods[i] - microseconds(1));
    EXPECT_FALSE(b.allow());
    clock_.advance(microseconds(1));
    ASSERT_TRUE(b.allow());
    b.on_failure();
    EXPECT_EQ(b.state(), breaker_state::open);
  }
  const sluice::breaker_stats s = b.stats();
  EXPECT_EQ(s.opened, 1u);
  EXPECT_EQ(s.probes, periods.size());
  EXPECT_EQ(s.probes_failed, periods.size());
}

// Verifies that a success resets a doubled period to the initial one.
TEST_F(CircuitBreaker, SuccessResetsTheDoubledPeriod) {
  sluice::circuit_breaker b{{.failures_to_open = 1, .open_for = milliseconds(100)}, clock_};
  fail(b, 1);
  for (int i = 0; i < 4; ++i) {  // 100 → 200 → 400 → 800 → 1600 ms
    clock_.advance(seconds(10));
    ASSERT_TRUE(b.allow());
    b.on_failure();
  }
  EXPECT_EQ(b.next_probe_in(), milliseconds(1600));
  clock_.advance(seconds(10));
  ASSERT_TRUE(b.allow());
  b.on_success();
  fail(b, 1);
  EXPECT_EQ(b.next_probe_in(), milliseconds(100));
}

// Verifies that failures of calls let through before it opened do not extend the period.
TEST_F(CircuitBreaker, LateFailuresWhileOpenAreIgnored) {
  sluice::circuit_breaker b{{.failures_to_open = 1}, clock_};
  fail(b, 1);
  clock_.advance(milliseconds(900));
  for (int i = 0; i < 10; ++i) b.on_failure();
  EXPECT_EQ(b.next_probe_in(), milliseconds(100));
  EXPECT_EQ(b.stats().opened, 1u);
  EXPECT_EQ(b.stats().probes_failed, 0u);
}

// Verifies that any success, also while open, closes the breaker: the store answered.
TEST_F(CircuitBreaker, LateSuccessWhileOpenCloses) {
  sluice::circuit_breaker b{{.failures_to_open = 1}, clock_};
  fail(b, 1);
  b.on_success();
  EXPECT_EQ(b.state(), breaker_state::closed);
  EXPECT_TRUE(b.allow());
}

// Verifies that a clock stepping back behind the opening lets a probe through rather than
// holding the breaker open for as long as the step.
TEST_F(CircuitBreaker, ClockSteppingBackDoesNotStrandIt) {
  sluice::circuit_breaker b{{.failures_to_open = 1}, clock_};
  fail(b, 1);
  clock_.advance(-std::chrono::hours(1));
  EXPECT_EQ(b.next_probe_in(), microseconds(0));
  EXPECT_TRUE(b.allow());
  EXPECT_EQ(b.state(), breaker_state::half_open);
}

// Verifies that out-of-range options are raised to usable values.
TEST_F(CircuitBreaker, OptionsAreNormalized) {
  sluice::circuit_breaker b{
      {.failures_to_open = 0, .open_for = seconds(4), .max_open_for = seconds(1)}, clock_};
  EXPECT_EQ(b.options().failures_to_open, 1u);
  EXPECT_EQ(b.options().open_for, seconds(4));
  EXPECT_EQ(b.options().max_open_for, seconds(4));
  fail(b, 1);
  EXPECT_EQ(b.state(), breaker_state::open);
  clock_.advance(seconds(4));
  ASSERT_TRUE(b.allow());
  b.on_failure();
  EXPECT_EQ(b.next_probe_in(), seconds(4));

  sluice::circuit_breaker zero{{.open_for = microseconds(0)}, clock_};
  EXPECT_EQ(zero.options().open_for, microseconds(1));
}

// Verifies the state names.
TEST(BreakerState, Names) {
  EXPECT_EQ(sluice::to_string(breaker_state::closed), "closed");
  EXPECT_EQ(sluice::to_string(breaker_state::open), "open");
  EXPECT_EQ(sluice::to_string(breaker_state::half_open), "half_open");
}

// Verifies that threads hammering the breaker while calls fail and succeed at random leave
// it consistent (TSan checks the synchronisation).
TEST_F(CircuitBreaker, ConcurrentReportsStayConsistent) {
  sluice::circuit_breaker b{{.failures_to_open = 3, .open_for = microseconds(50)}, clock_};
  constexpr int kThreads = 4;
  std::atomic<std::uint64_t> let_through{0};
  std::latch start{kThreads};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      std::uint32_t x = 12345u + static_cast<std::uint32_t>(t);
      for (int i = 0; i < 20000; ++i) {
        x = x * 1664525u + 1013904223u;
        if (t == 0) clock_.advance(microseconds(x % 7));
        if (!b.allow()) continue;
        let_through.fetch_add(1);
        if ((x >> 8) % 3 == 0) {
          b.on_success();
        } else {
          b.on_failure();
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const sluice::breaker_stats s = b.stats();
  EXPECT_GT(s.opened, 0u);
  EXPECT_GT(s.probes, 0u);
  EXPECT_LE(s.probes_failed, s.probes);
  EXPECT_LE(s.probes, let_through.load());
  EXPECT_LT(let_through.load(), std::uint64_t{kThreads} * 20000);
}

}  // namespace
