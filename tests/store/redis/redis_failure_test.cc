// The limiter's failure policies and circuit breaker over a real Redis that goes away and
// comes back (tests/support starts, stops and restarts redis-server).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sluice/clock.h"
#include "sluice/limiter.h"
#include "sluice/redis_store.h"
#include "support/redis_server.h"

#include "support/test_util.h"

namespace sluice {
namespace {

using namespace std::chrono_literals;
using test::redis_server;
using test::redis_server_options;
using steady = std::chrono::steady_clock;

struct harness {
  explicit harness(redis_server& server, std::chrono::milliseconds timeout = 200ms) {
    auto o = parse_redis_uri(server.full_uri());
    EXPECT_TRUE(o);
    o->timeout = timeout;
    o->reconnect_min = 5ms;
    o->reconnect_max = 20ms;
    store = std::make_shared<redis_store>(*o);
    limiter_options lo;
    lo.store = store;
    lo.breaker.failures_to_open = 3;
    lo.breaker.open_for = 50ms;
    lo.breaker.max_open_for = 100ms;
    lo.warn = [this](std::string_view w) {
      std::lock_guard lock(mu);
      warnings.emplace_back(w);
    };
    lo.warn_interval = 1h;
    lim = std::make_unique<limiter>(std::move(lo));
    const limit l = *parse_limit("3/1h");
    EXPECT_TRUE(lim->add_policy({"open", l, algorithm::sliding_log, failure_mode::allow}));
    EXPECT_TRUE(lim->add_policy({"closed", l, algorithm::gcra, failure_mode::deny}));
    EXPECT_TRUE(lim->add_policy({"local", l, algorithm::sliding_counter, failure_mode::local}));
  }
  std::shared_ptr<redis_store> store;
  std::unique_ptr<limiter> lim;
  std::mutex mu;
  std::vector<std::string> warnings;
};

using test::eventually;

// Verifies each failure mode with Redis stopped mid-run: allow admits everything, deny
// refuses everything with a retry_after, local keeps enforcing the limit in-process; once
// Redis is back the store decides again (this test's Redis keeps nothing across a restart,
// so the key starts over there).
TEST(RedisStoreFailure, EachModeDoesWhatItSays) {
  redis_server server;
  harness h(server);
  for (int i = 0; i < 2; ++i) {
    for (const char* p : {"open", "closed", "local"}) ASSERT_TRUE(h.lim->acquire(p, "u")->allowed);
  }
  server.stop();
  for (int i = 0; i < 10; ++i) {
    auto open = h.lim->acquire("open", "u");
    ASSERT_TRUE(open);
    EXPECT_TRUE(open->allowed);
    EXPECT_EQ(open->remaining, 3);
    auto closed = h.lim->acquire("closed", "u");
    ASSERT_TRUE(closed);
    EXPECT_FALSE(closed->allowed);
    EXPECT_GT(closed->retry_after.count(), 0);
  }
  // The local store starts empty: 3 admitted, then denied, as the limit says.
  int local_admitted = 0;
  for (int i = 0; i < 10; ++i) local_admitted += h.lim->acquire("local", "u")->allowed ? 1 : 0;
  EXPECT_EQ(local_admitted, 3);
  const limiter_stats during = h.lim->stats();
  EXPECT_EQ(during.fallbacks_allow, 10u);
  EXPECT_EQ(during.fallbacks_deny, 10u);
  EXPECT_EQ(during.fallbacks_local, 10u);
  EXPECT_GE(during.breaker_opened, 1u);
  {
    std::lock_guard lock(h.mu);
    // One warning for the whole outage (interval 1 h), besides the one that this Redis keeps
    // no data (RedisStorePersistence).
    std::vector<std::string> outage;
    for (const std::string& w : h.warnings) {
      if (w.find("keeps no data") == std::string::npos) outage.push_back(w);
    }
    ASSERT_EQ(outage.size(), 1u);
    EXPECT_NE(outage[0].find("redis"), std::string::npos) << outage[0];
  }

  server.start();
  // The breaker probes, the store reconnects, and Redis decides again.
  ASSERT_TRUE(eventually([&] {
    auto d = h.lim->peek("closed", "u");
    return d && d->allowed && h.lim->stats().breaker == breaker_state::closed;
  }));
  const std::uint64_t fallbacks = h.lim->stats().fallbacks_deny;
  for (int i = 0; i < 3; ++i) {
    auto d = h.lim->acquire("closed", "u");
    ASSERT_TRUE(d);
    EXPECT_TRUE(d->allowed);
    EXPECT_EQ(d->remaining, 2 - i);
  }
  EXPECT_FALSE(h.lim->acquire("closed", "u")->allowed);
  EXPECT_EQ(h.lim->stats().fallbacks_deny, fallbacks);  // decided by Redis, not the fallback
  EXPECT_EQ(server.command({"EXISTS", "sluice:closed:u"}), "1");
}

// Verifies that while the breaker is open, decisions skip the store and take microseconds,
// even when Redis hangs instead of refusing connections; p99 stays under the deadline.
TEST(RedisStoreFailure, OpenBreakerAnswersWithoutWaiting) {
  redis_server server;
  harness h(server, 100ms);
  ASSERT_TRUE(h.lim->acquire("open", "k")->allowed);
  server.pause();  // connected, but silent: every store call would wait for its deadline
  std::vector<std::chrono::microseconds> latencies;
  for (int i = 0; i < 1000; ++i) {
    const auto start = std::chrono::steady_clock::now();
    auto d = h.lim->acquire("open", "k");
    latencies.push_back(std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now() - start));
    ASSERT_TRUE(d);
    EXPECT_TRUE(d->allowed);
  }
  server.resume();
  std::sort(latencies.begin(), latencies.end());
  // At most the few calls that tripped the breaker (and a probe or two) waited a deadline.
  EXPECT_LT(latencies[latencies.size() * 99 / 100], 100ms);
  EXPECT_LT(latencies[latencies.size() / 2], 1ms);
  EXPECT_GE(h.lim->stats().breaker_opened, 1u);
  EXPECT_LT(h.store->stats().requests, 50u);
}

// Verifies that the breaker probes as soon as the store's connection is back, instead of
// waiting out an open period that a long outage doubled up to max_open_for (30 s): the
// limiter's clock is frozen once the period has grown, so only the store's signal can
// bring decisions back to Redis, and they come back within a few reconnect intervals.
TEST(RedisStoreFailure, BreakerProbesAtOnceWhenRedisIsBack) {
  redis_server server;
  auto o = parse_redis_uri(server.full_uri());
  ASSERT_TRUE(o);
  o->timeout = 200ms;
  o->reconnect_min = 5ms;
  o->reconnect_max = 20ms;
  auto store = std::make_shared<redis_store>(*o);
  manual_clock clock{std::chrono::seconds(1'700'000'000)};
  limiter_options lo;
  lo.store = store;
  lo.time_source = &clock;
  lo.breaker.failures_to_open = 1;
  lo.breaker.open_for = 1s;
  lo.breaker.max_open_for = 30s;
  limiter lim(std::move(lo));
  ASSERT_TRUE(lim.add_policy({"p", *parse_limit("100/1h"), algorithm::gcra, failure_mode::deny}));
  ASSERT_EQ(lim.acquire("p", "k")->source, decision_source::store);

  server.stop();
  ASSERT_EQ(lim.acquire("p", "k")->source, decision_source::fallback_deny);
  ASSERT_EQ(lim.breaker().state(), breaker_state::open);
  // Each failed probe doubles the open period: 1, 2, 4, 8, 16, then 30 s.
  for (int i = 0; i < 8 && lim.breaker().next_probe_in() < 30s; ++i) {
    clock.advance(lim.breaker().next_probe_in());
    EXPECT_EQ(lim.acquire("p", "k")->source, decision_source::fallback_deny);
  }
  ASSERT_EQ(lim.breaker().next_probe_in(), std::chrono::microseconds(30s));

  server.start();
  const auto back = steady::now();
  ASSERT_TRUE(
      eventually([&] { return lim.acquire("p", "k")->source == decision_source::store; }, 5s));
  const auto took = steady::now() - back;
  EXPECT_LT(took, 2s);
  EXPECT_EQ(lim.breaker().state(), breaker_state::closed);
  EXPECT_EQ(lim.stats().breakers_open, 0u);
  std::printf(
      "decisions back from Redis %lld ms after it answered again\n",
      static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
}

// Returns the warnings a limiter over a store on `server` gets, once a decision made after
// the store connected has come back (the persistence check goes first on the connection).
std::vector<std::string> warnings_of(redis_server& server) {
  auto o = parse_redis_uri(server.full_uri());
  EXPECT_TRUE(o);
  o->timeout = 2s;
  auto store = std::make_shared<redis_store>(*o);
  auto warnings = std::make_shared<std::vector<std::string>>();
  auto mu = std::make_shared<std::mutex>();
  limiter_options lo;
  lo.store = store;
  lo.warn = [warnings, mu](std::string_view w) {
    std::lock_guard lock(*mu);
    warnings->emplace_back(w);
  };
  limiter lim(std::move(lo));
  policy p;
  p.limit = *parse_limit("5/1m");
  for (int i = 0; i < 3; ++i) {
    auto d = lim.acquire(p, "w");
    EXPECT_TRUE(d && d->source == decision_source::store);
  }
  std::lock_guard lock(*mu);
  return *warnings;
}

// Verifies the persistence check at connect: a Redis with neither AOF nor RDB snapshots
// (what the test support starts) gets one warning that says what a restart loses, however
// many decisions follow; one with `appendonly yes`, or with RDB snapshots, gets none; and one
// that refuses CONFIG (renamed away) gets none, and decides as usual.
TEST(RedisStorePersistence, WarnsOnceWhenRedisKeepsNoData) {
  {
    redis_server bare;
    const auto w = warnings_of(bare);
    ASSERT_EQ(w.size(), 1u);
    EXPECT_NE(w[0].find("redis 127.0.0.1:" + std::to_string(bare.port()) +
                        " keeps no data across a restart (appendonly no, save \"\")"),
              std::string::npos)
        << w[0];
    EXPECT_NE(w[0].find("a restart forgets every counter"), std::string::npos) << w[0];
  }
  {
    redis_server_options so;
    so.extra_config = {"appendonly yes"};
    redis_server aof(so);
    ASSERT_EQ(aof.command({"CONFIG", "GET", "appendonly"}), "[appendonly, yes]");
    EXPECT_EQ(warnings_of(aof), std::vector<std::string>{});
  }
  {
    redis_server_options so;
    so.extra_config = {"save \"3600 1\""};
    redis_server rdb(so);
    EXPECT_EQ(warnings_of(rdb), std::vector<std::string>{});
  }
  {
    redis_server_options so;
    so.extra_config = {"rename-command CONFIG \"\""};
    redis_server no_config(so);
    EXPECT_EQ(warnings_of(no_config), std::vector<std::string>{});
  }
}

}  // namespace
}  // namespace sluice
