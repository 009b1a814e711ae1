// Tests of the limiter's deny cache (`policy::deny_cache`) over a memory store and the fake
// store, both on a manual clock: what it answers and until when, what it leaves to the
// store, what clears it, its bound and its counters. On a real Redis:
// tests/limiter/deny_cache_redis_test.cc.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "sluice/clock.h"
#include "sluice/decision.h"
#include "sluice/limit.h"
#include "sluice/limiter.h"
#include "sluice/memory_store.h"

#include "support/fake_store.h"
#include "support/test_util.h"

namespace {

using sluice::algorithm;
using sluice::decision;
using sluice::policy;
using sluice::result;
using source = sluice::decision_source;
using std::chrono::hours;
using std::chrono::microseconds;
using std::chrono::seconds;

using sluice::test::all_algorithms;
using sluice::test::make;
using sluice::test::must;

// A limiter over a memory store, both on one manual clock; policy "hot" (3 per 10 s,
// sliding_log) uses the deny cache, "plain" (the same) does not.
class DenyCache : public ::testing::Test {
 protected:
  explicit DenyCache(std::size_t max_keys = 100000)
      : store_(std::make_shared<sluice::memory_store>(store_options())),
        lim_(limiter_options(max_keys)) {
    EXPECT_TRUE(lim_.add_policy(cached("hot", make(3, seconds(10)), algorithm::sliding_log)));
    EXPECT_TRUE(lim_.add_policy({"plain", make(3, seconds(10)), algorithm::sliding_log}));
  }

  static policy cached(std::string name, sluice::limit l, algorithm a) {
    policy p{std::move(name), l, a};
    p.deny_cache = true;
    return p;
  }

  sluice::memory_store_options store_options() {
    sluice::memory_store_options o;
    o.time_source = &clock_;
    return o;
  }

  sluice::limiter_options limiter_options(std::size_t max_keys) {
    sluice::limiter_options o;
    o.store = store_;
    o.time_source = &clock_;
    o.deny_cache_max_keys = max_keys;
    return o;
  }

  // Returns what the store itself says of `cost` more units of `store_key` now.
  decision store_peek(std::string_view store_key, const policy& p, std::int64_t cost = 1) {
    return must(store_->peek({store_key, p.limit, p.algorithm, cost, {}}));
  }

  sluice::manual_clock clock_{seconds(1'700'000'000)};
  std::shared_ptr<sluice::memory_store> store_;
  sluice::limiter lim_;
};

// Verifies that after the store denies, the key is denied from the cache with the exact wait
// left until the store's retry_after, down to the last microsecond, and that the store
// decides (and admits) again from that moment on, for every algorithm.
TEST_F(DenyCache, DeniesUntilExactlyRetryAfterThenTheStoreAdmits) {
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(to_string(a)));
    const policy p = cached("inline", make(3, seconds(10)), a);
    const std::string key = "k:" + std::string(to_string(a));
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(must(lim_.acquire(p, key)).allowed);
      clock_.advance(microseconds(1000));
    }
    const decision denied = must(lim_.acquire(p, key));
    ASSERT_FALSE(denied.allowed);
    EXPECT_EQ(denied.source, source::store);
    ASSERT_GT(denied.retry_after.count(), 2);
    const auto deadline = clock_.now() + denied.retry_after;

    const std::uint64_t hits = lim_.stats().deny_cache_hits;
    const decision again = must(lim_.acquire(p, key));
    EXPECT_EQ(again,
              (decision{false, 3, 0, denied.retry_after,
                        std::max(denied.reset_after, denied.retry_after), source::deny_cache}));
    // Halfway, and 1 µs before the end: the wait left, as the store would say it.
    clock_.advance(denied.retry_after / 2);
    const decision half = must(lim_.acquire(p, key));
    EXPECT_EQ(half.source, source::deny_cache);
    EXPECT_EQ(half.retry_after, deadline - clock_.now());
    if (a != algorithm::sliding_counter) {
      EXPECT_EQ(half.retry_after, store_peek("inline:" + key, p).retry_after);
    }
    clock_.set(deadline - microseconds(1));
    const decision last = must(lim_.peek(p, key));
    EXPECT_EQ(last.source, source::deny_cache);
    EXPECT_FALSE(last.allowed);
    EXPECT_EQ(last.retry_after, microseconds(1));
    EXPECT_EQ(lim_.stats().deny_cache_hits, hits + 3);

    clock_.set(deadline);
    const decision after = must(lim_.acquire(p, key));
    EXPECT_TRUE(after.allowed);
    EXPECT_EQ(after.source, source::store);
  }
}

// Verifies that the cache answers only costs at least the smallest it saw denied: a smaller
// cost goes to the store (and may be admitted), and a smaller cost denied there becomes the
// one the cache answers for.
TEST_F(DenyCache, SmallerCostGoesToTheStore) {
  const policy p = cached("c", make(10, seconds(10)), algorithm::sliding_log);
  ASSERT_TRUE(must(lim_.acquire(p, "u", 6)).allowed);  // 4 left
  EXPECT_EQ(must(lim_.acquire(p, "u", 5)).source, source::store);
  EXPECT_EQ(must(lim_.acquire(p, "u", 5)).source, source::deny_cache);
  EXPECT_EQ(must(lim_.acquire(p, "u", 7)).source, source::deny_cache);
  const decision two = must(lim_.acquire(p, "u", 2));  // 2 left
  EXPECT_TRUE(two.allowed);
  EXPECT_EQ(two.source, source::store);
  const decision three = must(lim_.acquire(p, "u", 3));
  EXPECT_FALSE(three.allowed);
  EXPECT_EQ(three.source, source::store);
  EXPECT_EQ(must(lim_.acquire(p, "u", 3)).source, source::deny_cache);
  // Cost 2 is below what was seen denied: the store admits it.
  EXPECT_TRUE(must(lim_.acquire(p, "u", 2)).allowed);
  EXPECT_EQ(store_peek("c:u", p).remaining, 0);
  // A larger cost denied later does not raise what the cache answers for.
  clock_.advance(microseconds(1));
  EXPECT_EQ(must(lim_.acquire(p, "u", 1)).source, source::store);
  EXPECT_EQ(must(lim_.acquire(p, "u", 1)).source, source::deny_cache);
  EXPECT_EQ(lim_.stats().deny_cache_keys, 1u);
}

// Verifies that a policy without `deny_cache`, and a limiter whose cache holds 0 keys, ask
// the store every time, and that bad input is still the store's error, not a cached denial.
TEST_F(DenyCache, OffUnlessAskedForAndBadInputStillFails) {
  for (int i = 0; i < 5; ++i) (void)lim_.acquire("plain", "u");
  EXPECT_EQ(must(lim_.acquire("plain", "u")).source, source::store);
  EXPECT_EQ(lim_.stats().deny_cache_keys, 0u);

  sluice::limiter off(limiter_options(0));
  const policy p = cached("p", make(1, seconds(10)), algorithm::gcra);
  for (int i = 0; i < 3; ++i) (void)off.acquire(p, "u");
  EXPECT_EQ(must(off.acquire(p, "u")).source, source::store);
  EXPECT_EQ(off.stats().deny_cache_keys, 0u);
  EXPECT_EQ(off.stats().deny_cache_hits, 0u);

  for (int i = 0; i < 4; ++i) (void)lim_.acquire("hot", "u");
  EXPECT_EQ(must(lim_.acquire("hot", "u")).source, source::deny_cache);
  const auto too_much = lim_.acquire("hot", "u", 4);
  ASSERT_FALSE(too_much);
  EXPECT_EQ(too_much.error().code, make_error_code(sluice::errc::cost_exceeds_limit));
  EXPECT_FALSE(lim_.acquire("hot", "u", 0));
}

// Verifies that a reset and a refund through this limiter clear the key's cached denial, so
// the store decides (and admits) at once.
TEST_F(DenyCache, LocalResetAndRefundClearTheKey) {
  for (int i = 0; i < 4; ++i) (void)lim_.acquire("hot", "u");
  ASSERT_EQ(must(lim_.acquire("hot", "u")).source, source::deny_cache);
  must(lim_.reset("hot", "u"));
  EXPECT_EQ(lim_.stats().deny_cache_keys, 0u);
  EXPECT_TRUE(must(lim_.acquire("hot", "u")).allowed);

  for (int i = 0; i < 3; ++i) (void)lim_.acquire("hot", "u");
  ASSERT_EQ(must(lim_.acquire("hot", "u")).source, source::deny_cache);
  const decision refunded = must(lim_.refund("hot", "u", 1));
  EXPECT_EQ(refunded.remaining, 1);
  const decision after = must(lim_.acquire("hot", "u"));
  EXPECT_TRUE(after.allowed);
  EXPECT_EQ(after.source, source::store);

  // The async forms too.
  ASSERT_EQ(must(lim_.acquire("hot", "u")).source, source::store);
  ASSERT_EQ(must(lim_.acquire("hot", "u")).source, source::deny_cache);
  bool reset = false;
  lim_.async_reset("hot", "u", [&](result<void> r) { reset = static_cast<bool>(r); });
  ASSERT_TRUE(reset);
  EXPECT_TRUE(must(lim_.acquire("hot", "u")).allowed);
  for (int i = 0; i < 3; ++i) (void)lim_.acquire("hot", "u");
  ASSERT_EQ(must(lim_.acquire("hot", "u")).source, source::deny_cache);
  std::optional<decision> got;
  lim_.async_refund("hot", "u", 1, [&](result<decision> r) { got = must(r); });
  ASSERT_TRUE(got);
  EXPECT_TRUE(must(lim_.acquire("hot", "u")).allowed);
}

// Verifies that peeks are answered from the cache by the same rule, and that the async forms
// answer from it inline.
TEST_F(DenyCache, PeeksAndAsyncFormsAreAnsweredFromIt) {
  EXPECT_EQ(must(lim_.peek("hot", "u")).source, source::store);  // allowed: nothing kept
  for (int i = 0; i < 3; ++i) (void)lim_.acquire("hot", "u");
  const decision denied = must(lim_.peek("hot", "u", 2));  // a peek's denial is kept too
  EXPECT_EQ(denied.source, source::store);
  EXPECT_EQ(must(lim_.peek("hot", "u", 2)).source, source::deny_cache);
  EXPECT_EQ(must(lim_.acquire("hot", "u", 3)).source, source::deny_cache);
  EXPECT_EQ(must(lim_.acquire("hot", "u", 1)).source, source::store);
  std::optional<decision> got;
  lim_.async_acquire("hot", "u", 1, [&](result<decision> r) { got = must(r); });
  ASSERT_TRUE(got);
  EXPECT_EQ(got->source, source::deny_cache);
  got.reset();
  lim_.async_peek("hot", "u", 1, [&](result<decision> r) { got = must(r); });
  ASSERT_TRUE(got);
  EXPECT_EQ(got->source, source::deny_cache);
  EXPECT_EQ(lim_.deny_cache_hits("hot"), 4u);
  EXPECT_EQ(lim_.deny_cache_hits("plain"), 0u);
  EXPECT_EQ(lim_.stats().deny_cache_hits, 4u);
  EXPECT_EQ(lim_.stats().denied, 6u);  // 2 by the store, 4 from the cache
}

// Verifies that an explicit `now` is the cache's time: the wait runs from the request's time,
// not the clock's, and a `now` before the entry was made is left to the store.
TEST_F(DenyCache, ExplicitNowIsTheCachesTime) {
  const policy p = cached("t", make(1, seconds(10)), algorithm::gcra);
  const microseconds t0 = seconds(2'000'000'000);
  ASSERT_TRUE(must(lim_.acquire(p, "u", 1, t0)).allowed);
  const decision denied = must(lim_.acquire(p, "u", 1, t0 + seconds(1)));
  ASSERT_EQ(denied.retry_after, seconds(9));
  const decision hit = must(lim_.acquire(p, "u", 1, t0 + seconds(4)));
  EXPECT_EQ(hit.source, source::deny_cache);
  EXPECT_EQ(hit.retry_after, seconds(6));
  EXPECT_EQ(must(lim_.acquire(p, "u", 1, t0)).source, source::store);  // before the entry
  EXPECT_TRUE(must(lim_.acquire(p, "u", 1, t0 + seconds(10))).allowed);
}

// Verifies that a shadow policy's cached denial is answered as its store denial is: allowed,
// no wait, source shadow, and counted as a hit and as denied.
TEST_F(DenyCache, ShadowPoliciesAnswerCachedDenialsAsShadow) {
  policy p = cached("s", make(1, seconds(10)), algorithm::sliding_counter);
  p.shadow = true;
  ASSERT_TRUE(lim_.add_policy(p));
  ASSERT_TRUE(must(lim_.acquire("s", "u")).allowed);
  const decision first = must(lim_.acquire("s", "u"));
  EXPECT_TRUE(first.allowed);
  EXPECT_EQ(first.source, source::shadow);
  const decision cached_answer = must(lim_.acquire("s", "u"));
  EXPECT_TRUE(cached_answer.allowed);
  EXPECT_EQ(cached_answer.retry_after, microseconds(0));
  EXPECT_EQ(cached_answer.source, source::shadow);
  EXPECT_EQ(lim_.deny_cache_hits("s"), 1u);
  EXPECT_EQ(lim_.stats().denied, 2u);
}

// Verifies that decisions a failure mode made never enter the cache: only the store's do.
TEST(DenyCacheFallback, FallbackDecisionsAreNotKept) {
  sluice::manual_clock clock{seconds(1'700'000'000)};
  auto store = std::make_shared<sluice::test::fake_store>(
      sluice::test::fake_store_options{.time_source = &clock});
  sluice::limiter_options o;
  o.store = store;
  o.time_source = &clock;
  o.breaker.failures_to_open = 1000;
  sluice::limiter lim(o);
  policy p{"d", make(1, seconds(10)), algorithm::sliding_log, sluice::failure_mode::deny};
  p.deny_cache = true;
  ASSERT_TRUE(lim.add_policy(p));
  policy l{"l", make(1, seconds(10)), algorithm::sliding_log, sluice::failure_mode::local};
  l.deny_cache = true;
  ASSERT_TRUE(lim.add_policy(l));
  store->fail(sluice::errc::timeout);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(must(lim.acquire("d", "u")).source, source::fallback_deny);
    EXPECT_EQ(must(lim.acquire("l", "u")).source, source::fallback_local);
  }
  EXPECT_EQ(lim.stats().deny_cache_keys, 0u);
  store->recover();
  EXPECT_TRUE(must(lim.acquire("d", "u")).allowed);
  EXPECT_EQ(must(lim.acquire("d", "u")).source, source::store);
  EXPECT_EQ(must(lim.acquire("d", "u")).source, source::deny_cache);
}

// Verifies that a store denial that completes after a local reset of its key (it was decided
// before the reset) is not kept: the reset's effect is not undone by a late answer.
TEST(DenyCacheFallback, DenialAnsweredAfterALocalResetIsNotKept) {
  sluice::manual_clock clock{seconds(1'700'000'000)};
  auto store = std::make_shared<sluice::test::fake_store>(
      sluice::test::fake_store_options{.time_source = &clock});
  sluice::limiter_options o;
  o.store = store;
  o.time_source = &clock;
  sluice::limiter lim(o);
  policy p{"d", make(1, seconds(10)), algorithm::gcra};
  p.deny_cache = true;
  ASSERT_TRUE(lim.add_policy(p));
  ASSERT_TRUE(must(lim.acquire("d", "u")).allowed);
  store->hold();
  std::optional<decision> late;
  lim.async_acquire("d", "u", 1, [&](result<decision> r) { late = must(r); });
  std::optional<bool> reset;
  lim.async_reset("d", "u", [&](result<void> r) { reset = static_cast<bool>(r); });
  store->hold(false);
  EXPECT_EQ(store->release(), 2u);  // the acquire is decided (denied), then the reset runs
  ASSERT_TRUE(late);
  EXPECT_FALSE(late->allowed);
  EXPECT_EQ(late->source, source::store);
  ASSERT_TRUE(reset && *reset);
  EXPECT_EQ(lim.stats().deny_cache_keys, 0u);
  const decision after = must(lim.acquire("d", "u"));
  EXPECT_TRUE(after.allowed);
  EXPECT_EQ(after.source, source::store);
}

// A limiter whose cache holds at most 6400 keys (100 per shard).
class DenyCacheBounded : public DenyCache {
 protected:
  DenyCacheBounded() : DenyCache(6400) {}

  // Has the store deny `key` under "hot" (3 admitted, the 4th denied) and returns the
  // source of one more acquire.
  source deny(const std::string& key) {
    for (int i = 0; i < 4; ++i) (void)lim_.acquire("hot", key);
    return must(lim_.acquire("hot", key)).source;
  }
};

// Verifies that the cache never holds more than its cap, and that keys whose wait is over
// make room for new ones: after the waits of a full cache end, every new denial is kept.
TEST_F(DenyCacheBounded, HoldsAtMostItsCapAndDropsExpiredKeys) {
  for (int i = 0; i < 10000; ++i) {
    (void)deny("a" + std::to_string(i));
    if (i % 100 == 0) {
      ASSERT_LE(lim_.stats().deny_cache_keys, 6400u);
    }
  }
  EXPECT_LE(lim_.stats().deny_cache_keys, 6400u);
  EXPECT_GT(lim_.stats().deny_cache_keys, 5000u);
  clock_.advance(seconds(11));  // every wait is over
  const std::uint64_t hits = lim_.stats().deny_cache_hits;
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(deny("b" + std::to_string(i)), source::deny_cache);
  // Every one of the new keys is still answered from the cache: none was dropped while
  // expired ones were there to drop instead.
  int kept = 0;
  for (int i = 0; i < 1000; ++i) {
    kept += must(lim_.acquire("hot", "b" + std::to_string(i))).source == source::deny_cache;
  }
  EXPECT_EQ(kept, 1000);
  EXPECT_EQ(lim_.stats().deny_cache_hits, hits + 2000);
  EXPECT_LE(lim_.stats().deny_cache_keys, 6400u);
}

// Verifies that threads racing on one key with the cache on admit exactly the limit, while
// other threads reset and refund other keys (for the sanitizers: the shards' locking).
TEST_F(DenyCache, RacingThreadsAdmitExactlyTheLimit) {
  const policy p = cached("race", make(100, hours(1)), algorithm::sliding_log);
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 1000; ++i) {
        const result<decision> d = lim_.acquire(p, "one");
        if (d && d->allowed) admitted.fetch_add(1);
        if (t < 2 && i % 10 == 0) {
          const std::string other = "other" + std::to_string(i % 7);
          (void)lim_.acquire(p, other, 60);
          if (t == 0) {
            (void)lim_.reset(p, other);
          } else {
            (void)lim_.refund(p, other, 1);
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(admitted.load(), 100);
  EXPECT_GT(lim_.stats().deny_cache_hits, 0u);
}

}  // namespace
