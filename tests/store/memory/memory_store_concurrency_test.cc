// Tests of the memory store's concurrency (docs/DESIGN.md, "The memory store"): decisions
// find their node without a lock and decide under the node's own lock while other threads
// insert, erase, sweep, evict, grow and shrink the tables. Many threads on 2 cores; bounded
// iteration counts (no timing), small enough for the TSan build.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "sluice/algorithms.h"
#include "sluice/decision.h"
#include "sluice/limit.h"
#include "sluice/memory_store.h"
#include "sluice/store.h"

#include "support/test_util.h"

namespace {

using sluice::algorithm;
using sluice::decision;
using sluice::result;
using std::chrono::hours;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::seconds;

using sluice::test::all_algorithms;
using sluice::test::make;
using sluice::test::must;

sluice::request req(std::string_view key, const sluice::limit& l, algorithm a, std::int64_t cost,
                    microseconds now) {
  return sluice::request{key, l, a, cost, now};
}

std::string name(algorithm a) { return std::string(sluice::to_string(a)); }

// Runs `body(t)` on `n` threads released together, and joins them.
void race(int n, const std::function<void(int)>& body) {
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(n));
  for (int t = 0; t < n; ++t) {
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < n) std::this_thread::yield();
      body(t);
    });
  }
  for (auto& th : threads) th.join();
}

// Verifies that 8 and 32 threads racing on one key admit exactly the limit, for every
// algorithm, and that every denial is counted (no request lost or decided twice).
TEST(MemoryStoreConcurrency, RacingThreadsOnOneKeyAdmitExactlyTheLimit) {
  const sluice::limit l = make(100, hours(1));
  for (const int threads : {8, 32}) {
    for (const algorithm a : all_algorithms) {
      SCOPED_TRACE(name(a) + ", " + std::to_string(threads) + " threads");
      sluice::memory_store store;
      std::atomic<int> admitted{0}, denied{0}, errors{0};
      const int per_thread = 1600 / threads;
      race(threads, [&](int) {
        for (int i = 0; i < per_thread; ++i) {
          const result<decision> d = store.acquire(req("hot", l, a, 1, seconds(7)));
          if (!d) {
            ++errors;
          } else {
            ++(d->allowed ? admitted : denied);
          }
        }
      });
      EXPECT_EQ(errors.load(), 0);
      EXPECT_EQ(admitted.load(), 100);
      EXPECT_EQ(denied.load(), 1600 - 100);
      EXPECT_EQ(must(store.peek(req("hot", l, a, 1, seconds(7)))).remaining, 0);
      EXPECT_EQ(store.stats().keys, 1u);
    }
  }
}

// Verifies that 8 and 32 threads racing over many keys, which they create together (so
// that inserts race inserts of the same key), admit exactly each key's limit.
TEST(MemoryStoreConcurrency, RacingThreadsOnManyKeysAdmitExactlyEachLimit) {
  const sluice::limit l = make(10, hours(1));
  constexpr int kKeys = 200;
  for (const int threads : {8, 32}) {
    for (const algorithm a : all_algorithms) {
      SCOPED_TRACE(name(a) + ", " + std::to_string(threads) + " threads");
      sluice::memory_store store(sluice::memory_store_options{.shards = 2});  // tables grow
      std::vector<std::atomic<int>> admitted(kKeys);
      std::atomic<int> errors{0};
      const int rounds = 32 / threads + 1;  // each key asked 2 to 5 times its limit in all
      race(threads, [&](int t) {
        for (int round = 0; round < rounds; ++round) {
          for (int i = 0; i < kKeys; ++i) {
            const int k = (i * 7 + t * 13) % kKeys;  // every thread in its own order
            const std::string key = "k" + std::to_string(k);
            const result<decision> d = store.acquire(req(key, l, a, 1, seconds(7)));
            if (!d) {
              ++errors;
            } else if (d->allowed) {
              ++admitted[static_cast<std::size_t>(k)];
            }
          }
        }
      });
      EXPECT_EQ(errors.load(), 0);
      for (int k = 0; k < kKeys; ++k) {
        ASSERT_EQ(admitted[static_cast<std::size_t>(k)].load(), 10) << "key k" << k;
      }
      EXPECT_EQ(store.stats().keys, static_cast<std::uint64_t>(kKeys));
    }
  }
}

// Verifies that acquire_all calls racing single acquires (8 and 32 threads) on a shared key
// keep its limit exactly, and that every call admitted is counted in both of its keys.
TEST(MemoryStoreConcurrency, AcquireAllRacingAcquiresKeepsEveryLimit) {
  const sluice::limit shared = make(120, hours(1));
  const sluice::limit per_user = make(1000, hours(1));
  for (const int threads : {8, 32}) {
    for (const algorithm a : all_algorithms) {
      SCOPED_TRACE(name(a) + ", " + std::to_string(threads) + " threads");
      sluice::memory_store store(sluice::memory_store_options{.shards = 4});
      std::atomic<int> shared_admitted{0};
      std::vector<std::atomic<int>> user_admitted(static_cast<std::size_t>(threads));
      const int per_thread = 640 / threads;
      race(threads, [&](int t) {
        const std::string user = "user:" + std::to_string(t);
        for (int i = 0; i < per_thread; ++i) {
          if (t % 2 == 0) {
            const auto ds = must(store.acquire_all(std::vector<sluice::request>{
                req(user, per_user, a, 1, seconds(7)), req("shared", shared, a, 1, seconds(7))}));
            ASSERT_EQ(ds.size(), 2u);
            ASSERT_TRUE(ds[0].allowed);  // the user's limit is never reached
            if (ds[1].allowed) {
              ++shared_admitted;
              ++user_admitted[static_cast<std::size_t>(t)];
            }
          } else if (must(store.acquire(req("shared", shared, a, 1, seconds(7)))).allowed) {
            ++shared_admitted;
          }
        }
      });
      EXPECT_EQ(shared_admitted.load(), 120);
      EXPECT_EQ(must(store.peek(req("shared", shared, a, 1, seconds(7)))).remaining, 0);
      for (int t = 0; t < threads; t += 2) {
        const std::string user = "user:" + std::to_string(t);
        const int spent = user_admitted[static_cast<std::size_t>(t)].load();
        // Only what was admitted was charged: a denied call spent nothing on the user.
        EXPECT_EQ(must(store.peek(req(user, per_user, a, 1, seconds(7)))).remaining, 1000 - spent)
            << user;
      }
    }
  }
}

// Verifies that a reset racing acquires restarts the count: every acquire that starts after
// reset returned decides on the fresh state. The key is nearly spent before the reset (10
// units left of 1000), so a decision on the old state shows: it is denied, or leaves 10 or
// fewer; on the fresh state, 800 acquires in all leave at least 199.
TEST(MemoryStoreConcurrency, ResetRacingAcquiresRestartsTheCount) {
  const sluice::limit l = make(1000, hours(1));
  constexpr int kThreads = 8;
  constexpr int kPerThread = 100;
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(name(a));
    sluice::memory_store store;
    for (int round = 0; round < 5; ++round) {
      const std::string key = "r" + std::to_string(round);
      ASSERT_EQ(must(store.acquire(req(key, l, a, 990, seconds(7)))).remaining, 10);
      std::atomic<bool> reset_done{false};
      std::atomic<int> stale{0}, after{0}, admitted_after{0};
      race(kThreads + 1, [&](int t) {
        if (t == kThreads) {
          for (int spin = 0; spin < round * 100; ++spin) std::this_thread::yield();
          must(store.reset(key));
          reset_done.store(true);
          return;
        }
        for (int i = 0; i < kPerThread; ++i) {
          const bool started_after = reset_done.load();
          const decision d = must(store.acquire(req(key, l, a, 1, seconds(7))));
          if (!started_after) continue;
          ++after;
          if (!d.allowed || d.remaining <= 10) ++stale;
          if (d.allowed) ++admitted_after;
        }
      });
      EXPECT_EQ(stale.load(), 0) << "round " << round;
      // What the acquires after the reset spent is in the key's state, and no more than all
      // the acquires since the reset could have spent.
      const std::int64_t remaining = must(store.peek(req(key, l, a, 1, seconds(7)))).remaining;
      EXPECT_LE(remaining, 1000 - admitted_after.load()) << "round " << round;
      EXPECT_GE(remaining, 1000 - kThreads * kPerThread) << "round " << round;
    }
  }
}

// Verifies that keys erased as expired while threads decide on them lose no admission. Each
// of many short cycles starts with every key expired (a fresh state) and present: one thread
// purges expired keys over and over while 8 threads acquire them, and each key admits
// exactly its limit per cycle. A decision made on a node that the purge erased after the
// decider found it would be lost, letting the key admit more.
TEST(MemoryStoreConcurrency, PurgeRacingDecisionsLosesNoAdmission) {
  const sluice::limit l = make(3, seconds(1));
  constexpr int kKeys = 4;
  constexpr int kDeciders = 8;
  constexpr int kCycles = 120;
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(name(a));
    sluice::memory_store store(sluice::memory_store_options{.shards = 1});
    std::vector<std::atomic<int>> admitted(kKeys * kCycles);
    std::vector<std::atomic<int>> finished(kCycles);
    std::barrier cycle_start(kDeciders + 1);
    race(kDeciders + 1, [&](int t) {
      for (int c = 0; c < kCycles; ++c) {
        const microseconds now = seconds(10) * (c + 1);  // every key expired at the last cycle
        cycle_start.arrive_and_wait();
        if (t == kDeciders) {  // the purger, until every decider is done with this cycle
          while (finished[static_cast<std::size_t>(c)].load() < kDeciders) {
            store.purge_expired(now);
          }
          continue;
        }
        for (int i = 0; i < 2 * kKeys; ++i) {
          const int k = (i + t) % kKeys;
          if (must(store.acquire(req("k" + std::to_string(k), l, a, 1, now))).allowed) {
            ++admitted[static_cast<std::size_t>(c * kKeys + k)];
          }
        }
        finished[static_cast<std::size_t>(c)].fetch_add(1);
      }
    });
    for (int c = 0; c < kCycles; ++c) {
      for (int k = 0; k < kKeys; ++k) {
        ASSERT_EQ(admitted[static_cast<std::size_t>(c * kKeys + k)].load(), 3)
            << "cycle " << c << ", key k" << k;
      }
    }
  }
}

// Verifies that inserts, erasures (reset, purge, the sweep), growth and shrinking racing
// decisions lose no state of the keys being decided on: each of them admits exactly its
// limit, asked more often than that, while other threads churn short-lived keys through the
// same table.
TEST(MemoryStoreConcurrency, ChurnRacingDecisionsLosesNoKeyState) {
  const sluice::limit kept = make(20, hours(1));
  const sluice::limit brief = make(1, milliseconds(1));
  constexpr int kDeciders = 4;
  constexpr int kKeysEach = 50;
  for (const algorithm a : all_algorithms) {
    SCOPED_TRACE(name(a));
    sluice::memory_store store(sluice::memory_store_options{.shards = 1});
    std::vector<std::atomic<int>> admitted(kDeciders * kKeysEach);
    race(kDeciders + 2, [&](int t) {
      if (t >= kDeciders) {
        // Churn: bursts of short-lived keys, each burst at a later time (expiring the last),
        // some reset at once; every few bursts a purge. The table grows and shrinks.
        for (int burst = 0; burst < 12; ++burst) {
          const microseconds now = seconds(1) + milliseconds(10 * burst);
          for (int i = 0; i < 150; ++i) {
            const std::string key = "churn" + std::to_string(t) + ":" + std::to_string(i);
            must(store.acquire(req(key, brief, a, 1, now)));
            if (i % 3 == 0) must(store.reset(key));
          }
          if (burst % 4 == 3) store.purge_expired(now + milliseconds(5));
        }
        return;
      }
      for (int round = 0; round < 25; ++round) {
        for (int i = 0; i < kKeysEach; ++i) {
          const int k = t * kKeysEach + i;
          if (must(store.acquire(req("kept" + std::to_string(k), kept, a, 1, seconds(1))))
                  .allowed) {
            ++admitted[static_cast<std::size_t>(k)];
          }
        }
      }
    });
    for (int k = 0; k < kDeciders * kKeysEach; ++k) {
      ASSERT_EQ(admitted[static_cast<std::size_t>(k)].load(), 20) << "key kept" << k;
      ASSERT_EQ(must(store.peek(req("kept" + std::to_string(k), kept, a, 1, seconds(1)))).remaining,
                0);
    }
  }
}

// Verifies that the store stays sound under everything at once: at a small max_keys cap (so
// that nearly every insert evicts), threads acquire, peek, refund and acquire_all over more
// keys than the cap while others reset keys and purge. No call fails, every decision is
// within its limit, the cap holds, and the store decides correctly afterwards.
TEST(MemoryStoreConcurrency, StressWithPurgeResetAndEvictionAtTheCap) {
  const sluice::limit l = make(8, seconds(1));
  constexpr int kKeys = 300;
  sluice::memory_store store(sluice::memory_store_options{.shards = 4, .max_keys = 64});
  std::atomic<int> errors{0}, insane{0};
  auto check = [&](const result<decision>& d) {
    if (!d) {
      ++errors;
    } else if (d->remaining < 0 || d->remaining > l.count || d->limit != l.count) {
      ++insane;
    }
  };
  race(10, [&](int t) {
    const algorithm a = all_algorithms[t % 3];
    for (int i = 0; i < 600; ++i) {
      const std::string key = "s" + std::to_string((i * 31 + t * 17) % kKeys);
      const microseconds now = seconds(1) + milliseconds(i);  // keys expire as time goes on
      switch (t) {
        case 8:  // resets, and purges now and then
          if (!store.reset(key)) ++errors;
          if (i % 50 == 0) store.purge_expired(now);
          break;
        case 9: {  // several keys at once
          const std::string other = "s" + std::to_string((i * 7) % kKeys);
          const auto ds = store.acquire_all(
              std::vector<sluice::request>{req(key, l, a, 1, now), req(other, l, a, 1, now)});
          if (!ds) ++errors;
          break;
        }
        default:
          check(store.acquire(req(key, l, a, 1, now)));
          if (i % 5 == 0) check(store.peek(req(key, l, a, 1, now)));
          if (i % 7 == 0) check(store.refund(req(key, l, a, 1, now)));
          break;
      }
    }
  });
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(insane.load(), 0);
  const sluice::memory_store_stats st = store.stats();
  EXPECT_LE(st.keys, 64u);  // 4 shards of at most 16
  EXPECT_GT(st.evicted + st.expired, 0u);
  for (const algorithm a : all_algorithms) {
    const std::string key = "after:" + name(a);
    for (int i = 0; i < 8; ++i)
      EXPECT_TRUE(must(store.acquire(req(key, l, a, 1, hours(1)))).allowed);
    EXPECT_FALSE(must(store.acquire(req(key, l, a, 1, hours(1)))).allowed);
  }
}

}  // namespace
