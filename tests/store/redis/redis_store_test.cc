// The Redis store against a real redis-server on a free loopback port (tests/support).
#include "sluice/redis_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cli/bench.h"
#include "sluice/memory_store.h"
#include "store/redis/store_checks.h"
#include "support/redis_server.h"

#include "support/test_util.h"

namespace sluice {
namespace {

using namespace std::chrono_literals;
using std::chrono::microseconds;
using test::redis_server;

constexpr algorithm kAlgorithms[] = {algorithm::sliding_log, algorithm::sliding_counter,
                                     algorithm::gcra};

redis_store_options options_for(const redis_server& server) {
  auto o = parse_redis_uri(server.full_uri());
  EXPECT_TRUE(o) << o.error().message();
  o->timeout = 1000ms;  // generous: sanitizer builds on a busy machine are slow
  o->reconnect_min = 5ms;
  o->reconnect_max = 50ms;
  return *o;
}

request req(std::string_view key, std::int64_t count, microseconds window, algorithm a,
            std::int64_t cost = 1, std::optional<microseconds> now = {}) {
  return request{key, limit{count, window}, a, cost, now};
}

// Polls `ready` for up to `limit` (bounded waiting for a reconnect, not timing).
using test::eventually;

// Verifies that random sequences with explicit times get exactly the memory store's
// decisions from the Lua scripts, for every algorithm (the conformance suite).
TEST(RedisStore, ConformsToTheMemoryStore) {
  redis_server server;
  redis_store redis(options_for(server));
  test::expect_same_decisions_as_memory(redis);
}

// Verifies that refunds and acquire_all (repeated keys, checks of cost 0, requests at
// different times, denials) get exactly the memory store's answers from the scripts, for
// every algorithm.
TEST(RedisStore, RefundsAndAcquireAllConformToTheMemoryStore) {
  redis_server server;
  redis_store redis(options_for(server));
  test::expect_same_acquire_all_and_refunds_as_memory(redis);
  EXPECT_EQ(redis.stats().errors, 0u);
}

// Returns what Redis holds for `key`: the members and scores of a sorted set, or a string,
// or "(nil)".
std::string raw_state(const redis_server& server, const std::string& key) {
  const std::string type = server.command({"TYPE", key});
  if (type == "zset") return server.command({"ZRANGE", key, "0", "-1", "WITHSCORES"});
  if (type == "string") return server.command({"GET", key});
  return type;
}

// Verifies all or nothing: an admitted acquire_all charges every key; a denied one changes
// no key in Redis (not even one holding another algorithm's state), and answers for each
// request what a peek of it alone answers.
TEST(RedisStore, AcquireAllIsAllOrNothing) {
  redis_server server;
  redis_store redis(options_for(server));
  const microseconds now{1'800'000'000'000'000};
  const limit three{3, std::chrono::hours(1)};
  // `switch` holds a sliding_log; the calls below ask for it as gcra.
  ASSERT_TRUE(redis.acquire(req("switch", 5, 1h, algorithm::sliding_log, 1, now))->allowed);
  const request first[] = {{"log", three, algorithm::sliding_log, 1, now},
                           {"counter", three, algorithm::sliding_counter, 1, now},
                           {"gcra", three, algorithm::gcra, 1, now}};
  auto admitted = redis.acquire_all(first);
  ASSERT_TRUE(admitted) << admitted.error().message();
  for (const decision& d : *admitted) {
    EXPECT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 2);
  }
  EXPECT_EQ(server.command({"ZCARD", "sluice:log"}), "1");
  EXPECT_EQ(server.command({"GET", "sluice:counter"}), "1800000000000000 0 1");
  EXPECT_EQ(server.command({"GET", "sluice:gcra"}), "1800001200000000");             // now + 1h / 3
  ASSERT_TRUE(redis.acquire(req("gcra", 3, 1h, algorithm::gcra, 2, now))->allowed);  // full

  const std::vector<std::string> keys = {"sluice:log", "sluice:counter", "sluice:gcra",
                                         "sluice:switch"};
  std::vector<std::string> before;
  for (const auto& k : keys) before.push_back(raw_state(server, k));
  const request second[] = {{"log", three, algorithm::sliding_log, 2, now},
                            {"counter", three, algorithm::sliding_counter, 1, now},
                            {"switch", three, algorithm::gcra, 1, now},
                            {"gcra", three, algorithm::gcra, 1, now}};
  auto denied = redis.acquire_all(second);
  ASSERT_TRUE(denied) << denied.error().message();
  ASSERT_EQ(denied->size(), 4u);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(raw_state(server, keys[i]), before[i]) << keys[i];
  }
  for (std::size_t i = 0; i < 4; ++i) {
    auto alone = redis.peek(second[i]);
    ASSERT_TRUE(alone);
    EXPECT_EQ((*denied)[i], *alone) << "request " << i;
  }
  EXPECT_TRUE((*denied)[0].allowed);
  EXPECT_FALSE((*denied)[3].allowed);
  EXPECT_GT((*denied)[3].retry_after.count(), 0);
}

// Verifies that requests on one key are merged (costs added, one decision each), and that
// bad input is refused before anything is sent: limits that disagree on a key, summed
// costs past the count, negative costs, empty keys, too many requests, times Lua cannot
// hold exactly. No requests: no decisions.
TEST(RedisStore, AcquireAllMergesRepeatedKeysAndChecksInput) {
  redis_server server;
  redis_store redis(options_for(server));
  const limit ten{10, std::chrono::hours(1)};
  const request merged[] = {{"k", ten, algorithm::sliding_log, 2, {}},
                            {"other", ten, algorithm::gcra, 1, {}},
                            {"k", ten, algorithm::sliding_log, 3, {}}};
  auto d = redis.acquire_all(merged);
  ASSERT_TRUE(d) << d.error().message();
  ASSERT_EQ(d->size(), 3u);
  EXPECT_EQ((*d)[0], (*d)[2]);
  EXPECT_EQ((*d)[0].remaining, 5);
  EXPECT_EQ((*d)[1].remaining, 9);
  EXPECT_EQ(server.command({"ZCARD", "sluice:k"}), "5");
  EXPECT_EQ(redis.stats().requests, 1u) << "one script run";

  auto code = [&](std::vector<request> rs) {
    auto r = redis.acquire_all(rs);
    return r ? std::error_code() : r.error().code;
  };
  const limit five{5, std::chrono::hours(1)};
  EXPECT_EQ(
      code({{"k", ten, algorithm::sliding_log, 1, {}}, {"k", five, algorithm::sliding_log, 1, {}}}),
      make_error_code(errc::invalid_key));
  EXPECT_EQ(code({{"k", ten, algorithm::sliding_log, 1, {}}, {"k", ten, algorithm::gcra, 1, {}}}),
            make_error_code(errc::invalid_key));
  EXPECT_EQ(
      code({{"k", ten, algorithm::sliding_log, 6, {}}, {"k", ten, algorithm::sliding_log, 5, {}}}),
      make_error_code(errc::cost_exceeds_limit));
  EXPECT_EQ(code({{"k", ten, algorithm::sliding_log, 11, {}}}),
            make_error_code(errc::cost_exceeds_limit));
  EXPECT_EQ(code({{"k", ten, algorithm::sliding_log, -1, {}}}),
            make_error_code(errc::invalid_cost));
  EXPECT_EQ(code({{"a", ten, algorithm::gcra, 1, {}}, {"", ten, algorithm::gcra, 1, {}}}),
            make_error_code(errc::invalid_key));
  EXPECT_EQ(code({{"k", ten, algorithm::gcra, 0, microseconds{std::int64_t{1} << 60}}}),
            make_error_code(errc::invalid_time));
  EXPECT_EQ(code(std::vector<request>(max_requests_per_call + 1,
                                      request{"k", ten, algorithm::gcra, 0, {}})),
            make_error_code(errc::invalid_cost));
  EXPECT_EQ(redis.stats().requests, 1u) << "bad input reached Redis";
  auto none = redis.acquire_all({});
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
}

// Verifies that a request of cost 0 only checks: allowed while one unit is available,
// spending nothing, and denying the whole call when its key is full.
TEST(RedisStore, AcquireAllCostZeroOnlyChecks) {
  redis_server server;
  redis_store redis(options_for(server));
  for (const algorithm a : kAlgorithms) {
    const std::string name(to_string(a));
    const limit two{2, std::chrono::hours(1)};
    ASSERT_TRUE(redis.acquire(req("checked:" + name, 2, 1h, a))->allowed);
    const std::string checked = "checked:" + name, spent = "spent:" + name;
    const request rs[] = {{checked, two, a, 0, {}}, {spent, two, a, 1, {}}};
    auto d = redis.acquire_all(rs);
    ASSERT_TRUE(d) << d.error().message();
    EXPECT_TRUE((*d)[0].allowed) << name;
    EXPECT_EQ((*d)[0].remaining, 1) << name << ": the check's peek of one unit";
    EXPECT_TRUE((*d)[1].allowed) << name;
    EXPECT_EQ(redis.peek(req(checked, 2, 1h, a))->remaining, 1) << name << ": nothing spent";
    ASSERT_TRUE(redis.acquire(req(checked, 2, 1h, a))->allowed);  // now full
    auto denied = redis.acquire_all(rs);
    ASSERT_TRUE(denied);
    EXPECT_FALSE((*denied)[0].allowed) << name;
    EXPECT_TRUE((*denied)[1].allowed) << name << ": alone it would be";
    EXPECT_EQ(redis.peek(req(spent, 2, 1h, a))->remaining, 1) << name << ": not charged";
  }
}

// Verifies refunds: units come back up to what was spent, never past the full limit; a key
// with nothing spent is left alone; sliding_log gives back its newest members and keeps
// the TTL of the newest left (window + 60 s, and 60 s more for an explicit time).
TEST(RedisStore, RefundGivesBackWhatWasSpentAndNoMore) {
  redis_server server;
  redis_store redis(options_for(server));
  const microseconds now{1'800'000'000'000'000};
  for (const algorithm a : kAlgorithms) {
    const std::string key = "refund:" + std::string(to_string(a));
    ASSERT_TRUE(redis.acquire(req(key, 10, 1h, a, 3, now))->allowed);
    auto back = redis.refund(req(key, 10, 1h, a, 2, now));
    ASSERT_TRUE(back) << back.error().message();
    EXPECT_TRUE(back->allowed);
    EXPECT_EQ(back->remaining, 9) << to_string(a) << ": one unit still spent";
    auto full = redis.refund(req(key, 10, 1h, a, 10, now));
    ASSERT_TRUE(full);
    EXPECT_EQ(full->remaining, 10) << to_string(a) << ": never more than the limit";
    EXPECT_EQ(redis.acquire(req(key, 10, 1h, a, 10, now))->remaining, 0);
    auto fresh = redis.refund(req("untouched:" + std::string(to_string(a)), 10, 1h, a, 1, now));
    ASSERT_TRUE(fresh);
    EXPECT_EQ(fresh->remaining, 10);
    EXPECT_EQ(server.command({"EXISTS", "sluice:untouched:" + std::string(to_string(a))}), "0");
  }
  EXPECT_EQ(server.command({"ZCARD", "sluice:refund:sliding_log"}), "10");
  // sliding_log: the newest member goes, and the TTL follows the newest left: 1 h + 60 s
  // + 60 s (an explicit time) after it, counted from the call's time.
  ASSERT_TRUE(redis.acquire(req("ttl", 5, 1h, algorithm::sliding_log, 1, now))->allowed);
  ASSERT_TRUE(redis.acquire(req("ttl", 5, 1h, algorithm::sliding_log, 1, now + 600s))->allowed);
  const long long long_ttl = std::stoll(server.command({"PTTL", "sluice:ttl"}));
  EXPECT_LE(long_ttl, 3720'000);
  EXPECT_GT(long_ttl, 3715'000);
  ASSERT_TRUE(redis.refund(req("ttl", 5, 1h, algorithm::sliding_log, 1, now + 600s)));
  EXPECT_EQ(server.command({"ZRANGE", "sluice:ttl", "0", "-1", "WITHSCORES"}).find("1800000600"),
            std::string::npos)
      << "the newest member is the one given back";
  const long long short_ttl = std::stoll(server.command({"PTTL", "sluice:ttl"}));
  EXPECT_LE(short_ttl, 3120'000);
  EXPECT_GT(short_ttl, 3115'000);
  // Given back entirely, the key is gone (an empty sorted set is no key).
  ASSERT_TRUE(redis.refund(req("ttl", 5, 1h, algorithm::sliding_log, 5, now + 600s)));
  EXPECT_EQ(server.command({"EXISTS", "sluice:ttl"}), "0");
}

// Verifies that 1,000 acquire_all calls racing from 16 threads over 4 connections, each on a
// user (100/1m) and its IP (150/1m), 10 users on 2 IPs, admit exactly each IP's limit,
// count every admitted call on both keys and no denied one, for every algorithm (at one
// explicit time) and for sliding_log on the server's clock.
TEST(RedisStore, AcquireAllIsExactUnderConcurrency) {
  redis_server server;
  auto o = options_for(server);
  o.pool = 4;
  redis_store redis(o);
  const microseconds now{1'800'000'000'000'000};
  for (const algorithm a : kAlgorithms) {
    const auto got = test::race_acquire_all(redis, a, now, std::string(to_string(a)) + ":");
    EXPECT_EQ(got.calls_admitted, 300) << to_string(a);
    for (const char* ip : {"ip:0", "ip:1"}) {
      EXPECT_EQ(got.admitted.at(std::string(to_string(a)) + ":" + ip), 150) << to_string(a);
    }
  }
  const auto got = test::race_acquire_all(redis, algorithm::sliding_log, {}, "clock:");
  EXPECT_EQ(got.calls_admitted, 300);
  for (const auto& [key, admitted] : got.admitted) {
    EXPECT_EQ(server.command({"ZCARD", "sluice:" + key}), std::to_string(admitted)) << key;
  }
}

// Verifies the reference's layout for sliding_log: `<prefix>:<key>` is a sorted set with one
// member per admitted unit, scored in Unix seconds, with a TTL of window + 60 s; denied
// requests and peeks record nothing; reset deletes the key.
TEST(RedisStore, SlidingLogUsesTheReferenceLayout) {
  redis_server server;
  auto o = options_for(server);
  o.key_prefix = "chrysopedia:ratelimit";
  redis_store redis(o);
  const std::string key = "chat:user42";
  const std::string full = "chrysopedia:ratelimit:" + key;
  for (int i = 0; i < 3; ++i) {
    auto d = redis.acquire(req(key, 5, 3600s, algorithm::sliding_log, i == 2 ? 2 : 1));
    ASSERT_TRUE(d && d->allowed);
  }
  EXPECT_EQ(server.command({"TYPE", full}), "zset");
  EXPECT_EQ(server.command({"ZCARD", full}), "4");
  ASSERT_FALSE(redis.acquire(req(key, 5, 3600s, algorithm::sliding_log, 2))->allowed);
  ASSERT_TRUE(redis.peek(req(key, 5, 3600s, algorithm::sliding_log))->allowed);
  EXPECT_EQ(server.command({"ZCARD", full}), "4");
  const double ttl = std::stod(server.command({"TTL", full}));
  EXPECT_GT(ttl, 3600 + 50);
  EXPECT_LE(ttl, 3600 + 60);
  // Scores are the server's time in seconds; members are "<score>:<token>:<n>".
  const std::string time = server.command({"TIME"});                                   // "[s, us]"
  const std::string first = server.command({"ZRANGE", full, "0", "0", "WITHSCORES"});  // "[m, s]"
  const std::string score = first.substr(first.find(", ") + 2, first.size() - first.find(", ") - 3);
  EXPECT_NEAR(std::stod(score), std::stod(time.substr(1)), 5.0);
  EXPECT_TRUE(first.substr(1).starts_with(score.substr(0, score.find('.')))) << first;
  ASSERT_TRUE(redis.reset(key));
  EXPECT_EQ(server.command({"EXISTS", full}), "0");
}

// Verifies that 1,000 acquires racing on one key from 8 threads over 4 connections admit
// exactly the limit, for every algorithm.
TEST(RedisStore, ExactUnderConcurrency) {
  redis_server server;
  auto o = options_for(server);
  o.pool = 4;
  redis_store redis(o);
  for (const algorithm a : kAlgorithms) {
    const auto got = test::race_on_one_key(redis, a, "race:" + std::string(to_string(a)));
    EXPECT_EQ(got.failed, 0) << to_string(a);
    EXPECT_EQ(got.admitted, 100) << to_string(a);
  }
}

// Verifies that separate processes (`sluice eval`) racing on one key admit exactly the limit.
TEST(RedisStore, ExactAcrossProcesses) {
  redis_server server;
  const std::filesystem::path input = server.dir() / "requests.eval";
  {
    std::ofstream out(input);
    for (int i = 0; i < 100; ++i) out << "procs:shared 100/1h sliding_log\n";
  }
  std::vector<test::process_result> results(10);
  std::vector<std::thread> processes;
  for (std::size_t p = 0; p < results.size(); ++p) {
    processes.emplace_back([&, p] {
      results[p] = test::run_process(
          {SLUICE_CLI_PATH, "eval", "--store", server.uri() + "?timeout=2s", input.string()});
    });
  }
  for (auto& t : processes) t.join();
  int admitted = 0, decided = 0;
  for (const auto& r : results) {
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (std::size_t at = 0; (at = r.out.find("\"allowed\":", at)) != std::string::npos; ++at) {
      ++decided;
      if (r.out.compare(at, 15, "\"allowed\":true,") == 0) ++admitted;
    }
  }
  EXPECT_EQ(decided, 1000);
  EXPECT_EQ(admitted, 100);
}

// Verifies `sluice check --on-failure`: with Redis up the store decides (no "fallback");
// with Redis down each key gets the failure mode's decision, marked "fallback", and the exit
// status follows it; without the option a key gets an error (exit 2).
TEST(RedisStore, CheckAppliesTheFailureModeWhenAsked) {
  redis_server server;
  const std::string uri = server.uri() + "?connect_timeout=200ms";
  auto check = [&](std::vector<std::string> extra) {
    std::vector<std::string> argv = {SLUICE_CLI_PATH, "check", "--store", uri, "--limit", "5/1m"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return test::run_process(argv);
  };
  auto up = check({"--on-failure", "deny", "k"});
  EXPECT_EQ(up.exit_code, 0) << up.out << up.err;
  EXPECT_EQ(up.out.find("fallback"), std::string::npos) << up.out;
  EXPECT_NE(up.out.find(R"("remaining":4)"), std::string::npos) << up.out;
  server.stop();
  auto plain = check({"k"});
  EXPECT_EQ(plain.exit_code, 2);
  EXPECT_NE(plain.out.find(R"("error":)"), std::string::npos) << plain.out;
  auto deny = check({"--on-failure", "deny", "k"});
  EXPECT_EQ(deny.exit_code, 1);
  EXPECT_NE(deny.out.find(R"("fallback":"deny","allowed":false)"), std::string::npos) << deny.out;
  EXPECT_NE(deny.err.find("failed closed"), std::string::npos) << deny.err;  // the warning
  auto allow = check({"--on-failure", "allow", "k"});
  EXPECT_EQ(allow.exit_code, 0);
  EXPECT_NE(allow.out.find(R"("fallback":"allow","allowed":true)"), std::string::npos) << allow.out;
}

// Verifies that with Redis stopped, calls fail at once with store_unavailable (well under
// the deadline), and that the store reconnects on its own within a second of Redis coming
// back (its handshake loads the scripts into the new, empty server).
TEST(RedisStore, SurvivesARestart) {
  redis_server server;
  auto o = options_for(server);
  o.timeout = 100ms;
  redis_store redis(o);
  ASSERT_TRUE(redis.acquire(req("restart", 10, 1h, algorithm::gcra)));
  server.stop();
  ASSERT_TRUE(eventually([&] { return !redis.health().ready; }));
  std::vector<std::chrono::microseconds> latencies;
  for (int i = 0; i < 200; ++i) {
    const auto start = std::chrono::steady_clock::now();
    auto d = redis.acquire(req("restart", 10, 1h, algorithm::gcra));
    latencies.push_back(std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now() - start));
    ASSERT_FALSE(d);
    EXPECT_EQ(d.error().code, make_error_code(errc::store_unavailable)) << d.error().message();
  }
  std::sort(latencies.begin(), latencies.end());
  EXPECT_LT(latencies[latencies.size() * 99 / 100], o.timeout);
  server.start();
  const auto back = std::chrono::steady_clock::now();
  ASSERT_TRUE(eventually([&] { return redis.health().ready; }, 5s));
  EXPECT_LT(std::chrono::steady_clock::now() - back, 1s);
  auto d = redis.acquire(req("restart", 10, 1h, algorithm::gcra));
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_TRUE(d->allowed);
  EXPECT_GE(redis.stats().reconnects, 1u);
}

// Verifies that SCRIPT FLUSH mid-run costs nothing but a resend: no call fails, on the
// single-key scripts and on acquire_all's.
TEST(RedisStore, ScriptFlushIsTransparent) {
  redis_server server;
  redis_store redis(options_for(server));
  for (int round = 0; round < 3; ++round) {
    for (const algorithm a : kAlgorithms) {
      auto d = redis.acquire(req("flush:" + std::string(to_string(a)), 100, 1h, a));
      ASSERT_TRUE(d) << d.error().message();
      EXPECT_TRUE(d->allowed);
    }
    EXPECT_EQ(server.command({"SCRIPT", "FLUSH"}), "OK");
    const request rs[] = {{"flush:all", limit{100, std::chrono::hours(1)}, algorithm::gcra, 1, {}}};
    auto all = redis.acquire_all(rs);
    ASSERT_TRUE(all) << all.error().message();
    EXPECT_TRUE((*all)[0].allowed);
    EXPECT_EQ(server.command({"SCRIPT", "FLUSH"}), "OK");
  }
  EXPECT_GE(redis.stats().script_loads, 6u);
}

// Verifies that a wrong password is a clear error, and that passwords and ACL users work.
TEST(RedisStore, AuthenticatesWithPasswordOrAclUser) {
  test::redis_server_options so;
  so.password = "right horse";
  so.acl_user = "app";
  so.acl_password = "battery staple";
  redis_server server(so);
  auto o = options_for(server);
  {
    redis_store redis(o);  // the default user with its password
    auto d = redis.acquire(req("auth", 1, 1s, algorithm::gcra));
    ASSERT_TRUE(d) << d.error().message();
  }
  {
    auto acl = o;
    acl.username = "app";
    acl.password = "battery staple";
    redis_store redis(acl);
    ASSERT_TRUE(redis.acquire(req("auth2", 1, 1s, algorithm::gcra)));
  }
  auto wrong = o;
  wrong.password = "wrong";
  redis_store redis(wrong);
  EXPECT_FALSE(redis.health().ready);
  auto d = redis.acquire(req("auth", 1, 1s, algorithm::gcra));
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, make_error_code(errc::store_unavailable));
  EXPECT_NE(d.error().message().find("AUTH"), std::string::npos) << d.error().message();
  EXPECT_NE(d.error().message().find("WRONGPASS"), std::string::npos) << d.error().message();
  EXPECT_EQ(d.error().message().find("wrong\""), std::string::npos);  // no password echoed
}

// Verifies TLS: rediss:// with the server's CA works; with another CA the handshake is
// refused with a clear error.
TEST(RedisStore, TlsVerifiesTheServer) {
  test::redis_server_options so;
  so.tls = true;
  redis_server server(so);
  auto o = options_for(server);
  ASSERT_TRUE(o.tls);
  {
    redis_store redis(o);
    auto d = redis.acquire(req("tls", 2, 1s, algorithm::sliding_log));
    ASSERT_TRUE(d) << d.error().message();
    EXPECT_TRUE(d->allowed);
  }
  o.tls_ca_file = server.other_ca_file().string();
  redis_store redis(o);
  EXPECT_FALSE(redis.health().ready);
  auto d = redis.acquire(req("tls", 2, 1s, algorithm::sliding_log));
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message().find("TLS"), std::string::npos) << d.error().message();
}

// Verifies that a Unix socket works like TCP, and that SELECT puts keys in the chosen db.
TEST(RedisStore, UnixSocketAndDatabase) {
  test::redis_server_options so;
  so.unix_socket = true;
  redis_server server(so);
  auto o = parse_redis_uri("unix://" + server.unix_socket().string() + "?db=3&prefix=p");
  ASSERT_TRUE(o) << o.error().message();
  redis_store redis(*o);
  ASSERT_TRUE(redis.acquire(req("u", 5, 1h, algorithm::sliding_counter)));
  EXPECT_EQ(server.command({"EXISTS", "p:u"}), "0");
  EXPECT_EQ(server.commands({{"SELECT", "3"}, {"EXISTS", "p:u"}})[1], "1");
  // An empty prefix keeps the key verbatim, as the reference limiter names its keys.
  auto bare = parse_redis_uri("unix://" + server.unix_socket().string() + "?prefix=");
  ASSERT_TRUE(bare) << bare.error().message();
  redis_store verbatim(*bare);
  ASSERT_TRUE(verbatim.acquire(req("chrysopedia:ratelimit:s:u", 5, 1h, algorithm::sliding_log)));
  EXPECT_EQ(server.command({"TYPE", "chrysopedia:ratelimit:s:u"}), "zset");
  EXPECT_EQ(server.command({"EXISTS", ":chrysopedia:ratelimit:s:u"}), "0");
}

// Verifies that servers answering garbage, hanging up, or never answering give clear errors
// within the deadline, and never a crash, for decisions, acquire_all and refunds.
TEST(RedisStore, BadServersAreErrorsNotCrashes) {
  for (const auto& [reply, behaviour] :
       std::vector<std::pair<std::string, test::fake_resp_behaviour>>{
           {"!garbage\r\n", test::fake_resp_behaviour::reply_to_each_read},
           {"*2\r\n$-5\r\nxx\r\n", test::fake_resp_behaviour::reply_to_each_read},
           {"+OK\r\n", test::fake_resp_behaviour::reply_to_each_read},
           {":1\r\n", test::fake_resp_behaviour::reply_once_then_close},
           {"", test::fake_resp_behaviour::close_on_accept},
           {"", test::fake_resp_behaviour::reply_to_each_read},  // never answers
       }) {
    test::fake_resp_server fake(reply, behaviour);
    auto o = parse_redis_uri(fake.uri());
    ASSERT_TRUE(o);
    o->timeout = 100ms;
    o->connect_timeout = 200ms;
    redis_store redis(*o);
    EXPECT_FALSE(redis.health().ready);
    auto d = redis.acquire(req("k", 1, 1s, algorithm::gcra));
    ASSERT_FALSE(d) << "reply " << reply;
    EXPECT_FALSE(d.error().message().empty());
    const request rs[] = {{"k", limit{1, std::chrono::seconds(1)}, algorithm::gcra, 1, {}},
                          {"j", limit{1, std::chrono::seconds(1)}, algorithm::gcra, 0, {}}};
    auto all = redis.acquire_all(rs);
    ASSERT_FALSE(all) << "reply " << reply;
    EXPECT_FALSE(all.error().message().empty());
    auto back = redis.refund(req("k", 1, 1s, algorithm::gcra));
    ASSERT_FALSE(back) << "reply " << reply;
  }
}

// Verifies that a server that hangs (SIGSTOP) makes calls time out at their deadline, and
// that the store recovers when it resumes.
TEST(RedisStore, HungServerTimesOutThenRecovers) {
  redis_server server;
  auto o = options_for(server);
  o.timeout = 100ms;
  redis_store redis(o);
  ASSERT_TRUE(redis.acquire(req("hang", 100, 1h, algorithm::gcra)));
  server.pause();
  const auto start = std::chrono::steady_clock::now();
  auto d = redis.acquire(req("hang", 100, 1h, algorithm::gcra));
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, make_error_code(errc::timeout));
  EXPECT_GE(took, 90ms);
  EXPECT_LT(took, 1s);
  server.resume();
  ASSERT_TRUE(
      eventually([&] { return bool(redis.acquire(req("hang", 100, 1h, algorithm::gcra))); }));
  EXPECT_GE(redis.stats().timeouts, 1u);
}

// Verifies bad input: empty keys, bad costs, times Lua cannot hold exactly.
TEST(RedisStore, RejectsBadInputBeforeSendingIt) {
  redis_server server;
  redis_store redis(options_for(server));
  EXPECT_EQ(redis.acquire(req("", 1, 1s, algorithm::gcra)).error().code,
            make_error_code(errc::invalid_key));
  EXPECT_EQ(redis.acquire(req("k", 2, 1s, algorithm::gcra, 3)).error().code,
            make_error_code(errc::cost_exceeds_limit));
  EXPECT_EQ(redis.acquire(req("k", 2, 1s, algorithm::gcra, 1, microseconds{std::int64_t{1} << 60}))
                .error()
                .code,
            make_error_code(errc::invalid_time));
  EXPECT_EQ(redis.stats().requests, 0u);
}

// Verifies that a key used with another algorithm starts fresh, as on the memory store,
// instead of failing with WRONGTYPE.
TEST(RedisStore, ChangingAlgorithmStartsFresh) {
  redis_server server;
  redis_store redis(options_for(server));
  ASSERT_TRUE(redis.acquire(req("switch", 1, 1h, algorithm::sliding_log))->allowed);
  auto g = redis.acquire(req("switch", 1, 1h, algorithm::gcra));
  ASSERT_TRUE(g) << g.error().message();
  EXPECT_TRUE(g->allowed);
  auto c = redis.acquire(req("switch", 1, 1h, algorithm::sliding_counter));
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_TRUE(c->allowed);
  auto l = redis.acquire(req("switch", 1, 1h, algorithm::sliding_log));
  ASSERT_TRUE(l) << l.error().message();
  EXPECT_TRUE(l->allowed);
}

// Verifies that async calls complete exactly once each, on success and when Redis is gone.
TEST(RedisStore, AsyncCallsCompleteExactlyOnce) {
  redis_server server;
  redis_store redis(options_for(server));
  std::atomic<int> completions{0}, allowed{0};
  for (int i = 0; i < 500; ++i) {
    redis.async_acquire(req("async", 100, 1h, algorithm::sliding_log), [&](result<decision> d) {
      if (d && d->allowed) ++allowed;
      ++completions;
    });
  }
  ASSERT_TRUE(eventually([&] { return completions.load() == 500; }));
  EXPECT_EQ(allowed.load(), 100);
  server.kill();
  std::atomic<int> failures{0};
  for (int i = 0; i < 50; ++i) {
    redis.async_acquire(req("async", 100, 1h, algorithm::sliding_log), [&](result<decision> d) {
      if (!d) ++failures;
      ++completions;
    });
  }
  ASSERT_TRUE(eventually([&] { return completions.load() == 550; }));
  EXPECT_EQ(failures.load(), 50);
}

// Verifies `sluice bench` against Redis: many calls in flight over the async API, each
// answered once, and the limit exact per key (4 keys x 5 = 20 admitted).
TEST(RedisStore, BenchDrivesTheAsyncApi) {
  redis_server server;
  redis_store redis(options_for(server));
  cli::bench_options o;
  o.limit = limit{5, std::chrono::hours(1)};
  o.keys = 4;
  o.seconds = std::chrono::duration<double>(0.3);
  o.inflight = 64;
  const cli::bench_report r = cli::run_bench(redis, o);
  EXPECT_EQ(r.errors + r.timeouts, 0u);
  EXPECT_EQ(r.allowed, 20u);
  EXPECT_EQ(r.allowed + r.denied, r.decisions);
  EXPECT_GT(r.decisions, 100u);
}

// --- batches ----------------------------------------------------------------------------

// Verifies that decisions made in batch script runs are exactly the memory store's, made
// one by one, with the largest batch at 1 (off), 2, 17, 512 and the default: acquires,
// peeks, refunds and resets on mixed keys and algorithms, in bursts the connection writes
// at once.
TEST(RedisStore, BatchesConformToTheMemoryStore) {
  redis_server server;
  struct run {
    std::size_t batch, burst;
    int bursts;
  };
  for (const run r : {run{1, 40, 4}, run{2, 40, 6}, run{17, 60, 6}, run{512, 600, 2},
                      run{redis_store_options{}.batch, 300, 3}}) {
    SCOPED_TRACE("batch=" + std::to_string(r.batch));
    auto o = options_for(server);
    o.batch = r.batch;
    redis_store redis(o);
    const int compared =
        test::expect_same_decisions_as_memory_in_bursts(redis, r.burst, r.bursts, 7 + r.batch);
    EXPECT_GT(compared, static_cast<int>(r.burst) * r.bursts * 3 / 4);
    const auto st = redis.stats();
    EXPECT_EQ(st.errors, 0u);
    if (r.batch <= 1) {
      EXPECT_EQ(st.batches, 0u);
    } else {
      EXPECT_GT(st.batches, 0u);
      // Resets split bursts; the batches are still as full as they can be on average.
      EXPECT_GE(st.batched, st.batches * std::min<std::size_t>(r.batch, 4));
    }
  }
}

// Verifies that 6,000 acquires racing on one key, all in flight at once and batched (the
// key's calls coalesced in each run), admit exactly the limit, for every algorithm.
TEST(RedisStore, BatchesAreExactUnderConcurrency) {
  redis_server server;
  auto o = options_for(server);
  o.timeout = 30s;  // all in flight at once: a sanitizer build on a busy machine is slow
  redis_store redis(o);
  for (const algorithm a : kAlgorithms) {
    const auto got =
        test::race_async_on_one_key(redis, a, "batch-race:" + std::string(to_string(a)), 6000);
    EXPECT_EQ(got.failed, 0) << to_string(a);
    EXPECT_EQ(got.admitted, 100) << to_string(a);
  }
  EXPECT_GT(redis.stats().batches, 0u);
}

// Verifies that an acquire_all on one key is that key's single-key call, so it joins the
// connection's batches: 300 of them queued at once (a fifth only checks, cost 0) admit
// exactly the limit, checks spend nothing and answer as a one-unit peek would, and every
// call is decided in a batch run rather than by the multi-key script.
TEST(RedisStore, OneKeyAcquireAllJoinsBatches) {
  redis_server server;
  auto o = options_for(server);
  o.timeout = 30s;
  redis_store redis(o);
  for (const algorithm a : kAlgorithms) {
    const std::string key = "lone:" + std::string(to_string(a));
    const auto before = redis.stats().batched;
    constexpr int kCalls = 300;
    std::atomic<int> admitted{0}, failed{0}, answered{0}, checks_allowed{0};
    {
      test::io_hold hold(redis);
      for (int i = 0; i < kCalls; ++i) {
        const bool check = i % 5 == 4;
        const request one = req(key, 100, 1h, a, check ? 0 : 1);
        redis.async_acquire_all(std::span<const request>(&one, 1),
                                [&, check](result<std::vector<decision>> got) {
                                  if (!got || got->size() != 1) {
                                    ++failed;
                                  } else if (check) {
                                    checks_allowed += (*got)[0].allowed ? 1 : 0;
                                  } else {
                                    admitted += (*got)[0].allowed ? 1 : 0;
                                  }
                                  ++answered;
                                });
      }
    }
    ASSERT_TRUE(eventually([&] { return answered.load() == kCalls; })) << to_string(a);
    EXPECT_EQ(failed.load(), 0) << to_string(a);
    EXPECT_EQ(admitted.load(), 100) << to_string(a);
    // In order: the acquires before i = 124 are the first 100, admitted; the 24 checks
    // among them (i = 4, 9, ..., 119) are allowed, those after are not.
    const auto peek = redis.peek(req(key, 100, 1h, a));
    ASSERT_TRUE(peek);
    EXPECT_FALSE(peek->allowed) << to_string(a);
    EXPECT_EQ(checks_allowed.load(), 24) << to_string(a);
    EXPECT_EQ(redis.stats().batched - before, static_cast<std::uint64_t>(kCalls)) << to_string(a);
  }
}

// Verifies that SCRIPT FLUSH between batches costs only a resend: each batch answered
// NOSCRIPT goes again with the batch script's source, no call fails, and the decisions are
// still the memory store's.
TEST(RedisStore, BatchesSurviveScriptFlush) {
  redis_server server;
  redis_store redis(options_for(server));
  for (int round = 0; round < 3; ++round) {
    EXPECT_EQ(server.command({"SCRIPT", "FLUSH"}), "OK");
    // No resets: a batch sent again after NOSCRIPT runs after the commands written behind it.
    test::expect_same_decisions_as_memory_in_bursts(redis, 100, 1, 100 + round, false);
  }
  const auto st = redis.stats();
  EXPECT_EQ(st.errors, 0u);
  EXPECT_GE(st.script_loads, 3u);
  EXPECT_GT(st.batches, 0u);
}

// Verifies that batches written to a server that stops answering time out call by call:
// each call is answered `timeout` once, at its deadline; the late replies are dropped when
// the server resumes, and calls after it are decided again.
TEST(RedisStore, BatchesTimeOutCallByCall) {
  redis_server server;
  auto o = options_for(server);
  o.timeout = 100ms;
  redis_store redis(o);
  ASSERT_TRUE(redis.acquire(req("hang", 100, 1h, algorithm::gcra)));
  server.pause();
  constexpr int kCalls = 300;
  std::vector<std::atomic<int>> times(kCalls);
  std::atomic<int> timeouts{0}, answered{0};
  {
    test::io_hold hold(redis);
    for (int i = 0; i < kCalls; ++i) {
      redis.async_acquire(req("hang", 100, 1h, kAlgorithms[i % 3]), [&, i](result<decision> d) {
        if (!d && d.error().code == make_error_code(errc::timeout)) ++timeouts;
        ++times[static_cast<std::size_t>(i)];
        ++answered;
      });
    }
  }
  ASSERT_TRUE(eventually([&] { return answered.load() == kCalls; }));
  EXPECT_EQ(timeouts.load(), kCalls);
  server.resume();
  ASSERT_TRUE(
      eventually([&] { return bool(redis.acquire(req("hang2", 100, 1h, algorithm::gcra))); }));
  for (const auto& t : times) EXPECT_EQ(t.load(), 1);
  EXPECT_GT(redis.stats().batches, 0u);
}

// Verifies that a Redis killed while batches are in flight answers each call once: a
// decision (its batch ran) or `store_unavailable` (it was lost), none twice, none lost;
// and that the store decides again once Redis is back.
TEST(RedisStore, KilledRedisMidBatchAnswersEachCallOnce) {
  redis_server server;
  redis_store redis(options_for(server));
  constexpr int kCalls = 5000;
  std::vector<std::atomic<int>> times(kCalls);
  std::atomic<int> decided{0}, unavailable{0}, other{0}, answered{0};
  {
    test::io_hold hold(redis);
    for (int i = 0; i < kCalls; ++i) {
      redis.async_acquire(req("kill:" + std::to_string(i % 50), 1000, 1h, kAlgorithms[i % 3]),
                          [&, i](result<decision> d) {
                            if (d) {
                              ++decided;
                            } else if (d.error().code == make_error_code(errc::store_unavailable)) {
                              ++unavailable;
                            } else {
                              ++other;
                            }
                            ++times[static_cast<std::size_t>(i)];
                            ++answered;
                          });
    }
  }
  // Some batches have been answered: kill it while the rest are on their way.
  while (answered.load() == 0) std::this_thread::yield();
  server.kill();
  ASSERT_TRUE(eventually([&] { return answered.load() == kCalls; }));
  EXPECT_EQ(decided + unavailable, kCalls);
  EXPECT_EQ(other.load(), 0);
  for (const auto& t : times) EXPECT_EQ(t.load(), 1);
  std::printf("%d decided, %d unavailable after the kill\n", decided.load(), unavailable.load());
  server.start();
  ASSERT_TRUE(eventually([&] { return redis.health().ready; }));
  auto d = redis.acquire(req("after-kill", 10, 1h, algorithm::sliding_log));
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_TRUE(d->allowed);
}

// Verifies that the batch size is an option of the URI, shown by describe().
TEST(RedisStore, BatchingIsAnOptionOfTheUri) {
  redis_server server;
  auto off = parse_redis_uri(server.uri() + "?batch=0");
  ASSERT_TRUE(off) << off.error().message();
  EXPECT_EQ(off->batch, 0u);
  redis_store plain(*off);
  EXPECT_NE(plain.describe().find("?batch=0"), std::string::npos) << plain.describe();
  redis_store batched(options_for(server));
  EXPECT_NE(batched.describe().find("?batch=128"), std::string::npos) << batched.describe();
  EXPECT_FALSE(parse_redis_uri(server.uri() + "?batch=5000"));
  EXPECT_FALSE(parse_redis_uri(server.uri() + "?batch=x"));
  auto bytes = parse_redis_uri(server.uri() + "?batch=64&batch_bytes=65536");
  ASSERT_TRUE(bytes);
  EXPECT_EQ(bytes->batch, 64u);
  EXPECT_EQ(bytes->batch_bytes, 65536u);
}

// --- log_layout=packed ------------------------------------------------------------------

redis_store_options packed_options_for(const redis_server& server) {
  auto o = options_for(server);
  o.log_layout = redis_store_options::log_layout_kind::packed;
  return o;
}

// Verifies that with log_layout=packed the decisions are still exactly the memory store's:
// single calls, refunds and acquire_all (the conformance suites, every algorithm), and
// bursts with batching off and on (packed calls decided one by one inside batch runs, among
// other algorithms' coalesced calls on the same keys).
TEST(RedisStorePacked, ConformsToTheMemoryStore) {
  redis_server server;
  {
    redis_store redis(packed_options_for(server));
    test::expect_same_decisions_as_memory(redis);
    test::expect_same_acquire_all_and_refunds_as_memory(redis);
    EXPECT_EQ(redis.stats().errors, 0u);
  }
  for (const std::size_t batch : {std::size_t{1}, std::size_t{17}, redis_store_options{}.batch}) {
    SCOPED_TRACE("batch=" + std::to_string(batch));
    auto o = packed_options_for(server);
    o.batch = batch;
    redis_store redis(o);
    const int compared = test::expect_same_decisions_as_memory_in_bursts(redis, 120, 4, 31 + batch);
    EXPECT_GT(compared, 120 * 4 * 3 / 4);
    EXPECT_EQ(redis.stats().errors, 0u);
    if (batch > 1) {
      EXPECT_GT(redis.stats().batches, 0u);
    }
  }
}

// Returns the entries of a packed log (the value of `key`): {time, cum} pairs after the
// 16-byte header, or nothing when the key is not a packed log.
std::vector<std::pair<double, double>> packed_entries(const redis_server& server,
                                                      const std::string& key) {
  // GET through redis-cli would mangle binary; read it as hex through a script instead.
  const std::string hex = server.command(
      {"EVAL",
       "local v = redis.call('GET', KEYS[1]) if not v then return '' end "
       "return (string.gsub(v, '.', function(c) return string.format('%02x', string.byte(c)) end))",
       "1", key});
  std::string bytes;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    bytes.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  std::vector<std::pair<double, double>> out;
  if (bytes.size() < 16 || bytes.size() % 16 != 0 || bytes.substr(0, 8) != "sluice:L") return out;
  for (std::size_t at = 16; at < bytes.size(); at += 16) {
    double t = 0, cum = 0;
    std::memcpy(&t, bytes.data() + at, 8);  // little-endian, as x86-64 and ARM64 are
    std::memcpy(&cum, bytes.data() + at + 8, 8);
    out.emplace_back(t, cum);
  }
  return out;
}

// Verifies the packed layout: the key is one string of a 16-byte header and 16-byte
// {time, cumulative units} entries, admissions at one time merged into one entry; its TTL is
// the window after the newest entry; denials and peeks leave it; a refund takes the newest
// units; entries out of the window are dropped, and stay dropped when the clock steps back
// (as the memory store's log); reset deletes it.
TEST(RedisStorePacked, KeepsOneStringOfEntries) {
  redis_server server;
  redis_store redis(packed_options_for(server));
  memory_store memory;
  const std::string full = "sluice:packed";
  const microseconds t0{1'800'000'000'000'000};
  auto both = [&](bool acquire, std::int64_t cost, microseconds now) {
    const request r = req("packed", 5, 10s, algorithm::sliding_log, cost, now);
    auto got = acquire ? redis.acquire(r) : redis.peek(r);
    auto want = acquire ? memory.acquire(r) : memory.peek(r);
    EXPECT_TRUE(got) << got.error().message();
    if (got) {
      EXPECT_EQ(*got, *want) << "cost " << cost << " at +" << (now - t0).count();
    }
    return got ? got->allowed : false;
  };
  EXPECT_TRUE(both(true, 2, t0));
  EXPECT_TRUE(both(true, 1, t0));  // the same time: one entry
  EXPECT_TRUE(both(true, 1, t0 + 3s));
  EXPECT_EQ(server.command({"TYPE", full}), "string");
  using entries = std::vector<std::pair<double, double>>;
  const double t0s = static_cast<double>(t0.count());
  EXPECT_EQ(packed_entries(server, full), (entries{{t0s, 3}, {t0s + 3e6, 4}}));
  // TTL: the window after the newest entry (its acquire's `now`), plus the 60 s an explicit
  // `now` adds.
  const long long pttl = std::stoll(server.command({"PTTL", full}));
  EXPECT_GT(pttl, 60'000 + 9'000);
  EXPECT_LE(pttl, 60'000 + 10'000);
  EXPECT_FALSE(both(true, 2, t0 + 4s));
  EXPECT_TRUE(both(false, 1, t0 + 4s));
  EXPECT_EQ(packed_entries(server, full), (entries{{t0s, 3}, {t0s + 3e6, 4}}));
  // A refund of 2 takes the newest unit at +3 s and one of those at t0.
  auto refunded = redis.refund(req("packed", 5, 10s, algorithm::sliding_log, 2, t0 + 5s));
  ASSERT_TRUE(refunded);
  EXPECT_EQ(*refunded, *memory.refund(req("packed", 5, 10s, algorithm::sliding_log, 2, t0 + 5s)));
  EXPECT_EQ(packed_entries(server, full), (entries{{t0s, 2}}));
  EXPECT_TRUE(both(true, 3, t0 + 6s));
  // At t0 + 10 s the entry at t0 has left the window: a peek drops it for good.
  EXPECT_TRUE(both(false, 1, t0 + 10s));
  EXPECT_EQ(packed_entries(server, full).size(), 1u);
  EXPECT_TRUE(both(false, 1, t0 + 9s));  // back in time: what left stays gone
  EXPECT_TRUE(both(true, 2, t0 + 9s));
  EXPECT_FALSE(both(true, 1, t0 + 9s));
  ASSERT_TRUE(redis.reset("packed"));
  EXPECT_EQ(server.command({"EXISTS", full}), "0");
}

// Verifies that a key holding something else (the reference layout's sorted set, a gcra
// time that is 16 digits long, a string of 32 bytes without the header, garbage) reads as
// empty for the packed layout: a peek and a refund leave it as it was, an acquire replaces
// it.
TEST(RedisStorePacked, ForeignValuesReadAsEmpty) {
  redis_server server;
  redis_store redis(packed_options_for(server));
  const auto o = options_for(server);
  {
    redis_store reference(o);
    ASSERT_TRUE(reference.acquire(req("zset", 3, 1h, algorithm::sliding_log, 2))->allowed);
  }
  ASSERT_EQ(server.command({"TYPE", "sluice:zset"}), "zset");
  ASSERT_EQ(server.command({"SET", "sluice:gcra", "1800000000000000"}), "OK");
  ASSERT_EQ(server.command({"SET", "sluice:plain", std::string(32, 'x')}), "OK");
  ASSERT_EQ(server.command({"SET", "sluice:odd", "sluice:L-garbage-not-16"}), "OK");
  for (const std::string key : {"zset", "gcra", "plain", "odd"}) {
    const std::string full = "sluice:" + key;
    const std::string type = server.command({"TYPE", full});
    const std::string before = raw_state(server, full);
    auto p = redis.peek(req(key, 3, 1h, algorithm::sliding_log, 1));
    ASSERT_TRUE(p) << key << ": " << p.error().message();
    EXPECT_TRUE(p->allowed) << key;
    EXPECT_EQ(p->remaining, 3) << key;
    EXPECT_EQ(p->reset_after, 0us) << key;
    auto r = redis.refund(req(key, 3, 1h, algorithm::sliding_log, 2));
    ASSERT_TRUE(r) << key << ": " << r.error().message();
    EXPECT_EQ(r->remaining, 3) << key;
    EXPECT_EQ(server.command({"TYPE", full}), type) << key;
    EXPECT_EQ(raw_state(server, full), before) << key;
    auto a = redis.acquire(req(key, 3, 1h, algorithm::sliding_log, 3));
    ASSERT_TRUE(a) << key << ": " << a.error().message();
    EXPECT_TRUE(a->allowed) << key;
    EXPECT_EQ(a->remaining, 0) << key;
    EXPECT_EQ(packed_entries(server, full).size(), 1u) << key;
    EXPECT_FALSE(redis.acquire(req(key, 3, 1h, algorithm::sliding_log, 1))->allowed) << key;
  }
  EXPECT_EQ(redis.stats().errors, 0u);
}

// Verifies that with log_layout=packed, 1,000 acquires racing on one key from 8 threads over
// 4 connections, and 6,000 all in flight at once and batched, admit exactly the limit; and
// that 1,000 racing acquire_all calls count every admitted call on both of their keys.
TEST(RedisStorePacked, ExactUnderConcurrency) {
  redis_server server;
  auto o = packed_options_for(server);
  o.pool = 4;
  o.timeout = 30s;  // all in flight at once: a sanitizer build on a busy machine is slow
  redis_store redis(o);
  const auto got = test::race_on_one_key(redis, algorithm::sliding_log, "race");
  EXPECT_EQ(got.failed, 0);
  EXPECT_EQ(got.admitted, 100);
  const auto batched = test::race_async_on_one_key(redis, algorithm::sliding_log, "batched", 6000);
  EXPECT_EQ(batched.failed, 0);
  EXPECT_EQ(batched.admitted, 100);
  EXPECT_GT(redis.stats().batches, 0u);
  const auto all = test::race_acquire_all(redis, algorithm::sliding_log, {}, "all:");
  EXPECT_EQ(all.calls_admitted, 300);
  EXPECT_EQ(redis.stats().errors, 0u);
}

// Verifies that the layout is an option of the URI, shown by describe().
TEST(RedisStorePacked, IsAnOptionOfTheUri) {
  redis_server server;
  auto o = parse_redis_uri(server.uri() + "?log_layout=packed");
  ASSERT_TRUE(o) << o.error().message();
  redis_store redis(*o);
  EXPECT_NE(redis.describe().find("log_layout=packed"), std::string::npos) << redis.describe();
  ASSERT_TRUE(redis.acquire(req("via-uri", 2, 1h, algorithm::sliding_log))->allowed);
  EXPECT_EQ(server.command({"TYPE", "sluice:via-uri"}), "string");
  redis_store plain(options_for(server));
  EXPECT_EQ(plain.describe().find("log_layout"), std::string::npos) << plain.describe();
}

}  // namespace
}  // namespace sluice
