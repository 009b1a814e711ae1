// Tests of what the limiter says of each decision (decision::source), shadow policies and
// async_reset (docs/DESIGN.md, "The limiter contract"). Store failures come from a real
// Redis store pointed at a loopback port nobody listens on: every call fails at once.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <optional>

#include "sluice/limiter.h"
#include "sluice/memory_store.h"
#include "sluice/open_store.h"

namespace sluice {
namespace {

using std::chrono::seconds;

constexpr limit kTwoAnHour{2, std::chrono::hours(1)};

std::shared_ptr<store> unreachable_redis() {
  auto s = open_store("redis://127.0.0.1:1?connect_timeout=200ms&timeout=50ms");
  EXPECT_TRUE(s) << s.error().message();
  return s ? *s : nullptr;
}

// Verifies that decisions the store makes say so, allowed or denied.
TEST(LimiterSource, StoreDecisionsSayStore) {
  limiter lim{std::make_shared<memory_store>()};
  ASSERT_TRUE(lim.add_policy({"p", kTwoAnHour, algorithm::gcra}));
  for (int i = 0; i < 3; ++i) {
    const result<decision> d = lim.acquire("p", "k");
    ASSERT_TRUE(d) << d.error().message();
    EXPECT_EQ(d->allowed, i < 2);
    EXPECT_EQ(d->source, decision_source::store);
  }
  EXPECT_EQ(lim.peek("p", "k")->source, decision_source::store);
  EXPECT_EQ(fallback_of(decision_source::store), std::nullopt);
  EXPECT_EQ(fallback_of(decision_source::shadow), std::nullopt);
}

// Verifies that each failure mode marks its decisions, sync and async alike.
TEST(LimiterSource, FallbacksSayWhichMode) {
  limiter lim{unreachable_redis()};
  const struct {
    const char* name;
    failure_mode mode;
    decision_source source;
    bool allowed;
  } cases[] = {
      {"open", failure_mode::allow, decision_source::fallback_allow, true},
      {"closed", failure_mode::deny, decision_source::fallback_deny, false},
      {"local", failure_mode::local, decision_source::fallback_local, true},
  };
  for (const auto& c : cases) {
    ASSERT_TRUE(lim.add_policy({c.name, kTwoAnHour, algorithm::sliding_log, c.mode}));
  }
  for (const auto& c : cases) {
    const result<decision> d = lim.acquire(c.name, "k");
    ASSERT_TRUE(d) << c.name << ": " << d.error().message();
    EXPECT_EQ(d->source, c.source) << c.name;
    EXPECT_EQ(d->allowed, c.allowed) << c.name;
    EXPECT_EQ(fallback_of(d->source), c.mode) << c.name;
    std::optional<result<decision>> async;
    lim.async_acquire(c.name, "k", 1, [&](result<decision> r) { async = std::move(r); });
    ASSERT_TRUE(async.has_value()) << "a store that is down answers at once";
    ASSERT_TRUE(*async) << async->error().message();
    EXPECT_EQ((*async)->source, c.source) << c.name;
  }
  const limiter_stats s = lim.stats();
  EXPECT_EQ(s.fallbacks_allow, 2u);
  EXPECT_EQ(s.fallbacks_deny, 2u);
  EXPECT_EQ(s.fallbacks_local, 2u);
}

// Verifies that a shadow policy answers its denials as allowed, marked shadow, with no
// wait, while spending nothing: the store's own answer is still a denial.
TEST(LimiterSource, ShadowPolicyAllowsAndMarksDenials) {
  auto store = std::make_shared<memory_store>();
  limiter lim{store};
  policy p{"watch", kTwoAnHour, algorithm::sliding_log};
  p.shadow = true;
  ASSERT_TRUE(lim.add_policy(p));
  for (int i = 0; i < 2; ++i) {
    const result<decision> d = lim.acquire("watch", "k");
    ASSERT_TRUE(d);
    EXPECT_TRUE(d->allowed);
    EXPECT_EQ(d->source, decision_source::store);
  }
  const result<decision> over = lim.acquire("watch", "k");
  ASSERT_TRUE(over);
  EXPECT_TRUE(over->allowed);
  EXPECT_EQ(over->source, decision_source::shadow);
  EXPECT_EQ(over->retry_after, std::chrono::microseconds(0));
  EXPECT_EQ(over->remaining, 0);
  const result<decision> direct = store->peek({"watch:k", kTwoAnHour});
  ASSERT_TRUE(direct);
  EXPECT_FALSE(direct->allowed) << "the shadow denial spent nothing and admitted nothing";
  EXPECT_EQ(lim.stats().denied, 1u);
}

// Verifies that a shadow policy also turns a failing store's deny fallback into an admission.
TEST(LimiterSource, ShadowOverFallbackDeny) {
  limiter lim{unreachable_redis()};
  policy p{"watch", kTwoAnHour, algorithm::gcra, failure_mode::deny};
  p.shadow = true;
  ASSERT_TRUE(lim.add_policy(p));
  const result<decision> d = lim.acquire("watch", "k");
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_TRUE(d->allowed);
  EXPECT_EQ(d->source, decision_source::shadow);
  EXPECT_EQ(lim.stats().fallbacks_deny, 1u);
}

// Verifies that async_reset forgets the key and completes exactly once.
TEST(LimiterAsyncReset, ForgetsTheKey) {
  limiter lim{std::make_shared<memory_store>()};
  ASSERT_TRUE(lim.add_policy({"p", kTwoAnHour, algorithm::sliding_counter}));
  ASSERT_TRUE(lim.acquire("p", "k"));
  ASSERT_TRUE(lim.acquire("p", "k"));
  ASSERT_FALSE(lim.acquire("p", "k")->allowed);
  int calls = 0;
  lim.async_reset("p", "k", [&](result<void> r) {
    ++calls;
    EXPECT_TRUE(r) << r.error().message();
  });
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(lim.acquire("p", "k")->allowed);
}

// Verifies async_reset's errors: unknown policy, empty key, a store that fails, and then the
// circuit breaker keeping the store out of the call.
TEST(LimiterAsyncReset, ReportsErrors) {
  limiter_options o;
  o.store = unreachable_redis();
  o.breaker.failures_to_open = 1;
  o.breaker.open_for = std::chrono::hours(1);
  limiter lim{std::move(o)};
  ASSERT_TRUE(lim.add_policy({"p", kTwoAnHour}));
  const auto reset = [&](std::string_view policy, std::string_view key) {
    std::optional<result<void>> got;
    lim.async_reset(policy, key, [&](result<void> r) { got = std::move(r); });
    EXPECT_TRUE(got.has_value());
    return got.value_or(result<void>{});
  };
  EXPECT_EQ(reset("nope", "k").error().code, errc::unknown_policy);
  EXPECT_EQ(reset("p", "").error().code, errc::invalid_key);
  const result<void> failed = reset("p", "k");
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code, errc::store_unavailable);
  EXPECT_EQ(lim.breaker().state(), breaker_state::open);
  const result<void> kept_out = reset("p", "k");
  ASSERT_FALSE(kept_out);
  EXPECT_NE(kept_out.error().message().find("circuit breaker open"), std::string::npos)
      << kept_out.error().message();
}

}  // namespace
}  // namespace sluice
