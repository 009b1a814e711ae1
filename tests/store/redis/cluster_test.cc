// The Redis Cluster store against a real 3-master / 3-replica cluster on loopback ports
// (scripts/redis-cluster.sh, through tests/support/redis_cluster.h). Each test starts its
// own cluster; ctest runs them one at a time (RESOURCE_LOCK redis_cluster).
#include "sluice/redis_cluster_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sluice/limiter.h"
#include "sluice/memory_store.h"
#include "store/redis/cluster.h"
#include "store/redis/store_checks.h"
#include "support/redis_cluster.h"
#include "support/redis_server.h"
#include "support/test_util.h"

namespace sluice {
namespace {

using namespace std::chrono_literals;
using std::chrono::microseconds;
using steady = std::chrono::steady_clock;
using test::redis_cluster;

constexpr algorithm kAlgorithms[] = {algorithm::sliding_log, algorithm::sliding_counter,
                                     algorithm::gcra};

redis_cluster_options options_for(const redis_cluster& cluster,
                                  std::chrono::milliseconds timeout = 1000ms) {
  auto o = parse_redis_cluster_uri(cluster.uri());
  EXPECT_TRUE(o) << o.error().message();
  o->connection.timeout = timeout;  // generous: sanitizer builds on a busy machine are slow
  o->connection.reconnect_min = 5ms;
  o->connection.reconnect_max = 100ms;
  return *o;
}

request req(std::string_view key, std::int64_t count, microseconds window, algorithm a,
            std::int64_t cost = 1, std::optional<microseconds> now = {}) {
  return request{key, limit{count, window}, a, cost, now};
}

// Returns `n` keys (`<stem><i>`) whose slots the master on `port` serves.
std::vector<std::string> keys_on(const redis_cluster& cluster, const redis_cluster_store& store,
                                 std::uint16_t port, std::size_t n, const std::string& stem) {
  std::vector<std::string> out;
  std::map<int, std::uint16_t> owner;
  for (int i = 0; out.size() < n && i < 100000; ++i) {
    std::string key = stem + std::to_string(i);
    const int slot = store.slot_of(key);
    if (!owner.contains(slot)) owner[slot] = cluster.master_of_slot(slot);
    if (owner[slot] == port) out.push_back(std::move(key));
  }
  return out;
}

// Verifies that random sequences with explicit times get exactly the memory store's
// decisions on the cluster, for every algorithm (the conformance suite of the single Redis).
TEST(RedisClusterStore, ConformsToTheMemoryStore) {
  redis_cluster cluster;
  redis_cluster_store redis(options_for(cluster));
  test::expect_same_decisions_as_memory(redis);
  EXPECT_EQ(redis.stats().errors, 0u);
}

// Verifies that refunds and acquire_all get exactly the memory store's answers on the
// cluster, for every algorithm: calls whose keys are on several slots, reserved slot by
// slot and given back on a denial, answer as one atomic step on one store does.
TEST(RedisClusterStore, RefundsAndAcquireAllConformToTheMemoryStore) {
  redis_cluster cluster;
  redis_cluster_store redis(options_for(cluster));
  test::expect_same_acquire_all_and_refunds_as_memory(redis);
  EXPECT_EQ(redis.stats().errors, 0u);
}

// Returns what the master of `key`'s slot holds for it: a sorted set's members and scores,
// a string, or "none".
std::string raw_state(const redis_cluster& cluster, const redis_cluster_store& redis,
                      const std::string& key) {
  const std::string full = redis.redis_key(key);
  const std::uint16_t port = cluster.master_of_slot(redis.slot_of(key));
  const std::string type = cluster.command(port, {"TYPE", full});
  if (type == "zset") return cluster.command(port, {"ZRANGE", full, "0", "-1", "WITHSCORES"});
  if (type == "string") return cluster.command(port, {"GET", full});
  return type;
}

// Verifies that keys of one slot (one hash tag) are decided in one run of the multi-key
// script: one request to Redis per call, and a denied call changes none of them.
TEST(RedisClusterStore, AcquireAllOnOneSlotIsOneRun) {
  redis_cluster cluster;
  redis_cluster_store redis(options_for(cluster));
  const limit two{2, std::chrono::hours(1)};
  const std::vector<std::string> keys = {"{t}:log", "{t}:counter", "{t}:gcra"};
  for (const auto& k : keys) ASSERT_EQ(redis.slot_of(k), redis.slot_of(keys[0]));
  const request rs[] = {{keys[0], two, algorithm::sliding_log, 1, {}},
                        {keys[1], two, algorithm::sliding_counter, 1, {}},
                        {keys[2], two, algorithm::gcra, 1, {}}};
  auto admitted = redis.acquire_all(rs);
  ASSERT_TRUE(admitted) << admitted.error().message();
  for (const decision& d : *admitted) EXPECT_TRUE(d.allowed);
  EXPECT_EQ(redis.stats().requests, 1u);
  ASSERT_TRUE(redis.acquire(req(keys[2], 2, 1h, algorithm::gcra))->allowed);  // now full
  std::vector<std::string> before;
  for (const auto& k : keys) before.push_back(raw_state(cluster, redis, k));
  auto denied = redis.acquire_all(rs);
  ASSERT_TRUE(denied) << denied.error().message();
  EXPECT_TRUE((*denied)[0].allowed);
  EXPECT_FALSE((*denied)[2].allowed);
  EXPECT_EQ(redis.stats().requests, 3u) << "one run, no give-back";
  for (std::size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(raw_state(cluster, redis, keys[i]), before[i]) << keys[i];
  }
}

// Verifies the give-back: with keys on several slots, a call that one slot denies leaves
// the keys of the slots that admitted as they were (their reservations released: one
// request per slot, then one per admitting slot), and answers each request's peek.
TEST(RedisClusterStore, AcquireAllGivesBackWhenASlotDenies) {
  redis_cluster cluster;
  redis_cluster_store redis(options_for(cluster));
  const auto masters = cluster.masters();
  ASSERT_EQ(masters.size(), 3u);
  const microseconds now{1'800'000'000'000'000};
  const limit three{3, std::chrono::hours(1)};
  for (const algorithm a : kAlgorithms) {
    const std::string name(to_string(a));
    const auto free = keys_on(cluster, redis, masters[0].port, 2, "free:" + name + ":");
    const auto full = keys_on(cluster, redis, masters[1].port, 1, "full:" + name + ":")[0];
    ASSERT_NE(redis.slot_of(free[0]), redis.slot_of(free[1]));
    ASSERT_TRUE(redis.acquire(req(free[0], 3, 1h, a, 1, now))->allowed);
    ASSERT_TRUE(redis.acquire(req(full, 3, 1h, a, 3, now))->allowed);
    const std::vector<std::string> before = {raw_state(cluster, redis, free[0]),
                                             raw_state(cluster, redis, free[1])};
    ASSERT_EQ(before[1], "none");
    const request rs[] = {{free[0], three, a, 2, now},
                          {free[1], three, a, 1, now},
                          {full, three, a, 1, now},
                          {free[0], three, a, 0, now}};
    const auto sent = redis.stats().requests;
    auto d = redis.acquire_all(rs);
    ASSERT_TRUE(d) << d.error().message();
    EXPECT_EQ(redis.stats().requests - sent, 3u + 2u) << name << ": 3 slots, 2 given back";
    EXPECT_EQ(raw_state(cluster, redis, free[0]), before[0]) << name;
    EXPECT_EQ(raw_state(cluster, redis, free[1]), before[1]) << name;
    EXPECT_FALSE((*d)[2].allowed) << name;
    EXPECT_EQ((*d)[0], (*d)[3]) << name << ": one key, one decision";
    for (std::size_t i = 0; i < 3; ++i) {
      EXPECT_EQ((*d)[i], *redis.peek(rs[i])) << name << ": request " << i;
    }
  }
  EXPECT_EQ(redis.stats().errors, 0u);
}

// Verifies that when one slot's master is gone (no replica to take over), a call with keys
// there and on a healthy master fails as unavailable, after giving back what the healthy
// master's slot reserved.
TEST(RedisClusterStore, AcquireAllGivesBackWhenASlotFails) {
  test::redis_cluster_options co;
  co.replicas = 0;
  redis_cluster cluster(co);
  redis_cluster_store redis(options_for(cluster, 500ms));
  const auto masters = cluster.masters();
  ASSERT_EQ(masters.size(), 3u);
  const microseconds now{1'800'000'000'000'000};
  const limit five{5, std::chrono::hours(1)};
  std::vector<std::string> healthy, before;
  for (const algorithm a : kAlgorithms) {
    healthy.push_back(
        keys_on(cluster, redis, masters[0].port, 1, "ok:" + std::string(to_string(a)) + ":")[0]);
    ASSERT_TRUE(redis.acquire(req(healthy.back(), 5, 1h, a, 2, now))->allowed);
    before.push_back(raw_state(cluster, redis, healthy.back()));
  }
  const auto doomed = keys_on(cluster, redis, masters[1].port, 1, "doomed:")[0];
  cluster.kill(masters[1].port);
  for (std::size_t i = 0; i < 3; ++i) {
    const request rs[] = {{healthy[i], five, kAlgorithms[i], 3, now},
                          {doomed, five, algorithm::gcra, 1, now}};
    auto d = redis.acquire_all(rs);
    ASSERT_FALSE(d);
    EXPECT_EQ(d.error().code, make_error_code(errc::store_unavailable)) << d.error().message();
    EXPECT_EQ(raw_state(cluster, redis, healthy[i]), before[i]) << to_string(kAlgorithms[i]);
    EXPECT_EQ(redis.peek(req(healthy[i], 5, 1h, kAlgorithms[i], 1, now))->remaining, 3);
  }
}

// Verifies that 1,000 acquire_all calls racing from 16 threads, each on a user (100/1m) and
// its IP (150/1m), keys on different slots, never admit past either limit, and leave every
// admitted call counted on both keys and no denied one on either: at one explicit time for
// every algorithm, and on the servers' clocks for sliding_log.
TEST(RedisClusterStore, AcquireAllIsExactUnderConcurrency) {
  redis_cluster cluster;
  auto o = options_for(cluster, 2000ms);
  o.connection.pool = 2;
  redis_cluster_store redis(o);
  int across_slots = 0;
  for (int u = 0; u < 10; ++u) {
    const std::string user = "sliding_log:user:" + std::to_string(u);
    const std::string ip = "sliding_log:ip:" + std::to_string(u % 2);
    across_slots += redis.slot_of(user) != redis.slot_of(ip) ? 1 : 0;
  }
  EXPECT_EQ(across_slots, 10) << "the race is meant to span slots";
  const microseconds now{1'800'000'000'000'000};
  for (const algorithm a : kAlgorithms) {
    const auto got = test::race_acquire_all(redis, a, now, std::string(to_string(a)) + ":");
    EXPECT_GT(got.calls_admitted, 0) << to_string(a);
    std::printf("%s: %d of 1000 calls admitted\n", std::string(to_string(a)).c_str(),
                got.calls_admitted);
  }
  const auto got = test::race_acquire_all(redis, algorithm::sliding_log, {}, "clock:");
  EXPECT_GT(got.calls_admitted, 0);
  for (const auto& [key, admitted] : got.admitted) {
    const std::uint16_t port = cluster.master_of_slot(redis.slot_of(key));
    EXPECT_EQ(cluster.command(port, {"ZCARD", redis.redis_key(key)}), std::to_string(admitted))
        << key;
  }
  EXPECT_EQ(redis.stats().errors, 0u);
}

// Verifies that 1,000 acquires racing on one key from 8 threads over 2 connections per
// master admit exactly the limit, for every algorithm.
TEST(RedisClusterStore, ExactUnderConcurrency) {
  redis_cluster cluster;
  auto o = options_for(cluster);
  o.connection.pool = 2;
  redis_cluster_store redis(o);
  for (const algorithm a : kAlgorithms) {
    const auto got = test::race_on_one_key(redis, a, "race:" + std::string(to_string(a)));
    EXPECT_EQ(got.failed, 0) << to_string(a);
    EXPECT_EQ(got.admitted, 100) << to_string(a);
  }
}

// Verifies that batched decisions on the cluster (one batch per slot) are exactly the
// memory store's, made one by one, with the largest batch at 1 (off), 2, 17 and 512; and,
// after SCRIPT FLUSH on every master, that batches answered NOSCRIPT are sent again with
// the batch script's source, unseen by callers.
TEST(RedisClusterStore, BatchesConformToTheMemoryStore) {
  redis_cluster cluster;
  for (const std::size_t batch :
       {std::size_t{1}, std::size_t{2}, std::size_t{17}, std::size_t{512}}) {
    SCOPED_TRACE("batch=" + std::to_string(batch));
    auto o = options_for(cluster);
    o.connection.batch = batch;
    redis_cluster_store redis(o);
    const std::size_t burst = batch == 512 ? 600 : 60;
    test::expect_same_decisions_as_memory_in_bursts(redis, burst, 3, 11 + batch);
    const auto st = redis.stats();
    EXPECT_EQ(st.errors, 0u);
    if (batch <= 1) {
      EXPECT_EQ(st.batches, 0u);
    } else {
      EXPECT_GT(st.batches, 0u);
    }
  }
  redis_cluster_store redis(options_for(cluster));
  for (const auto& m : cluster.masters()) {
    ASSERT_EQ(cluster.command(m.port, {"SCRIPT", "FLUSH"}), "OK");
  }
  test::expect_same_decisions_as_memory_in_bursts(redis, 200, 1, 99, false);
  EXPECT_EQ(redis.stats().errors, 0u);
  EXPECT_GT(redis.stats().script_loads, 0u);
  EXPECT_GT(redis.stats().batches, 0u);
}

// Verifies that 3,000 acquires racing on one key, all in flight at once and batched on its
// master, admit exactly the limit, for every algorithm.
TEST(RedisClusterStore, BatchesAreExactUnderConcurrency) {
  redis_cluster cluster;
  // All in flight at once: a sanitizer build on a busy machine takes seconds to answer them.
  redis_cluster_store redis(options_for(cluster, 30000ms));
  for (const algorithm a : kAlgorithms) {
    const auto got =
        test::race_async_on_one_key(redis, a, "batch-race:" + std::string(to_string(a)), 3000);
    EXPECT_EQ(got.failed, 0) << to_string(a);
    EXPECT_EQ(got.admitted, 100) << to_string(a);
  }
  EXPECT_GT(redis.stats().batches, 0u);
}

// Verifies that with log_layout=packed the cluster's decisions are exactly the memory
// store's: single calls, refunds, acquire_all whose keys span slots (reserved slot by slot,
// given back by the release script when another slot denies) and batched bursts; that a
// give-back leaves packed keys byte for byte as they were; and that 1,000 acquires racing on
// one key admit exactly the limit.
TEST(RedisClusterStore, PackedLogConformsToTheMemoryStore) {
  redis_cluster cluster;
  auto o = options_for(cluster);
  o.connection.log_layout = redis_store_options::log_layout_kind::packed;
  redis_cluster_store redis(o);
  test::expect_same_decisions_as_memory(redis);
  test::expect_same_acquire_all_and_refunds_as_memory(redis);
  test::expect_same_decisions_as_memory_in_bursts(redis, 200, 3, 41);
  EXPECT_GT(redis.stats().batches, 0u);

  const auto masters = cluster.masters();
  ASSERT_EQ(masters.size(), 3u);
  const microseconds now{1'800'000'000'000'000};
  const limit three{3, std::chrono::hours(1)};
  const algorithm log = algorithm::sliding_log;
  const auto free = keys_on(cluster, redis, masters[0].port, 2, "packed-free:");
  const auto full = keys_on(cluster, redis, masters[1].port, 1, "packed-full:")[0];
  ASSERT_NE(redis.slot_of(free[0]), redis.slot_of(free[1]));
  ASSERT_TRUE(redis.acquire(req(free[0], 3, 1h, log, 1, now))->allowed);
  ASSERT_TRUE(redis.acquire(req(full, 3, 1h, log, 3, now))->allowed);
  const std::vector<std::string> before = {raw_state(cluster, redis, free[0]),
                                           raw_state(cluster, redis, free[1])};
  ASSERT_TRUE(before[0].starts_with("sluice:L")) << before[0];
  ASSERT_EQ(before[1], "none");
  const request rs[] = {
      {free[0], three, log, 2, now}, {free[1], three, log, 1, now}, {full, three, log, 1, now}};
  const auto sent = redis.stats().requests;
  auto d = redis.acquire_all(rs);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(redis.stats().requests - sent, 3u + 2u) << "3 slots, 2 given back";
  EXPECT_FALSE((*d)[2].allowed);
  EXPECT_EQ(raw_state(cluster, redis, free[0]), before[0]);
  EXPECT_EQ(raw_state(cluster, redis, free[1]), before[1]);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ((*d)[i], *redis.peek(rs[i])) << "request " << i;

  const auto got = test::race_on_one_key(redis, log, "packed-race");
  EXPECT_EQ(got.failed, 0);
  EXPECT_EQ(got.admitted, 100);
  EXPECT_EQ(redis.stats().errors, 0u);
}

// Verifies that keys land on every master, each on the master Redis itself says serves its
// slot (CLUSTER KEYSLOT agrees with the store's own hashing), under `<prefix>:{<key>}`.
TEST(RedisClusterStore, KeysSpreadOverEveryMaster) {
  redis_cluster cluster;
  redis_cluster_store redis(options_for(cluster));
  const auto masters = cluster.masters();
  ASSERT_EQ(masters.size(), 3u);
  constexpr int kKeys = 300;
  for (int i = 0; i < kKeys; ++i) {
    const std::string key = "spread:" + std::to_string(i);
    ASSERT_TRUE(redis.acquire(req(key, 5, 60s, kAlgorithms[i % 3])));
    const std::string full = redis.redis_key(key);
    ASSERT_EQ(full, "sluice:{" + key + "}");
    if (i % 10 == 0) {  // a sample: each check is a round trip of its own
      const int slot = redis.slot_of(key);
      EXPECT_EQ(cluster.keyslot(full), slot) << full;
      EXPECT_EQ(cluster.command(cluster.master_of_slot(slot), {"EXISTS", full}), "1") << full;
    }
  }
  long long total = 0;
  for (const auto& m : masters) {
    const long long n = std::stoll(cluster.command(m.port, {"DBSIZE"}));
    EXPECT_GT(n, kKeys / 6) << "master " << m.port << " holds too few keys";
    total += n;
  }
  EXPECT_EQ(total, kKeys);
  const auto s = redis.stats();
  EXPECT_EQ(s.masters, 3u);
  EXPECT_EQ(s.slots_served, 16384u);
  EXPECT_EQ(redis.failure_domains(), 65u);
  // Keys of different masters are in different failure domains.
  std::map<std::uint16_t, std::size_t> domain_of_master;
  for (int i = 0; i < 60; ++i) {
    const std::string key = "spread:" + std::to_string(i);
    const std::uint16_t port = cluster.master_of_slot(redis.slot_of(key));
    const std::size_t domain = redis.failure_domain(key);
    EXPECT_GT(domain, 0u);
    EXPECT_LT(domain, redis.failure_domains());
    const auto [it, fresh] = domain_of_master.emplace(port, domain);
    EXPECT_EQ(it->second, domain) << "one master, two domains";
  }
  EXPECT_EQ(domain_of_master.size(), 3u);
}

// Verifies that `hash_tag=0` keeps the reference limiter's layout: the sliding_log of
// `chat:u1` is the sorted set `chrysopedia:ratelimit:chat:u1`, on the master of that
// key's own slot, and reset deletes it there.
TEST(RedisClusterStore, ReferenceLayoutWithoutHashTag) {
  redis_cluster cluster;
  auto o = options_for(cluster);
  o.hash_tag = false;
  o.connection.key_prefix = "chrysopedia:ratelimit";
  redis_cluster_store redis(o);
  const std::string full = "chrysopedia:ratelimit:chat:u1";
  ASSERT_EQ(redis.redis_key("chat:u1"), full);
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(redis.acquire(req("chat:u1", 5, 3600s, algorithm::sliding_log)));
  const std::uint16_t port = cluster.master_of_slot(cluster.keyslot(full));
  EXPECT_EQ(cluster.command(port, {"TYPE", full}), "zset");
  EXPECT_EQ(cluster.command(port, {"ZCARD", full}), "3");
  ASSERT_TRUE(redis.reset("chat:u1"));
  EXPECT_EQ(cluster.command(port, {"EXISTS", full}), "0");
}

// Verifies that scripts flushed from every master are sent again (NOSCRIPT), unseen by
// callers.
TEST(RedisClusterStore, ScriptFlushIsTransparent) {
  redis_cluster cluster;
  redis_cluster_store redis(options_for(cluster));
  for (const auto& m : cluster.masters())
    ASSERT_EQ(cluster.command(m.port, {"SCRIPT", "FLUSH"}), "OK");
  for (int i = 0; i < 30; ++i) {
    auto d = redis.acquire(req("flush:" + std::to_string(i), 5, 60s, kAlgorithms[i % 3]));
    ASSERT_TRUE(d) << d.error().message();
    EXPECT_TRUE(d->allowed);
  }
  EXPECT_GE(redis.stats().script_loads, 3u);
}

// Verifies what a store with no reachable seed does: it comes back after connect_timeout,
// and calls fail at once, saying why.
TEST(RedisClusterStore, NoReachableSeedIsAnError) {
  auto o = parse_redis_cluster_uri("redis+cluster://127.0.0.1:1?connect_timeout=200ms");
  ASSERT_TRUE(o);
  const auto start = steady::now();
  redis_cluster_store redis(*o);
  EXPECT_LT(steady::now() - start, 2s);
  EXPECT_FALSE(redis.health().ready);
  auto d = redis.acquire(req("k", 5, 60s, algorithm::gcra));
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, errc::store_unavailable);
  EXPECT_NE(d.error().message().find("no known master"), std::string::npos) << d.error().message();
  // The slot of a key is that of its Redis key, for keys of every length (short ones are
  // put together on the stack, long ones in a string), with and without braces.
  for (const std::size_t n : {1, 200, 246, 247, 248, 249, 300, 5000}) {
    for (const char* shape : {"", "{", "}", "{x}"}) {
      const std::string key = std::string(shape) + std::string(n, 'k');
      EXPECT_EQ(redis.slot_of(key), redis::key_slot(redis.redis_key(key))) << n << shape;
    }
  }
  // An empty prefix keeps keys verbatim: the key itself, or in braces with a hash tag.
  for (const char* tag : {"1", "0"}) {
    auto bare = parse_redis_cluster_uri(
        std::string("redis+cluster://127.0.0.1:1?connect_timeout=50ms&prefix=&hash_tag=") + tag);
    ASSERT_TRUE(bare);
    redis_cluster_store verbatim(*bare);
    const std::string want = *tag == '1' ? "{chat:u1}" : "chat:u1";
    EXPECT_EQ(verbatim.redis_key("chat:u1"), want);
    EXPECT_EQ(verbatim.slot_of("chat:u1"), redis::key_slot(want));
    const std::string longer(300, 'k');
    EXPECT_EQ(verbatim.slot_of(longer), redis::key_slot(verbatim.redis_key(longer)));
  }
}

// Verifies that a redis+cluster:// store pointed at a Redis without cluster support says so
// in the errors of its calls.
TEST(RedisClusterStore, StandaloneRedisIsAClearError) {
  test::redis_server standalone;
  auto o = parse_redis_cluster_uri(
      "redis+cluster://127.0.0.1:" + std::to_string(standalone.port()) + "?connect_timeout=300ms");
  ASSERT_TRUE(o);
  redis_cluster_store redis(*o);
  EXPECT_FALSE(redis.health().ready);
  auto d = redis.acquire(req("k", 5, 60s, algorithm::gcra));
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, errc::store_unavailable);
  EXPECT_NE(d.error().message().find("cluster support disabled"), std::string::npos)
      << d.error().message();
}

struct outcome {
  bool ok = false;
  steady::duration took{};
  steady::time_point at{};
};

// Runs the failover scenario: under a steady stream of decisions from two threads (one on
// keys of a doomed master, one on keys of the two others), the doomed master is killed (or,
// with `hang`, stopped with SIGSTOP: it keeps its connections and answers nothing) until its
// replica is promoted. Decisions on the other masters' keys never fail; no call takes past
// its deadline; the doomed master's keys fail (fast when it is dead, at the deadline while it
// hangs) until the promotion, then work again on their own.
void expect_survives_failover(bool hang) {
  redis_cluster cluster;
  constexpr auto kTimeout = 300ms;
  redis_cluster_store redis(options_for(cluster, kTimeout));
  const auto masters = cluster.masters();
  ASSERT_EQ(masters.size(), 3u);
  const std::uint16_t victim = masters[0].port;
  const std::vector<std::string> doomed = keys_on(cluster, redis, victim, 10, "fo:");
  std::vector<std::string> others = keys_on(cluster, redis, masters[1].port, 5, "fo:");
  const auto more = keys_on(cluster, redis, masters[2].port, 5, "fo:");
  others.insert(others.end(), more.begin(), more.end());

  std::vector<outcome> doomed_calls, other_calls;
  std::atomic<bool> stop{false};
  auto drive = [&](const std::vector<std::string>& keys, std::vector<outcome>& out) {
    for (std::size_t i = 0; !stop; ++i) {
      const auto start = steady::now();
      auto d = redis.acquire(req(keys[i % keys.size()], 1'000'000, 3600s, kAlgorithms[i % 3]));
      const auto end = steady::now();
      out.push_back({d && d->allowed, end - start, end});
      std::this_thread::sleep_for(1ms);
    }
  };
  std::thread doomed_driver(drive, std::cref(doomed), std::ref(doomed_calls));
  std::thread other_driver(drive, std::cref(others), std::ref(other_calls));
  std::this_thread::sleep_for(500ms);
  const auto failed_at = steady::now();
  if (hang) {
    cluster.pause(victim);
  } else {
    cluster.kill(victim);
  }
  const std::uint16_t promoted = cluster.wait_for_failover(victim, 30s);
  const auto promoted_at = steady::now();
  // A hung master comes back as its replica's replica; the store's map no longer has it.
  if (hang) cluster.resume(victim);
  // Give the store its refresh (it reads the map every 100 ms while a master is down).
  std::this_thread::sleep_for(1500ms);
  stop = true;
  doomed_driver.join();
  other_driver.join();

  ASSERT_NE(promoted, victim);
  ASSERT_FALSE(other_calls.empty());
  int other_failures = 0;
  for (const auto& c : other_calls) other_failures += c.ok ? 0 : 1;
  EXPECT_EQ(other_failures, 0) << "of " << other_calls.size() << " calls on the other masters";
  const auto slack = 500ms;  // scheduling on a shared, sanitized machine
  for (const auto* calls : {&doomed_calls, &other_calls}) {
    for (const auto& c : *calls) {
      EXPECT_LT(c.took, kTimeout + slack) << "a call took past its deadline";
    }
  }
  int failed_while_down = 0, ok_after = 0, calls_after = 0;
  for (const auto& c : doomed_calls) {
    if (c.at > failed_at && c.at < promoted_at && !c.ok) ++failed_while_down;
    if (c.at > promoted_at + 1000ms) {
      ++calls_after;
      ok_after += c.ok ? 1 : 0;
    }
  }
  EXPECT_GT(failed_while_down, 0) << "the failure went unnoticed";
  ASSERT_GT(calls_after, 0);
  EXPECT_EQ(ok_after, calls_after) << "the failed master's keys did not come back";
  EXPECT_GE(redis.stats().refreshes, 2u);
  EXPECT_TRUE(redis.health().ready);
  std::printf(
      "%zu calls on the other masters, %zu on the failed one's keys (%d failed while it "
      "was down, %d after the promotion)\n",
      other_calls.size(), doomed_calls.size(), failed_while_down, calls_after - ok_after);
}

// Verifies that a killed master's keys fail over to its replica under load.
TEST(RedisClusterStore, SurvivesAMasterFailover) { expect_survives_failover(false); }

// Verifies the same for a hung master (SIGSTOP): calls end at their deadline meanwhile.
TEST(RedisClusterStore, SurvivesAHungMaster) { expect_survives_failover(true); }

// Verifies the failure policy per master: with a master gone for good (no replica), the
// limiter denies its keys from the fallback, after its breaker opens without calling the
// store, while the keys of the other masters are still decided by Redis.
TEST(RedisClusterStore, FailurePolicyAppliesToTheDeadMastersKeysOnly) {
  test::redis_cluster_options co;
  co.replicas = 0;
  redis_cluster cluster(co);
  auto store = std::make_shared<redis_cluster_store>(options_for(cluster, 300ms));
  const auto masters = cluster.masters();
  ASSERT_EQ(masters.size(), 3u);
  const auto doomed = keys_on(cluster, *store, masters[0].port, 3, "fp:");
  const auto healthy = keys_on(cluster, *store, masters[1].port, 3, "fp:");
  limiter_options lo;
  lo.store = store;
  limiter lim(lo);
  policy p;  // unnamed: the store sees the keys as they are
  p.limit = limit{1000, std::chrono::hours(1)};
  p.algorithm = algorithm::gcra;
  p.on_failure = failure_mode::deny;
  cluster.kill(masters[0].port);

  std::int64_t last_remaining = 1000;
  for (int i = 0; i < 30; ++i) {
    auto bad = lim.acquire(p, doomed[static_cast<std::size_t>(i) % doomed.size()]);
    ASSERT_TRUE(bad) << bad.error().message();
    EXPECT_FALSE(bad->allowed) << "the failure mode is deny";
    auto good = lim.acquire(p, healthy[0]);
    ASSERT_TRUE(good) << good.error().message();
    EXPECT_TRUE(good->allowed);
    EXPECT_EQ(good->remaining, last_remaining - 1) << "decided by Redis, not by the fallback";
    last_remaining = good->remaining;
  }
  const auto s = lim.stats();
  EXPECT_EQ(s.fallbacks_deny, 30u);
  EXPECT_EQ(s.breakers_open, 1u);
  EXPECT_EQ(lim.breaker(store->failure_domain(doomed[0])).state(), breaker_state::open);
  EXPECT_EQ(lim.breaker(store->failure_domain(healthy[0])).state(), breaker_state::closed);
  // Once open, the dead master's breaker keeps the calls away from the store.
  EXPECT_LT(s.store_errors, 30u);
}

// Verifies that the breaker of a master that failed over does not stay open: once the
// replica is promoted and the store has the new slot map, the dead master's domain holds no
// slots, its breaker is closed (nothing would ever probe it), and the limiter's stats (the
// server's sluice_breakers_open and sluice_breaker_state) say every breaker is closed while
// the failed master's keys are decided by Redis again.
TEST(RedisClusterStore, BreakerOfAFailedOverMasterCloses) {
  redis_cluster cluster;
  auto store = std::make_shared<redis_cluster_store>(options_for(cluster, 300ms));
  const auto masters = cluster.masters();
  const std::uint16_t victim = masters[0].port;
  const auto keys = keys_on(cluster, *store, victim, 3, "bf:");
  const std::size_t dead_domain = store->failure_domain(keys[0]);
  limiter_options lo;
  lo.store = store;
  lo.breaker.failures_to_open = 2;
  lo.breaker.open_for = 1s;
  lo.breaker.max_open_for = 30s;
  limiter lim(lo);
  policy p;
  p.limit = limit{1'000'000, std::chrono::hours(1)};
  p.algorithm = algorithm::gcra;
  p.on_failure = failure_mode::allow;
  ASSERT_EQ(lim.acquire(p, keys[0])->source, decision_source::store);

  cluster.kill(victim);
  ASSERT_TRUE(test::eventually(
      [&] {
        (void)lim.acquire(p, keys[0]);
        return lim.breaker(dead_domain).state() == breaker_state::open;
      },
      10s));
  EXPECT_EQ(lim.stats().breakers_open, 1u);
  cluster.wait_for_failover(victim, 30s);

  // The keys come back to Redis on the promoted replica's domain, and the dead master's
  // breaker is closed rather than left open for as long as the process runs.
  ASSERT_TRUE(test::eventually(
      [&] {
        return lim.acquire(p, keys[0])->source == decision_source::store &&
               store->failure_domain(keys[0]) != dead_domain;
      },
      20s));
  ASSERT_TRUE(test::eventually([&] { return lim.stats().breakers_open == 0; }, 5s))
      << lim.stats().breakers_open << " breakers still open";
  const limiter_stats s = lim.stats();
  EXPECT_EQ(s.breaker, breaker_state::closed);
  EXPECT_EQ(lim.breaker(dead_domain).state(), breaker_state::closed);
  EXPECT_GE(s.breaker_opened, 1u);
  for (const auto& k : keys) EXPECT_EQ(lim.acquire(p, k)->source, decision_source::store);
}

// Verifies resharding under load: `redis-cli --cluster reshard` moves the slot holding
// three live keys (one per algorithm) and 20,000 others to another master while threads
// decide on those keys, synchronously and in batched bursts. Every ASK / MOVED is followed
// (by each call of a batch it answers): no call fails, and each key admits exactly its
// limit.
TEST(RedisClusterStore, ExactWhileItsSlotIsResharded) {
  redis_cluster cluster;
  redis_cluster_store redis(options_for(cluster, 2000ms));
  // redis-cli moves a source's lowest slots first: find a tag in slot 0, so that moving one
  // slot moves these keys. "{<tag>}:..." keys share the tag "{<tag>" inside
  // "sluice:{{<tag>}:...}".
  std::string tag;
  for (int i = 0; tag.empty() && i < 1'000'000; ++i) {
    if (redis.slot_of("{hot" + std::to_string(i) + "}:log") == 0) tag = "hot" + std::to_string(i);
  }
  ASSERT_FALSE(tag.empty());
  const std::vector<std::string> keys = {"{" + tag + "}:log", "{" + tag + "}:counter",
                                         "{" + tag + "}:gcra"};
  for (const auto& k : keys) ASSERT_EQ(redis.slot_of(k), 0);
  const std::uint16_t source = cluster.master_of_slot(0);
  std::string source_id, target_id;
  std::uint16_t target = 0;
  for (const auto& m : cluster.masters()) {
    if (m.port == source) {
      source_id = m.id;
    } else if (target == 0) {
      target = m.port;
      target_id = m.id;
    }
  }
  ASSERT_FALSE(source_id.empty());
  ASSERT_NE(target, 0);
  // Thousands of keys in the slot make the migration take a while, with the live keys
  // moving at some point in the middle of it.
  ASSERT_EQ(cluster.command(source, {"DEBUG", "POPULATE", "20000", "{{" + tag + "}"}), "OK");
  ASSERT_EQ(cluster.command(source, {"CLUSTER", "COUNTKEYSINSLOT", "0"}), "20000");

  constexpr std::int64_t kLimit = 400;
  // Long enough that gcra (one unit back per window / limit) gives nothing back however
  // long a slow machine takes: with 1 h, a run past 9 s rightly admitted a 401st.
  constexpr auto kWindow = std::chrono::hours(24 * 30);
  std::atomic<int> admitted[3] = {0, 0, 0};
  std::atomic<int> denied{0}, failed{0}, calls{0};
  std::atomic<bool> stop{false};
  std::string first_error;
  std::mutex error_mu;
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; !stop || i < 600; ++i) {
        const std::size_t k = static_cast<std::size_t>(i + t) % 3;
        auto d = redis.acquire(req(keys[k], kLimit, kWindow, kAlgorithms[k]));
        ++calls;
        if (!d) {
          ++failed;
          std::lock_guard lock(error_mu);
          if (first_error.empty()) first_error = d.error().message();
        } else if (d->allowed) {
          ++admitted[k];
        } else {
          ++denied;
        }
      }
    });
  }
  // And bursts of asynchronous calls, which the connection batches (one batch per slot):
  // a MOVED or ASK answered to a batch comes back to each of its calls, which follow it.
  std::atomic<int> in_flight{0};
  threads.emplace_back([&] {
    for (int round = 0; !stop || round < 20; ++round) {
      for (int i = 0; i < 64; ++i) {
        const std::size_t k = static_cast<std::size_t>(i) % 3;
        ++in_flight;
        redis.async_acquire(req(keys[k], kLimit, kWindow, kAlgorithms[k]),
                            [&, k](result<decision> d) {
                              ++calls;
                              if (!d) {
                                ++failed;
                                std::lock_guard lock(error_mu);
                                if (first_error.empty()) first_error = d.error().message();
                              } else if (d->allowed) {
                                ++admitted[k];
                              } else {
                                ++denied;
                              }
                              --in_flight;
                            });
      }
      test::eventually([&] { return in_flight.load() == 0; }, 10s);
    }
  });
  std::this_thread::sleep_for(100ms);
  cluster.reshard(source_id, target_id, 1);
  stop = true;
  for (auto& t : threads) t.join();
  ASSERT_EQ(in_flight.load(), 0);

  EXPECT_EQ(failed.load(), 0) << first_error;
  EXPECT_EQ(admitted[0] + admitted[1] + admitted[2] + denied.load(), calls.load());
  for (std::size_t k = 0; k < 3; ++k) EXPECT_EQ(admitted[k].load(), kLimit) << keys[k];
  EXPECT_EQ(cluster.master_of_slot(0), target);
  for (const auto& k : keys) {
    EXPECT_EQ(cluster.command(target, {"EXISTS", redis.redis_key(k)}), "1") << k;
  }
  const auto s = redis.stats();
  EXPECT_GT(s.asks + s.moved, 0u) << "the move was never seen";
  EXPECT_GT(s.batches, 0u);
  std::printf("%d calls, %d admitted, %d denied; %llu ASK, %llu MOVED followed\n", calls.load(),
              admitted[0] + admitted[1] + admitted[2], denied.load(),
              static_cast<unsigned long long>(s.asks), static_cast<unsigned long long>(s.moved));
}

// Returns the keys each master holds (DBSIZE), by port.
std::map<std::uint16_t, long long> dbsize_by_master(const redis_cluster& cluster) {
  std::map<std::uint16_t, long long> out;
  for (const auto& m : cluster.masters()) {
    out[m.port] = std::stoll(cluster.command(m.port, {"DBSIZE"}));
  }
  return out;
}

// Acquires on 60 keys `<stem><i>` and checks that each was allowed and that every master
// holds some of them, with no error.
void expect_decides_on_every_master(const redis_cluster& cluster, redis_cluster_store& redis,
                                    const std::string& stem) {
  constexpr int kKeys = 60;
  for (int i = 0; i < kKeys; ++i) {
    auto d = redis.acquire(req(stem + std::to_string(i), 5, 60s, kAlgorithms[i % 3]));
    ASSERT_TRUE(d) << d.error().message();
    EXPECT_TRUE(d->allowed);
  }
  long long total = 0;
  for (const auto& [port, n] : dbsize_by_master(cluster)) {
    EXPECT_GT(n, 0) << "master " << port;
    total += n;
  }
  EXPECT_EQ(total, kKeys);
  EXPECT_EQ(redis.stats().masters, 3u);
  EXPECT_EQ(redis.stats().slots_served, 16384u);
  EXPECT_EQ(redis.stats().errors, 0u);
}

// Verifies that a store given the password in its URI authenticates on every master: it
// decides on keys spread over all of them. With a wrong password every call fails as
// unavailable, saying that AUTH was refused.
TEST(RedisClusterStore, AuthenticatesOnEveryNode) {
  test::redis_cluster_options co;
  co.password = "s3cret:@/%";  // every character of it needs %-encoding in the URI
  redis_cluster cluster(co);
  auto o = parse_redis_cluster_uri(cluster.full_uri());
  ASSERT_TRUE(o) << o.error().message();
  EXPECT_EQ(o->connection.password, co.password);
  {
    redis_cluster_store redis(*o);
    expect_decides_on_every_master(cluster, redis, "auth:");
  }
  o->connection.password = "wrong";
  o->connection.connect_timeout = 500ms;
  redis_cluster_store wrong(*o);
  EXPECT_FALSE(wrong.health().ready);
  auto d = wrong.acquire(req("auth:0", 5, 60s, algorithm::gcra));
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, errc::store_unavailable);
  EXPECT_NE(d.error().message().find("AUTH refused"), std::string::npos) << d.error().message();
  EXPECT_NE(d.error().message().find("WRONGPASS"), std::string::npos) << d.error().message();
}

// Verifies that a rediss+cluster:// store speaks TLS to every master, checking each node's
// certificate (IP 127.0.0.1) against the CA in tls_ca: it decides on keys spread over all
// of them. With an unrelated CA every call fails as unavailable, saying the TLS handshake
// failed on certificate verification.
TEST(RedisClusterStore, TlsToEveryNode) {
  test::redis_cluster_options co;
  co.tls = true;
  redis_cluster cluster(co);
  auto o = parse_redis_cluster_uri(cluster.full_uri());
  ASSERT_TRUE(o) << o.error().message();
  ASSERT_TRUE(o->connection.tls);
  {
    redis_cluster_store redis(*o);
    expect_decides_on_every_master(cluster, redis, "tls:");
  }
  o->connection.tls_ca_file = cluster.other_ca_file().string();
  o->connection.connect_timeout = 500ms;
  redis_cluster_store wrong(*o);
  EXPECT_FALSE(wrong.health().ready);
  auto d = wrong.acquire(req("tls:0", 5, 60s, algorithm::gcra));
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, errc::store_unavailable);
  EXPECT_NE(d.error().message().find("TLS handshake"), std::string::npos) << d.error().message();
  EXPECT_NE(d.error().message().find("certificate verify failed"), std::string::npos)
      << d.error().message();
}

}  // namespace
}  // namespace sluice
