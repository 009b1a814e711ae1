// The Redis Sentinel store: its URI, and the store against a real master, replica and three
// sentinels on loopback ports (tests/support/redis_sentinel.h), failed over for real.
#include "sluice/redis_sentinel_store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sluice/open_store.h"
#include "store/redis/store_checks.h"
#include "support/redis_sentinel.h"
#include "support/redis_server.h"
#include "support/test_util.h"

namespace sluice {
namespace {

using namespace std::chrono_literals;
using std::chrono::microseconds;
using steady = std::chrono::steady_clock;
using test::redis_sentinel_group;

constexpr algorithm kAlgorithms[] = {algorithm::sliding_log, algorithm::sliding_counter,
                                     algorithm::gcra};

redis_sentinel_options options_for(const std::string& uri,
                                   std::chrono::milliseconds timeout = 1000ms) {
  auto o = parse_redis_sentinel_uri(uri);
  EXPECT_TRUE(o) << o.error().message();
  if (!o) return {};
  o->connection.timeout = timeout;  // generous: sanitizer builds on a busy machine are slow
  o->connection.connect_timeout = 500ms;
  o->connection.reconnect_min = 5ms;
  o->connection.reconnect_max = 100ms;
  return *o;
}

request req(std::string_view key, std::int64_t count, algorithm a = algorithm::sliding_log) {
  return request{key, limit{count, std::chrono::hours(1)}, a, 1, {}};
}

std::string port_text(std::uint16_t port) { return "127.0.0.1:" + std::to_string(port); }

// ---- the URI ------------------------------------------------------------------------------

// Verifies every part of a full redis+sentinel:// URI: sentinels, master name, the master's
// credentials, the sentinels' credentials, and redis:// options for every connection.
TEST(ParseRedisSentinelUri, ParsesEveryPart) {
  auto o = parse_redis_sentinel_uri(
      "rediss+sentinel://alice:p%40ss@10.0.0.1:26379,[::1]:26380,s3.local:26381/my%20master?"
      "db=2&timeout=20ms&pool=3&prefix=rl&sentinel_user=watch&sentinel_password=s%26cret&"
      "tls_ca=/etc/ca.pem&batch=0");
  ASSERT_FALSE(o) << "a space in the master name";
  o = parse_redis_sentinel_uri(
      "rediss+sentinel://alice:p%40ss@10.0.0.1:26379,[::1]:26380,s3.local:26381/mymaster?"
      "db=2&timeout=20ms&pool=3&prefix=rl&sentinel_user=watch&sentinel_password=s%26cret&"
      "tls_ca=/etc/ca.pem&batch=0");
  ASSERT_TRUE(o) << o.error().message();
  ASSERT_EQ(o->sentinels.size(), 3u);
  EXPECT_EQ(o->sentinels[0].host, "10.0.0.1");
  EXPECT_EQ(o->sentinels[0].port, 26379);
  EXPECT_EQ(o->sentinels[1].host, "::1");
  EXPECT_EQ(o->sentinels[1].port, 26380);
  EXPECT_EQ(o->sentinels[2].host, "s3.local");
  EXPECT_EQ(o->master_name, "mymaster");
  EXPECT_EQ(o->connection.username, "alice");
  EXPECT_EQ(o->connection.password, "p@ss");
  EXPECT_EQ(o->sentinel_username, "watch");
  EXPECT_EQ(o->sentinel_password, "s&cret");
  EXPECT_EQ(o->connection.db, 2);
  EXPECT_EQ(o->connection.timeout, 20ms);
  EXPECT_EQ(o->connection.pool, 3u);
  EXPECT_EQ(o->connection.key_prefix, "rl");
  EXPECT_EQ(o->connection.batch, 0u);
  EXPECT_TRUE(o->connection.tls);
  EXPECT_EQ(o->connection.tls_ca_file, "/etc/ca.pem");
  EXPECT_TRUE(o->subscribe);

  auto plain = parse_redis_sentinel_uri("redis+sentinel://127.0.0.1:26379/m");
  ASSERT_TRUE(plain) << plain.error().message();
  EXPECT_FALSE(plain->connection.tls);
  EXPECT_TRUE(plain->connection.password.empty());
  EXPECT_TRUE(plain->sentinel_password.empty());
  EXPECT_EQ(plain->connection.db, 0);
}

// Verifies that bad sentinel URIs are refused with the problem named and no password shown.
TEST(ParseRedisSentinelUri, RejectsBadUrisClearly) {
  const std::pair<const char*, const char*> cases[] = {
      {"redis+sentinel://:hunter2@127.0.0.1:26379", "no master name"},
      {"redis+sentinel://:hunter2@127.0.0.1:26379/", "no master name"},
      {"redis+sentinel://127.0.0.1:26379,,127.0.0.1:26380/m", "empty host"},
      {"redis+sentinel://127.0.0.1:26379,/m", "empty host"},
      {"redis+sentinel:///m", "no sentinel"},
      {"redis+sentinel://127.0.0.1/m", "has no port"},
      {"redis+sentinel://127.0.0.1:0/m", "port must be"},
      {"redis+sentinel://127.0.0.1:99999/m", "port must be"},
      {"redis+sentinel://127.0.0.1:26379/m?colour=red", "unknown option \"colour\""},
      {"redis+sentinel://127.0.0.1:26379/m?sentinel_user=x", "sentinel_user needs"},
      {"redis+sentinel://127.0.0.1:26379/m?sentinel_password=%zz", "broken %-escape"},
      {"redis+sentinel://127.0.0.1:26379/a/b", "'/'"},
      {"redis+sentinel://127.0.0.1:26379/m?timeout=0ms", "timeout must be positive"},
      {"redis+cluster://127.0.0.1:26379/m", "expected redis+sentinel://"},
  };
  for (const auto& [uri, problem] : cases) {
    auto o = parse_redis_sentinel_uri(uri);
    ASSERT_FALSE(o) << uri;
    EXPECT_EQ(o.error().code, errc::invalid_store_uri) << uri;
    EXPECT_NE(o.error().message().find(problem), std::string::npos)
        << uri << " -> " << o.error().message();
    EXPECT_EQ(o.error().message().find("hunter2"), std::string::npos) << o.error().message();
  }
}

// ---- against real sentinels ----------------------------------------------------------------

// Verifies that the store finds the master through the sentinels, decides there (the state
// is on the master), conforms to the memory store, and says which master in its metrics.
TEST(RedisSentinelStore, DiscoversTheMasterAndDecidesThere) {
  redis_sentinel_group group;
  const std::uint16_t master = group.master_port();
  auto opened = open_store(group.uri());
  ASSERT_TRUE(opened) << opened.error().message();
  auto& s = **opened;
  EXPECT_TRUE(s.health().ready) << s.health().detail;
  auto d = s.acquire(req("disco", 5));
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_TRUE(d->allowed);
  EXPECT_EQ(group.command(master, {"EXISTS", "sluice:disco"}), "1");
  EXPECT_NE(s.describe().find("redis+sentinel://"), std::string::npos) << s.describe();

  std::string master_label;
  s.visit_metrics([&](const store_metric& m) {
    if (m.name == "sluice_redis_sentinel_master" && m.value == 1) {
      master_label = std::string(m.label_value);
    }
  });
  EXPECT_EQ(master_label, port_text(master));
  test::expect_same_decisions_as_memory(s);
}

// Verifies AUTH on both sides: the master's password from the URI's user info, the
// sentinels' from sentinel_password; a wrong sentinel password is a clear error, not a hang.
TEST(RedisSentinelStore, AuthenticatesToSentinelsAndMaster) {
  redis_sentinel_group group({.password = "m@ster pw", .sentinel_password = "watch&word"});
  {
    redis_sentinel_store s(options_for(group.full_uri()));
    auto d = s.acquire(req("auth", 2));
    ASSERT_TRUE(d) << d.error().message();
    EXPECT_TRUE(d->allowed);
    EXPECT_EQ(s.stats().master, port_text(group.master_port()));
  }
  {
    auto o = options_for(group.full_uri());
    o.sentinel_password = "wrong";
    redis_sentinel_store s(o);
    auto d = s.acquire(req("auth", 2));
    ASSERT_FALSE(d);
    EXPECT_EQ(d.error().code, errc::store_unavailable);
    EXPECT_NE(d.error().message().find("no sentinel answers"), std::string::npos)
        << d.error().message();
    EXPECT_NE(d.error().message().find("AUTH"), std::string::npos) << d.error().message();
  }
  {
    auto o = options_for(group.full_uri());
    o.connection.password = "wrong";
    redis_sentinel_store s(o);
    auto d = s.acquire(req("auth", 2));
    ASSERT_FALSE(d);
    EXPECT_FALSE(s.health().ready);
    EXPECT_NE(s.health().detail.find("AUTH"), std::string::npos) << s.health().detail;
  }
}

// Verifies that a master name no sentinel knows is a clear error, at once and not a hang.
TEST(RedisSentinelStore, UnknownMasterNameIsAClearError) {
  redis_sentinel_group group;
  std::string uri = group.uri();
  uri.replace(uri.rfind('/'), std::string::npos, "/nosuch");
  redis_sentinel_store s(options_for(uri));
  const auto start = steady::now();
  auto d = s.acquire(req("k", 1));
  EXPECT_LT(steady::now() - start, 100ms);
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, errc::store_unavailable);
  EXPECT_NE(d.error().message().find("no sentinel knows master \"nosuch\""), std::string::npos)
      << d.error().message();
  EXPECT_FALSE(s.health().ready);
}

// Verifies that with every sentinel down the store says so (and fails fast), then finds the
// master on its own once they are back.
TEST(RedisSentinelStore, EverySentinelDownIsAClearErrorThenRecovers) {
  redis_sentinel_group group;
  group.stop_sentinels();
  redis_sentinel_store s(options_for(group.uri()));
  const auto start = steady::now();
  auto d = s.acquire(req("k", 1));
  EXPECT_LT(steady::now() - start, 100ms);
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, errc::store_unavailable);
  EXPECT_NE(d.error().message().find("no sentinel answers"), std::string::npos)
      << d.error().message();
  EXPECT_FALSE(s.health().ready);
  group.start_sentinels();
  EXPECT_TRUE(test::eventually([&] { return s.acquire(req("k", 1)).has_value(); }, 10s))
      << s.health().detail;
  EXPECT_EQ(s.stats().master, port_text(group.master_port()));
}

struct outcome {
  bool ok = false;
  steady::duration took{};
};

// Runs a failover under load: two threads decide without pause on 20 keys while the master
// is failed over (`kill`: SIGKILL; else SENTINEL FAILOVER). No call takes past its deadline
// (plus scheduling slack); once the store is on the new master every call succeeds, and
// decisions on fresh keys are exact (a limit of 50 admits exactly 50 of 200 racing calls).
void expect_survives_failover(bool kill) {
  redis_sentinel_group group;
  constexpr auto kTimeout = 500ms;
  redis_sentinel_store s(options_for(group.uri(), kTimeout));
  const std::uint16_t old_master = group.master_port();
  ASSERT_EQ(s.stats().master, port_text(old_master));

  std::mutex mu;
  std::vector<outcome> calls;
  std::atomic<bool> stop{false};
  auto drive = [&](int seed) {
    for (int i = seed; !stop; ++i) {
      const auto start = steady::now();
      auto d = s.acquire(req("load:" + std::to_string(i % 20), 1'000'000, kAlgorithms[i % 3]));
      const outcome o{d.has_value(), steady::now() - start};
      {
        std::lock_guard lock(mu);
        calls.push_back(o);
      }
      if (!d) std::this_thread::sleep_for(1ms);  // a dead master fails fast: keep counts small
    }
  };
  std::thread a(drive, 0), b(drive, 7);
  std::this_thread::sleep_for(300ms);
  if (kill) {
    group.server(old_master).kill();
  } else {
    group.failover();
  }
  const std::uint16_t promoted = group.wait_for_new_master(old_master, 20s);
  const bool switched =
      test::eventually([&] { return s.stats().master == port_text(promoted); }, 10s);
  EXPECT_TRUE(switched) << "the store stayed on " << s.stats().master;
  // Some calls may still be in flight on the old master's connections; after this every
  // call goes to the new one.
  EXPECT_TRUE(test::eventually([&] { return s.acquire(req("probe", 1'000'000)).has_value(); }));
  std::size_t before_settled = 0;
  {
    std::lock_guard lock(mu);
    before_settled = calls.size();
  }
  std::this_thread::sleep_for(300ms);
  stop = true;
  a.join();
  b.join();

  ASSERT_GT(calls.size(), before_settled);
  const auto slack = 500ms;  // scheduling on a shared, sanitized machine
  int failed = 0, failed_after = 0;
  for (std::size_t i = 0; i < calls.size(); ++i) {
    EXPECT_LT(calls[i].took, kTimeout + slack) << "call " << i << " took past its deadline";
    if (!calls[i].ok) ++failed;
    if (!calls[i].ok && i >= before_settled) ++failed_after;
  }
  EXPECT_EQ(failed_after, 0) << "of " << calls.size() - before_settled << " calls after the switch";
  for (const algorithm alg : kAlgorithms) {
    const std::string key = "after:" + std::to_string(static_cast<int>(alg));
    const auto race = test::race_on_one_key(s, alg, key);
    EXPECT_EQ(race.failed, 0);
    EXPECT_EQ(race.admitted, 100) << "exactness on the new master, " << key;
  }
  EXPECT_EQ(group.command(promoted, {"EXISTS", "sluice:after:0"}), "1");
  EXPECT_EQ(s.stats().failovers, 1u);
  EXPECT_TRUE(s.health().ready) << s.health().detail;
  std::printf("%zu calls during the failover, %d failed (before the switch); switched to %u\n",
              calls.size(), failed, promoted);
}

// Verifies that decisions move to the promoted replica when the master is killed.
TEST(RedisSentinelStore, SurvivesAKilledMasterUnderLoad) { expect_survives_failover(true); }

// Verifies that decisions move to the promoted replica on SENTINEL FAILOVER.
TEST(RedisSentinelStore, SurvivesSentinelFailoverUnderLoad) { expect_survives_failover(false); }

// Verifies the +switch-master path: with no call in flight (so no lost connection or
// READONLY reply to notice), a hung master failed over moves the store to the new master
// at once, from the sentinels' message alone; without the subscription it stays. The
// store's listener hears `reachable` when the new master's connection is up (so a limiter's
// breaker probes at once).
TEST(RedisSentinelStore, FollowsSwitchMasterMessages) {
  redis_sentinel_group group;
  const std::uint16_t old_master = group.master_port();
  redis_sentinel_store watching(options_for(group.uri()));
  auto reachable = std::make_shared<std::atomic<int>>(0);  // outlives the store's events
  watching.set_listener([reachable](const store_event& e) {
    if (e.what == store_event::kind::reachable) ++*reachable;
  });
  auto deaf_options = options_for(group.uri());
  deaf_options.subscribe = false;
  redis_sentinel_store deaf(deaf_options);
  ASSERT_EQ(watching.stats().master, port_text(old_master));
  ASSERT_EQ(deaf.stats().master, port_text(old_master));
  group.server(old_master).pause();
  reachable->store(0);  // from here on, only connections to a new master can come up
  const std::uint16_t promoted = group.wait_for_new_master(old_master, 20s);
  EXPECT_TRUE(test::eventually([&] { return watching.stats().master == port_text(promoted); }, 5s))
      << watching.stats().master;
  EXPECT_EQ(deaf.stats().master, port_text(old_master));
  group.server(old_master).resume();
  // The new connection may still be in its handshake.
  EXPECT_TRUE(test::eventually([&] { return watching.health().ready; }, 5s))
      << watching.health().detail;
  EXPECT_TRUE(test::eventually([&] { return reachable->load() > 0; }, 5s));
  auto d = watching.acquire(req("switched", 1));
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(group.command(promoted, {"EXISTS", "sluice:switched"}), "1");
}

// Verifies the READONLY path: when the master is demoted behind the sentinels' back (its
// clients stay connected, writes answer READONLY), the store counts the reply, drops the
// demoted server (ROLE no longer says master) and fails fast rather than decide there.
TEST(RedisSentinelStore, LeavesAMasterThatAnswersReadonly) {
  redis_sentinel_group group;
  const std::uint16_t old_master = group.master_port();
  std::uint16_t replica = 0;
  for (auto* server : group.servers()) {
    if (server->port() != old_master) replica = server->port();
  }
  auto o = options_for(group.uri());
  o.subscribe = false;
  redis_sentinel_store s(o);
  ASSERT_TRUE(s.acquire(req("ro", 100)));
  EXPECT_EQ(group.command(replica, {"REPLICAOF", "NO", "ONE"}), "OK");
  EXPECT_EQ(group.command(old_master, {"REPLICAOF", "127.0.0.1", std::to_string(replica)}), "OK");
  auto d = s.acquire(req("ro", 100));
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message().find("READONLY"), std::string::npos) << d.error().message();
  EXPECT_TRUE(test::eventually([&] { return s.stats().readonly >= 1 && !s.health().ready; }, 5s))
      << s.health().detail;
  EXPECT_NE(s.health().detail.find("not master"), std::string::npos) << s.health().detail;
  const auto start = steady::now();
  auto after = s.acquire(req("ro", 100));
  EXPECT_LT(steady::now() - start, 100ms);
  if (!after) {
    EXPECT_EQ(after.error().code, errc::store_unavailable);
  }
}

}  // namespace
}  // namespace sluice
