// Tests of the in-process store: conformance with the pure algorithms, key validation,
// reset, expiry and the incremental sweep, the key cap, the clock, and concurrency.
#include "sluice/memory_store.h"
#include "sluice/open_store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "sluice/algorithms.h"
#include "sluice/clock.h"
#include "sluice/decision.h"
#include "sluice/limit.h"
#include "sluice/store.h"

#include "support/test_util.h"

namespace {

using sluice::algorithm;
using sluice::decision;
using sluice::mode;
using sluice::result;
using std::chrono::hours;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::seconds;

using sluice::test::all_algorithms;
using sluice::test::make;
using sluice::test::must;

sluice::request req(std::string_view key, const sluice::limit& l, algorithm a,
                    std::int64_t cost = 1,
                    std::optional<microseconds> now = std::optional<microseconds>{}) {
  return sluice::request{key, l, a, cost, now};
}

// The pure algorithms behind one interface, holding one key's state for each.
struct pure_key {
  sluice::sliding_log_state log;
  sluice::gcra_state gcra;
  sluice::counter_state counter;

  decision decide(algorithm a, const sluice::limit& l, microseconds now, std::int64_t cost,
                  mode m) {
    switch (a) {
      case algorithm::sliding_log:
        return sluice::sliding_log_decide(log, l, now, cost, m);
      case algorithm::gcra:
        return sluice::gcra_decide(gcra, l, now, cost, m);
      case algorithm::sliding_counter:
        return sluice::sliding_counter_decide(counter, l, now, cost, m);
    }
    return {};
  }
};

result<decision> store_decide(sluice::store& s, const sluice::request& r, mode m) {
  return m == mode::acquire ? s.acquire(r) : s.peek(r);
}

struct table_row {
  std::int64_t now;
  std::int64_t cost;
  mode m;
};

// Verifies that for a fixed table the store's decisions equal the pure functions' exactly.
TEST(MemoryStore, ConformsToPureFunctionsOnTable) {
  const sluice::limit l = make(5, microseconds(1000));
  const std::vector<table_row> rows = {
      {0, 1, mode::acquire},    {0, 2, mode::acquire},      {10, 3, mode::peek},
      {10, 3, mode::acquire},   {20, 2, mode::acquire},     {20, 1, mode::acquire},
      {500, 1, mode::peek},     {999, 1, mode::acquire},    {1000, 1, mode::acquire},
      {1000, 4, mode::acquire}, {1010, 2, mode::acquire},   {1005, 1, mode::acquire},
      {1500, 5, mode::peek},    {1999, 1, mode::acquire},   {2000, 5, mode::acquire},
      {2001, 1, mode::acquire}, {2400, 3, mode::peek},      {2999, 2, mode::acquire},
      {3000, 5, mode::acquire}, {9000, 5, mode::acquire},   {9000, 1, mode::peek},
      {9500, 1, mode::acquire}, {10'100, 2, mode::acquire},
  };
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    sluice::memory_store store;
    pure_key pure;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const table_row& row = rows[i];
      SCOPED_TRACE("row " + std::to_string(i));
      const decision want = pure.decide(a, l, microseconds(row.now), row.cost, row.m);
      const result<decision> got =
          store_decide(store, req("key", l, a, row.cost, microseconds(row.now)), row.m);
      ASSERT_TRUE(got) << got.error().message();
      EXPECT_EQ(*got, want);
    }
  }
}

// Verifies conformance with the pure functions on random sequences over many keys.
TEST(MemoryStore, ConformsToPureFunctionsOnRandomSequences) {
  // Idle gaps are long enough for keys to expire and be swept while others are used.
  std::mt19937_64 rng(2024);
  for (int run = 0; run < 30; ++run) {
    const std::int64_t count = std::uniform_int_distribution<std::int64_t>(1, 20)(rng);
    const std::int64_t window =
        std::uniform_int_distribution<std::int64_t>(count, count * 40 + 10)(rng);
    const sluice::limit l = make(count, microseconds(window));
    sluice::memory_store_options options;
    options.shards = run % 2 == 0 ? 1 : 8;
    sluice::memory_store store(options);
    std::map<std::string, pure_key> pure;
    std::int64_t now = 1'000'000;
    for (int i = 0; i < 2000; ++i) {
      const int r = std::uniform_int_distribution<int>(0, 99)(rng);
      if (r < 50) {
        now += std::uniform_int_distribution<std::int64_t>(0, window / 4)(rng);
      } else if (r < 55) {
        now += std::uniform_int_distribution<std::int64_t>(window, 4 * window)(rng);
      }
      const int k = std::uniform_int_distribution<int>(0, 23)(rng);
      const algorithm a = all_algorithms[k % 3];
      const std::string key = "key:" + std::to_string(k);
      const std::int64_t cost = std::uniform_int_distribution<std::int64_t>(1, count)(rng);
      const mode m =
          std::uniform_int_distribution<int>(0, 3)(rng) == 0 ? mode::peek : mode::acquire;
      const decision want = pure[key].decide(a, l, microseconds(now), cost, m);
      const result<decision> got = store_decide(store, req(key, l, a, cost, microseconds(now)), m);
      ASSERT_TRUE(got) << got.error().message();
      ASSERT_EQ(*got, want) << "run " << run << " step " << i << " key " << key << " now " << now
                            << " cost " << cost << " limit " << sluice::to_string(l) << " "
                            << sluice::to_string(a);
    }
  }
}

// Verifies conformance with the pure functions when one key's requests change their limit.
TEST(MemoryStore, ConformsToPureFunctionsWhenLimitChanges) {
  // As when a policy is edited while its keys hold state.
  const std::vector<sluice::limit> limits = {make(3, microseconds(100)),
                                             make(5, microseconds(1000)), make(2, microseconds(37)),
                                             make(10, seconds(1))};
  std::mt19937_64 rng(7);
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    sluice::memory_store store;
    pure_key pure;
    std::int64_t now = 5'000'000;
    for (int i = 0; i < 3000; ++i) {
      now += std::uniform_int_distribution<std::int64_t>(0, 60)(rng);
      const sluice::limit& l = limits[i / 50 % limits.size()];
      const std::int64_t cost = std::uniform_int_distribution<std::int64_t>(1, l.count)(rng);
      const mode m = i % 4 == 3 ? mode::peek : mode::acquire;
      const decision want = pure.decide(a, l, microseconds(now), cost, m);
      const result<decision> got =
          store_decide(store, req("edited", l, a, cost, microseconds(now)), m);
      ASSERT_TRUE(got) << got.error().message();
      ASSERT_EQ(*got, want) << "step " << i << " now " << now << " cost " << cost << " limit "
                            << sluice::to_string(l);
    }
  }
}

// Verifies that after a key's window is shortened, waiting retry_after is enough.
TEST(MemoryStore, RetryAfterHoldsAfterWindowShrinks) {
  const sluice::limit hourly = make(10, hours(1));
  const sluice::limit per_second = make(10, seconds(1));
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    sluice::memory_store store;
    const microseconds t0 = seconds(1'700'000'000);
    ASSERT_TRUE(must(store.acquire(req("k", hourly, a, 10, t0))).allowed);
    const decision d = must(store.acquire(req("k", per_second, a, 10, t0 + seconds(1))));
    if (d.allowed) continue;
    // gcra keeps the old debt (tat an hour ahead), so only the promise itself is checked.
    const microseconds later = t0 + seconds(1) + d.retry_after;
    EXPECT_TRUE(must(store.acquire(req("k", per_second, a, 10, later))).allowed)
        << "retry_after " << d.retry_after.count() << "us";
  }
}

// Verifies that max_key_length is capped at 65535 bytes whatever the options say.
TEST(MemoryStore, MaxKeyLengthIsCappedAt65535) {
  sluice::memory_store_options options;
  options.max_key_length = 100'000;
  sluice::memory_store store(options);
  const sluice::limit l = make(1, hours(1));
  EXPECT_TRUE(store.acquire(req(std::string(65'535, 'k'), l, algorithm::gcra, 1, seconds(1))));
  const result<decision> d =
      store.acquire(req(std::string(65'536, 'k'), l, algorithm::gcra, 1, seconds(1)));
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, sluice::errc::invalid_key);
}

// Verifies that empty and oversized keys are rejected by every operation with invalid_key.
TEST(MemoryStore, RejectsInvalidKeys) {
  sluice::memory_store_options options;
  options.max_key_length = 8;
  sluice::memory_store store(options);
  const sluice::limit l = make(3, seconds(1));
  for (const std::string_view key : {std::string_view(""), std::string_view("123456789")}) {
    SCOPED_TRACE("key length " + std::to_string(key.size()));
    const result<decision> a = store.acquire(req(key, l, algorithm::gcra, 1, seconds(1)));
    ASSERT_FALSE(a);
    EXPECT_EQ(a.error().code, sluice::errc::invalid_key);
    EXPECT_FALSE(a.error().detail.empty());
    const result<decision> p = store.peek(req(key, l, algorithm::gcra, 1, seconds(1)));
    ASSERT_FALSE(p);
    EXPECT_EQ(p.error().code, sluice::errc::invalid_key);
    const result<void> r = store.reset(key);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, sluice::errc::invalid_key);
  }
  EXPECT_TRUE(store.acquire(req("12345678", l, algorithm::gcra, 1, seconds(1))));
  EXPECT_EQ(store.stats().keys, 1u);
}

// Verifies that bad costs and times give check_request's errors and create no key.
TEST(MemoryStore, RejectsBadCostAndTime) {
  sluice::memory_store store;
  const sluice::limit l = make(3, seconds(1));
  struct bad {
    std::int64_t cost;
    microseconds now;
    sluice::errc expected;
  };
  const std::vector<bad> cases = {
      {0, seconds(1), sluice::errc::invalid_cost},
      {-2, seconds(1), sluice::errc::invalid_cost},
      {4, seconds(1), sluice::errc::cost_exceeds_limit},
      {1, microseconds(-1), sluice::errc::invalid_time},
      {1, sluice::max_time + microseconds(1), sluice::errc::invalid_time},
  };
  for (const algorithm a : all_algorithms) {
    for (const auto& c : cases) {
      SCOPED_TRACE(std::string(sluice::to_string(a)) + " cost " + std::to_string(c.cost) + " now " +
                   std::to_string(c.now.count()));
      const result<decision> acq = store.acquire(req("k", l, a, c.cost, c.now));
      ASSERT_FALSE(acq);
      EXPECT_EQ(acq.error().code, c.expected);
      const result<decision> pk = store.peek(req("k", l, a, c.cost, c.now));
      ASSERT_FALSE(pk);
      EXPECT_EQ(pk.error().code, c.expected);
    }
  }
  EXPECT_EQ(store.stats().keys, 0u);
}

// Verifies that a limit that never went through make_limit is an error, not a crash.
TEST(MemoryStore, RejectsUnvalidatedLimit) {
  sluice::memory_store store;
  const std::vector<sluice::limit> bad = {
      sluice::limit{}, sluice::limit{0, seconds(1)}, sluice::limit{5, microseconds(0)},
      sluice::limit{10, microseconds(5)}, sluice::limit{1, sluice::max_window + hours(1)}};
  for (const algorithm a : all_algorithms) {
    for (const sluice::limit& l : bad) {
      SCOPED_TRACE(std::string(sluice::to_string(a)) + " " + std::to_string(l.count) + " per " +
                   std::to_string(l.window.count()) + "us");
      const result<decision> d = store.acquire(req("k", l, a, 1, seconds(1)));
      ASSERT_FALSE(d);
      EXPECT_EQ(d.error().code, sluice::errc::invalid_limit);
      EXPECT_FALSE(store.peek(req("k", l, a, 1, seconds(1))));
    }
  }
  EXPECT_EQ(store.stats().keys, 0u);
}

// Verifies that keys are binary-safe: embedded NUL bytes make keys distinct from prefixes.
TEST(MemoryStore, KeysAreBinarySafe) {
  sluice::memory_store store;
  const sluice::limit l = make(1, hours(1));
  const std::string with_nul("a\0b", 3);
  const std::string with_nul2("a\0c", 3);
  const std::string trailing_nul("a\0", 2);
  const std::string high("\xff\xfe", 2);
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    ASSERT_TRUE(store.reset("a"));
    for (const std::string& k : {with_nul, with_nul2, trailing_nul, high})
      ASSERT_TRUE(store.reset(k));
    EXPECT_TRUE(must(store.acquire(req("a", l, a, 1, seconds(1)))).allowed);
    EXPECT_TRUE(must(store.acquire(req(with_nul, l, a, 1, seconds(1)))).allowed);
    EXPECT_TRUE(must(store.acquire(req(with_nul2, l, a, 1, seconds(1)))).allowed);
    EXPECT_TRUE(must(store.acquire(req(trailing_nul, l, a, 1, seconds(1)))).allowed);
    EXPECT_TRUE(must(store.acquire(req(high, l, a, 1, seconds(1)))).allowed);
    EXPECT_FALSE(must(store.acquire(req(with_nul, l, a, 1, seconds(1)))).allowed);
    EXPECT_FALSE(must(store.acquire(req(std::string("a\0b", 3), l, a, 1, seconds(1)))).allowed);
    EXPECT_FALSE(must(store.acquire(req("a", l, a, 1, seconds(1)))).allowed);
  }
}

// Verifies that different keys have independent limits.
TEST(MemoryStore, KeysAreIndependent) {
  sluice::memory_store store;
  const sluice::limit l = make(2, hours(1));
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    const std::string k1 = "user:1:" + std::string(sluice::to_string(a));
    const std::string k2 = "user:2:" + std::string(sluice::to_string(a));
    EXPECT_TRUE(must(store.acquire(req(k1, l, a, 2, seconds(5)))).allowed);
    EXPECT_FALSE(must(store.acquire(req(k1, l, a, 1, seconds(5)))).allowed);
    const decision other = must(store.acquire(req(k2, l, a, 1, seconds(5))));
    EXPECT_TRUE(other.allowed);
    EXPECT_EQ(other.remaining, 1);
  }
}

// Verifies that reset forgets one key's state entirely and leaves other keys alone.
TEST(MemoryStore, ResetForgetsTheKey) {
  sluice::memory_store store;
  const sluice::limit l = make(3, hours(1));
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    const std::string key = "victim:" + std::string(sluice::to_string(a));
    const std::string bystander = "bystander:" + std::string(sluice::to_string(a));
    ASSERT_TRUE(must(store.acquire(req(key, l, a, 3, seconds(10)))).allowed);
    ASSERT_TRUE(must(store.acquire(req(bystander, l, a, 3, seconds(10)))).allowed);
    const std::uint64_t keys_before = store.stats().keys;
    ASSERT_TRUE(store.reset(key));
    EXPECT_EQ(store.stats().keys, keys_before - 1);
    pure_key fresh;
    EXPECT_EQ(must(store.peek(req(key, l, a, 3, seconds(11)))),
              fresh.decide(a, l, seconds(11), 3, mode::peek));
    EXPECT_EQ(must(store.acquire(req(key, l, a, 3, seconds(11)))),
              fresh.decide(a, l, seconds(11), 3, mode::acquire));
    EXPECT_FALSE(must(store.acquire(req(bystander, l, a, 1, seconds(11)))).allowed);
  }
}

// Verifies that resetting a key the store does not hold succeeds and changes nothing.
TEST(MemoryStore, ResetOfUnknownKeySucceeds) {
  sluice::memory_store store;
  EXPECT_TRUE(store.reset("never-seen"));
  ASSERT_TRUE(store.acquire(req("held", make(1, hours(1)), algorithm::gcra, 1, seconds(1))));
  EXPECT_TRUE(store.reset("never-seen-either"));
  EXPECT_EQ(store.stats().keys, 1u);
}

// Verifies that peeking spends nothing: the following acquire sees the full limit.
TEST(MemoryStore, PeekSpendsNothing) {
  sluice::memory_store store;
  const sluice::limit l = make(2, hours(1));
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    const std::string key = "peek:" + std::string(sluice::to_string(a));
    for (int i = 0; i < 5; ++i) {
      const decision p = must(store.peek(req(key, l, a, 2, seconds(1))));
      EXPECT_TRUE(p.allowed);
      EXPECT_EQ(p.remaining, 2);
    }
    const decision d = must(store.acquire(req(key, l, a, 2, seconds(1))));
    EXPECT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 0);
  }
}

// Verifies that purge_expired drops a key only once its expiry has passed, and counts it.
TEST(MemoryStore, PurgeExpiredDropsKeysPastExpiry) {
  const sluice::limit l = make(5, seconds(1));
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    sluice::memory_store store;
    const microseconds t0 = seconds(100);
    ASSERT_TRUE(must(store.acquire(req("k", l, a, 2, t0))).allowed);
    pure_key p;
    p.decide(a, l, t0, 2, mode::acquire);
    const microseconds e = a == algorithm::sliding_log ? sluice::expiry(p.log, l)
                           : a == algorithm::gcra      ? sluice::expiry(p.gcra)
                                                       : sluice::expiry(p.counter, l);
    ASSERT_GT(e, t0);
    EXPECT_EQ(store.purge_expired(e - microseconds(1)), 0u);
    EXPECT_EQ(store.stats().keys, 1u);
    EXPECT_EQ(store.stats().expired, 0u);
    EXPECT_EQ(store.purge_expired(e + microseconds(1)), 1u);
    EXPECT_EQ(store.stats().keys, 0u);
    EXPECT_EQ(store.stats().expired, 1u);
    EXPECT_EQ(store.purge_expired(e + seconds(10)), 0u);
    EXPECT_EQ(store.stats().expired, 1u);
  }
}

// Verifies that purge_expired drops every expired key at once and keeps every live one.
TEST(MemoryStore, PurgeExpiredDropsEveryExpiredKeyAndNoLiveKey) {
  sluice::memory_store_options options;
  options.shards = 1;  // one table, so that many keys share probe runs
  sluice::memory_store store(options);
  const sluice::limit short_l = make(5, seconds(1));
  const sluice::limit long_l = make(1, hours(1));
  for (int i = 0; i < 10'000; ++i) {
    const bool live = i % 2 == 0;
    ASSERT_TRUE(store.acquire(req("k" + std::to_string(i), live ? long_l : short_l,
                                  all_algorithms[i % 3], 1, microseconds(0))));
  }
  ASSERT_EQ(store.stats().keys, 10'000u);
  EXPECT_EQ(store.purge_expired(seconds(10)), 5'000u);
  EXPECT_EQ(store.stats().keys, 5'000u);
  EXPECT_EQ(store.stats().expired, 5'000u);
  for (int i = 0; i < 10'000; i += 2) {
    ASSERT_FALSE(must(store.peek(req("k" + std::to_string(i), long_l, all_algorithms[i % 3], 1,
                                     seconds(10))))
                     .allowed)
        << i;
  }
  EXPECT_EQ(store.purge_expired(hours(2)), 5'000u);
  EXPECT_EQ(store.stats().keys, 0u);
  EXPECT_EQ(store.stats().expired, 10'000u);
}

// Verifies that idle keys disappear as new keys come in, without any explicit purge: every
// insert sweeps a few slots, and a table about to grow drops its expired keys first, so the
// table never grows for keys that have expired.
TEST(MemoryStore, IdleKeysAreDroppedAsNewKeysArrive) {
  sluice::memory_store store;  // 64 shards
  const sluice::limit l = make(5, seconds(1));
  for (int i = 0; i < 10'000; ++i) {
    ASSERT_TRUE(store.acquire(
        req("idle:" + std::to_string(i), l, all_algorithms[i % 3], 1, microseconds(0))));
  }
  ASSERT_EQ(store.stats().keys, 10'000u);
  ASSERT_EQ(store.stats().expired, 0u);
  // 20000 new keys at t = 10 s, when every idle key has expired.
  for (int k = 0; k < 20'000; ++k) {
    ASSERT_TRUE(
        store.acquire(req("busy:" + std::to_string(k), l, algorithm::gcra, 1, seconds(10))));
  }
  const sluice::memory_store_stats st = store.stats();
  EXPECT_LE(st.keys, 20'000u + 100u);
  EXPECT_GE(st.expired, 9'900u);
  EXPECT_EQ(st.keys + st.expired, 30'000u);
  EXPECT_EQ(st.evicted, 0u);
  // Whatever is left of the idle keys, an explicit purge finds.
  store.purge_expired(seconds(10));
  EXPECT_EQ(store.stats().keys, 20'000u);
  EXPECT_EQ(store.stats().expired, 10'000u);
}

// Verifies that the key cap holds (split across shards, rounded up) by evicting live keys.
TEST(MemoryStore, MaxKeysCapEvictsWithoutErrors) {
  sluice::memory_store_options options;
  options.max_keys = 1000;  // 64 shards: at most ceil(1000 / 64) = 16 keys each
  sluice::memory_store store(options);
  const sluice::limit l = make(10, hours(1));
  for (int i = 0; i < 5000; ++i) {
    const result<decision> d =
        store.acquire(req("live:" + std::to_string(i), l, all_algorithms[i % 3], 1, seconds(1)));
    ASSERT_TRUE(d) << i << ": " << d.error().message();
    EXPECT_TRUE(d->allowed) << i;
  }
  const sluice::memory_store_stats st = store.stats();
  EXPECT_LE(st.keys, 16u * 64u);
  EXPECT_GE(st.keys, 900u);
  EXPECT_EQ(st.expired, 0u);
  EXPECT_EQ(st.evicted, 5000u - st.keys);
}

// Verifies that at the cap expired keys go first, then the live key closest to expiring.
TEST(MemoryStore, MaxKeysPrefersExpiredThenSoonestExpiring) {
  sluice::memory_store_options options;
  options.shards = 1;
  options.max_keys = 4;
  sluice::memory_store store(options);
  const sluice::limit short_l = make(1, milliseconds(1));
  const sluice::limit hour = make(1, hours(1));
  const sluice::limit two_hours = make(1, hours(2));
  const algorithm a = algorithm::sliding_log;
  ASSERT_TRUE(store.acquire(req("short1", short_l, a, 1, microseconds(0))));
  ASSERT_TRUE(store.acquire(req("short2", short_l, a, 1, microseconds(0))));
  ASSERT_TRUE(store.acquire(req("hour", hour, a, 1, microseconds(0))));
  ASSERT_TRUE(store.acquire(req("two_hours", two_hours, a, 1, microseconds(0))));
  ASSERT_EQ(store.stats().keys, 4u);

  ASSERT_TRUE(store.acquire(req("new1", two_hours, a, 1, seconds(1))));
  ASSERT_TRUE(store.acquire(req("new2", two_hours, a, 1, seconds(1))));
  sluice::memory_store_stats st = store.stats();
  EXPECT_EQ(st.keys, 4u);
  EXPECT_EQ(st.expired, 2u);
  EXPECT_EQ(st.evicted, 0u);
  EXPECT_FALSE(must(store.peek(req("hour", hour, a, 1, seconds(1)))).allowed);
  EXPECT_FALSE(must(store.peek(req("two_hours", two_hours, a, 1, seconds(1)))).allowed);

  ASSERT_TRUE(store.acquire(req("new3", two_hours, a, 1, seconds(1))));
  st = store.stats();
  EXPECT_EQ(st.keys, 4u);
  EXPECT_EQ(st.evicted, 1u);
  EXPECT_TRUE(must(store.peek(req("hour", hour, a, 1, seconds(1)))).allowed);  // evicted
  EXPECT_FALSE(must(store.peek(req("two_hours", two_hours, a, 1, seconds(1)))).allowed);
  EXPECT_FALSE(must(store.peek(req("new1", two_hours, a, 1, seconds(1)))).allowed);
}

// Verifies that requests without `now` read the store's time source, here a manual clock.
TEST(MemoryStore, UsesTimeSourceWhenNowIsEmpty) {
  sluice::manual_clock clock{seconds(1000)};
  sluice::memory_store_options options;
  options.time_source = &clock;
  sluice::memory_store store(options);
  const sluice::limit l = make(1, seconds(1));
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    clock.set(seconds(1000));
    const std::string key = "clocked:" + std::string(sluice::to_string(a));
    EXPECT_TRUE(must(store.acquire(req(key, l, a))).allowed);
    const decision denied = must(store.acquire(req(key, l, a)));
    EXPECT_FALSE(denied.allowed);
    EXPECT_GT(denied.retry_after, microseconds(0));
    clock.advance(denied.retry_after - microseconds(1));
    EXPECT_FALSE(must(store.acquire(req(key, l, a))).allowed);
    clock.advance(microseconds(1));
    EXPECT_TRUE(must(store.acquire(req(key, l, a))).allowed);
    // An explicit now overrides the clock.
    EXPECT_TRUE(must(store.peek(req(key, l, a, 1, seconds(5000)))).allowed);
  }
}

// Verifies that a key used with another algorithm starts fresh for it and never crashes.
TEST(MemoryStore, ChangingAlgorithmStartsFresh) {
  sluice::memory_store store;
  const sluice::limit l = make(3, hours(1));
  const microseconds now = seconds(50);
  for (const algorithm first : all_algorithms) {
    for (const algorithm second : all_algorithms) {
      if (first == second) continue;
      SCOPED_TRACE(std::string(sluice::to_string(first)) + " then " +
                   std::string(sluice::to_string(second)));
      const std::string key = "switch";
      ASSERT_TRUE(store.reset(key));
      ASSERT_TRUE(must(store.acquire(req(key, l, first, 3, now))).allowed);
      ASSERT_FALSE(must(store.acquire(req(key, l, first, 1, now))).allowed);
      pure_key fresh;
      EXPECT_EQ(must(store.peek(req(key, l, second, 2, now))),
                fresh.decide(second, l, now, 2, mode::peek));
      EXPECT_EQ(must(store.acquire(req(key, l, second, 2, now))),
                fresh.decide(second, l, now, 2, mode::acquire));
      // And back again: a sane decision whatever the store kept.
      const decision back = must(store.acquire(req(key, l, first, 1, now)));
      EXPECT_EQ(back.limit, 3);
      EXPECT_GE(back.remaining, 0);
      EXPECT_LE(back.remaining, 3);
    }
  }
}

// Verifies that the same key may be used with a different limit without crashing.
TEST(MemoryStore, ChangingLimitIsSane) {
  sluice::memory_store store;
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    const std::string key = "relimit:" + std::string(sluice::to_string(a));
    ASSERT_TRUE(must(store.acquire(req(key, make(10, hours(1)), a, 10, seconds(1)))).allowed);
    for (const sluice::limit l : {make(3, seconds(1)), make(100, hours(24)), make(1, hours(1))}) {
      const decision d = must(store.acquire(req(key, l, a, 1, seconds(2))));
      EXPECT_EQ(d.limit, l.count);
      EXPECT_GE(d.remaining, 0);
      EXPECT_LE(d.remaining, l.count);
      EXPECT_GE(d.retry_after, microseconds(0));
    }
  }
}

// Verifies that threads racing on one key admit exactly the limit, for every algorithm.
TEST(MemoryStore, ConcurrentAcquiresOnOneKeyAdmitExactlyTheLimit) {
  const sluice::limit l = make(100, hours(1));
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    sluice::memory_store store;
    std::atomic<int> admitted{0};
    std::atomic<int> errors{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < 1000; ++i) {
          const result<decision> d = store.acquire(req("hot", l, a, 1, seconds(7)));
          if (!d) {
            ++errors;
          } else if (d->allowed) {
            ++admitted;
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(errors.load(), 0);
    EXPECT_EQ(admitted.load(), 100);
    EXPECT_EQ(store.stats().keys, 1u);
  }
}

// Verifies that threads on different keys each get their own full limit.
TEST(MemoryStore, ConcurrentAcquiresOnDifferentKeysEachGetTheLimit) {
  const sluice::limit l = make(100, hours(1));
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    sluice::memory_store store;
    std::vector<int> admitted(4, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        const std::string key = "thread:" + std::to_string(t);
        for (int i = 0; i < 1000; ++i) {
          const result<decision> d = store.acquire(req(key, l, a, 1, seconds(7)));
          if (d && d->allowed) ++admitted[static_cast<std::size_t>(t)];
        }
      });
    }
    for (auto& th : threads) th.join();
    for (int t = 0; t < 4; ++t) EXPECT_EQ(admitted[static_cast<std::size_t>(t)], 100) << t;
    EXPECT_EQ(store.stats().keys, 4u);
  }
}

// Verifies that the async forms complete exactly once, inline, with acquire's decision.
TEST(MemoryStore, AsyncFormsCompleteOnceInline) {
  sluice::memory_store store;
  const sluice::limit l = make(2, hours(1));
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(std::string(sluice::to_string(a)));
    const std::string sync_key = "sync:" + std::string(sluice::to_string(a));
    const std::string async_key = "async:" + std::string(sluice::to_string(a));
    for (int i = 0; i < 4; ++i) {
      const decision want = must(store.acquire(req(sync_key, l, a, 1, seconds(3))));
      int calls = 0;
      decision got;
      store.async_acquire(req(async_key, l, a, 1, seconds(3)), [&](result<decision> r) {
        ++calls;
        ASSERT_TRUE(r) << r.error().message();
        got = *r;
      });
      EXPECT_EQ(calls, 1);
      EXPECT_EQ(got, want);
    }
    int calls = 0;
    store.async_reset(async_key, [&](result<void> r) {
      ++calls;
      EXPECT_TRUE(r);
    });
    EXPECT_EQ(calls, 1);
    store.async_peek(req(async_key, l, a, 2, seconds(3)), [&](result<decision> r) {
      ++calls;
      ASSERT_TRUE(r);
      EXPECT_TRUE(r->allowed);
    });
    EXPECT_EQ(calls, 2);
  }
}

// Verifies that describe names the memory scheme.
TEST(MemoryStore, DescribesItselfAsMemoryUri) {
  sluice::memory_store store;
  EXPECT_EQ(store.describe().rfind("memory://", 0), 0u) << store.describe();
}

// Verifies that open_store builds a memory store from its URI, applying the query options.
// Verifies that acquire_all charges every key when all are allowed, and none when one is
// denied, answering each request as a peek would then.
TEST(MemoryStoreAcquireAll, AllOrNothing) {
  for (const algorithm a : all_algorithms) {
    sluice::memory_store store;
    const auto user = must(sluice::parse_limit("3/1m"));
    const auto ip = must(sluice::parse_limit("4/1m"));
    const microseconds t0 = seconds(1000);
    std::vector<sluice::request> both = {req("user", user, a, 1, t0), req("ip", ip, a, 1, t0)};
    for (int i = 0; i < 3; ++i) {
      const auto ds = must(store.acquire_all(both));
      ASSERT_EQ(ds.size(), 2u);
      EXPECT_TRUE(ds[0].allowed && ds[1].allowed) << to_string(a) << " " << i;
      EXPECT_EQ(ds[0].remaining, 2 - i);
      EXPECT_EQ(ds[1].remaining, 3 - i);
    }
    // The user's limit is spent: the pair is denied, and the IP is not charged.
    const auto denied = must(store.acquire_all(both));
    EXPECT_FALSE(denied[0].allowed) << to_string(a);
    EXPECT_GT(denied[0].retry_after.count(), 0);
    EXPECT_TRUE(denied[1].allowed);  // alone it would be admitted...
    EXPECT_EQ(must(store.peek(req("ip", ip, a, 1, t0))).remaining, 1);  // ...but was not charged
    EXPECT_EQ(denied[1], must(store.peek(req("ip", ip, a, 1, t0))));
  }
}

// Verifies that requests on one key are merged (costs added, one decision for each), that a
// cost of 0 only checks, and that mismatched or oversized requests are errors that charge
// nothing.
TEST(MemoryStoreAcquireAll, MergesKeysAndChecks) {
  sluice::memory_store store;
  const auto l = must(sluice::parse_limit("5/1m"));
  const microseconds t0 = seconds(50);
  const auto ds = must(store.acquire_all(std::vector<sluice::request>{
      req("k", l, algorithm::sliding_log, 2, t0), req("other", l, algorithm::gcra, 0, t0),
      req("k", l, algorithm::sliding_log, 1, t0)}));
  ASSERT_EQ(ds.size(), 3u);
  EXPECT_EQ(ds[0], ds[2]);
  EXPECT_EQ(ds[0].remaining, 2);  // 2 + 1 spent together
  EXPECT_TRUE(ds[1].allowed);
  EXPECT_EQ(must(store.peek(req("other", l, algorithm::gcra, 1, t0))).remaining, 5);  // checked

  auto mismatch = store.acquire_all(std::vector<sluice::request>{
      req("k", l, algorithm::sliding_log, 1, t0), req("k", l, algorithm::gcra, 1, t0)});
  ASSERT_FALSE(mismatch);
  EXPECT_EQ(mismatch.error().code, sluice::errc::invalid_key);
  auto too_much = store.acquire_all(std::vector<sluice::request>{
      req("n", l, algorithm::sliding_log, 4, t0), req("n", l, algorithm::sliding_log, 2, t0)});
  ASSERT_FALSE(too_much);
  EXPECT_EQ(too_much.error().code, sluice::errc::cost_exceeds_limit);
  auto overflow = store.acquire_all(std::vector<sluice::request>{
      req("n", l, algorithm::sliding_log, 4, t0),
      req("n", l, algorithm::sliding_log, std::numeric_limits<std::int64_t>::max(), t0)});
  ASSERT_FALSE(overflow);
  EXPECT_EQ(overflow.error().code, sluice::errc::cost_exceeds_limit);
  auto bad_key = store.acquire_all(std::vector<sluice::request>{
      req("m", l, algorithm::sliding_log, 1, t0), req("", l, algorithm::sliding_log, 1, t0)});
  ASSERT_FALSE(bad_key);
  EXPECT_EQ(bad_key.error().code, sluice::errc::invalid_key);
  std::vector<sluice::request> many(sluice::max_requests_per_call + 1,
                                    req("x", l, algorithm::sliding_log, 0, t0));
  EXPECT_FALSE(store.acquire_all(many));
  // None of the refused calls charged anything.
  EXPECT_EQ(must(store.peek(req("n", l, algorithm::sliding_log, 1, t0))).remaining, 5);
  EXPECT_EQ(must(store.peek(req("m", l, algorithm::sliding_log, 1, t0))).remaining, 5);
  EXPECT_EQ(must(store.peek(req("k", l, algorithm::sliding_log, 1, t0))).remaining, 2);
}

// Verifies that racing acquire_all calls over shared keys (users sharing IPs) never admit
// more than any limit, and that every admitted call is counted in both of its keys.
TEST(MemoryStoreAcquireAll, RacingCallsKeepEveryLimit) {
  sluice::memory_store store(sluice::memory_store_options{.shards = 4});
  const auto per_user = must(sluice::parse_limit("100/1m"));
  const auto per_ip = must(sluice::parse_limit("150/1m"));
  const microseconds t0 = seconds(7);
  for (const algorithm a : all_algorithms) {
    std::atomic<int> next{0};
    std::vector<std::atomic<int>> by_user(10), by_ip(2);
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&] {
        for (int i; (i = next.fetch_add(1)) < 1000;) {
          const int u = i % 10;
          const std::string user = std::string(to_string(a)) + ":u" + std::to_string(u);
          const std::string ip = std::string(to_string(a)) + ":ip" + std::to_string(u % 2);
          const auto ds = must(store.acquire_all(std::vector<sluice::request>{
              req(user, per_user, a, 1, t0), req(ip, per_ip, a, 1, t0)}));
          if (ds[0].allowed && ds[1].allowed) {
            ++by_user[u];
            ++by_ip[u % 2];
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    int admitted = 0;
    for (int ip = 0; ip < 2; ++ip) {
      EXPECT_EQ(by_ip[ip].load(), 150) << to_string(a);  // 500 asked per IP: exactly its limit
      const std::string key = std::string(to_string(a)) + ":ip" + std::to_string(ip);
      EXPECT_EQ(must(store.peek(req(key, per_ip, a, 1, t0))).remaining, 0);
      admitted += by_ip[ip].load();
    }
    int per_users = 0;
    for (int u = 0; u < 10; ++u) {
      EXPECT_LE(by_user[u].load(), 100);
      const std::string key = std::string(to_string(a)) + ":u" + std::to_string(u);
      // Each user's count is exactly what was admitted for it: denials changed nothing.
      EXPECT_EQ(must(store.peek(req(key, per_user, a, 1, t0))).remaining, 100 - by_user[u].load())
          << to_string(a) << " user " << u;
      per_users += by_user[u].load();
    }
    EXPECT_EQ(per_users, admitted);
  }
}

// Verifies that refund gives back what was spent, for every algorithm, never more than the
// full limit, and answers the key's state afterwards.
TEST(MemoryStoreRefund, GivesBackAtMostWhatWasSpent) {
  for (const algorithm a : all_algorithms) {
    sluice::memory_store store;
    const auto l = must(sluice::parse_limit("10/1m"));
    const microseconds t0 = seconds(3600);
    ASSERT_TRUE(must(store.acquire(req("k", l, a, 6, t0))).allowed);
    const decision after = must(store.refund(req("k", l, a, 4, t0 + seconds(1))));
    EXPECT_TRUE(after.allowed) << to_string(a);
    EXPECT_EQ(after.remaining, 8) << to_string(a);
    // More than is spent: the key is back to its full limit and no further.
    EXPECT_EQ(must(store.refund(req("k", l, a, 10, t0 + seconds(1)))).remaining, 10);
    EXPECT_EQ(must(store.acquire(req("k", l, a, 10, t0 + seconds(1)))).remaining, 0);
    EXPECT_FALSE(must(store.acquire(req("k", l, a, 1, t0 + seconds(1)))).allowed);
    // A key nothing was spent on, and one of another algorithm, are left alone.
    EXPECT_EQ(must(store.refund(req("fresh", l, a, 3, t0))).remaining, 10);
    const algorithm other = a == algorithm::gcra ? algorithm::sliding_log : algorithm::gcra;
    EXPECT_EQ(must(store.refund(req("k", l, other, 3, t0 + seconds(1)))).remaining, 10);
    EXPECT_FALSE(must(store.acquire(req("k", l, a, 1, t0 + seconds(1)))).allowed);
    // Bad input is an error, as for acquire.
    EXPECT_FALSE(store.refund(req("k", l, a, 0, t0)));
    EXPECT_FALSE(store.refund(req("", l, a, 1, t0)));
  }
}

TEST(OpenStore, OpensMemoryStoreWithOptions) {
  sluice::manual_clock clock{seconds(10)};
  const result<std::shared_ptr<sluice::store>> s =
      sluice::open_store("memory://?shards=1&max_keys=10&max_key_length=4", clock);
  ASSERT_TRUE(s) << s.error().message();
  auto* mem = dynamic_cast<sluice::memory_store*>(s->get());
  ASSERT_NE(mem, nullptr);
  const sluice::limit l = make(1, hours(1));
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(mem->acquire(req(std::to_string(1000 + i), l, algorithm::gcra)));
  }
  EXPECT_EQ(mem->stats().keys, 10u);
  EXPECT_EQ(mem->stats().evicted, 40u);
  const result<decision> long_key = mem->acquire(req("12345", l, algorithm::gcra));
  ASSERT_FALSE(long_key);
  EXPECT_EQ(long_key.error().code, sluice::errc::invalid_key);
  // The clock given to open_store is the store's time source.
  EXPECT_FALSE(must(mem->acquire(req("1049", l, algorithm::gcra))).allowed);
  clock.advance(hours(1));
  EXPECT_TRUE(must(mem->acquire(req("1049", l, algorithm::gcra))).allowed);
}

// Verifies that plain memory:// opens with defaults.
TEST(OpenStore, OpensPlainMemoryStore) {
  const result<std::shared_ptr<sluice::store>> s = sluice::open_store("memory://");
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_NE(dynamic_cast<sluice::memory_store*>(s->get()), nullptr);
}

// Verifies that malformed store URIs are rejected with invalid_store_uri and a detail.
TEST(OpenStore, RejectsMalformedUris) {
  for (const std::string_view uri :
       {"", "memory", "memory://?shards=abc", "memory://?shards=", "memory://?max_keys=-1"}) {
    SCOPED_TRACE(uri);
    const result<std::shared_ptr<sluice::store>> s = sluice::open_store(uri);
    ASSERT_FALSE(s);
    EXPECT_EQ(s.error().code, sluice::errc::invalid_store_uri);
    EXPECT_FALSE(s.error().detail.empty());
  }
}

}  // namespace
