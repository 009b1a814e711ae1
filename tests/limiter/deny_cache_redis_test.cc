// The limiter's deny cache over a real Redis (tests/support starts redis-server): exact under
// racing threads, the wait Redis gave replayed to the microsecond (explicit times), and what
// it cannot see (a reset made by another process) until that wait is over.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sluice/limiter.h"
#include "sluice/redis_store.h"
#include "support/redis_server.h"

#include "support/test_util.h"

namespace sluice {
namespace {

using namespace std::chrono_literals;
using source = decision_source;
using test::must;
using test::redis_server;

std::shared_ptr<redis_store> open_redis(const redis_server& server, std::size_t pool) {
  auto o = parse_redis_uri(server.full_uri());
  EXPECT_TRUE(o);
  o->timeout = 2s;
  o->pool = pool;
  return std::make_shared<redis_store>(*o);
}

policy cached(std::string name, const char* spec, algorithm a) {
  policy p{std::move(name), *parse_limit(spec), a};
  p.deny_cache = true;
  return p;
}

// Verifies that 8 threads × 1,000 acquires on one key, limit 100, with the deny cache on,
// admit exactly 100 on Redis, for every algorithm, most denials answered by the cache; and
// the same for 1,000 async acquires in flight at once.
TEST(DenyCacheOnRedis, RacingThreadsAdmitExactlyTheLimit) {
  redis_server server;
  limiter lim(open_redis(server, 4));
  for (const algorithm a : test::all_algorithms) {
    SCOPED_TRACE(std::string(to_string(a)));
    const policy p = cached("race", "100/1h", a);
    const std::string key = "one:" + std::string(to_string(a));
    const std::uint64_t hits = lim.stats().deny_cache_hits;
    std::atomic<int> admitted{0}, failed{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < 1000; ++i) {
          const result<decision> d = lim.acquire(p, key);
          if (!d) failed.fetch_add(1);
          if (d && d->allowed) admitted.fetch_add(1);
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failed.load(), 0);
    EXPECT_EQ(admitted.load(), 100);
    EXPECT_GT(lim.stats().deny_cache_hits - hits, 7000u);

    const std::string async_key = "async:" + std::string(to_string(a));
    std::atomic<int> async_admitted{0}, answered{0};
    for (int i = 0; i < 1000; ++i) {
      lim.async_acquire(p, async_key, 1, [&](result<decision> d) {
        if (d && d->allowed) async_admitted.fetch_add(1);
        if (answered.fetch_add(1) + 1 == 1000) answered.notify_all();
      });
    }
    // Every call completes by its deadline (2 s), answered or failed.
    for (int n = answered.load(); n < 1000; n = answered.load()) answered.wait(n);
    EXPECT_EQ(async_admitted.load(), 100);
    EXPECT_EQ(must(lim.acquire(p, async_key)).source, source::deny_cache);
  }
}

// Verifies, with explicit times, that the cache denies until exactly the retry_after Redis
// gave and that Redis admits at that moment, for every algorithm.
TEST(DenyCacheOnRedis, DeniesUntilExactlyRetryAfterThenRedisAdmits) {
  redis_server server;
  limiter lim(open_redis(server, 1));
  const std::chrono::microseconds t0 = 1'000'000'000s;
  for (const algorithm a : test::all_algorithms) {
    SCOPED_TRACE(std::string(to_string(a)));
    const policy p = cached("exact", "2/10s", a);
    const std::string key = std::string(to_string(a));
    ASSERT_TRUE(must(lim.acquire(p, key, 1, t0)).allowed);
    ASSERT_TRUE(must(lim.acquire(p, key, 1, t0 + 1s)).allowed);
    const decision denied = must(lim.acquire(p, key, 1, t0 + 2s));
    ASSERT_FALSE(denied.allowed);
    EXPECT_EQ(denied.source, source::store);
    const auto deadline = t0 + 2s + denied.retry_after;
    const decision hit = must(lim.acquire(p, key, 1, deadline - 1us));
    EXPECT_EQ(hit.source, source::deny_cache);
    EXPECT_EQ(hit.retry_after, 1us);
    EXPECT_EQ(hit.remaining, 0);
    const decision after = must(lim.acquire(p, key, 1, deadline));
    EXPECT_TRUE(after.allowed);
    EXPECT_EQ(after.source, source::store);
  }
}

// Verifies that a reset through this limiter clears the cached denial at once, while one
// made through another limiter (another process) is seen only once the cached wait is over.
TEST(DenyCacheOnRedis, OnlyLocalResetsClearIt) {
  redis_server server;
  limiter lim(open_redis(server, 1));
  limiter other(open_redis(server, 1));
  const policy p = cached("r", "1/10s", algorithm::gcra);
  const std::chrono::microseconds t0 = 1'000'000'000s;
  ASSERT_TRUE(must(lim.acquire(p, "u", 1, t0)).allowed);
  ASSERT_EQ(must(lim.acquire(p, "u", 1, t0)).source, source::store);
  must(lim.reset(p, "u"));
  EXPECT_TRUE(must(lim.acquire(p, "u", 1, t0 + 1s)).allowed);

  ASSERT_EQ(must(lim.acquire(p, "u", 1, t0 + 1s)).source, source::store);
  must(other.reset(p, "u"));
  const decision stale = must(lim.acquire(p, "u", 1, t0 + 2s));
  EXPECT_FALSE(stale.allowed);  // Redis would admit: the other limiter's reset is not seen
  EXPECT_EQ(stale.source, source::deny_cache);
  EXPECT_EQ(stale.retry_after, 9s);
  EXPECT_TRUE(must(other.peek(p, "u", 1, t0 + 2s)).allowed);
  EXPECT_TRUE(must(lim.acquire(p, "u", 1, t0 + 11s)).allowed);
}

}  // namespace
}  // namespace sluice
