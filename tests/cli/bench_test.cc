#include "cli/bench.h"

#include <gtest/gtest.h>

#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "sluice/limiter.h"
#include "sluice/memory_store.h"

namespace sluice::cli {
namespace {

// Verifies that the load generator counts every decision once: over 3 keys with a limit of
// 5 per hour, exactly 15 are admitted however many calls the run makes.
TEST(Bench, CountsEveryDecisionOnce) {
  memory_store store;
  bench_options o;
  o.limit = limit{5, std::chrono::hours(1)};
  o.algorithm = algorithm::gcra;
  o.keys = 3;
  o.seconds = std::chrono::duration<double>(0.2);
  o.inflight = 8;
  const bench_report r = run_bench(store, o);
  EXPECT_EQ(r.allowed, 15u);
  EXPECT_GT(r.decisions, 15u);
  EXPECT_EQ(r.allowed + r.denied, r.decisions);
  EXPECT_EQ(r.errors + r.timeouts, 0u);
  EXPECT_GT(r.per_second, 0.0);
  EXPECT_LE(r.p50_us, r.p99_us);
  const auto j = bench_json(r);
  EXPECT_EQ(j["decisions"].get<std::uint64_t>(), r.decisions);
}

// Verifies that with several generator threads each key belongs to exactly one thread, every
// key is used, and the report sums the threads: 7 keys over 3 threads, 5 per hour each.
TEST(Bench, ThreadsShareTheKeysOutAndSumTheirCalls) {
  memory_store store;
  bench_options o;
  o.limit = limit{5, std::chrono::hours(1)};
  o.algorithm = algorithm::sliding_counter;
  o.keys = 7;
  o.threads = 3;
  o.seconds = std::chrono::duration<double>(0.2);
  o.inflight = 4;
  const bench_report r = run_bench(store, o);
  EXPECT_EQ(r.allowed, 35u);
  EXPECT_EQ(r.allowed + r.denied, r.decisions);
  EXPECT_EQ(r.errors + r.timeouts, 0u);

  std::mutex mu;
  std::map<std::size_t, std::set<std::thread::id>> callers;  // key -> threads that called it
  std::uint64_t calls = 0;
  const bench_report counted = run_load(o, [&](std::size_t key, call_token t) {
    {
      const std::lock_guard lock(mu);
      callers[key].insert(std::this_thread::get_id());
      ++calls;
    }
    t.complete(call_outcome::allowed);
  });
  EXPECT_EQ(counted.decisions, calls);
  ASSERT_EQ(callers.size(), 7u);
  std::set<std::thread::id> threads;
  for (const auto& [key, ids] : callers) {
    EXPECT_EQ(ids.size(), 1u) << "key " << key;
    threads.insert(ids.begin(), ids.end());
  }
  EXPECT_EQ(threads.size(), 3u);
}

// Verifies that the limiter's load (`sluice bench --limiter`, `--deny-cache`) admits exactly
// the limit on the same store keys as the store's load, and that with the deny cache on the
// repeated denials are answered by it.
TEST(Bench, LimiterLoadWithAndWithoutTheDenyCache) {
  for (const bool deny_cache : {false, true}) {
    SCOPED_TRACE(deny_cache);
    auto store = std::make_shared<memory_store>();
    limiter lim(store);
    bench_options o;
    o.limit = limit{5, std::chrono::hours(1)};
    o.keys = 3;
    o.seconds = std::chrono::duration<double>(0.1);
    o.inflight = 8;
    const bench_report r = run_limiter_bench(lim, o, deny_cache);
    EXPECT_EQ(r.allowed, 15u);
    EXPECT_GT(r.denied, 15u);
    EXPECT_EQ(r.errors + r.timeouts, 0u);
    EXPECT_EQ(store->peek({"bench:2", o.limit, o.algorithm, 1, {}})->remaining, 0);
    ASSERT_NE(lim.find_policy("bench"), nullptr);
    EXPECT_EQ(lim.find_policy("bench")->deny_cache, deny_cache);
    EXPECT_EQ(lim.stats().deny_cache_hits > 0, deny_cache);
  }
}

}  // namespace
}  // namespace sluice::cli
