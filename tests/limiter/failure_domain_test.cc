// Tests of the limiter's circuit breakers per failure domain of the store (a Redis Cluster's
// masters): a domain that fails falls back on its own keys only, the others keep being
// decided by the store; sync and async forms, reset, stats, warnings, keys that move to
// another domain, and stores that report domains out of range.
//
// The store here is the fake store (tests/support/fake_store.h) with several failure
// domains, each of which goes down on demand; it exercises the limiter's bookkeeping, not a
// real cluster.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
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

using sluice::test::fake_store;
using sluice::test::fake_store_options;
using sluice::test::make;
using sluice::test::must;
using source = sluice::decision_source;

class LimiterFailureDomains : public ::testing::Test {
 protected:
  // A limiter over a fake store with `domains` domains, keys `b…` in domain 1 and `c…` in
  // domain 2 when there are that many (else in domain 0, like the rest), and policy `chat`
  // (3/hour) with `mode`. A key's domain is looked up when the limiter calls the store, as
  // a cluster sends the call to the master that holds the slot then.
  sluice::limiter make_limiter(std::size_t domains, failure_mode mode = failure_mode::deny,
                               sluice::breaker_options b = {}) {
    for (auto& h : home_) h = 0;
    store_ = std::make_shared<fake_store>(
        fake_store_options{.uri = "domains://test",
                           .time_source = &clock_,
                           .domains = domains,
                           .domain_of = [this](std::string_view key) { return home_of(key); }});
    if (domains > 1) place('b', 1);
    if (domains > 2) place('c', 2);
    sluice::limiter_options o;
    o.store = store_;
    o.time_source = &clock_;
    o.breaker = b;
    o.warn = [this](std::string_view w) {
      const std::lock_guard lock(warn_mu_);
      warnings_.emplace_back(w);
    };
    sluice::limiter lim{std::move(o)};
    EXPECT_TRUE(lim.add_policy({"chat", make(3, hours(1)), algorithm::gcra, mode}));
    return lim;
  }

  // Moves the keys whose unscoped part (`bob` of `chat:bob`) starts with `letter` to
  // `domain` (any value: the store may report one out of range).
  void place(char letter, std::size_t domain) { home_[letter - 'a'] = domain; }

  std::size_t home_of(std::string_view key) const {
    const std::size_t colon = key.find(':');
    const std::string_view own = colon == key.npos ? key : key.substr(colon + 1);
    if (own.empty() || own[0] < 'a' || own[0] > 'z') return 0;
    return home_[own[0] - 'a'].load();
  }

  std::vector<std::string> warnings() {
    const std::lock_guard lock(warn_mu_);
    return warnings_;
  }

  // The decision of failure_mode::deny while the key's breaker is open for `wait`.
  static decision refused(seconds wait) { return {false, 3, 0, wait, wait, source::fallback_deny}; }

  sluice::manual_clock clock_{seconds(1'700'000'000)};
  std::array<std::atomic<std::size_t>, 26> home_{};  // 'a'..'z' → domain
  std::shared_ptr<fake_store> store_;
  std::mutex warn_mu_;
  std::vector<std::string> warnings_;
};

// Verifies that a limiter keeps one breaker per domain the store reports, and that a store
// with one domain is never asked for a key's domain.
TEST_F(LimiterFailureDomains, OneBreakerPerDomain) {
  sluice::limiter three = make_limiter(3);
  EXPECT_EQ(three.breakers(), 3u);
  EXPECT_EQ(three.stats().breakers, 3u);
  EXPECT_NE(&three.breaker(0), &three.breaker(1));
  EXPECT_NE(&three.breaker(1), &three.breaker(2));
  EXPECT_EQ(&three.breaker(), &three.breaker(0));
  ASSERT_TRUE(three.acquire("chat", "bob"));
  EXPECT_EQ(store_->domain_queries(), 1);

  sluice::limiter one = make_limiter(1);
  EXPECT_EQ(one.breakers(), 1u);
  ASSERT_TRUE(one.acquire("chat", "bob"));
  ASSERT_TRUE(one.peek("chat", "alice"));
  one.async_acquire("chat", "carol", 1, [](result<decision> r) { EXPECT_TRUE(r); });
  ASSERT_TRUE(one.reset("chat", "bob"));
  EXPECT_EQ(store_->domain_queries(), 0);
  EXPECT_EQ(store_->calls_to(0), 4);
}

// Verifies that failures in one domain open that domain's breaker only: its keys get the
// failure mode's decision without a store call, the other domain's keys are still decided
// by the store.
TEST_F(LimiterFailureDomains, OneDomainDownLeavesTheOthersAlone) {
  sluice::limiter lim = make_limiter(2);
  store_->fail_domain(1);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(must(lim.acquire("chat", "bob")), refused(seconds(1)));
  EXPECT_EQ(lim.breaker(1).state(), breaker_state::closed);
  EXPECT_EQ(must(lim.acquire("chat", "bob")), refused(seconds(1)));  // the fifth opens it
  EXPECT_EQ(lim.breaker(1).state(), breaker_state::open);
  EXPECT_EQ(lim.breaker(0).state(), breaker_state::closed);
  EXPECT_EQ(store_->calls_to(1), 5);

  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(must(lim.acquire("chat", "bob")), refused(seconds(1))) << i;
    EXPECT_EQ(must(lim.peek("chat", "barbara")), refused(seconds(1))) << i;
  }
  EXPECT_EQ(store_->calls_to(1), 5);

  // Domain 0's keys: the store's decisions, the limit spent there.
  for (int i = 0; i < 3; ++i) {
    const decision d = must(lim.acquire("chat", "alice"));
    EXPECT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 2 - i);
  }
  EXPECT_FALSE(must(lim.acquire("chat", "alice")).allowed);
  EXPECT_EQ(must(lim.peek("chat", "dave")).remaining, 3);
  EXPECT_EQ(store_->calls_to(0), 5);
  EXPECT_EQ(lim.breaker(0).state(), breaker_state::closed);

  const sluice::limiter_stats s = lim.stats();
  EXPECT_EQ(s.fallbacks_deny, 5u + 20);
  EXPECT_EQ(s.store_errors, 5u);
  EXPECT_EQ(s.breaker_opened, 1u);
  EXPECT_EQ(s.breaker, breaker_state::open);
  EXPECT_EQ(s.breakers_open, 1u);
  EXPECT_EQ(s.breakers, 2u);
}

// Verifies the same through the async forms, with completions on the store's thread: the
// failures of domain 1 open its breaker, domain 0's calls keep going to the store.
TEST_F(LimiterFailureDomains, AsyncOneDomainDownLeavesTheOthersAlone) {
  sluice::limiter lim = make_limiter(2, failure_mode::allow);
  store_->fail_domain(1);
  store_->hold();
  std::vector<decision> got;
  const auto keep = [&](result<decision> r) { got.push_back(must(r)); };
  for (int i = 0; i < 5; ++i) lim.async_acquire("chat", "bob", 1, keep);
  for (int i = 0; i < 2; ++i) lim.async_acquire("chat", "alice", 1, keep);
  EXPECT_EQ(store_->calls_to(1), 5);
  EXPECT_EQ(store_->calls_to(0), 2);
  EXPECT_EQ(store_->release(), 7u);
  ASSERT_EQ(got.size(), 7u);
  const decision open{true, 3, 3, microseconds(0), microseconds(0), source::fallback_allow};
  for (int i = 0; i < 5; ++i) EXPECT_EQ(got[i], open) << i;
  EXPECT_EQ(got[5].remaining, 2);
  EXPECT_EQ(got[6].remaining, 1);
  EXPECT_EQ(lim.breaker(1).state(), breaker_state::open);
  EXPECT_EQ(lim.breaker(0).state(), breaker_state::closed);

  // Domain 1's keys complete at once, without the store; domain 0's go to the store.
  got.clear();
  lim.async_acquire("chat", "bob", 1, keep);
  lim.async_peek("chat", "bert", 1, keep);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], open);
  EXPECT_EQ(got[1], open);
  lim.async_acquire("chat", "alice", 1, keep);
  EXPECT_EQ(store_->release(), 1u);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[2].remaining, 0);
  EXPECT_TRUE(got[2].allowed);
  EXPECT_EQ(store_->calls_to(1), 5);
  EXPECT_EQ(store_->calls_to(0), 3);

  const sluice::limiter_stats s = lim.stats();
  EXPECT_EQ(s.fallbacks_allow, 7u);
  EXPECT_EQ(s.breakers_open, 1u);
  EXPECT_EQ(s.breaker_opened, 1u);
}

// Verifies that a key the store moves to a healthy domain (its replica took over) is
// decided by the store at once, though its old domain's breaker is still open.
TEST_F(LimiterFailureDomains, KeyMovedToAHealthyDomainIsDecidedByTheStoreAtOnce) {
  sluice::limiter lim = make_limiter(3);
  store_->fail_domain(1);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(lim.acquire("chat", "bob"));
  ASSERT_EQ(lim.breaker(1).state(), breaker_state::open);
  EXPECT_EQ(must(lim.acquire("chat", "bob")), refused(seconds(1)));
  EXPECT_EQ(store_->calls_to(1), 5);

  place('b', 2);
  const decision moved = must(lim.acquire("chat", "bob"));
  EXPECT_TRUE(moved.allowed);
  EXPECT_EQ(moved.remaining, 2);
  EXPECT_EQ(store_->calls_to(2), 1);
  bool async_done = false;
  lim.async_acquire("chat", "bob", 1, [&](result<decision> r) {
    async_done = true;
    EXPECT_EQ(must(r).remaining, 1);
  });
  EXPECT_TRUE(async_done);
  EXPECT_TRUE(lim.reset("chat", "bob"));
  EXPECT_EQ(store_->calls_to(2), 3);
  EXPECT_EQ(lim.breaker(1).state(), breaker_state::open);  // nobody probed domain 1
  EXPECT_EQ(lim.breaker(2).state(), breaker_state::closed);
}

// Verifies that an async call's result goes to the breaker that let it through, even when
// the key has moved to another domain before the store answers.
TEST_F(LimiterFailureDomains, AsyncResultGoesToTheBreakerThatAllowedTheCall) {
  sluice::limiter lim = make_limiter(2, failure_mode::allow, {.failures_to_open = 2});
  store_->fail_domain(1);
  store_->hold();
  int completions = 0;
  const auto done = [&](result<decision> r) {
    ++completions;
    EXPECT_TRUE(must(r).allowed);
  };
  lim.async_acquire("chat", "bob", 1, done);
  lim.async_acquire("chat", "bob", 1, done);
  place('b', 0);  // domain 0 holds bob's keys from now on
  EXPECT_EQ(store_->release(), 2u);
  EXPECT_EQ(completions, 2);
  EXPECT_EQ(lim.breaker(1).state(), breaker_state::open);
  EXPECT_EQ(lim.breaker(0).state(), breaker_state::closed);

  // The probe of domain 1 succeeds after the key moved back: it closes domain 1's breaker.
  clock_.advance(seconds(1));
  store_->recover_domain(1);
  place('b', 1);
  lim.async_acquire("chat", "bob", 1, done);
  EXPECT_EQ(lim.breaker(1).state(), breaker_state::half_open);
  place('b', 0);
  EXPECT_EQ(store_->release(), 1u);
  EXPECT_EQ(lim.breaker(1).state(), breaker_state::closed);
  EXPECT_EQ(lim.stats().breakers_open, 0u);
}

// Verifies that stats give the sum of trips, the worst state (open over half_open over
// closed) and how many domains are not closed.
TEST_F(LimiterFailureDomains, StatsShowTheWorstBreaker) {
  sluice::limiter lim = make_limiter(3, failure_mode::allow, {.failures_to_open = 1});
  store_->fail_domain(1);
  store_->fail_domain(2);
  ASSERT_TRUE(lim.acquire("chat", "carol"));  // opens domain 2 at t
  clock_.advance(milliseconds(500));
  ASSERT_TRUE(lim.acquire("chat", "bob"));  // opens domain 1 at t + 0.5 s
  sluice::limiter_stats s = lim.stats();
  EXPECT_EQ(s.breaker, breaker_state::open);
  EXPECT_EQ(s.breakers_open, 2u);
  EXPECT_EQ(s.breaker_opened, 2u);

  // Domain 2's probe is out (deferred), domain 1 is still open: open is the worse.
  store_->hold();
  clock_.advance(milliseconds(500));
  lim.async_acquire("chat", "carol", 1, [](result<decision> r) { EXPECT_TRUE(r); });
  EXPECT_EQ(lim.breaker(2).state(), breaker_state::half_open);
  EXPECT_EQ(lim.stats().breaker, breaker_state::open);

  // Domain 1 is back and its probe closes it: half_open is the worst left.
  store_->hold(false);
  store_->recover_domain(1);
  clock_.advance(milliseconds(500));
  ASSERT_TRUE(lim.acquire("chat", "bob"));
  s = lim.stats();
  EXPECT_EQ(s.breaker, breaker_state::half_open);
  EXPECT_EQ(s.breakers_open, 1u);

  store_->recover_domain(2);
  EXPECT_EQ(store_->release(), 1u);
  s = lim.stats();
  EXPECT_EQ(s.breaker, breaker_state::closed);
  EXPECT_EQ(s.breakers_open, 0u);
  EXPECT_EQ(s.breaker_opened, 2u);
}

// Verifies that reset asks the breaker of the key's domain: refused without a store call
// while that one is open, done in the store for keys of other domains.
TEST_F(LimiterFailureDomains, ResetUsesTheKeysDomain) {
  sluice::limiter lim = make_limiter(2, failure_mode::allow, {.failures_to_open = 1});
  store_->fail_domain(1);
  ASSERT_TRUE(lim.acquire("chat", "bob"));
  ASSERT_EQ(lim.breaker(1).state(), breaker_state::open);
  const result<void> refused = lim.reset("chat", "bob");
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, errc::store_unavailable);
  EXPECT_EQ(refused.error().detail,
            "store domains://test (failure domain 1 of 2) not called: circuit breaker open");
  EXPECT_EQ(store_->calls_to(1), 1);

  ASSERT_TRUE(lim.acquire("chat", "alice"));
  EXPECT_TRUE(lim.reset("chat", "alice"));
  EXPECT_EQ(must(lim.peek("chat", "alice")).remaining, 3);
  EXPECT_EQ(store_->calls_to(0), 3);
}

// Verifies that warnings name the failure domain, and quote the last error of that domain
// (not of another one that failed since) while its breaker keeps the store out.
TEST_F(LimiterFailureDomains, WarningsNameTheDomainAndItsLastError) {
  sluice::limiter lim =
      make_limiter(2, failure_mode::deny, {.failures_to_open = 1, .open_for = seconds(20)});
  store_->fail_domain(1);
  ASSERT_TRUE(lim.acquire("chat", "bob"));
  ASSERT_EQ(warnings().size(), 1u);
  EXPECT_EQ(warnings()[0],
            "sluice: store domains://test (failure domain 1 of 2) failed: store unavailable "
            "(domain 1 down); policy \"chat\" failed closed (on_failure: deny); 1 fallback so "
            "far: policy \"chat\" 1");
  ASSERT_TRUE(lim.acquire("chat", "bob"));  // not called, suppressed
  clock_.advance(seconds(1));
  store_->fail_domain(0);
  ASSERT_TRUE(lim.acquire("chat", "alice"));  // domain 0 fails too, suppressed
  clock_.advance(seconds(9));
  ASSERT_TRUE(lim.acquire("chat", "bob"));  // not called: domain 1 is open for 10 s more
  ASSERT_EQ(warnings().size(), 2u);
  EXPECT_EQ(warnings()[1],
            "sluice: store domains://test (failure domain 1 of 2) not called: circuit breaker "
            "open after: store unavailable (domain 1 down); policy \"chat\" failed closed "
            "(on_failure: deny); 3 fallbacks in the last 10 s: policy \"chat\" 3");
  EXPECT_EQ(store_->calls_to(1), 1);
}

// Verifies that a store reporting too many domains gets at most 1024 breakers, too few at
// least one, and that domains out of range fold into range instead of crashing.
TEST_F(LimiterFailureDomains, DomainsOutOfRangeAreClamped) {
  sluice::limiter none = make_limiter(0);
  EXPECT_EQ(none.breakers(), 1u);
  place('b', 7);
  EXPECT_TRUE(must(none.acquire("chat", "bob")).allowed);
  EXPECT_EQ(store_->domain_queries(), 0);

  sluice::limiter many = make_limiter(5000);
  EXPECT_EQ(many.breakers(), 1024u);
  EXPECT_EQ(&many.breaker(1025), &many.breaker(1));

  // A store with 3 domains that says 7 (breaker 7 % 3 = 1) or SIZE_MAX (breaker 0).
  sluice::limiter lim = make_limiter(3, failure_mode::deny, {.failures_to_open = 1});
  place('b', 7);
  place('c', std::numeric_limits<std::size_t>::max());
  store_->fail_domain(7);
  EXPECT_EQ(must(lim.acquire("chat", "bob")), refused(seconds(1)));
  EXPECT_EQ(lim.breaker(1).state(), breaker_state::open);
  EXPECT_EQ(lim.breaker(0).state(), breaker_state::closed);
  EXPECT_EQ(lim.breaker(2).state(), breaker_state::closed);
  EXPECT_EQ(&lim.breaker(7), &lim.breaker(1));
  bool called = false;
  lim.async_peek("chat", "bob", 1, [&](result<decision> r) {
    called = true;
    EXPECT_EQ(must(r), refused(seconds(1)));
  });
  EXPECT_TRUE(called);
  // SIZE_MAX % 3 = 0: breaker 0, closed; decided by the store (its domain SIZE_MAX is up).
  EXPECT_TRUE(must(lim.acquire("chat", "carol")).allowed);
  EXPECT_FALSE(lim.reset("chat", "bob"));
  EXPECT_TRUE(lim.reset("chat", "carol"));
  EXPECT_EQ(lim.stats().breakers_open, 1u);
}

}  // namespace
