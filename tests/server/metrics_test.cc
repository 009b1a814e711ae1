// Tests of the server's counters and their Prometheus text rendering.
#include "server/metrics.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace {

using sluice::limiter_stats;
using sluice::server::metrics;
using sluice::server::outcome;
using sluice::server::route;
using std::chrono::microseconds;
using std::chrono::milliseconds;

bool has_line(const std::string& text, const std::string& line) {
  return text.find("\n" + line + "\n") != std::string::npos || text.rfind(line + "\n", 0) == 0;
}

TEST(Metrics, DecisionsByPolicyAndOutcome) {
  // Verifies that decisions are counted per policy slot and outcome, inline limits apart,
  // and that every policy's series is rendered, zeros included.
  metrics m({"chat", "beta"});
  EXPECT_EQ(m.slot("chat"), 0u);
  EXPECT_EQ(m.slot("beta"), 1u);
  EXPECT_EQ(m.slot("nope"), m.inline_slot());
  m.count_decision(0, outcome::allowed);
  m.count_decision(0, outcome::allowed);
  m.count_decision(0, outcome::denied);
  m.count_decision(1, outcome::shadow_denied);
  m.count_decision(m.inline_slot(), outcome::allowed);
  EXPECT_EQ(m.decisions(0, outcome::allowed), 2u);

  const std::string text = m.render({});
  EXPECT_TRUE(has_line(text, "# TYPE sluice_decisions_total counter"));
  EXPECT_TRUE(has_line(text, R"(sluice_decisions_total{policy="chat",outcome="allowed"} 2)"));
  EXPECT_TRUE(has_line(text, R"(sluice_decisions_total{policy="chat",outcome="denied"} 1)"));
  EXPECT_TRUE(has_line(text, R"(sluice_decisions_total{policy="chat",outcome="shadow_denied"} 0)"));
  EXPECT_TRUE(has_line(text, R"(sluice_decisions_total{policy="beta",outcome="shadow_denied"} 1)"));
  EXPECT_TRUE(has_line(text, R"m(sluice_decisions_total{policy="(inline)",outcome="allowed"} 1)m"));
}

TEST(Metrics, LimiterCountersAndBreaker) {
  // Verifies that store errors, fallbacks by mode and the breakers come from the limiter's
  // stats: the worst breaker state as 0/1/2, how many breakers there are and how many are
  // not closed.
  metrics m({});
  limiter_stats s;
  s.store_errors = 7;
  s.fallbacks_allow = 1;
  s.fallbacks_deny = 2;
  s.fallbacks_local = 3;
  s.breaker_opened = 4;
  s.breaker = sluice::breaker_state::half_open;
  s.breakers = 64;
  s.breakers_open = 3;
  const std::string text = m.render(s);
  EXPECT_TRUE(has_line(text, "sluice_store_errors_total 7"));
  EXPECT_TRUE(has_line(text, R"(sluice_fallbacks_total{mode="allow"} 1)"));
  EXPECT_TRUE(has_line(text, R"(sluice_fallbacks_total{mode="deny"} 2)"));
  EXPECT_TRUE(has_line(text, R"(sluice_fallbacks_total{mode="local"} 3)"));
  EXPECT_TRUE(has_line(text, "sluice_breaker_opened_total 4"));
  EXPECT_TRUE(has_line(text, "sluice_breaker_state 2"));
  EXPECT_TRUE(has_line(text, "sluice_breakers 64"));
  EXPECT_TRUE(has_line(text, "sluice_breakers_open 3"));
  EXPECT_TRUE(has_line(text, "# TYPE sluice_breakers_open gauge"));
  s.breaker = sluice::breaker_state::open;
  EXPECT_TRUE(has_line(m.render(s), "sluice_breaker_state 1"));
}

TEST(Metrics, RequestsAndCumulativeHistogram) {
  // Verifies HTTP requests by route and code, and a histogram whose buckets are cumulative,
  // end in +Inf and agree with _count; routes with no requests are left out.
  metrics m({});
  m.count_request(route::acquire, 200, microseconds(40));         // le 5e-05
  m.count_request(route::acquire, 200, microseconds(300));        // le 0.0005
  m.count_request(route::acquire, 400, milliseconds(2));          // le 0.0025
  m.count_request(route::acquire, 200, std::chrono::seconds(3));  // +Inf only
  m.count_request(route::gate, 999, microseconds(1));             // an unlisted code
  EXPECT_EQ(m.requests(route::acquire, 200), 3u);
  const std::string text = m.render({});
  EXPECT_TRUE(has_line(text, R"(sluice_http_requests_total{route="/v1/acquire",code="200"} 3)"));
  EXPECT_TRUE(has_line(text, R"(sluice_http_requests_total{route="/v1/acquire",code="400"} 1)"));
  EXPECT_TRUE(has_line(text, R"(sluice_http_requests_total{route="/v1/gate",code="other"} 1)"));
  EXPECT_TRUE(has_line(text, "# TYPE sluice_request_duration_seconds histogram"));
  const std::string b = R"(sluice_request_duration_seconds_bucket{route="/v1/acquire",le=)";
  EXPECT_TRUE(has_line(text, b + R"("5e-05"} 1)"));
  EXPECT_TRUE(has_line(text, b + R"("0.00025"} 1)"));
  EXPECT_TRUE(has_line(text, b + R"("0.0005"} 2)"));
  EXPECT_TRUE(has_line(text, b + R"("0.0025"} 3)"));
  EXPECT_TRUE(has_line(text, b + R"("1"} 3)"));
  EXPECT_TRUE(has_line(text, b + R"("+Inf"} 4)"));
  EXPECT_TRUE(has_line(text, R"(sluice_request_duration_seconds_count{route="/v1/acquire"} 4)"));
  EXPECT_TRUE(
      has_line(text, R"(sluice_request_duration_seconds_sum{route="/v1/acquire"} 3.002340000)"));
  EXPECT_EQ(text.find(R"(route="/healthz")"), std::string::npos);
}

TEST(Metrics, ConnectionsGaugeAndRefusals) {
  // Verifies the open-connections gauge and the refused-connections counter.
  metrics m({});
  m.connection_opened();
  m.connection_opened();
  m.connection_closed();
  m.connection_refused();
  EXPECT_EQ(m.open_connections(), 1);
  const std::string text = m.render({});
  EXPECT_TRUE(has_line(text, "# TYPE sluice_open_connections gauge"));
  EXPECT_TRUE(has_line(text, "sluice_open_connections 1"));
  EXPECT_TRUE(has_line(text, "sluice_connections_refused_total 1"));
}

TEST(Metrics, LabelValuesAreEscaped) {
  // Verifies that a label value with a quote, backslash or newline stays one valid sample.
  metrics m({"a\"b\\c\nd"});
  const std::string text = m.render({});
  EXPECT_TRUE(has_line(text, R"(sluice_decisions_total{policy="a\"b\\c\nd",outcome="allowed"} 0)"));
}

TEST(Metrics, CountsFromManyThreads) {
  // Verifies that concurrent counting loses nothing (the counters are atomics).
  metrics m({"p"});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        m.count_decision(0, outcome::allowed);
        m.count_request(route::acquire, 200, microseconds(10));
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(m.decisions(0, outcome::allowed), 40000u);
  EXPECT_EQ(m.requests(route::acquire, 200), 40000u);
}

TEST(Metrics, RedisStoreStats) {
  // Verifies that the Redis store's counters are rendered under their names and types.
  sluice::redis_store_stats r;
  r.requests = 10;
  r.errors = 2;
  r.timeouts = 1;
  r.reconnects = 3;
  r.script_loads = 4;
  r.connected = 2;
  std::string text;
  sluice::server::render_store_stats(text, r);
  EXPECT_TRUE(has_line(text, "# TYPE sluice_redis_requests_total counter"));
  EXPECT_TRUE(has_line(text, "sluice_redis_requests_total 10"));
  EXPECT_TRUE(has_line(text, "sluice_redis_errors_total 2"));
  EXPECT_TRUE(has_line(text, "sluice_redis_timeouts_total 1"));
  EXPECT_TRUE(has_line(text, "sluice_redis_reconnects_total 3"));
  EXPECT_TRUE(has_line(text, "sluice_redis_script_loads_total 4"));
  EXPECT_TRUE(has_line(text, "# TYPE sluice_redis_connections gauge"));
  EXPECT_TRUE(has_line(text, "sluice_redis_connections 2"));
  EXPECT_EQ(text.find("cluster"), std::string::npos);
}

TEST(Metrics, RedisClusterStoreStats) {
  // Verifies the cluster store's routing counters, besides the common ones.
  sluice::redis_cluster_stats c;
  c.requests = 7;
  c.moved = 5;
  c.asks = 6;
  c.retries = 1;
  c.refreshes = 9;
  c.masters = 3;
  c.slots_served = 10923;
  c.connected = 4;
  std::string text;
  sluice::server::render_store_stats(text, c);
  EXPECT_TRUE(has_line(text, "sluice_redis_requests_total 7"));
  EXPECT_TRUE(has_line(text, "sluice_redis_connections 4"));
  EXPECT_TRUE(has_line(text, "# TYPE sluice_redis_cluster_redirects_total counter"));
  EXPECT_TRUE(has_line(text, R"(sluice_redis_cluster_redirects_total{kind="moved"} 5)"));
  EXPECT_TRUE(has_line(text, R"(sluice_redis_cluster_redirects_total{kind="ask"} 6)"));
  EXPECT_TRUE(has_line(text, "sluice_redis_cluster_retries_total 1"));
  EXPECT_TRUE(has_line(text, "sluice_redis_cluster_slot_map_reads_total 9"));
  EXPECT_TRUE(has_line(text, "# TYPE sluice_redis_cluster_masters gauge"));
  EXPECT_TRUE(has_line(text, "sluice_redis_cluster_masters 3"));
  EXPECT_TRUE(has_line(text, "sluice_redis_cluster_slots_served 10923"));
}

}  // namespace
