// Checks every Redis-backed store must pass, shared by the single-server and the cluster
// tests: the conformance suite against the memory store, and the race on one key.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sluice/memory_store.h"
#include "sluice/store.h"

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
