// Checks every Redis-backed store must pass, shared by the single-server and the cluster
// tests: the conformance suites against the memory store, and the races.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
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

// Holds a store's I/O thread inside a completion, so that calls made meanwhile queue up
// and the connection writes them all at once (as batches) when it is let go:
//   io_hold hold(s);   // returns once the I/O thread is held
//   ... async calls ...
//   hold.release();
class io_hold {
 public:
  explicit io_hold(store& s) : state_(std::make_shared<state>()) {
    s.async_peek(request{"io-hold", limit{1, std::chrono::seconds(1)}, algorithm::gcra, 1, {}},
                 [st = state_](result<decision>) {
                   std::unique_lock lock(st->mu);
                   st->held = true;
                   st->cv.notify_all();
                   st->cv.wait(lock, [&] { return st->released; });
                 });
    std::unique_lock lock(state_->mu);
    state_->cv.wait(lock, [&] { return state_->held; });
  }
  ~io_hold() { release(); }
  void release() {
    std::lock_guard lock(state_->mu);
    state_->released = true;
    state_->cv.notify_all();
  }

 private:
  // Shared with the completion, which may still be waking up when the hold is gone.
  struct state {
    std::mutex mu;
    std::condition_variable cv;
    bool held = false;
    bool released = false;
  };
  std::shared_ptr<state> state_;
};

// Verifies that calls sent in bursts of `burst` (each burst queued while the store's I/O
// thread is held, so that it is written at once and goes out as batches) get exactly the
// memory store's answers, decided one by one in the same order: `bursts` bursts over 12
// keys (four per algorithm, limits from 1 to 100, windows from 1 ms to 1 h, explicit
// times that move on by steps of up to 400 µs and now and then up to 20 minutes, one key
// in three switching algorithm now and then), acquires, peeks, refunds and (unless
// `resets` is false) resets mixed. Returns how many calls were compared.
// The store must send a key's calls over one connection (`pool=1` per server or master):
// with several, calls on one key may be decided out of the order they were made in, which
// this reports as wrong answers although no single decision is wrong.
inline int expect_same_decisions_as_memory_in_bursts(store& s, std::size_t burst, int bursts,
                                                     std::uint64_t seed, bool resets = true) {
  memory_store memory;
  std::mt19937_64 rng(seed);
  struct key_spec {
    std::string key;
    limit l;
    algorithm a;
  };
  // One clock for every key, as a store has: the memory store drops state that has
  // expired at the time of any request, which would be a live key's own time were each
  // key's clock its own.
  std::int64_t now = seed % 2 == 0 ? 1'800'000'000'000'000 : 0;
  std::vector<key_spec> keys;
  for (int i = 0; i < 12; ++i) {
    const std::int64_t count = std::vector<std::int64_t>{1, 3, 10, 100}[rng() % 4];
    const std::chrono::microseconds window{
        std::vector<std::int64_t>{1000, 1000000, 3600000000}[rng() % 3]};
    keys.push_back({"burst:" + std::to_string(seed) + ":" + std::to_string(i), limit{count, window},
                    test::all_algorithms[i % 3]});
  }
  enum class op { acquire, peek, refund, reset };
  struct step {
    op what;
    request r;
  };
  int compared = 0;
  for (int b = 0; b < bursts; ++b) {
    std::vector<step> steps;
    for (std::size_t i = 0; i < burst; ++i) {
      key_spec& k = keys[rng() % keys.size()];
      if (rng() % 3 == 0) now += static_cast<std::int64_t>(rng() % 400);
      if (rng() % 64 == 0) now += static_cast<std::int64_t>(rng() % 1'200'000'000);
      algorithm a = k.a;
      if ((&k - keys.data()) % 3 == 0 && rng() % 8 == 0) a = test::all_algorithms[rng() % 3];
      const std::int64_t cost = 1 + static_cast<std::int64_t>(rng() % k.l.count);
      const auto roll = rng() % 20;
      const op what = roll < 12              ? op::acquire
                      : roll < 16            ? op::peek
                      : roll < 19 || !resets ? op::refund
                                             : op::reset;
      steps.push_back({what, request{k.key, k.l, a, cost, std::chrono::microseconds{now}}});
    }
    std::vector<result<decision>> got(steps.size());
    std::vector<result<void>> got_reset(steps.size());
    std::atomic<std::size_t> answered{0};
    std::vector<std::atomic<int>> times(steps.size());
    {
      io_hold hold(s);
      for (std::size_t i = 0; i < steps.size(); ++i) {
        auto done = [&, i](result<decision> d) {
          got[i] = std::move(d);
          ++times[i];
          ++answered;
        };
        const request& r = steps[i].r;
        switch (steps[i].what) {
          case op::acquire:
            s.async_acquire(r, done);
            break;
          case op::peek:
            s.async_peek(r, done);
            break;
          case op::refund:
            s.async_refund(r, done);
            break;
          case op::reset:
            s.async_reset(r.key, [&, i](result<void> d) {
              got_reset[i] = std::move(d);
              ++times[i];
              ++answered;
            });
            break;
        }
      }
    }
    EXPECT_TRUE(test::eventually([&] { return answered.load() == steps.size(); },
                                 std::chrono::seconds(30)));
    if (answered.load() != steps.size()) return compared;
    for (std::size_t i = 0; i < steps.size(); ++i) {
      EXPECT_EQ(times[i].load(), 1) << "call " << i;
      const request& r = steps[i].r;
      if (steps[i].what == op::reset) {
        EXPECT_TRUE(got_reset[i]) << got_reset[i].error().message();
        EXPECT_TRUE(memory.reset(r.key));
        continue;
      }
      const result<decision> want = steps[i].what == op::acquire ? memory.acquire(r)
                                    : steps[i].what == op::peek  ? memory.peek(r)
                                                                 : memory.refund(r);
      if (!got[i]) {
        ADD_FAILURE() << "burst " << b << " call " << i << ": " << got[i].error().message();
        return compared;
      }
      if (!want) {
        ADD_FAILURE() << "memory: " << want.error().message();
        return compared;
      }
      EXPECT_EQ(*got[i], *want) << "burst " << b << " call " << i << " " << to_string(r.algorithm)
                                << " key " << r.key << " op " << static_cast<int>(steps[i].what)
                                << " cost " << r.cost << " now " << r.now->count() << " allowed "
                                << got[i]->allowed << "/" << want->allowed << " remaining "
                                << got[i]->remaining << "/" << want->remaining;
      if (*got[i] != *want) {
        for (std::size_t j = 0; j < i; ++j) {
          if (steps[j].r.key != r.key) continue;
          std::printf("  before: call %zu op %d %s cost %lld now %lld\n", j,
                      static_cast<int>(steps[j].what), to_string(steps[j].r.algorithm).data(),
                      static_cast<long long>(steps[j].r.cost),
                      static_cast<long long>(steps[j].r.now->count()));
        }
        return compared;
      }
      ++compared;
    }
  }
  return compared;
}

// Races `calls` asynchronous acquires on `key` (limit 100 an hour) from 4 threads, all in
// flight at once, and counts what got in.
inline race_outcome race_async_on_one_key(store& s, algorithm a, const std::string& key,
                                          int calls) {
  std::atomic<int> admitted{0}, failed{0}, answered{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < calls / 4; ++i) {
        s.async_acquire(request{key, limit{100, std::chrono::hours(1)}, a, 1, {}},
                        [&](result<decision> d) {
                          if (!d) {
                            ++failed;
                          } else if (d->allowed) {
                            ++admitted;
                          }
                          ++answered;
                        });
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_TRUE(
      test::eventually([&] { return answered.load() == calls / 4 * 4; }, std::chrono::seconds(60)));
  return {admitted.load(), failed.load()};
}

}  // namespace sluice::test
