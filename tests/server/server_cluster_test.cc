// `sluice serve` on a real Redis Cluster (3 masters, 3 replicas on loopback): decisions,
// the keys where the cluster store puts them, reset, readiness and metrics, and a master
// going down under the server. Its own binary so that ctest runs it under the cluster lock.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "server/e2e_support.h"
#include "server/serve.h"
#include "support/redis_cluster.h"
#include "support/test_util.h"

namespace {

using namespace sluice::test::e2e;
using sluice::server::service;
using sluice::test::eventually;

// Verifies `sluice serve` on a real Redis Cluster: decisions on the slot's master, the
// cluster's metrics, and readiness and fallbacks while a master is down.
TEST(ServerOnCluster, EndToEndOnARealCluster) {
  sluice::test::redis_cluster cluster;
  sluice::server::configure_logging("error");
  server_config cfg = test_config();
  cfg.store = cluster.uri() + "?timeout=500ms&reconnect_max=100ms";
  auto svc = std::make_unique<service>(cfg);
  svc->start();
  client c(svc->port());

  // Where the state of policy "tiny", key "u" lives: `sluice:{tiny:u}`, on its slot's master.
  const std::string full = "sluice:{tiny:u}";
  const std::uint16_t home = cluster.master_of_slot(cluster.keyslot(full));

  const std::string body = R"({"key": "u", "policy": "tiny"})";
  EXPECT_EQ(body_of(c.acquire(body))["allowed"], true);
  EXPECT_EQ(body_of(c.acquire(body))["allowed"], true);
  response r = c.acquire(body);
  EXPECT_EQ(body_of(r)["allowed"], false);
  EXPECT_FALSE(r[http::field::retry_after].empty());
  EXPECT_EQ(cluster.command(home, {"ZCARD", full}), "2");
  EXPECT_EQ(c.call(http::verb::get, "/readyz").result(), http::status::ok);
  const std::string before = c.call(http::verb::get, "/metrics").body();
  EXPECT_EQ(sample(before, "sluice_redis_cluster_masters"), 3);
  EXPECT_EQ(sample(before, "sluice_redis_cluster_slots_served"), 16384);
  EXPECT_GE(sample(before, "sluice_redis_requests_total"), 3);

  EXPECT_EQ(c.call(http::verb::delete_, "/v1/keys/tiny/u").result(), http::status::no_content);
  EXPECT_EQ(cluster.command(home, {"EXISTS", full}), "0");
  EXPECT_EQ(body_of(c.acquire(body))["remaining"], 1);

  // A key on another master, to see it keep being decided by Redis.
  std::string other;
  for (int i = 0; other.empty() && i < 10000; ++i) {
    const std::string k = "v" + std::to_string(i);
    if (cluster.master_of_slot(cluster.keyslot("sluice:{tiny:" + k + "}")) != home) other = k;
  }
  ASSERT_FALSE(other.empty());
  const std::string other_body = R"({"key": ")" + other + R"(", "policy": "tiny"})";

  // The key's master dies, and there is a replica to take over; until then the failure
  // mode (allow) decides its keys, while the server stays ready: the others still work.
  cluster.kill(home);
  ASSERT_TRUE(eventually([&] { return body_of(c.acquire(body))["remaining"] == 2; }, seconds(10)))
      << "the failure mode never decided";
  EXPECT_EQ(body_of(c.acquire(other_body))["remaining"], 1);
  EXPECT_EQ(body_of(c.acquire(other_body))["remaining"], 0);
  EXPECT_EQ(c.call(http::verb::get, "/readyz").result(), http::status::ok);
  const std::string text = c.call(http::verb::get, "/metrics").body();
  EXPECT_GE(sample(text, R"(sluice_fallbacks_total{mode="allow"})"), 1);
  EXPECT_GE(sample(text, "sluice_store_errors_total"), 1);
  // Until the failover, the dead master's slots are not served.
  EXPECT_LT(sample(text, "sluice_redis_cluster_slots_served"), 16384);

  // After the failover, the key is decided by Redis again (the replica has its state).
  cluster.wait_for_failover(home, seconds(30));
  ASSERT_TRUE(eventually([&] { return body_of(c.acquire(body))["allowed"] == false; }, seconds(40)))
      << "the key's new master never decided";
  svc.reset();
}

}  // namespace
