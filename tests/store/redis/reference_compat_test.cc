// sluice and the reference limiter (../shared/reference/rate_limiter.py, driven by
// tests/support/reference_peer.py) on the same Redis and the same keys.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "sluice/limiter.h"
#include "sluice/redis_store.h"
#include "support/redis_server.h"

namespace sluice {
namespace {

using namespace std::chrono_literals;
using test::redis_server;

// The reference deployment's layout: <prefix>:<scope>:<identifier>, scope = policy name.
constexpr const char* kPrefix = "chrysopedia:ratelimit";

std::unique_ptr<limiter> make_limiter(const redis_server& server, std::int64_t count) {
  auto o = parse_redis_uri(server.full_uri());
  EXPECT_TRUE(o);
  o->key_prefix = kPrefix;
  o->timeout = 2s;
  auto lim = std::make_unique<limiter>(std::make_shared<redis_store>(*o));
  EXPECT_TRUE(lim->add_policy({"chat", limit{count, 60s}, algorithm::sliding_log}));
  return lim;
}

std::vector<nlohmann::json> peer(const redis_server& server, const std::string& key, int limit,
                                 int requests, int concurrency = 1) {
  auto r = test::run_reference_peer({"--port", std::to_string(server.port()), "--key", key,
                                     "--limit", std::to_string(limit), "--window", "60",
                                     "--requests", std::to_string(requests), "--concurrency",
                                     std::to_string(concurrency)});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<nlohmann::json> out;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Verifies that taking turns on one key, sluice and the reference share one limit, and that
// their decisions agree: allowed, remaining, and the whole-second retry_after (the
// reference's int(oldest + window - now) + 1, evaluated at the moment each one decided).
TEST(RedisStoreCompat, SequentialDecisionsAgreeAndShareTheLimit) {
  if (auto why = test::reference_peer_unavailable(); !why.empty()) GTEST_SKIP() << why;
  redis_server server;
  auto lim = make_limiter(server, 10);
  const std::string full_key = std::string(kPrefix) + ":chat:user42";

  for (int i = 0; i < 4; ++i) {
    auto d = lim->acquire("chat", "user42");
    ASSERT_TRUE(d) << d.error().message();
    EXPECT_TRUE(d->allowed);
    EXPECT_EQ(d->remaining, 9 - i);
  }
  // The reference sees sluice's four admissions and adds its own six, then is refused.
  const auto ref = peer(server, full_key, 10, 7);
  ASSERT_EQ(ref.size(), 7u);
  for (int i = 0; i < 6; ++i) {
    EXPECT_TRUE(ref[i]["allowed"].get<bool>()) << i;
    EXPECT_EQ(ref[i]["remaining"].get<int>(), 5 - i);
  }
  EXPECT_FALSE(ref[6]["allowed"].get<bool>());
  EXPECT_EQ(ref[6]["remaining"].get<int>(), 0);
  EXPECT_EQ(server.command({"ZCARD", full_key}), "10");

  // sluice is refused too, and both report the same wait for the same instant.
  auto d = lim->acquire("chat", "user42");
  const double decided_at = unix_seconds();
  ASSERT_TRUE(d);
  EXPECT_FALSE(d->allowed);
  EXPECT_EQ(d->remaining, 0);
  const double oldest_plus_window =
      decided_at + std::chrono::duration<double>(d->retry_after).count();
  // The reference's answer, recomputed from sluice's view of the log at the reference's
  // decision time (a few ms of slack for the two clocks' readings).
  const double t_ref = ref[6]["t"].get<double>();
  const int ref_retry = ref[6]["retry_after"].get<int>();
  bool matches = false;
  for (const double slack : {-0.005, 0.0, 0.005}) {
    matches |= ref_retry == static_cast<int>(oldest_plus_window - (t_ref + slack)) + 1;
  }
  EXPECT_TRUE(matches) << "reference " << ref_retry << " at " << t_ref << ", sluice "
                       << retry_after_seconds(*d) << " at " << decided_at;
  EXPECT_EQ(server.command({"ZCARD", full_key}), "10");  // denials recorded nothing
}

// Verifies that sluice and the reference hammering one key at once stay within one shared
// limit: sluice never admits past it, and the total exceeds it by at most what the
// reference's own check-then-add race lets through (one per reference request in flight).
TEST(RedisStoreCompat, ConcurrentUseSharesOneLimit) {
  if (auto why = test::reference_peer_unavailable(); !why.empty()) GTEST_SKIP() << why;
  redis_server server;
  auto lim = make_limiter(server, 100);
  const std::string full_key = std::string(kPrefix) + ":chat:shared";
  std::atomic<int> sluice_admitted{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      while (!go) std::this_thread::yield();
      for (int i = 0; i < 100; ++i) {
        auto d = lim->acquire("chat", "shared");
        if (d && d->allowed) ++sluice_admitted;
      }
    });
  }
  go = true;
  const auto ref = peer(server, full_key, 100, 200, 1);
  for (auto& t : threads) t.join();
  int ref_admitted = 0;
  for (const auto& j : ref) ref_admitted += j["allowed"].get<bool>() ? 1 : 0;
  const int total = sluice_admitted.load() + ref_admitted;
  EXPECT_GE(total, 100);
  EXPECT_LE(total, 101);
  EXPECT_EQ(server.command({"ZCARD", full_key}), std::to_string(total));  // none collided
}

}  // namespace
}  // namespace sluice
