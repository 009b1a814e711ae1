// Checks every Redis-backed store must pass, shared by the single-server and the cluster
// tests: the conformance suites against the memory store, and the races.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sluice/memory_store.h"
#include "sluice/store.h"
#include "support/test_util.h"

namespace sluice::test {

// Verifies that random sequences with explicit times (90 keys, 25 steps each, every
// algorithm, acquires and peeks, costs, windows from 1 ms to 1 h, times near 0 and near
// 2027) get exactly the memory store's decisions from `s`.
inline void expect_same_decisions_as_memory(store& s) {
  constexpr algorithm kAlgorithms[] = {algorithm::sliding_log, algorithm::sliding_counter,
                                       algorithm::gcra};
  memory_store memory;
  std::mt19937_64 rng(2024);
  int compared = 0;
  for (int k = 0; k < 90; ++k) {
    const algorithm a = kAlgorithms[k % 3];
    const std::string key = "conf:" + std::to_string(k);
    const std::int64_t count = std::vector<std::int64_t>{1, 3, 10, 100}[rng() % 4];
    const std::chrono::microseconds window{
        std::vector<std::int64_t>{1000, 1000000, 3600000000}[rng() % 3]};
    std::int64_t now = k % 2 == 0 ? 1'800'000'000'000'000 : 0;
    for (int i = 0; i < 25; ++i) {
      now += static_cast<std::int64_t>(rng() % (window.count() / 3 + 1));
      const std::int64_t cost = 1 + static_cast<std::int64_t>(rng() % count);
      const request r{key, limit{count, window}, a, cost, std::chrono::microseconds{now}};
      const bool peek = rng() % 3 == 0;
      auto from_store = peek ? s.peek(r) : s.acquire(r);
      auto from_memory = peek ? memory.peek(r) : memory.acquire(r);
      ASSERT_TRUE(from_store) << from_store.error().message();
      ASSERT_TRUE(from_memory);
      ASSERT_EQ(*from_store, *from_memory)
          << to_string(a) << " key " << key << " step " << i << " allowed " << from_store->allowed
          << "/" << from_memory->allowed << " remaining " << from_store->remaining << "/"
          << from_memory->remaining;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 90 * 25);
}

// Returns "ok" or the error's code, and each decision, for messages.
inline std::string describe(const result<std::vector<decision>>& r) {
  if (!r) return "error " + r.error().code.message() + ": " + r.error().message();
  std::string out;
  for (const decision& d : *r) {
    out += "{" + std::to_string(d.allowed) + " " + std::to_string(d.remaining) + " " +
           std::to_string(d.retry_after.count()) + " " + std::to_string(d.reset_after.count()) +
           "} ";
  }
  return out;
}

// Verifies that random sequences of acquire_all, refund, acquire and peek calls with explicit
// times get exactly the memory store's answers from `s` (the same decisions, or the same
// error): 24 rounds of 40 steps over 6 keys (two per algorithm, each with its own limit,
// windows from 1 ms to 1 h, times near 0 and near 2027); acquire_all takes 1 to 4 requests,
// keys repeated (merged), costs 0 to the count (sums past it are errors), and times that
// differ between its requests (each key decided at the latest given so far).
inline void expect_same_acquire_all_and_refunds_as_memory(store& s) {
  memory_store memory;
  std::mt19937_64 rng(2026);
  int steps = 0, admitted_all = 0, denied_all = 0, failed_all = 0, refunds = 0;
  for (int round = 0; round < 24; ++round) {
    struct key_spec {
      std::string key;
      limit l;
      algorithm a;
    };
    std::vector<key_spec> pool;
    std::int64_t shortest = 0;
    for (int i = 0; i < 6; ++i) {
      const std::int64_t count = std::vector<std::int64_t>{1, 3, 10, 100}[rng() % 4];
      const std::chrono::microseconds window{
          std::vector<std::int64_t>{1000, 1000000, 3600000000}[rng() % 3]};
      pool.push_back({"all:" + std::to_string(round) + ":" + std::to_string(i),
                      limit{count, window}, test::all_algorithms[i % 3]});
      if (shortest == 0 || window.count() < shortest) shortest = window.count();
    }
    std::int64_t now = round % 2 == 0 ? 1'800'000'000'000'000 : 0;
    for (int step = 0; step < 40; ++step, ++steps) {
      // Requests within a call may be up to 3 µs apart; calls are at least 4 µs apart.
      now += 4 + static_cast<std::int64_t>(rng() % (shortest / 3 + 1));
      const key_spec& one = pool[rng() % pool.size()];
      const auto roll = rng() % 10;
      if (roll < 5) {
        std::vector<request> rs;
        const std::size_t n = 1 + rng() % 4;
        for (std::size_t i = 0; i < n; ++i) {
          const key_spec& k = pool[rng() % pool.size()];
          std::optional<std::chrono::microseconds> at;
          if (i == 0 || rng() % 2 == 0) {
            at = std::chrono::microseconds{now + static_cast<std::int64_t>(rng() % 4)};
          }
          const std::int64_t cost = static_cast<std::int64_t>(rng() % (k.l.count + 1));
          rs.push_back(request{k.key, k.l, k.a, cost, at});
        }
        auto from_store = s.acquire_all(rs);
        auto from_memory = memory.acquire_all(rs);
        ASSERT_EQ(from_store.has_value(), from_memory.has_value())
            << "round " << round << " step " << step << ": " << describe(from_store) << " / "
            << describe(from_memory);
        if (!from_store) {
          ASSERT_EQ(from_store.error().code, from_memory.error().code);
          ++failed_all;
          continue;
        }
        ASSERT_EQ(*from_store, *from_memory)
            << "round " << round << " step " << step << ": " << describe(from_store) << " / "
            << describe(from_memory);
        const bool admitted = std::all_of(from_memory->begin(), from_memory->end(),
                                          [](const decision& d) { return d.allowed; });
        ++(admitted ? admitted_all : denied_all);
        continue;
      }
      const std::int64_t cost = 1 + static_cast<std::int64_t>(rng() % one.l.count);
      const request r{one.key, one.l, one.a, cost, std::chrono::microseconds{now}};
      result<decision> from_store, from_memory;
      if (roll < 7) {
        from_store = s.refund(r);
        from_memory = memory.refund(r);
        ++refunds;
      } else if (roll < 9) {
        from_store = s.acquire(r);
        from_memory = memory.acquire(r);
      } else {
        from_store = s.peek(r);
        from_memory = memory.peek(r);
      }
      ASSERT_TRUE(from_store) << from_store.error().message();
      ASSERT_TRUE(from_memory);
      ASSERT_EQ(*from_store, *from_memory)
          << to_string(one.a) << " key " << one.key << " step " << step << " roll " << roll;
    }
  }
  EXPECT_EQ(steps, 24 * 40);
  // Each path was taken, many times.
  EXPECT_GT(admitted_all, 50);
  EXPECT_GT(denied_all, 50);
  EXPECT_GT(failed_all, 10);
  EXPECT_GT(refunds, 100);
}

// What a race of acquire_all calls admitted, by key.
struct all_race_outcome {
  std::map<std::string, int> admitted;  // by key
  int calls_admitted = 0;
  int failed = 0;
  std::string first_error;
};

// Races 1,000 acquire_all calls from 16 threads, each asking for one unit of a user
// (`<prefix>user:<u>`, 100/1m) and of that user's IP (`<prefix>ip:<u % 2>`, 150/1m), 10
// users sharing 2 IPs, all with algorithm `a` and time `now` (none: the server's). Then
// checks what must hold on every store: no call failed; no key admitted more than its
// limit; and a peek of each key shows exactly what was admitted on it spent (every
// admitted call counted on both keys, no denied one on either).
inline all_race_outcome race_acquire_all(store& s, algorithm a,
                                         std::optional<std::chrono::microseconds> now,
                                         const std::string& prefix) {
  const limit per_user{100, std::chrono::minutes(1)}, per_ip{150, std::chrono::minutes(1)};
  std::array<std::atomic<int>, 10> users{};
  std::array<std::atomic<int>, 2> ips{};
  std::atomic<int> calls_admitted{0}, failed{0}, next{0};
  std::mutex error_mu;
  all_race_outcome out;
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&] {
      for (int i = next++; i < 1000; i = next++) {
        const int u = i % 10;
        const std::string user = prefix + "user:" + std::to_string(u);
        const std::string ip = prefix + "ip:" + std::to_string(u % 2);
        const request rs[] = {{user, per_user, a, 1, now}, {ip, per_ip, a, 1, now}};
        auto d = s.acquire_all(rs);
        if (!d) {
          ++failed;
          std::lock_guard lock(error_mu);
          if (out.first_error.empty()) out.first_error = d.error().message();
          continue;
        }
        EXPECT_EQ(d->size(), 2u);
        // Admitted when both are allowed; when not, each says what it alone would get.
        if ((*d)[0].allowed && (*d)[1].allowed) {
          ++calls_admitted;
          ++users[static_cast<std::size_t>(u)];
          ++ips[static_cast<std::size_t>(u % 2)];
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  out.calls_admitted = calls_admitted;
  out.failed = failed;
  EXPECT_EQ(out.failed, 0) << out.first_error;
  auto check = [&](const std::string& key, const limit& l, int admitted) {
    out.admitted[key] = admitted;
    EXPECT_LE(admitted, l.count) << key;
    auto p = s.peek(request{key, l, a, 1, now});
    ASSERT_TRUE(p) << p.error().message();
    EXPECT_EQ(p->remaining, l.count - admitted) << key << " (" << to_string(a) << ")";
  };
  for (std::size_t u = 0; u < users.size(); ++u) {
    check(prefix + "user:" + std::to_string(u), per_user, users[u]);
  }
  for (std::size_t i = 0; i < ips.size(); ++i) {
    check(prefix + "ip:" + std::to_string(i), per_ip, ips[i]);
  }
  return out;
}

struct race_outcome {
  int admitted = 0;
  int failed = 0;
};

// Races 1,000 acquires on `key` (limit 100 an hour) from 8 threads and counts what got in.
inline race_outcome race_on_one_key(store& s, algorithm a, const std::string& key) {
  std::atomic<int> admitted{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 125; ++i) {
        auto d = s.acquire(request{key, limit{100, std::chrono::hours(1)}, a, 1, {}});
        if (!d) {
          ++failed;
        } else if (d->allowed) {
          ++admitted;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  return {admitted.load(), failed.load()};
}

}  // namespace sluice::test
