// Tests of the limiter: policy registration and validation, key scoping by policy name,
// inline policies, the async forms, and the counters over a store that never fails. The
// failure policy has its own tests in failure_test.cc.
#include "sluice/limiter.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "sluice/clock.h"
#include "sluice/decision.h"
#include "sluice/limit.h"
#include "sluice/memory_store.h"

#include "support/test_util.h"

namespace {

using sluice::algorithm;
using sluice::decision;
using sluice::result;
using std::chrono::hours;
using std::chrono::microseconds;
using std::chrono::seconds;

using sluice::test::all_algorithms;
using sluice::test::make;
using sluice::test::must;

// A limiter over a memory store driven by a manual clock.
class LimiterTest : public ::testing::Test {
 protected:
  LimiterTest() : store_(std::make_shared<sluice::memory_store>(options())), lim_(store_) {}

  sluice::memory_store_options options() {
    sluice::memory_store_options o;
    o.time_source = &clock_;
    return o;
  }

  sluice::manual_clock clock_{seconds(1'700'000'000)};
  std::shared_ptr<sluice::memory_store> store_;
  sluice::limiter lim_;
};

// Verifies that well-formed names register and can be found again with their settings.
TEST_F(LimiterTest, AddPolicyAcceptsValidNames) {
  const std::vector<std::string> names = {"chat", "a", "A-Z_a.z-0.9", std::string(64, 'x')};
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    const result<void> r = lim_.add_policy({name, make(30, hours(1)), algorithm::gcra});
    ASSERT_TRUE(r) << r.error().message();
    const sluice::policy* p = lim_.find_policy(name);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(p->name, name);
    EXPECT_EQ(p->limit, make(30, hours(1)));
    EXPECT_EQ(p->algorithm, algorithm::gcra);
  }
  EXPECT_EQ(lim_.find_policy("missing"), nullptr);
}

// Verifies that empty, malformed, overlong and duplicate names are rejected as invalid_policy.
TEST_F(LimiterTest, AddPolicyRejectsBadAndDuplicateNames) {
  ASSERT_TRUE(lim_.add_policy({"chat", make(30, hours(1))}));
  const std::vector<std::string> bad = {"",
                                        "bad name!",
                                        "chat",
                                        "with space",
                                        "slash/name",
                                        "colon:name",
                                        std::string(65, 'x'),
                                        std::string("nul\0byte", 8)};
  for (const std::string& name : bad) {
    SCOPED_TRACE("\"" + name + "\"");
    const result<void> r = lim_.add_policy({name, make(1, hours(1))});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, sluice::errc::invalid_policy);
    EXPECT_FALSE(r.error().detail.empty());
  }
  // The original policy is unchanged by the rejected duplicate.
  ASSERT_NE(lim_.find_policy("chat"), nullptr);
  EXPECT_EQ(lim_.find_policy("chat")->limit.count, 30);
}

// Verifies that a policy whose limit was never validated is refused rather than used.
TEST_F(LimiterTest, AddPolicyRejectsInvalidLimit) {
  const result<void> r = lim_.add_policy({"empty_limit", sluice::limit{}});
  EXPECT_FALSE(r);
  EXPECT_EQ(lim_.find_policy("empty_limit"), nullptr);
}

// Verifies that every call naming an unknown policy fails with unknown_policy.
TEST_F(LimiterTest, UnknownPolicyIsAnError) {
  ASSERT_TRUE(lim_.add_policy({"chat", make(30, hours(1))}));
  const result<decision> a = lim_.acquire("nope", "u");
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error().code, sluice::errc::unknown_policy);
  const result<decision> p = lim_.peek("nope", "u");
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error().code, sluice::errc::unknown_policy);
  const result<void> r = lim_.reset("nope", "u");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, sluice::errc::unknown_policy);
  const result<decision> c = lim_.acquire("CHAT", "u");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, sluice::errc::unknown_policy);
}

// Verifies that acquire by name spends from the policy's limit on the store's clock.
TEST_F(LimiterTest, AcquireByNameUsesPolicyAndStoreClock) {
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    const std::string name = "p_" + std::string(sluice::to_string(a));
    ASSERT_TRUE(lim_.add_policy({name, make(3, seconds(10)), a}));
    const decision first = must(lim_.acquire(name, "user:42"));
    EXPECT_TRUE(first.allowed);
    EXPECT_EQ(first.limit, 3);
    EXPECT_EQ(first.remaining, 2);
    EXPECT_TRUE(must(lim_.acquire(name, "user:42", 2)).allowed);
    const decision denied = must(lim_.acquire(name, "user:42"));
    EXPECT_FALSE(denied.allowed);
    EXPECT_GT(denied.retry_after, microseconds(0));
    const decision peeked = must(lim_.peek(name, "user:42"));
    EXPECT_EQ(peeked, denied);
    clock_.advance(denied.retry_after);
    EXPECT_TRUE(must(lim_.acquire(name, "user:42")).allowed);
  }
}

// Verifies that the cost is checked as the store checks it.
TEST_F(LimiterTest, BadCostIsAnError) {
  ASSERT_TRUE(lim_.add_policy({"chat", make(3, hours(1))}));
  const result<decision> zero = lim_.acquire("chat", "u", 0);
  ASSERT_FALSE(zero);
  EXPECT_EQ(zero.error().code, sluice::errc::invalid_cost);
  const result<decision> big = lim_.acquire("chat", "u", 4);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code, sluice::errc::cost_exceeds_limit);
  const result<decision> empty_key = lim_.acquire("chat", "");
  ASSERT_FALSE(empty_key);
  EXPECT_EQ(empty_key.error().code, sluice::errc::invalid_key);
}

// Verifies that the same key under two policies has two independent states.
TEST_F(LimiterTest, KeysAreScopedByPolicyName) {
  ASSERT_TRUE(lim_.add_policy({"chat", make(2, hours(1))}));
  ASSERT_TRUE(lim_.add_policy({"api", make(2, hours(1))}));
  EXPECT_TRUE(must(lim_.acquire("chat", "u", 2)).allowed);
  EXPECT_FALSE(must(lim_.acquire("chat", "u")).allowed);
  const decision api = must(lim_.acquire("api", "u"));
  EXPECT_TRUE(api.allowed);
  EXPECT_EQ(api.remaining, 1);
}

// Verifies that an inline policy named like a registered one shares its keys' state.
TEST_F(LimiterTest, InlinePolicyWithSameNameSharesState) {
  const sluice::policy chat{"chat", make(2, hours(1)), algorithm::sliding_log};
  ASSERT_TRUE(lim_.add_policy(chat));
  ASSERT_TRUE(must(lim_.acquire("chat", "u", 2)).allowed);
  EXPECT_FALSE(must(lim_.acquire(chat, "u")).allowed);
  EXPECT_FALSE(must(lim_.peek(chat, "u")).allowed);

  // The documented store layout is `policy:key`.
  const sluice::request raw{"chat:u", chat.limit, chat.algorithm, 1, clock_.now()};
  const decision in_store = must(store_->peek(raw));
  EXPECT_FALSE(in_store.allowed);
  EXPECT_EQ(in_store.remaining, 0);

  // An unscoped inline policy uses the key as it is.
  const sluice::policy unscoped{"", chat.limit, chat.algorithm};
  EXPECT_FALSE(must(lim_.acquire(unscoped, "chat:u")).allowed);
  EXPECT_TRUE(must(lim_.acquire(unscoped, "u")).allowed);
}

// Verifies that an inline policy's explicit now replaces the store's clock.
TEST_F(LimiterTest, InlinePolicyExplicitNow) {
  const sluice::policy p{"inline", make(1, seconds(1)), algorithm::gcra};
  const microseconds t = seconds(5);
  EXPECT_TRUE(must(lim_.acquire(p, "k", 1, t)).allowed);
  const decision denied = must(lim_.acquire(p, "k", 1, t + microseconds(10)));
  EXPECT_FALSE(denied.allowed);
  EXPECT_EQ(denied.retry_after, seconds(1) - microseconds(10));
  EXPECT_TRUE(must(lim_.peek(p, "k", 1, t + seconds(1))).allowed);
  // The store's clock is far later, where the key is long since full again.
  EXPECT_TRUE(must(lim_.acquire(p, "k")).allowed);
}

// Verifies that reset by policy forgets only that policy's state of that key.
TEST_F(LimiterTest, ResetOnlyThatPolicyAndKey) {
  ASSERT_TRUE(lim_.add_policy({"chat", make(1, hours(1))}));
  ASSERT_TRUE(lim_.add_policy({"api", make(1, hours(1))}));
  for (const char* policy : {"chat", "api"}) {
    for (const char* key : {"u", "v"}) ASSERT_TRUE(must(lim_.acquire(policy, key)).allowed);
  }
  ASSERT_TRUE(lim_.reset("chat", "u"));
  EXPECT_TRUE(must(lim_.acquire("chat", "u")).allowed);
  EXPECT_FALSE(must(lim_.acquire("chat", "v")).allowed);
  EXPECT_FALSE(must(lim_.acquire("api", "u")).allowed);
  EXPECT_FALSE(must(lim_.acquire("api", "v")).allowed);

  // The inline form resets the same state as the named one.
  ASSERT_TRUE(lim_.reset(*lim_.find_policy("api"), "v"));
  EXPECT_TRUE(must(lim_.acquire("api", "v")).allowed);
  EXPECT_FALSE(must(lim_.acquire("api", "u")).allowed);
}

// Verifies that async_acquire completes exactly once with the decision acquire would give.
TEST_F(LimiterTest, AsyncAcquireCompletesOnceWithAcquiresDecision) {
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    const std::string name = "async_" + std::string(sluice::to_string(a));
    ASSERT_TRUE(lim_.add_policy({name, make(3, seconds(10)), a}));
    for (int i = 0; i < 6; ++i) {
      const std::int64_t cost = i % 2 + 1;
      const decision want = must(lim_.acquire(name, "sync", cost));
      int calls = 0;
      decision got;
      lim_.async_acquire(name, "async", cost, [&](result<decision> r) {
        ++calls;
        ASSERT_TRUE(r) << r.error().message();
        got = *r;
      });
      EXPECT_EQ(calls, 1) << i;
      EXPECT_EQ(got, want) << i;
      clock_.advance(seconds(1));
    }
  }
}

// Verifies that async_peek completes once with peek's decision and spends nothing.
TEST_F(LimiterTest, AsyncPeekCompletesOnceAndSpendsNothing) {
  ASSERT_TRUE(lim_.add_policy({"chat", make(2, hours(1))}));
  int calls = 0;
  for (int i = 0; i < 3; ++i) {
    lim_.async_peek("chat", "u", 2, [&](result<decision> r) {
      ++calls;
      ASSERT_TRUE(r) << r.error().message();
      EXPECT_TRUE(r->allowed);
      EXPECT_EQ(r->remaining, 2);
    });
  }
  EXPECT_EQ(calls, 3);
  EXPECT_TRUE(must(lim_.acquire("chat", "u", 2)).allowed);
}

// Verifies that the async forms report errors through the completion, once.
TEST_F(LimiterTest, AsyncErrorsCompleteOnce) {
  ASSERT_TRUE(lim_.add_policy({"chat", make(2, hours(1))}));
  int calls = 0;
  std::vector<sluice::errc> codes;
  const auto record = [&](result<decision> r) {
    ++calls;
    ASSERT_FALSE(r);
    codes.push_back(static_cast<sluice::errc>(r.error().code.value()));
  };
  lim_.async_acquire("nope", "u", 1, record);
  lim_.async_peek("nope", "u", 1, record);
  lim_.async_acquire("chat", "u", 0, record);
  lim_.async_acquire("chat", "u", 3, record);
  lim_.async_acquire("chat", "", 1, record);
  EXPECT_EQ(calls, 5);
  EXPECT_EQ(codes,
            (std::vector<sluice::errc>{sluice::errc::unknown_policy, sluice::errc::unknown_policy,
                                       sluice::errc::invalid_cost, sluice::errc::cost_exceeds_limit,
                                       sluice::errc::invalid_key}));
}

// Verifies that the limiter exposes the store it was built with.
TEST_F(LimiterTest, ExposesItsStore) { EXPECT_EQ(&lim_.store(), store_.get()); }

// Verifies that a policy fails open unless it says otherwise, and that the failure mode is
// kept with the policy.
TEST_F(LimiterTest, PolicyFailureModeDefaultsToAllow) {
  const sluice::policy plain{"plain", make(3, hours(1))};
  EXPECT_EQ(plain.on_failure, sluice::failure_mode::allow);
  ASSERT_TRUE(lim_.add_policy(plain));
  ASSERT_TRUE(
      lim_.add_policy({"strict", make(3, hours(1)), algorithm::gcra, sluice::failure_mode::deny}));
  EXPECT_EQ(lim_.find_policy("plain")->on_failure, sluice::failure_mode::allow);
  EXPECT_EQ(lim_.find_policy("strict")->on_failure, sluice::failure_mode::deny);
}

// Verifies the counters over a store that never fails: every decision (acquire and peek,
// sync and async) is counted as allowed or denied, errors are not, nothing falls back.
TEST_F(LimiterTest, StatsCountDecisions) {
  ASSERT_TRUE(lim_.add_policy({"chat", make(2, hours(1))}));
  EXPECT_EQ(lim_.stats().decisions, 0u);
  EXPECT_TRUE(must(lim_.acquire("chat", "u")).allowed);
  EXPECT_TRUE(must(lim_.peek("chat", "u")).allowed);
  lim_.async_acquire("chat", "u", 1, [](result<decision> r) { EXPECT_TRUE(must(r).allowed); });
  lim_.async_peek("chat", "u", 1, [](result<decision> r) { EXPECT_FALSE(must(r).allowed); });
  EXPECT_FALSE(must(lim_.acquire("chat", "u")).allowed);
  EXPECT_FALSE(lim_.acquire("chat", "u", 0));
  EXPECT_FALSE(lim_.acquire("nope", "u"));
  const sluice::limiter_stats s = lim_.stats();
  EXPECT_EQ(s.decisions, 5u);
  EXPECT_EQ(s.allowed, 3u);
  EXPECT_EQ(s.denied, 2u);
  EXPECT_EQ(s.store_errors, 0u);
  EXPECT_EQ(s.fallbacks_allow + s.fallbacks_deny + s.fallbacks_local, 0u);
  EXPECT_EQ(s.breaker_opened, 0u);
  EXPECT_EQ(s.breaker, sluice::breaker_state::closed);
}

// Verifies that a limiter built from options decides like one built from the store alone,
// and can be moved.
TEST_F(LimiterTest, BuiltFromOptions) {
  sluice::limiter_options o;
  o.store = store_;
  o.time_source = &clock_;
  o.breaker.failures_to_open = 2;
  sluice::limiter built{std::move(o)};
  EXPECT_EQ(&built.store(), store_.get());
  EXPECT_EQ(built.breaker().options().failures_to_open, 2u);
  ASSERT_TRUE(built.add_policy({"chat", make(1, hours(1))}));
  sluice::limiter moved = std::move(built);
  EXPECT_TRUE(must(moved.acquire("chat", "u")).allowed);
  EXPECT_FALSE(must(moved.acquire("chat", "u")).allowed);
  EXPECT_EQ(moved.stats().decisions, 2u);
}

}  // namespace
