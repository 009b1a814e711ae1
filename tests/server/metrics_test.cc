// Tests of the server's counters and their Prometheus text rendering.
#include "server/metrics.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "sluice/clock.h"
#include "sluice/limiter.h"
#include "sluice/memory_store.h"
#include "sluice/redis_cluster_store.h"
#include "sluice/redis_store.h"
#include "sluice/store.h"

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

// Verifies that decisions are counted per policy slot and outcome, inline limits apart,
// and that every policy's series is rendered, zeros included.
TEST(Metrics, DecisionsByPolicyAndOutcome) {
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

// Verifies that store errors, fallbacks by mode and the breakers come from the limiter's
// stats: the worst breaker state as 0/1/2, how many breakers there are and how many are
// not closed.
TEST(Metrics, LimiterCountersAndBreaker) {
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

// Verifies that the deny cache's hits are rendered per policy that uses it (not for the
// others) and its size as a gauge, from the limiter.
TEST(Metrics, DenyCacheHitsByPolicyAndKeys) {
  sluice::limiter lim(std::make_shared<sluice::memory_store>());
  const sluice::limit l = *sluice::parse_limit("1/1h");
  sluice::policy hot{"hot", l};
  hot.deny_cache = true;
  ASSERT_TRUE(lim.add_policy(hot));
  ASSERT_TRUE(lim.add_policy({"plain", l}));
  for (const char* key : {"a", "b"}) {
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(lim.acquire("hot", key));
      ASSERT_TRUE(lim.acquire("plain", key));
    }
  }
  EXPECT_EQ(lim.stats().deny_cache_hits, 6u);  // per key: 1 admitted, 1 denied, 3 cached
  metrics m({"hot", "plain"});
  std::string text;
  sluice::server::render_deny_cache_metrics(text, lim, m.policies());
  EXPECT_TRUE(has_line(text, "# TYPE sluice_deny_cache_hits_total counter"));
  EXPECT_TRUE(has_line(text, R"(sluice_deny_cache_hits_total{policy="hot"} 6)"));
  EXPECT_EQ(text.find(R"(policy="plain")"), std::string::npos);
  EXPECT_TRUE(has_line(text, "# TYPE sluice_deny_cache_keys gauge"));
  EXPECT_TRUE(has_line(text, "sluice_deny_cache_keys 2"));
}

// Verifies HTTP requests by route and code, and a histogram whose buckets are cumulative,
// end in +Inf and agree with _count; routes with no requests are left out.
TEST(Metrics, RequestsAndCumulativeHistogram) {
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

// Verifies the open-connections gauge and the refused-connections counter.
TEST(Metrics, ConnectionsGaugeAndRefusals) {
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

// Verifies that a label value with a quote, backslash or newline stays one valid sample.
TEST(Metrics, LabelValuesAreEscaped) {
  metrics m({"a\"b\\c\nd"});
  const std::string text = m.render({});
  EXPECT_TRUE(has_line(text, R"(sluice_decisions_total{policy="a\"b\\c\nd",outcome="allowed"} 0)"));
}

// Verifies that concurrent counting loses nothing (the counters are atomics).
TEST(Metrics, CountsFromManyThreads) {
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

// A request on `key` (1/hour) for the stores below.
sluice::request one_per_hour(std::string_view key) {
  return {key, sluice::limit{1, std::chrono::hours(1)}, sluice::algorithm::gcra, 1, {}};
}

// Returns how many times `needle` occurs in `text`.
std::size_t occurrences(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t at = text.find(needle); at != std::string::npos;
       at = text.find(needle, at + 1)) {
    ++n;
  }
  return n;
}

// Verifies that a Redis store's own counters are rendered under their names and types: a
// real store on a loopback port nobody listens on, whose three calls each fail at once.
TEST(Metrics, RedisStoreMetrics) {
  const auto options = sluice::parse_redis_uri("redis://127.0.0.1:1?connect_timeout=100ms");
  ASSERT_TRUE(options) << options.error().message();
  sluice::redis_store store(*options);
  for (const char* key : {"a", "b", "c"}) EXPECT_FALSE(store.acquire(one_per_hour(key)));
  std::string text;
  sluice::server::render_store_metrics(text, store);
  EXPECT_TRUE(has_line(text, "# TYPE sluice_redis_requests_total counter"));
  EXPECT_TRUE(has_line(text, "sluice_redis_requests_total 3")) << text;
  EXPECT_TRUE(has_line(text, "sluice_redis_errors_total 3")) << text;
  EXPECT_TRUE(has_line(text, "sluice_redis_timeouts_total 0"));
  EXPECT_TRUE(has_line(text, "sluice_redis_reconnects_total 0"));
  EXPECT_TRUE(has_line(text, "sluice_redis_script_loads_total 0"));
  EXPECT_TRUE(has_line(text, "# TYPE sluice_redis_connections gauge"));
  EXPECT_TRUE(has_line(text, "sluice_redis_connections 0"));
  EXPECT_EQ(text.find("cluster"), std::string::npos);
}

// Verifies the cluster store's routing metrics, besides the common ones, and that a name
// with several labelled samples gets its HELP and TYPE once: a real cluster store whose
// one seed nobody listens on.
TEST(Metrics, RedisClusterStoreMetrics) {
  const auto options =
      sluice::parse_redis_cluster_uri("redis+cluster://127.0.0.1:1?connect_timeout=100ms");
  ASSERT_TRUE(options) << options.error().message();
  sluice::redis_cluster_store store(*options);
  for (const char* key : {"a", "b"}) EXPECT_FALSE(store.acquire(one_per_hour(key)));
  std::string text;
  sluice::server::render_store_metrics(text, store);
  EXPECT_TRUE(has_line(text, "sluice_redis_requests_total 2")) << text;
  EXPECT_TRUE(has_line(text, "sluice_redis_connections 0"));
  EXPECT_TRUE(has_line(text, "# TYPE sluice_redis_cluster_redirects_total counter"));
  EXPECT_EQ(occurrences(text, "# TYPE sluice_redis_cluster_redirects_total "), 1u);
  EXPECT_EQ(occurrences(text, "# HELP sluice_redis_cluster_redirects_total "), 1u);
  EXPECT_TRUE(has_line(text, R"(sluice_redis_cluster_redirects_total{kind="moved"} 0)"));
  EXPECT_TRUE(has_line(text, R"(sluice_redis_cluster_redirects_total{kind="ask"} 0)"));
  EXPECT_TRUE(has_line(text, "sluice_redis_cluster_retries_total 0"));
  EXPECT_TRUE(has_line(text, "sluice_redis_cluster_slot_map_reads_total 0"));
  EXPECT_TRUE(has_line(text, "# TYPE sluice_redis_cluster_masters gauge"));
  EXPECT_TRUE(has_line(text, "sluice_redis_cluster_masters 0"));
  EXPECT_TRUE(has_line(text, "sluice_redis_cluster_slots_served 0"));
}

// Verifies the memory store's metrics as /metrics renders them: keys held (a gauge),
// expired and evicted keys (counters).
TEST(Metrics, MemoryStoreMetrics) {
  sluice::manual_clock clock{std::chrono::seconds(10)};
  sluice::memory_store_options o;
  o.max_keys = 2;
  o.shards = 1;
  o.time_source = &clock;
  sluice::memory_store store(o);
  for (const char* key : {"a", "b", "c"}) EXPECT_TRUE(store.acquire(one_per_hour(key)));
  std::string text;
  sluice::server::render_store_metrics(text, store);
  EXPECT_TRUE(has_line(text, "# TYPE sluice_memory_keys gauge")) << text;
  EXPECT_TRUE(has_line(text, "sluice_memory_keys 2"));
  EXPECT_TRUE(has_line(text, "# TYPE sluice_memory_evicted_total counter"));
  EXPECT_TRUE(has_line(text, "sluice_memory_evicted_total 1"));
  EXPECT_TRUE(has_line(text, "sluice_memory_expired_total 0"));
}

}  // namespace
