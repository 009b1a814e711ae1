// Tests of the limiter's decisions over several limits (acquire_all) and of refund: all or
// nothing, shadow policies, failure modes per limit when the store cannot decide, the async
// form, and bad input. The store is the fake store (tests/support/fake_store.h), a real
// memory store that the tests make fail; the stores' own all-or-nothing is tested with them.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "sluice/clock.h"
#include "sluice/decision.h"
#include "sluice/error.h"
#include "sluice/limit.h"
#include "sluice/limiter.h"

#include "support/fake_store.h"
#include "support/test_util.h"

namespace {

using sluice::decision;
using sluice::errc;
using sluice::failure_mode;
using sluice::policy;
using sluice::result;
using sluice::spend;
using std::chrono::seconds;
using source = sluice::decision_source;

using sluice::test::fake_store;
using sluice::test::must;

class LimiterAcquireAll : public ::testing::Test {
 protected:
  LimiterAcquireAll()
      : store_(std::make_shared<fake_store>(
            sluice::test::fake_store_options{.uri = "fake://multi", .time_source = &clock_})) {}

  sluice::limiter make_limiter() {
    sluice::limiter_options o;
    o.store = store_;
    o.time_source = &clock_;
    return sluice::limiter(std::move(o));
  }

  static policy make_policy(std::string name, const char* limit,
                            failure_mode on_failure = failure_mode::allow, bool shadow = false) {
    policy p;
    p.name = std::move(name);
    p.limit = must(sluice::parse_limit(limit));
    p.on_failure = on_failure;
    p.shadow = shadow;
    return p;
  }

  sluice::manual_clock clock_{seconds(1'700'000'000)};
  std::shared_ptr<fake_store> store_;
};

// Verifies that a request under two limits is admitted while both admit, then denied as a
// whole when one is spent, naming it, with the other limit left uncharged.
TEST_F(LimiterAcquireAll, AdmitsOnlyWhenEveryLimitAdmits) {
  sluice::limiter lim = make_limiter();
  const policy user = make_policy("user", "2/1m");
  const policy ip = make_policy("ip", "5/1m");
  const std::vector<spend> both = {{&user, "u1"}, {&ip, "10.0.0.1"}};
  for (int i = 0; i < 2; ++i) {
    const auto ds = must(lim.acquire_all(both));
    ASSERT_EQ(ds.size(), 2u);
    EXPECT_TRUE(ds[0].allowed && ds[1].allowed);
    EXPECT_EQ(ds[0].source, source::store);
  }
  const auto denied = must(lim.acquire_all(both));
  EXPECT_FALSE(denied[0].allowed);
  EXPECT_GT(denied[0].retry_after, seconds(50));
  EXPECT_TRUE(denied[1].allowed);
  EXPECT_EQ(must(lim.peek(ip, "10.0.0.1")).remaining, 3);  // charged twice, not three times
  // The same limits under other keys are untouched.
  EXPECT_EQ(must(lim.peek(user, "u2")).remaining, 2);
  // Items count as the request went: 2 admitted pairs, 1 denied pair, and the 2 peeks.
  EXPECT_EQ(lim.stats().denied, 2u);
  EXPECT_EQ(lim.stats().allowed, 6u);
}

// Verifies that a shadow policy's denial does not deny the request, is answered allowed and
// marked, and that a shadow item is spent only when the rest was admitted.
TEST_F(LimiterAcquireAll, ShadowItemsNeverDeny) {
  sluice::limiter lim = make_limiter();
  const policy real = make_policy("real", "2/1m");
  const policy watched = make_policy("watched", "1/1m", failure_mode::allow, true);
  const std::vector<spend> both = {{&real, "k"}, {&watched, "k"}};
  auto first = must(lim.acquire_all(both));
  EXPECT_TRUE(first[0].allowed && first[1].allowed);
  EXPECT_EQ(first[1].source, source::store);
  auto second = must(lim.acquire_all(both));
  EXPECT_TRUE(second[0].allowed);
  EXPECT_TRUE(second[1].allowed);
  EXPECT_EQ(second[1].source, source::shadow);  // it would have denied
  auto third = must(lim.acquire_all(both));
  EXPECT_FALSE(third[0].allowed);
  EXPECT_EQ(third[1].source, source::shadow);
  EXPECT_EQ(must(lim.peek(real, "k")).remaining, 0);
}

// Verifies a failing store: each limit falls back by its own mode, still all or nothing; a
// deny item denies the request and the local items are then not spent.
TEST_F(LimiterAcquireAll, FallsBackPerLimitAllOrNothing) {
  sluice::limiter lim = make_limiter();
  const policy open = make_policy("open", "5/1m", failure_mode::allow);
  const policy closed = make_policy("closed", "5/1m", failure_mode::deny);
  const policy local = make_policy("local", "2/1m", failure_mode::local);
  store_->fail(errc::timeout);

  auto ds = must(lim.acquire_all(std::vector<spend>{{&open, "k"}, {&local, "k"}}));
  EXPECT_TRUE(ds[0].allowed && ds[1].allowed);
  EXPECT_EQ(ds[0].source, source::fallback_allow);
  EXPECT_EQ(ds[1].source, source::fallback_local);
  EXPECT_EQ(ds[1].remaining, 1);

  ds = must(lim.acquire_all(std::vector<spend>{{&closed, "k"}, {&local, "k"}}));
  EXPECT_FALSE(ds[0].allowed);
  EXPECT_EQ(ds[0].source, source::fallback_deny);
  EXPECT_TRUE(ds[1].allowed);  // it would admit, but the request is denied...
  ds = must(lim.acquire_all(std::vector<spend>{{&open, "k"}, {&local, "k"}}));
  EXPECT_TRUE(ds[1].allowed);  // ...so its last unit is still there
  EXPECT_EQ(ds[1].remaining, 0);
  ds = must(lim.acquire_all(std::vector<spend>{{&open, "k"}, {&local, "k"}}));
  EXPECT_FALSE(ds[1].allowed);
  EXPECT_EQ(lim.stats().store_errors, 4u);
}

// Verifies that when the breaker of one key's domain is open the whole call falls back, and
// that the store is not called for it.
TEST_F(LimiterAcquireAll, AnOpenBreakerSendsTheWholeCallToTheFailureModes) {
  store_ = std::make_shared<fake_store>(sluice::test::fake_store_options{
      .uri = "fake://domains",
      .time_source = &clock_,
      .domains = 2,
      .domain_of = [](std::string_view k) -> std::size_t { return k.ends_with("b") ? 1 : 0; }});
  sluice::limiter_options o;
  o.store = store_;
  o.time_source = &clock_;
  o.breaker.failures_to_open = 1;
  sluice::limiter lim(std::move(o));
  const policy p = make_policy("p", "5/1m", failure_mode::deny);
  store_->fail_domain(1);
  ASSERT_FALSE(must(lim.acquire(p, "b")).allowed);  // opens domain 1's breaker
  ASSERT_EQ(lim.breaker(1).state(), sluice::breaker_state::open);
  const int calls = store_->calls();
  auto ds = must(lim.acquire_all(std::vector<spend>{{&p, "a"}, {&p, "b"}}));
  EXPECT_EQ(store_->calls(), calls);
  EXPECT_EQ(ds[0].source, source::fallback_deny);
  EXPECT_EQ(ds[1].source, source::fallback_deny);
  EXPECT_EQ(lim.breaker(0).state(), sluice::breaker_state::closed);
}

// Verifies that the async form answers what the sync form answers, once, also with shadow
// items and completions that come later.
TEST_F(LimiterAcquireAll, AsyncFormMatchesSync) {
  sluice::limiter lim = make_limiter();
  const policy a = make_policy("a", "3/1m");
  const policy b = make_policy("b", "1/1m", failure_mode::allow, true);
  store_->hold();
  std::vector<result<std::vector<decision>>> got;
  for (int i = 0; i < 2; ++i) {
    lim.async_acquire_all(std::vector<spend>{{&a, "k", 2}, {&b, "k"}},
                          [&got](result<std::vector<decision>> r) { got.push_back(std::move(r)); });
  }
  EXPECT_TRUE(got.empty());
  store_->release();  // the first call's store answer; its shadow item queues another
  store_->release();
  store_->release();
  store_->release();
  ASSERT_EQ(got.size(), 2u);
  const auto first = must(std::move(got[0]));
  EXPECT_TRUE(first[0].allowed && first[1].allowed);
  const auto second = must(std::move(got[1]));
  EXPECT_FALSE(second[0].allowed);
  EXPECT_EQ(second[1].source, source::shadow);  // peeked (the request was denied): spent
  store_->hold(false);
  EXPECT_EQ(must(lim.peek(b, "k")).remaining, 0);
  EXPECT_EQ(must(lim.peek(a, "k")).remaining, 1);
}

// Verifies that one limit takes the single-key path (no multi-key store call) and decides as
// a multi-key call would: spent while it admits, a cost of 0 only checks, shadow never denies,
// a failing store falls back by the policy's mode; sync and async alike.
TEST_F(LimiterAcquireAll, OneLimitTakesTheSingleKeyPath) {
  sluice::limiter lim = make_limiter();
  const policy p = make_policy("p", "2/1m", failure_mode::deny);
  const policy watch = make_policy("watch", "1/1m", failure_mode::allow, true);
  const std::vector<spend> one{{&p, "k", 1}};
  EXPECT_TRUE(must(lim.acquire_all(one))[0].allowed);
  EXPECT_EQ(must(lim.acquire_all(std::vector<spend>{{&p, "k", 0}}))[0].remaining, 1);
  std::optional<result<std::vector<decision>>> async;
  lim.async_acquire_all(one, [&](result<std::vector<decision>> r) { async = std::move(r); });
  ASSERT_TRUE(async.has_value());
  const decision second = must(std::move(*async))[0];
  EXPECT_TRUE(second.allowed);
  EXPECT_EQ(second.remaining, 0);
  const decision third = must(lim.acquire_all(one))[0];
  EXPECT_FALSE(third.allowed);
  EXPECT_GT(third.retry_after.count(), 0);
  EXPECT_TRUE(must(lim.acquire_all(std::vector<spend>{{&watch, "k"}}))[0].allowed);
  const decision shadowed = must(lim.acquire_all(std::vector<spend>{{&watch, "k"}}))[0];
  EXPECT_TRUE(shadowed.allowed);
  EXPECT_EQ(shadowed.source, source::shadow);
  EXPECT_EQ(store_->multi_key_calls(), 0);
  store_->fail();
  const decision fallback = must(lim.acquire_all(one))[0];
  EXPECT_FALSE(fallback.allowed);
  EXPECT_EQ(fallback.source, source::fallback_deny);
  store_->recover();
  EXPECT_EQ(store_->multi_key_calls(), 0);
  (void)must(lim.acquire_all(std::vector<spend>{{&p, "a"}, {&p, "b"}}));
  EXPECT_EQ(store_->multi_key_calls(), 1);
}

// Verifies bad input: errors, the async form's error too, and nothing spent.
TEST_F(LimiterAcquireAll, BadInputIsAnErrorAndSpendsNothing) {
  sluice::limiter lim = make_limiter();
  const policy p = make_policy("p", "3/1m");
  EXPECT_EQ(lim.acquire_all(std::vector<spend>{}).error().code, errc::invalid_cost);
  EXPECT_EQ(lim.acquire_all(std::vector<spend>{{&p, "k"}, {&p, ""}}).error().code,
            errc::invalid_key);
  EXPECT_EQ(lim.acquire_all(std::vector<spend>{{&p, "k"}, {&p, "j", -1}}).error().code,
            errc::invalid_cost);
  EXPECT_EQ(lim.acquire_all(std::vector<spend>{{&p, "k", 2}, {&p, "k", 2}}).error().code,
            errc::cost_exceeds_limit);
  EXPECT_EQ(lim.acquire_all(std::vector<spend>{{nullptr, "k"}}).error().code, errc::unknown_policy);
  std::vector<spend> many(sluice::max_requests_per_call + 1, spend{&p, "k", 0});
  EXPECT_EQ(lim.acquire_all(many).error().code, errc::invalid_cost);
  std::optional<std::error_code> async_error;
  lim.async_acquire_all(std::vector<spend>{{&p, ""}},
                        [&](result<std::vector<decision>> r) { async_error = r.error().code; });
  EXPECT_EQ(async_error, std::error_code(errc::invalid_key));
  EXPECT_EQ(must(lim.peek(p, "k")).remaining, 3);
}

// Verifies refund through the limiter: units come back in the store, never past the full
// limit; a failing store is an error and nothing comes back there.
TEST_F(LimiterAcquireAll, RefundGivesBackUnits) {
  sluice::limiter lim = make_limiter();
  const policy p = make_policy("chat", "100/1m", failure_mode::local);
  must(lim.add_policy(p));  // refund by name below; `p` names the same policy
  ASSERT_TRUE(must(lim.acquire(p, "u", 80)).allowed);
  EXPECT_EQ(must(lim.refund(p, "u", 50)).remaining, 70);
  EXPECT_EQ(must(lim.refund("chat", "u", 500)).remaining, 100);
  EXPECT_EQ(lim.refund("nope", "u", 1).error().code, errc::unknown_policy);
  EXPECT_EQ(lim.refund(p, "", 1).error().code, errc::invalid_key);
  EXPECT_EQ(lim.refund(p, "u", 0).error().code, errc::invalid_cost);

  ASSERT_TRUE(must(lim.acquire(p, "u", 60)).allowed);
  store_->fail();
  ASSERT_EQ(must(lim.acquire(p, "u", 30)).source, source::fallback_local);  // local: 70 left
  auto failed = lim.refund(p, "u", 30);
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code, errc::store_unavailable);
  EXPECT_EQ(must(lim.acquire(p, "u", 100)).source, source::fallback_local);  // local got it back
  store_->recover();
  EXPECT_EQ(must(lim.peek(p, "u")).remaining, 40);  // the store kept its 60
  std::optional<std::int64_t> async_remaining;
  lim.async_refund(p, "u", 10, [&](result<decision> r) { async_remaining = must(r).remaining; });
  EXPECT_EQ(async_remaining, 50);
}

}  // namespace
