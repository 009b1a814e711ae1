// Tests of the limiter's failure policy (invariant 3 of DESIGN.md): the allow, deny and
// local modes, the circuit breaker in front of the store, bad input passing through,
// rate-limited warnings, the counters, the async forms and thread-safety.
//
// The store here is the fake store (tests/support/fake_store.h): a memory store told to fail
// or to complete later. It only exercises the policy logic; the failure tests against a real
// Redis that goes away belong with the Redis store.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "sluice/algorithms.h"
#include "sluice/breaker.h"
#include "sluice/clock.h"
#include "sluice/decision.h"
#include "sluice/error.h"
#include "sluice/limit.h"
#include "sluice/limiter.h"
#include "sluice/memory_store.h"

#include "support/fake_store.h"
#include "support/test_util.h"

namespace {

using sluice::algorithm;
using sluice::breaker_state;
using sluice::decision;
using sluice::errc;
using sluice::failure_mode;
using sluice::result;
using std::chrono::hours;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::seconds;

using sluice::test::all_algorithms;
using source = sluice::decision_source;
constexpr errc store_failures[] = {errc::store_unavailable, errc::timeout, errc::store_error};

using sluice::test::fake_store;
using sluice::test::make;
using sluice::test::must;

class LimiterFailure : public ::testing::Test {
 protected:
  LimiterFailure()
      : store_(std::make_shared<fake_store>(
            sluice::test::fake_store_options{.uri = "flaky://test", .time_source = &clock_})) {}

  // A limiter over the fake store, with the test's clock and warnings collected.
  sluice::limiter make_limiter(sluice::breaker_options b = {},
                               milliseconds warn_interval = seconds(10)) {
    sluice::limiter_options o;
    o.store = store_;
    o.time_source = &clock_;
    o.breaker = b;
    o.warn = [this](std::string_view w) {
      const std::lock_guard lock(warn_mu_);
      warnings_.emplace_back(w);
    };
    o.warn_interval = warn_interval;
    return sluice::limiter(std::move(o));
  }

  std::vector<std::string> warnings() {
    const std::lock_guard lock(warn_mu_);
    return warnings_;
  }

  // Fails `n` store calls through `lim` (opening the breaker at the default threshold).
  void fail_calls(sluice::limiter& lim, const std::string& policy, int n) {
    store_->fail();
    for (int i = 0; i < n; ++i) ASSERT_TRUE(lim.acquire(policy, "trip"));
  }

  sluice::manual_clock clock_{seconds(1'700'000'000)};
  std::shared_ptr<fake_store> store_;
  std::mutex warn_mu_;
  std::vector<std::string> warnings_;
};

// Verifies that failure modes parse from and print to their names, and nothing else parses.
TEST(FailureMode, ParsesAndPrints) {
  for (const failure_mode m : {failure_mode::allow, failure_mode::deny, failure_mode::local}) {
    const result<failure_mode> parsed = sluice::parse_failure_mode(sluice::to_string(m));
    ASSERT_TRUE(parsed);
    EXPECT_EQ(*parsed, m);
  }
  EXPECT_EQ(sluice::to_string(failure_mode::allow), "allow");
  EXPECT_EQ(sluice::to_string(failure_mode::deny), "deny");
  EXPECT_EQ(sluice::to_string(failure_mode::local), "local");
  for (const std::string_view bad : {"", "Allow", "open", "closed", "local ", "fail"}) {
    const result<failure_mode> r = sluice::parse_failure_mode(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code, errc::invalid_policy);
    EXPECT_NE(r.error().detail.find("allow, deny or local"), std::string::npos);
  }
}

// Verifies that only the three store failure codes count as store failures.
TEST(FailureMode, StoreFailureCodes) {
  for (const errc e : store_failures) EXPECT_TRUE(sluice::is_store_failure(e)) << int(e);
  for (const errc e : {errc::invalid_key, errc::invalid_cost, errc::cost_exceeds_limit,
                       errc::invalid_limit, errc::invalid_time, errc::unknown_policy,
                       errc::store_full, errc::invalid_policy, errc::unsupported_store}) {
    EXPECT_FALSE(sluice::is_store_failure(e)) << int(e);
  }
  EXPECT_FALSE(sluice::is_store_failure(std::make_error_code(std::errc::timed_out)));
  EXPECT_FALSE(sluice::is_store_failure(std::error_code{}));
  EXPECT_EQ(sluice::make_error_code(errc::store_error).message(), "store error");
}

// Verifies that a policy fails open by default, with the reference's decision.
TEST_F(LimiterFailure, DefaultModeAllowsWithFullRemaining) {
  sluice::limiter lim = make_limiter({.failures_to_open = 100});
  const sluice::policy p{"chat", make(30, hours(1))};
  EXPECT_EQ(p.on_failure, failure_mode::allow);
  ASSERT_TRUE(lim.add_policy(p));
  const decision open{true, 30, 30, microseconds(0), microseconds(0), source::fallback_allow};
  for (const errc e : store_failures) {
    SCOPED_TRACE(int(e));
    store_->fail(e);
    EXPECT_EQ(must(lim.acquire("chat", "u", 7)), open);
    EXPECT_EQ(must(lim.peek("chat", "u", 7)), open);
    // Nothing was spent in the store while it failed.
    store_->recover();
    EXPECT_EQ(must(lim.peek("chat", "u")).remaining, 30);
  }
  const sluice::limiter_stats s = lim.stats();
  EXPECT_EQ(s.fallbacks_allow, 6u);
  EXPECT_EQ(s.store_errors, 6u);
}

// Verifies that deny refuses with nothing remaining and retry_after = 1 s while the
// breaker is still closed, then the time until the breaker's probe (at least 1 ms).
TEST_F(LimiterFailure, DenyModeRefusesUntilTheProbe) {
  sluice::limiter lim = make_limiter({.failures_to_open = 2, .open_for = seconds(3)});
  ASSERT_TRUE(lim.add_policy({"chat", make(30, hours(1)), algorithm::gcra, failure_mode::deny}));
  store_->fail();
  const decision closed = must(lim.acquire("chat", "u"));
  EXPECT_EQ(closed, (decision{false, 30, 0, seconds(1), seconds(1), source::fallback_deny}));
  EXPECT_EQ(lim.breaker().state(), breaker_state::closed);

  const decision opened = must(lim.acquire("chat", "u"));  // the second failure opens it
  EXPECT_EQ(lim.breaker().state(), breaker_state::open);
  EXPECT_EQ(opened, (decision{false, 30, 0, seconds(3), seconds(3), source::fallback_deny}));

  clock_.advance(milliseconds(2500));
  EXPECT_EQ(must(lim.peek("chat", "u")),
            (decision{false, 30, 0, milliseconds(500), milliseconds(500), source::fallback_deny}));
  clock_.advance(milliseconds(500) - microseconds(10));
  EXPECT_EQ(must(lim.acquire("chat", "u")).retry_after, milliseconds(1));
  EXPECT_EQ(lim.stats().fallbacks_deny, 4u);
  EXPECT_EQ(lim.stats().denied, 4u);
}

// Verifies that local mode enforces the same limit with the same algorithm in-process: the
// decisions are those of a memory store given the same calls.
TEST_F(LimiterFailure, LocalModeDecidesLikeAMemoryStore) {
  sluice::limiter lim = make_limiter();
  sluice::memory_store_options ro;
  ro.time_source = &clock_;
  sluice::memory_store reference(ro);
  store_->fail();
  for (const algorithm a : all_algorithms) {
    const std::string name = "p_" + std::string(sluice::to_string(a));
    SCOPED_TRACE(name);
    const sluice::policy p{name, make(3, seconds(10)), a, failure_mode::local};
    ASSERT_TRUE(lim.add_policy(p));
    int denied = 0;
    for (int i = 0; i < 12; ++i) {
      const std::int64_t cost = i % 2 + 1;
      const std::string scoped = name + ":user:42";
      decision want = must(reference.acquire({scoped, p.limit, a, cost, {}}));
      want.source = source::fallback_local;
      EXPECT_EQ(must(lim.acquire(name, "user:42", cost)), want) << i;
      decision peeked = must(reference.peek({scoped, p.limit, a, 1, {}}));
      peeked.source = source::fallback_local;
      EXPECT_EQ(must(lim.peek(name, "user:42")), peeked);
      if (!want.allowed) ++denied;
      clock_.advance(seconds(1));
    }
    EXPECT_GT(denied, 0);
    // Another key has its own state.
    EXPECT_EQ(must(lim.acquire(name, "user:43", 3)).remaining, 0);
  }
  EXPECT_EQ(lim.stats().fallbacks_local, 3u * 12 * 2 + 3);
}

// Verifies that local mode scopes keys by policy and honours an explicit `now`.
TEST_F(LimiterFailure, LocalModeScopesKeysAndTakesExplicitNow) {
  sluice::limiter lim = make_limiter();
  const sluice::policy a{"a", make(1, seconds(1)), algorithm::gcra, failure_mode::local};
  const sluice::policy b{"b", make(1, seconds(1)), algorithm::gcra, failure_mode::local};
  store_->fail();
  const microseconds t = seconds(5);
  EXPECT_TRUE(must(lim.acquire(a, "k", 1, t)).allowed);
  EXPECT_TRUE(must(lim.acquire(b, "k", 1, t)).allowed);
  const decision denied = must(lim.acquire(a, "k", 1, t + microseconds(10)));
  EXPECT_FALSE(denied.allowed);
  EXPECT_EQ(denied.retry_after, seconds(1) - microseconds(10));
  EXPECT_TRUE(must(lim.acquire(a, "k", 1, t + seconds(1))).allowed);
}

// Verifies that bad input is an error in every mode and breaker state, never a fallback,
// and says nothing to the breaker.
TEST_F(LimiterFailure, BadInputPassesThroughWhileTheStoreFails) {
  sluice::limiter lim = make_limiter({.failures_to_open = 2});
  for (const failure_mode m : {failure_mode::allow, failure_mode::deny, failure_mode::local}) {
    ASSERT_TRUE(lim.add_policy(
        {std::string(sluice::to_string(m)), make(3, hours(1)), algorithm::sliding_log, m}));
  }
  const auto check_bad_input = [&] {
    for (const failure_mode m : {failure_mode::allow, failure_mode::deny, failure_mode::local}) {
      const std::string name(sluice::to_string(m));
      SCOPED_TRACE(name);
      const result<decision> zero = lim.acquire(name, "u", 0);
      ASSERT_FALSE(zero);
      EXPECT_EQ(zero.error().code, errc::invalid_cost);
      const result<decision> big = lim.peek(name, "u", 4);
      ASSERT_FALSE(big);
      EXPECT_EQ(big.error().code, errc::cost_exceeds_limit);
      const result<decision> empty = lim.acquire(name, "");
      ASSERT_FALSE(empty);
      EXPECT_EQ(empty.error().code, errc::invalid_key);
      const result<decision> when = lim.acquire(*lim.find_policy(name), "u", 1, microseconds(-1));
      ASSERT_FALSE(when);
      EXPECT_EQ(when.error().code, errc::invalid_time);
      const sluice::policy no_limit{name, sluice::limit{}, algorithm::gcra, m};
      const result<decision> limitless = lim.acquire(no_limit, "u");
      ASSERT_FALSE(limitless);
      EXPECT_EQ(limitless.error().code, errc::invalid_limit);
      int calls = 0;
      lim.async_acquire(name, "u", 0, [&](result<decision> r) {
        ++calls;
        ASSERT_FALSE(r);
        EXPECT_EQ(r.error().code, errc::invalid_cost);
      });
      EXPECT_EQ(calls, 1);
    }
    const result<decision> unknown = lim.acquire("nope", "u");
    ASSERT_FALSE(unknown);
    EXPECT_EQ(unknown.error().code, errc::unknown_policy);
  };

  store_->fail();
  check_bad_input();  // the breaker is closed: these reach the store, which fails
  EXPECT_EQ(lim.breaker().state(), breaker_state::closed);
  ASSERT_TRUE(lim.acquire("allow", "u"));
  ASSERT_TRUE(lim.acquire("allow", "u"));
  ASSERT_EQ(lim.breaker().state(), breaker_state::open);
  check_bad_input();  // the breaker is open: these never reach the store
  EXPECT_EQ(lim.breaker().state(), breaker_state::open);

  const sluice::limiter_stats s = lim.stats();
  EXPECT_EQ(s.decisions, 2u);
  EXPECT_EQ(s.fallbacks_allow, 2u);
  EXPECT_EQ(s.fallbacks_deny, 0u);
  EXPECT_EQ(s.fallbacks_local, 0u);
}

// Verifies that errors the store reports about the input are returned unchanged and never
// trip the breaker, however many there are.
TEST_F(LimiterFailure, InputErrorsFromTheStoreDoNotTripTheBreaker) {
  sluice::limiter lim = make_limiter({.failures_to_open = 1});
  ASSERT_TRUE(lim.add_policy({"chat", make(3, hours(1)), algorithm::gcra, failure_mode::deny}));
  store_->fail();
  for (const errc e : {errc::invalid_key, errc::invalid_cost, errc::cost_exceeds_limit,
                       errc::invalid_limit, errc::invalid_time, errc::store_full}) {
    SCOPED_TRACE(int(e));
    store_->fail(e);
    for (int i = 0; i < 10; ++i) {
      const result<decision> r = lim.acquire("chat", "u");
      ASSERT_FALSE(r);
      EXPECT_EQ(r.error().code, e);
      EXPECT_EQ(r.error().detail, "injected by test");
    }
    const result<void> reset = lim.reset("chat", "u");
    ASSERT_FALSE(reset);
    EXPECT_EQ(reset.error().code, e);
  }
  EXPECT_EQ(lim.breaker().state(), breaker_state::closed);
  const sluice::limiter_stats s = lim.stats();
  EXPECT_EQ(s.store_errors, 0u);
  EXPECT_EQ(s.decisions, 0u);
  EXPECT_EQ(s.fallbacks_deny, 0u);
  EXPECT_TRUE(warnings().empty());
}

// Verifies that while the breaker is open the store is not called at all, in any form.
TEST_F(LimiterFailure, OpenBreakerKeepsTheStoreOutOfTheCall) {
  sluice::limiter lim = make_limiter();
  ASSERT_TRUE(lim.add_policy({"chat", make(3, hours(1))}));
  fail_calls(lim, "chat", 5);
  ASSERT_EQ(lim.breaker().state(), breaker_state::open);
  EXPECT_EQ(store_->calls(), 5);
  EXPECT_EQ(lim.stats().breaker_opened, 1u);

  store_->recover();  // back, but nobody has looked yet
  int completions = 0;
  for (int i = 0; i < 100; ++i) {
    EXPECT_TRUE(must(lim.acquire("chat", "u")).allowed);
    EXPECT_TRUE(must(lim.peek("chat", "u")).allowed);
    lim.async_acquire("chat", "u", 1, [&](result<decision> r) {
      ++completions;
      EXPECT_TRUE(must(r).allowed);
    });
    lim.async_peek("chat", "u", 1, [&](result<decision> r) {
      ++completions;
      EXPECT_TRUE(must(r).allowed);
    });
  }
  EXPECT_FALSE(lim.reset("chat", "u"));
  EXPECT_EQ(completions, 200);
  EXPECT_EQ(store_->calls(), 5);
  const sluice::limiter_stats s = lim.stats();
  EXPECT_EQ(s.store_errors, 5u);
  EXPECT_EQ(s.fallbacks_allow, 5u + 400);
  EXPECT_EQ(s.breaker, breaker_state::open);
}

// Verifies that the first call after the open period probes the store, and that a working
// store closes the breaker, so decisions are the store's again.
TEST_F(LimiterFailure, ProbeClosesTheBreakerWhenTheStoreIsBack) {
  sluice::limiter lim = make_limiter();
  ASSERT_TRUE(lim.add_policy({"chat", make(3, hours(1)), algorithm::gcra, failure_mode::deny}));
  fail_calls(lim, "chat", 5);
  store_->recover();
  clock_.advance(milliseconds(999));
  EXPECT_FALSE(must(lim.acquire("chat", "u")).allowed);
  EXPECT_EQ(store_->calls(), 5);

  clock_.advance(milliseconds(1));
  const decision probe = must(lim.acquire("chat", "u"));
  EXPECT_EQ(store_->calls(), 6);
  EXPECT_TRUE(probe.allowed);
  EXPECT_EQ(probe.remaining, 2);
  EXPECT_EQ(lim.breaker().state(), breaker_state::closed);
  EXPECT_EQ(must(lim.acquire("chat", "u")).remaining, 1);
  EXPECT_EQ(store_->calls(), 7);
  EXPECT_EQ(lim.stats().fallbacks_deny, 5u + 1);
}

// Verifies that a failed probe opens the breaker again for twice as long, which a deny
// policy reports as its retry_after.
TEST_F(LimiterFailure, FailedProbeDoublesTheWait) {
  sluice::limiter lim = make_limiter();
  ASSERT_TRUE(lim.add_policy({"chat", make(3, hours(1)), algorithm::gcra, failure_mode::deny}));
  fail_calls(lim, "chat", 5);
  for (const seconds wait : {seconds(1), seconds(2), seconds(4), seconds(8)}) {
    SCOPED_TRACE(wait.count());
    EXPECT_EQ(must(lim.acquire("chat", "u")).retry_after, wait);
    clock_.advance(wait);
    const int before = store_->calls();
    EXPECT_EQ(must(lim.acquire("chat", "u")).retry_after, 2 * wait);  // the failed probe
    EXPECT_EQ(store_->calls(), before + 1);
  }
  EXPECT_EQ(lim.stats().breaker_opened, 1u);
}

// Verifies that while the probe is out (an async call not yet complete) other calls fall
// back without calling the store, and that its success closes the breaker.
TEST_F(LimiterFailure, OthersFallBackWhileTheProbeIsOut) {
  sluice::limiter lim = make_limiter();
  ASSERT_TRUE(lim.add_policy({"chat", make(3, hours(1)), algorithm::gcra, failure_mode::local}));
  fail_calls(lim, "chat", 5);
  store_->recover();
  store_->hold();
  clock_.advance(seconds(1));
  std::optional<decision> probe;
  lim.async_acquire("chat", "u", 1, [&](result<decision> r) { probe = must(r); });
  EXPECT_EQ(lim.breaker().state(), breaker_state::half_open);
  EXPECT_EQ(store_->calls(), 6);  // the five failures and the probe, held
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(lim.acquire("chat", "v"));
  EXPECT_EQ(store_->calls(), 6);
  EXPECT_EQ(store_->release(), 1u);
  ASSERT_TRUE(probe);
  EXPECT_EQ(*probe, (decision{true, 3, 2, microseconds(0), probe->reset_after}));
  EXPECT_EQ(lim.breaker().state(), breaker_state::closed);
}

// Verifies that a probe that fails on bad input frees the probe for the next caller.
TEST_F(LimiterFailure, ProbeWithBadInputLetsTheNextCallerProbe) {
  sluice::limiter lim = make_limiter();
  ASSERT_TRUE(lim.add_policy({"chat", make(3, hours(1))}));
  fail_calls(lim, "chat", 5);
  clock_.advance(seconds(1));
  store_->fail(errc::invalid_key);  // the store rejects the key before it does any I/O
  EXPECT_FALSE(lim.acquire("chat", "u"));
  EXPECT_EQ(lim.breaker().state(), breaker_state::half_open);
  store_->recover();
  const int before = store_->calls();
  EXPECT_EQ(must(lim.acquire("chat", "u")).remaining, 2);
  EXPECT_EQ(store_->calls(), before + 1);
  EXPECT_EQ(lim.breaker().state(), breaker_state::closed);
}

// Verifies that warnings come at most once per interval, name the error, the store, the
// policy and its mode, and count what was suppressed in between.
TEST_F(LimiterFailure, WarnsOncePerIntervalWithTheSuppressedCount) {
  sluice::limiter lim = make_limiter({.failures_to_open = 3, .open_for = seconds(15)}, seconds(10));
  ASSERT_TRUE(lim.add_policy({"chat", make(3, hours(1))}));
  ASSERT_TRUE(lim.add_policy({"api", make(3, hours(1)), algorithm::gcra, failure_mode::deny}));
  store_->fail(errc::timeout);
  ASSERT_TRUE(lim.acquire("chat", "u"));
  ASSERT_EQ(warnings().size(), 1u);
  EXPECT_EQ(warnings()[0],
            "sluice: store flaky://test failed: store timed out (injected by test); policy "
            "\"chat\" failed open (on_failure: allow); 1 fallback so far: policy \"chat\" 1");

  // Two more store failures (the breaker opens for 15 s), then fallbacks without a call.
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(lim.acquire(i % 2 ? "chat" : "api", "u"));
  clock_.advance(seconds(10) - microseconds(1));
  ASSERT_TRUE(lim.peek("api", "u"));
  EXPECT_EQ(warnings().size(), 1u);

  clock_.advance(microseconds(1));
  ASSERT_TRUE(lim.acquire("api", "u"));
  ASSERT_EQ(warnings().size(), 2u);
  EXPECT_EQ(warnings()[1],
            "sluice: store flaky://test not called: circuit breaker open after: store timed "
            "out (injected by test); policy \"api\" failed closed (on_failure: deny); 8 "
            "fallbacks in the last 10 s: policy \"api\" 5, \"chat\" 3");

  clock_.advance(seconds(10));
  ASSERT_TRUE(lim.acquire("chat", "u"));  // the probe, which fails
  EXPECT_EQ(store_->calls(), 4);
  ASSERT_EQ(warnings().size(), 3u);
  EXPECT_EQ(warnings()[2],
            "sluice: store flaky://test failed: store timed out (injected by test); policy "
            "\"chat\" failed open (on_failure: allow); 1 fallback in the last 10 s: policy "
            "\"chat\" 1");
}

// Verifies what a warning says when several policies fall back between two warnings: the
// error, and every policy that fell back with how often (most first), inline limits
// together; not the one policy that happened to trigger it alone.
TEST_F(LimiterFailure, WarningsCountTheFallbacksOfEveryPolicy) {
  sluice::limiter lim = make_limiter({.failures_to_open = 100}, seconds(10));
  ASSERT_TRUE(lim.add_policy({"chat", make(3, hours(1))}));
  ASSERT_TRUE(lim.add_policy({"api", make(3, hours(1)), algorithm::gcra, failure_mode::deny}));
  ASSERT_TRUE(lim.add_policy({"login", make(3, hours(1)), algorithm::gcra, failure_mode::local}));
  store_->fail(errc::store_unavailable);
  ASSERT_TRUE(lim.acquire("login", "u"));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(lim.acquire("api", "u"));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(lim.acquire("chat", "u"));
  sluice::policy inline_limit;
  inline_limit.limit = make(5, hours(1));
  ASSERT_TRUE(lim.acquire(inline_limit, "u"));
  clock_.advance(seconds(12));
  ASSERT_TRUE(lim.acquire("chat", "u"));
  ASSERT_EQ(warnings().size(), 2u);
  EXPECT_EQ(warnings()[0],
            "sluice: store flaky://test failed: store unavailable (injected by test); policy "
            "\"login\" decided in-process (on_failure: local); 1 fallback so far: policy "
            "\"login\" 1");
  EXPECT_EQ(warnings()[1],
            "sluice: store flaky://test failed: store unavailable (injected by test); policy "
            "\"chat\" failed open (on_failure: allow); 10 fallbacks in the last 12 s: policy "
            "\"api\" 5, \"chat\" 4, (inline) 1");
}

// Verifies that warnings from many threads at once still come once per interval, and that
// every event is either warned about or counted as suppressed, exactly once.
TEST_F(LimiterFailure, WarningsFromManyThreadsAreRateLimited) {
  sluice::limiter lim = make_limiter({}, seconds(10));
  ASSERT_TRUE(lim.add_policy({"chat", make(3, hours(1))}));
  store_->fail();
  constexpr int kThreads = 4;
  constexpr int kCalls = 2000;
  std::latch start{kThreads};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      start.arrive_and_wait();
      for (int i = 0; i < kCalls; ++i) ASSERT_TRUE(lim.acquire("chat", "u"));
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_EQ(warnings().size(), 1u);
  clock_.advance(seconds(10));
  ASSERT_TRUE(lim.acquire("chat", "u"));
  ASSERT_EQ(warnings().size(), 2u);
  // Events that race the first warning (after it won the interval, before it read the
  // counts) are counted in it; the rest in the second. Together: every event, once.
  const auto more = [](const std::string& w) {
    const std::size_t end = w.find(" fallback");
    const std::size_t begin = w.rfind(' ', end - 1) + 1;
    EXPECT_NE(end, std::string::npos) << w;
    return end == std::string::npos ? -1 : std::stoll(w.substr(begin, end - begin));
  };
  EXPECT_EQ(more(warnings()[0]) + more(warnings()[1]), kThreads * kCalls + 1)
      << warnings()[0] << "\n"
      << warnings()[1];
}

// Verifies that a limiter without a warn callback falls back all the same.
TEST_F(LimiterFailure, WorksWithoutAWarnCallback) {
  sluice::limiter_options o;
  o.store = store_;
  o.time_source = &clock_;
  sluice::limiter lim{std::move(o)};
  ASSERT_TRUE(lim.add_policy({"chat", make(3, hours(1))}));
  store_->fail();
  for (int i = 0; i < 20; ++i) EXPECT_TRUE(must(lim.acquire("chat", "u")).allowed);
  EXPECT_EQ(lim.stats().breaker, breaker_state::open);
}

// Verifies the counters through a healthy period, an outage and the recovery.
TEST_F(LimiterFailure, StatsCountDecisionsFailuresAndFallbacks) {
  sluice::limiter lim = make_limiter();
  ASSERT_TRUE(lim.add_policy({"allow", make(2, hours(1)), algorithm::gcra, failure_mode::allow}));
  ASSERT_TRUE(lim.add_policy({"deny", make(2, hours(1)), algorithm::gcra, failure_mode::deny}));
  ASSERT_TRUE(lim.add_policy({"local", make(2, hours(1)), algorithm::gcra, failure_mode::local}));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(lim.acquire("allow", "u"));  // 2 allowed, 1 denied
  ASSERT_TRUE(lim.peek("allow", "u"));                                 // denied

  store_->fail();
  ASSERT_TRUE(lim.acquire("allow", "u"));                              // store error 1, allowed
  ASSERT_TRUE(lim.acquire("deny", "u"));                               // store error 2, denied
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(lim.acquire("local", "u"));  // errors 3-5: 2 + 1
  ASSERT_EQ(lim.breaker().state(), breaker_state::open);
  ASSERT_TRUE(lim.acquire("deny", "u"));  // breaker open, denied
  ASSERT_TRUE(lim.peek("local", "u"));    // breaker open, denied locally

  store_->recover();
  clock_.advance(seconds(1));
  ASSERT_TRUE(lim.acquire("deny", "v"));  // the probe: allowed by the store

  const sluice::limiter_stats s = lim.stats();
  EXPECT_EQ(s.decisions, 12u);
  EXPECT_EQ(s.allowed, 6u);
  EXPECT_EQ(s.denied, 6u);
  EXPECT_EQ(s.store_errors, 5u);
  EXPECT_EQ(s.fallbacks_allow, 1u);
  EXPECT_EQ(s.fallbacks_deny, 2u);
  EXPECT_EQ(s.fallbacks_local, 4u);
  EXPECT_EQ(s.breaker_opened, 1u);
  EXPECT_EQ(s.breaker, breaker_state::closed);
}

// Verifies that reset while the store fails returns the store's error rather than success,
// still forgets the key in the local store, and while the breaker is open does not call it.
TEST_F(LimiterFailure, ResetDuringAFailureReturnsTheErrorAndResetsLocally) {
  sluice::limiter lim = make_limiter({.failures_to_open = 2});
  ASSERT_TRUE(lim.add_policy({"chat", make(1, hours(1)), algorithm::gcra, failure_mode::local}));
  store_->fail(errc::store_error);
  EXPECT_TRUE(must(lim.acquire("chat", "u")).allowed);
  EXPECT_FALSE(must(lim.acquire("chat", "u")).allowed);  // opens the breaker
  ASSERT_EQ(lim.breaker().state(), breaker_state::open);

  const int before = store_->calls();
  const result<void> open = lim.reset("chat", "u");
  ASSERT_FALSE(open);
  EXPECT_EQ(open.error().code, errc::store_unavailable);
  EXPECT_EQ(store_->calls(), before);
  EXPECT_TRUE(must(lim.acquire("chat", "u")).allowed);  // forgotten locally

  clock_.advance(seconds(1));  // the reset is the probe, and fails
  const result<void> failed = lim.reset("chat", "u");
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code, errc::store_error);
  EXPECT_EQ(failed.error().detail, "injected by test");
  EXPECT_EQ(store_->calls(), before + 1);
  EXPECT_EQ(lim.stats().store_errors, 3u);
  EXPECT_TRUE(must(lim.acquire("chat", "u")).allowed);

  clock_.advance(seconds(2));  // the store is back: reset works and closes the breaker
  store_->recover();
  EXPECT_TRUE(lim.reset("chat", "u"));
  EXPECT_EQ(lim.breaker().state(), breaker_state::closed);
}

// Verifies that the async forms complete once with the same fallback decisions as the sync
// forms, when the store fails inline and when the breaker is open.
TEST_F(LimiterFailure, AsyncFormsFallBackLikeTheSyncForms) {
  for (const failure_mode m : {failure_mode::allow, failure_mode::deny, failure_mode::local}) {
    SCOPED_TRACE(std::string(sluice::to_string(m)));
    sluice::limiter sync = make_limiter({.failures_to_open = 3});
    sluice::limiter async = make_limiter({.failures_to_open = 3});
    const sluice::policy p{"chat", make(2, seconds(10)), algorithm::sliding_log, m};
    ASSERT_TRUE(sync.add_policy(p));
    ASSERT_TRUE(async.add_policy(p));
    store_->fail();
    for (int i = 0; i < 8; ++i) {
      const bool spend = i % 3 != 2;
      const decision want = must(spend ? sync.acquire("chat", "u") : sync.peek("chat", "u"));
      int calls = 0;
      decision got;
      const auto done = [&](result<decision> r) {
        ++calls;
        got = must(r);
      };
      spend ? async.async_acquire("chat", "u", 1, done) : async.async_peek("chat", "u", 1, done);
      EXPECT_EQ(calls, 1) << i;
      EXPECT_EQ(got, want) << i;
      clock_.advance(seconds(1));
    }
    EXPECT_EQ(async.breaker().state(), breaker_state::open);
    const sluice::limiter_stats a = async.stats();
    const sluice::limiter_stats s = sync.stats();
    EXPECT_EQ(a.decisions, s.decisions);
    EXPECT_EQ(a.allowed, s.allowed);
    EXPECT_EQ(a.store_errors, s.store_errors);
  }
}

// Leaves garbage where the last call's stack frame was, so that a limiter that kept a view
// of its on-stack key past the call would decide on garbage.
[[gnu::noinline]] void clobber_stack() {
  volatile char junk[4096];
  for (std::size_t i = 0; i < sizeof junk; ++i) junk[i] = static_cast<char>('#' + i % 7);
}

// Verifies that an async call whose store completes later, on another thread, falls back
// locally on the right key: the limiter owns a copy of it, short or long.
TEST_F(LimiterFailure, AsyncLocalFallbackOwnsItsKey) {
  sluice::limiter lim = make_limiter({.failures_to_open = 100});
  ASSERT_TRUE(lim.add_policy({"chat", make(1, hours(1)), algorithm::gcra, failure_mode::local}));
  store_->fail();
  store_->hold();
  const std::string long_key(600, 'k');  // past the limiter's on-stack buffer
  std::vector<decision> got;
  for (const std::string& key : {std::string("a"), long_key}) {
    for (int i = 0; i < 2; ++i) {
      std::string copy = key;  // the caller's key dies with the call, too
      lim.async_acquire("chat", copy, 1, [&](result<decision> r) { got.push_back(must(r)); });
    }
  }
  clobber_stack();
  ASSERT_TRUE(got.empty());
  std::thread io([&] { EXPECT_EQ(store_->release(), 4u); });
  io.join();
  ASSERT_EQ(got.size(), 4u);
  EXPECT_TRUE(got[0].allowed);
  EXPECT_FALSE(got[1].allowed);
  EXPECT_TRUE(got[2].allowed);
  EXPECT_FALSE(got[3].allowed);
  // The same keys, decided locally by the sync form, are spent.
  store_->hold(false);
  EXPECT_FALSE(must(lim.acquire("chat", "a")).allowed);
  EXPECT_FALSE(must(lim.acquire("chat", long_key)).allowed);
  EXPECT_TRUE(must(lim.acquire("chat", "b")).allowed);
}

// Verifies that the old one-argument constructor still works and means the defaults: fail
// open, a breaker after 5 failures, no warnings.
TEST_F(LimiterFailure, StoreOnlyConstructorUsesTheDefaults) {
  sluice::limiter lim{store_};
  ASSERT_TRUE(lim.add_policy({"chat", make(3, hours(1))}));
  store_->fail();
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(must(lim.acquire("chat", "u")).allowed);
  EXPECT_EQ(lim.breaker().state(), breaker_state::closed);
  EXPECT_TRUE(must(lim.acquire("chat", "u")).allowed);
  EXPECT_EQ(lim.breaker().state(), breaker_state::open);
  EXPECT_EQ(lim.breaker().options().failures_to_open, 5u);
}

// Verifies that threads deciding (sync and async, every mode) while the store flaps and
// completes on another thread always get a decision and keep the counters consistent. Run
// under TSan too.
TEST_F(LimiterFailure, ConcurrentDecisionsWhileTheStoreFlaps) {
  sluice::limiter lim =
      make_limiter({.failures_to_open = 3, .open_for = milliseconds(1)}, milliseconds(5));
  for (const failure_mode m : {failure_mode::allow, failure_mode::deny, failure_mode::local}) {
    ASSERT_TRUE(lim.add_policy(
        {std::string(sluice::to_string(m)), make(50, seconds(1)), algorithm::sliding_counter, m}));
  }
  store_->hold();
  constexpr int kThreads = 4;
  constexpr int kCalls = 3000;
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> decided{0};
  std::atomic<std::uint64_t> errors{0};
  std::latch start{kThreads + 2};
  // The store's I/O thread: completes deferred calls as they come.
  std::thread io([&] {
    start.arrive_and_wait();
    while (!done.load()) store_->release();
    store_->release();
  });
  // Flaps the store and moves time.
  std::thread chaos([&] {
    start.arrive_and_wait();
    for (int i = 0; !done.load(); ++i) {
      if ((i / 50) % 2 == 0) {
        store_->fail(store_failures[i % 3]);
      } else {
        store_->recover();
      }
      store_->hold(i % 7 != 0);
      clock_.advance(microseconds(100));
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      const char* names[] = {"allow", "deny", "local"};
      for (int i = 0; i < kCalls; ++i) {
        const char* name = names[(i + t) % 3];
        const std::string key = "user:" + std::to_string(i % 5);
        const auto record = [&](const result<decision>& r) { (r ? decided : errors).fetch_add(1); };
        switch (i % 4) {
          case 0:
            record(lim.acquire(name, key));
            break;
          case 1:
            record(lim.peek(name, key));
            break;
          case 2:
            lim.async_acquire(name, key, 1, record);
            break;
          default:
            lim.async_peek(name, key, 1, record);
            break;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  done = true;
  chaos.join();
  io.join();
  EXPECT_EQ(errors.load(), 0u);
  EXPECT_EQ(decided.load(), std::uint64_t{kThreads} * kCalls);
  const sluice::limiter_stats s = lim.stats();
  EXPECT_EQ(s.decisions, decided.load());
  EXPECT_EQ(s.allowed + s.denied, s.decisions);
  EXPECT_LE(s.fallbacks_allow + s.fallbacks_deny + s.fallbacks_local, s.decisions);
  EXPECT_GE(s.fallbacks_allow + s.fallbacks_deny + s.fallbacks_local, s.store_errors);
}

}  // namespace
