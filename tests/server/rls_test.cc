// Tests of Envoy's rate limit service as sluice answers it: the handler (envoy_rls_handler)
// on a memory store for the decisions, statuses and header fields of ShouldRateLimit and the
// counters it keeps, and `sluice serve` with an Envoy configuration behind a real gRPC
// client, on the memory store and on a real Redis, where racing requests over two limits are
// decided all or nothing, and its /metrics page.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "envoy/service/ratelimit/v3/rls.grpc.pb.h"
#include "server/e2e_support.h"
#include "server/envoy_config.h"
#include "server/metrics.h"
#include "server/rls.h"
#include "server/rls_metrics.h"
#include "server/serve.h"
#include "sluice/clock.h"
#include "sluice/limiter.h"
#include "sluice/memory_store.h"
#include "support/redis_cluster.h"
#include "support/redis_server.h"
#include "support/test_util.h"

namespace {

namespace rls = envoy::service::ratelimit::v3;
using sluice::server::envoy_rls_handler;
using sluice::server::rls_metrics;
using sluice::test::must;
using std::chrono::seconds;
using Code = rls::RateLimitResponse::Code;

// A domain with a per-user limit and a per-address limit under it (envoyproxy's nesting),
// a blocked address, an unlimited key, a shadow limit and a gcra limit.
constexpr const char* kEdge = R"(domain: edge
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 100, name: per_user}
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 150, name: per_ip}
  - key: remote_address
    value: 203.0.113.66
    rate_limit: {unit: hour, requests_per_unit: 0, name: blocked}
  - key: path
    value: /health
    rate_limit: {unlimited: true}
  - key: plan
    value: trial
    shadow_mode: true
    rate_limit: {unit: second, requests_per_unit: 1, name: trial}
  - key: api_key
    rate_limit: {unit: minute, requests_per_unit: 3, algorithm: gcra, name: api}
)";

using entries = std::vector<std::pair<std::string, std::string>>;

rls::RateLimitRequest request(const std::vector<entries>& descriptors, std::uint32_t hits = 0,
                              const std::string& domain = "edge") {
  rls::RateLimitRequest r;
  r.set_domain(domain);
  r.set_hits_addend(hits);
  for (const auto& d : descriptors) {
    auto* out = r.add_descriptors();
    for (const auto& [k, v] : d) {
      auto* e = out->add_entries();
      e->set_key(k);
      e->set_value(v);
    }
  }
  return r;
}

std::map<std::string, std::string> headers_of(const rls::RateLimitResponse& r) {
  std::map<std::string, std::string> out;
  for (const auto& h : r.response_headers_to_add()) out[h.key()] = h.value();
  return out;
}

class RlsHandler : public ::testing::Test {
 protected:
  RlsHandler() {
    sluice::memory_store_options o;
    o.time_source = &clock_;
    sluice::limiter_options lo;
    lo.store = std::make_shared<sluice::memory_store>(o);
    lo.time_source = &clock_;
    limiter_ = std::make_unique<sluice::limiter>(std::move(lo));
    use(kEdge);
  }

  // Answers from `yaml` from now on, counting into new counters with a cap of `detailed`.
  void use(const char* yaml, std::size_t detailed = sluice::server::default_detailed_values) {
    handler_.reset();
    rls_ = std::make_unique<rls_metrics>(detailed);
    handler_ = std::make_unique<envoy_rls_handler>(
        must(sluice::server::parse_envoy_config(yaml, "test.yaml")), sluice::failure_mode::allow,
        *limiter_, rls_.get());
  }

  // Returns the counters as GET /metrics shows them.
  std::string page() const {
    std::string out;
    sluice::server::render_rls_metrics(out, *rls_);
    return out;
  }

  // Returns the handler's answer to `r` (the memory store answers before the call returns).
  rls::RateLimitResponse ask(const rls::RateLimitRequest& r, grpc::StatusCode want = grpc::OK) {
    rls::RateLimitResponse response;
    std::optional<grpc::Status> status;
    handler_->should_rate_limit(r, &response, [&](grpc::Status s) { status = std::move(s); });
    EXPECT_TRUE(status.has_value());
    if (status) {
      EXPECT_EQ(status->error_code(), want) << status->error_message();
    }
    return response;
  }

  sluice::manual_clock clock_{seconds(1'700'000'000)};
  std::unique_ptr<sluice::limiter> limiter_;
  std::unique_ptr<rls_metrics> rls_;
  std::unique_ptr<envoy_rls_handler> handler_;
  std::unique_ptr<sluice::server::metrics> metrics_for_examples_ =
      std::make_unique<sluice::server::metrics>(std::vector<std::string>{});
};

// Verifies one descriptor's statuses and header fields over a window: OK with the limit and
// what remains, then OVER_LIMIT with Retry-After.
TEST_F(RlsHandler, OneDescriptorCountsDownThenIsOverTheLimit) {
  const auto req = request({{{"api_key", "k1"}}});
  for (int left = 2; left >= 0; --left) {
    const auto r = ask(req);
    EXPECT_EQ(r.overall_code(), rls::RateLimitResponse::OK);
    ASSERT_EQ(r.statuses_size(), 1);
    EXPECT_EQ(r.statuses(0).code(), rls::RateLimitResponse::OK);
    EXPECT_EQ(r.statuses(0).current_limit().name(), "api");
    EXPECT_EQ(r.statuses(0).current_limit().requests_per_unit(), 3u);
    EXPECT_EQ(r.statuses(0).current_limit().unit(), rls::RateLimitResponse::RateLimit::MINUTE);
    EXPECT_EQ(r.statuses(0).limit_remaining(), static_cast<std::uint32_t>(left));
    EXPECT_EQ(headers_of(r)["RateLimit-Policy"], R"("api";q=3;w=60)");
  }
  const auto over = ask(req);
  EXPECT_EQ(over.overall_code(), rls::RateLimitResponse::OVER_LIMIT);
  EXPECT_EQ(over.statuses(0).code(), rls::RateLimitResponse::OVER_LIMIT);
  EXPECT_EQ(over.statuses(0).duration_until_reset().seconds(), 20);  // gcra: one unit per 20 s
  const auto h = headers_of(over);
  EXPECT_EQ(h.at("RateLimit"), R"("api";r=0;t=21)");
  EXPECT_EQ(h.at("Retry-After"), "21");
}

// Verifies that descriptors no limit matches, an unknown domain and an unlimited key are OK
// with no current_limit, and that a blocked address (requests_per_unit 0) is over the limit.
TEST_F(RlsHandler, UnmatchedUnknownUnlimitedAndBlocked) {
  auto r = ask(request({{{"colour", "blue"}}, {{"path", "/health"}}}));
  EXPECT_EQ(r.overall_code(), rls::RateLimitResponse::OK);
  ASSERT_EQ(r.statuses_size(), 2);
  EXPECT_FALSE(r.statuses(0).has_current_limit());
  EXPECT_FALSE(r.statuses(1).has_current_limit());
  EXPECT_TRUE(headers_of(r).empty());
  r = ask(request({{{"user", "u"}}}, 0, "nowhere"));
  EXPECT_EQ(r.overall_code(), rls::RateLimitResponse::OK);
  EXPECT_FALSE(r.statuses(0).has_current_limit());
  r = ask(request({{{"remote_address", "203.0.113.66"}}, {{"user", "u9"}}}));
  EXPECT_EQ(r.overall_code(), rls::RateLimitResponse::OVER_LIMIT);
  EXPECT_EQ(r.statuses(0).code(), rls::RateLimitResponse::OVER_LIMIT);
  EXPECT_EQ(r.statuses(0).current_limit().name(), "blocked");
  // The request was denied as a whole: the user's limit was looked at, not spent.
  EXPECT_EQ(r.statuses(1).code(), rls::RateLimitResponse::OK);
  EXPECT_EQ(ask(request({{{"user", "u9"}}})).statuses(0).limit_remaining(), 99u);
}

// Verifies all or nothing over two descriptors: once the user's limit is spent, the request
// is over the limit and the address's limit is not charged.
TEST_F(RlsHandler, SeveralDescriptorsAreAllOrNothing) {
  const auto both = request({{{"api_key", "k2"}}, {{"user", "u1"}}});
  for (int i = 0; i < 3; ++i) EXPECT_EQ(ask(both).overall_code(), rls::RateLimitResponse::OK);
  const auto over = ask(both);
  EXPECT_EQ(over.overall_code(), rls::RateLimitResponse::OVER_LIMIT);
  EXPECT_EQ(over.statuses(0).code(), rls::RateLimitResponse::OVER_LIMIT);
  EXPECT_EQ(over.statuses(1).code(), rls::RateLimitResponse::OK);
  EXPECT_EQ(over.statuses(1).limit_remaining(), 97u);  // 3 spent, the denied one not
  EXPECT_EQ(headers_of(over).at("RateLimit-Policy"), R"("api";q=3;w=60, "per_user";q=100;w=60)");
}

// Verifies the costs: the request's hits_addend (0 means 1), a descriptor's own (0 only
// checks), and a cost above the limit, which is over the limit and spends nothing.
TEST_F(RlsHandler, HitsAddendIsTheCost) {
  EXPECT_EQ(ask(request({{{"user", "h"}}}, 40)).statuses(0).limit_remaining(), 60u);
  auto r = request({{{"user", "h"}}});
  r.mutable_descriptors(0)->mutable_hits_addend()->set_value(0);
  EXPECT_EQ(ask(r).statuses(0).limit_remaining(), 60u);  // checked, not spent
  const auto huge = ask(request({{{"user", "h"}}, {{"api_key", "h"}}}, 4294967295u));
  EXPECT_EQ(huge.overall_code(), rls::RateLimitResponse::OVER_LIMIT);
  EXPECT_EQ(ask(request({{{"user", "h"}}})).statuses(0).limit_remaining(), 59u);
  EXPECT_EQ(ask(request({{{"api_key", "h"}}})).statuses(0).limit_remaining(), 2u);
}

// Verifies that one descriptor given twice counts twice, and that costs which together are
// above its limit are over the limit and spend nothing (not an error).
TEST_F(RlsHandler, RepeatedDescriptorsAddUp) {
  auto r = request({{{"user", "twice"}}, {{"user", "twice"}}}, 30);
  EXPECT_EQ(ask(r).statuses(1).limit_remaining(), 40u);
  auto over = request({{{"user", "twice2"}}, {{"user", "twice2"}}}, 60);
  const auto answer = ask(over);
  EXPECT_EQ(answer.overall_code(), rls::RateLimitResponse::OVER_LIMIT);
  EXPECT_EQ(ask(request({{{"user", "twice2"}}})).statuses(0).limit_remaining(), 99u);
}

// Verifies that a descriptor's own limit replaces the configured one and counts apart.
TEST_F(RlsHandler, LimitOverrideIsHonoured) {
  auto r = request({{{"user", "o"}}});
  auto* o = r.mutable_descriptors(0)->mutable_limit();
  o->set_requests_per_unit(2);
  o->set_unit(envoy::type::v3::HOUR);
  EXPECT_EQ(ask(r).statuses(0).current_limit().requests_per_unit(), 2u);
  EXPECT_EQ(ask(r).statuses(0).limit_remaining(), 0u);
  EXPECT_EQ(ask(r).overall_code(), rls::RateLimitResponse::OVER_LIMIT);
  EXPECT_EQ(ask(request({{{"user", "o"}}})).statuses(0).limit_remaining(), 99u);
}

// Verifies shadow mode: over its limit the descriptor is still OK.
TEST_F(RlsHandler, ShadowModeNeverDenies) {
  const auto req = request({{{"plan", "trial"}}});
  EXPECT_EQ(ask(req).overall_code(), rls::RateLimitResponse::OK);
  const auto second = ask(req);
  EXPECT_EQ(second.overall_code(), rls::RateLimitResponse::OK);
  EXPECT_EQ(second.statuses(0).code(), rls::RateLimitResponse::OK);
  EXPECT_EQ(headers_of(second).count("Retry-After"), 0u);
}

// Verifies hostile requests: too many entries or descriptors are INVALID_ARGUMENT; empty keys
// and huge values are answered without a crash.
TEST_F(RlsHandler, HostileRequestsAreClearErrorsOrHarmless) {
  entries many;
  for (int i = 0; i < 1000; ++i) many.emplace_back("k" + std::to_string(i), "v");
  ask(request({many}), grpc::StatusCode::INVALID_ARGUMENT);
  std::vector<entries> descriptors(100, entries{{"user", "x"}});
  ask(request(descriptors), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ask(request({{{"", ""}}})).overall_code(), rls::RateLimitResponse::OK);
  const std::string huge(60000, 'v');
  const auto r = ask(request({{{"user", huge}}}));
  EXPECT_EQ(r.statuses(0).limit_remaining(), 99u);
  EXPECT_EQ(ask(request({{{"user", huge}}})).statuses(0).limit_remaining(), 98u);
}

// A domain for the counters: a limit of 10, whose 80% is 8; a shadow limit of 2; a detailed
// limit of 5; an unlimited path; a blocked key.
constexpr const char* kShop = R"(domain: shop
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: plan
    value: trial
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: remote_address
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: path
    value: /health
    rate_limit: {unlimited: true}
  - key: blocked
    rate_limit: {unit: hour, requests_per_unit: 0}
)";

// Returns the value of the sample `series` in `text`, or -1 when it is not there.
long long value(const std::string& text, const std::string& series) {
  return sluice::test::e2e::sample("\n" + text, series);
}

// Returns the `sluice_rls_hits_total` series of `descriptor` in domain shop.
std::string hits(const std::string& descriptor, const std::string& outcome,
                 const std::string& labelled = "") {
  return R"(sluice_rls_hits_total{domain="shop",descriptor=")" + descriptor + "\"," +
         (labelled.empty() ? "" : "entries=\"" + labelled + "\",") + "outcome=\"" + outcome + "\"}";
}

std::string calls(const std::string& domain, const std::string& code) {
  return R"(sluice_rls_requests_total{domain=")" + domain + R"(",code=")" + code + "\"}";
}

// Returns the lines of `text` that start with `prefix`.
std::size_t count_lines(const std::string& text, const std::string& prefix) {
  std::size_t n = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) n += line.starts_with(prefix) ? 1 : 0;
  return n;
}

// Verifies the exact counts after a known sequence: hits (hits_addend) within the limit, the
// ones that take its use above 8 of 10 near it (one request's hits split as envoyproxy
// splits them), the ones over it, a shadow limit's over it as shadow_mode, a blocked key
// over it; unlimited and unmatched descriptors count no hits; calls by domain and code.
TEST_F(RlsHandler, MetricsCountHitsByOutcome) {
  use(kShop);
  const auto u = request({{{"user", "u"}}}, 0, "shop");
  for (int i = 0; i < 9; ++i) ask(u);  // 8 within, 1 near
  EXPECT_EQ(ask(request({{{"user", "u"}}}, 2, "shop")).overall_code(),
            rls::RateLimitResponse::OVER_LIMIT);                         // 2 over
  EXPECT_EQ(ask(u).overall_code(), rls::RateLimitResponse::OK);          // 10 of 10: near
  EXPECT_EQ(ask(u).overall_code(), rls::RateLimitResponse::OVER_LIMIT);  // over
  ask(request({{{"user", "v"}}}, 7, "shop"));                            // 7 within
  ask(request({{{"user", "v"}}}, 3, "shop"));  // 7 → 10: 1 within, 2 near
  const auto trial = request({{{"plan", "trial"}}}, 0, "shop");
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(ask(trial).overall_code(), rls::RateLimitResponse::OK);  // 1, 1, shadow 1
  ask(request({{{"path", "/health"}}, {{"colour", "blue"}}}, 0, "shop"));
  EXPECT_EQ(ask(request({{{"blocked", "b"}}}, 0, "shop")).overall_code(),
            rls::RateLimitResponse::OVER_LIMIT);
  ask(request({{{"user", "u"}}}, 0, "nowhere"));
  ask(request({std::vector<entries>(100, entries{{"user", "x"}})}, 0, "shop"),
      grpc::StatusCode::INVALID_ARGUMENT);

  const std::string text = page();
  EXPECT_EQ(value(text, hits("user", "within_limit")), 16) << text;
  EXPECT_EQ(value(text, hits("user", "near_limit")), 4) << text;
  EXPECT_EQ(value(text, hits("user", "over_limit")), 3) << text;
  EXPECT_EQ(value(text, hits("user", "shadow_mode")), 0) << text;
  EXPECT_EQ(value(text, hits("plan_trial", "within_limit")), 1) << text;
  EXPECT_EQ(value(text, hits("plan_trial", "near_limit")), 1) << text;
  EXPECT_EQ(value(text, hits("plan_trial", "over_limit")), 0) << text;
  EXPECT_EQ(value(text, hits("plan_trial", "shadow_mode")), 1) << text;
  EXPECT_EQ(value(text, hits("blocked", "over_limit")), 1) << text;
  EXPECT_EQ(text.find("path"), std::string::npos) << text;
  EXPECT_EQ(text.find("colour"), std::string::npos) << text;
  EXPECT_EQ(value(text, calls("shop", "OK")), 16) << text;
  EXPECT_EQ(value(text, calls("shop", "OVER_LIMIT")), 3) << text;
  EXPECT_EQ(value(text, calls("shop", "INVALID_ARGUMENT")), 1) << text;
  EXPECT_EQ(value(text, calls("shop", "UNAVAILABLE")), 0) << text;
  EXPECT_EQ(value(text, calls("_unknown_", "OK")), 1) << text;
}

// Verifies that each descriptor is counted by its own limit's answer, as envoyproxy counts
// them: a request one limit denies counts the other's hits within its limit (they were
// looked at, not spent, so the next request counts the same); a descriptor's own limit with
// no rule counts under `_override_`.
TEST_F(RlsHandler, MetricsCountEachDescriptorByItsOwnLimit) {
  use(kShop);
  ask(request({{{"user", "w"}}}, 10, "shop"));  // 8 within, 2 near
  const auto both = request({{{"user", "w"}}, {{"remote_address", "198.51.100.7"}}}, 0, "shop");
  for (int i = 0; i < 2; ++i) {
    const auto r = ask(both);
    EXPECT_EQ(r.overall_code(), rls::RateLimitResponse::OVER_LIMIT);
    EXPECT_EQ(r.statuses(1).code(), rls::RateLimitResponse::OK);
    EXPECT_EQ(r.statuses(1).limit_remaining(), 5u);  // not spent
  }
  auto own = request({{{"colour", "blue"}}}, 0, "shop");
  own.mutable_descriptors(0)->mutable_limit()->set_requests_per_unit(1);
  own.mutable_descriptors(0)->mutable_limit()->set_unit(envoy::type::v3::HOUR);
  EXPECT_EQ(ask(own).overall_code(), rls::RateLimitResponse::OK);
  EXPECT_EQ(ask(own).overall_code(), rls::RateLimitResponse::OVER_LIMIT);

  const std::string text = page();
  EXPECT_EQ(value(text, hits("user", "over_limit")), 2) << text;
  EXPECT_EQ(value(text, hits("remote_address", "within_limit", "remote_address_198.51.100.7")), 2)
      << text;
  EXPECT_EQ(value(text, hits("remote_address", "near_limit", "remote_address_198.51.100.7")), 0)
      << text;
  EXPECT_EQ(value(text, hits("_override_", "near_limit")), 1) << text;  // 1 of 1: above 80%
  EXPECT_EQ(value(text, hits("_override_", "over_limit")), 1) << text;
}

// Verifies detailed_metric: each value of the descriptor is a label of its own up to the cap
// (3 here), the rest are counted under `_other_`, and a value labelled before the cap was
// reached keeps its label.
TEST_F(RlsHandler, DetailedMetricLabelsValuesUpToTheCap) {
  use(kShop, 3);
  for (const char* a : {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.1"}) {
    ask(request({{{"remote_address", a}}}, 0, "shop"));
  }
  const std::string text = page();
  EXPECT_EQ(value(text, hits("remote_address", "within_limit", "remote_address_10.0.0.1")), 2)
      << text;
  EXPECT_EQ(value(text, hits("remote_address", "within_limit", "remote_address_10.0.0.3")), 1)
      << text;
  EXPECT_EQ(value(text, hits("remote_address", "within_limit", "_other_")), 2) << text;
  EXPECT_EQ(text.find("10.0.0.4"), std::string::npos) << text;
  EXPECT_EQ(count_lines(text, R"(sluice_rls_hits_total{domain="shop",descriptor="remote_address")"),
            4u * 4u);
}

// Verifies that hostile descriptor values cannot break the metrics page: quotes,
// backslashes, line feeds, NUL and bytes that are not UTF-8 come out escaped, every line is
// a comment or a sample, and the page is printable UTF-8.
TEST_F(RlsHandler, HostileDescriptorValuesAreEscapedInTheMetrics) {
  use(kShop);
  const std::vector<std::string> values = {
      "a\"b", "c\\d", "e\nsluice_fake_total 1\n", std::string("f\0g", 3), "\xff\xfe", "}\" 99"};
  for (const auto& v : values) ask(request({{{"remote_address", v}}}, 0, "shop"));
  const std::string text = page();
  const std::string within = "within_limit";
  EXPECT_EQ(value(text, hits("remote_address", within, R"(remote_address_a\"b)")), 1) << text;
  EXPECT_EQ(value(text, hits("remote_address", within, R"(remote_address_c\\d)")), 1) << text;
  EXPECT_EQ(value(text, hits("remote_address", within,
                             R"(remote_address_e\\x0asluice_fake_total 1\\x0a)")),
            1)
      << text;
  EXPECT_EQ(value(text, hits("remote_address", within, R"(remote_address_f\\x00g)")), 1) << text;
  EXPECT_EQ(value(text, hits("remote_address", within, R"(remote_address_\\xff\\xfe)")), 1) << text;
  EXPECT_EQ(value(text, hits("remote_address", within, R"(remote_address_}\" 99)")), 1) << text;
  EXPECT_EQ(value(text, "sluice_fake_total"), -1);
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    EXPECT_TRUE(line.starts_with("# ") || line.starts_with("sluice_rls_")) << line;
    EXPECT_EQ(sluice::server::label_text(line), line) << "not printable UTF-8: " << line;
  }
}

// Verifies that 10,000 distinct values of a detailed descriptor leave 100 labels and
// `_other_` on the page, every hit counted.
TEST_F(RlsHandler, TenThousandDistinctValuesKeepTheMetricsBounded) {
  use(kShop);
  for (int i = 0; i < 10000; ++i) {
    ask(request({{{"remote_address", "v" + std::to_string(i)}}}, 0, "shop"));
  }
  const std::string text = page();
  const std::string prefix = R"(sluice_rls_hits_total{domain="shop",descriptor="remote_address")";
  EXPECT_EQ(count_lines(text, prefix), (sluice::server::default_detailed_values + 1) * 4);
  EXPECT_EQ(value(text, hits("remote_address", "within_limit", "remote_address_v99")), 1);
  EXPECT_EQ(value(text, hits("remote_address", "within_limit", "remote_address_v100")), -1);
  EXPECT_EQ(value(text, hits("remote_address", "within_limit", "_other_")), 9900);
  EXPECT_LT(text.size(), 64u * 1024);
}

// Verifies reload: a good directory replaces the configuration, a bad one keeps it.
TEST_F(RlsHandler, ReloadSwapsOrKeeps) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("sluice_rls_reload_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "edge.yaml") << "domain: edge\ndescriptors:\n  - key: user\n"
                                      "    rate_limit: {unit: minute, requests_per_unit: 7}\n";
  ASSERT_EQ(must(handler_->reload(dir.string())), 1u);
  EXPECT_EQ(ask(request({{{"user", "r"}}})).statuses(0).limit_remaining(), 6u);
  std::ofstream(dir / "edge.yaml") << "domain: edge\ndescriptors: 3\n";
  const auto bad = handler_->reload(dir.string());
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("edge.yaml:2"), std::string::npos) << bad.error().message();
  EXPECT_EQ(ask(request({{{"user", "r"}}})).statuses(0).limit_remaining(), 5u);
  std::filesystem::remove_all(dir);
}

// Verifies that examples/envoy as shipped loads (sluice.yaml names the ratelimit directory)
// and decides what its comments say.
TEST_F(RlsHandler, ShippedExampleLoadsAndDecides) {
  const auto c = must(sluice::server::load_config(SLUICE_EXAMPLES_DIR "/envoy/sluice.yaml"));
  EXPECT_EQ(c.grpc_listen, "127.0.0.1:8081");
  auto handler = sluice::server::make_rls_handler(c, *limiter_, *metrics_for_examples_);
  ASSERT_NE(handler, nullptr);
  rls::RateLimitResponse r;
  for (int i = 0; i < 21; ++i) {
    r.Clear();
    handler->should_rate_limit(request({{{"api_key", "k"}}}), &r, [](grpc::Status) {});
  }
  EXPECT_EQ(r.overall_code(), rls::RateLimitResponse::OVER_LIMIT);  // a burst of 20
  EXPECT_EQ(r.statuses(0).current_limit().name(), "per_api_key");
  r.Clear();
  handler->should_rate_limit(request({{{"api_key", "m"}, {"path", "/v1/messages"}}}), &r,
                             [](grpc::Status) {});
  EXPECT_EQ(r.statuses(0).current_limit().name(), "messages");
}

// `sluice serve` with an Envoy configuration, answering a real gRPC client.
class RlsServe : public ::testing::Test {
 protected:
  void start(const std::string& store) {
    dir_ = std::filesystem::temp_directory_path() /
           ("sluice_rls_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ / "edge.yaml") << kEdge;
    sluice::server::server_config c;
    c.listen = "127.0.0.1:0";
    c.grpc_listen = "127.0.0.1:0";
    c.io_threads = 2;
    c.store = store;
    c.envoy_config = dir_.string();
    service_ = std::make_unique<sluice::server::service>(c);
    service_->start();
    channel_ = grpc::CreateChannel(service_->grpc_address(), grpc::InsecureChannelCredentials());
    stub_ = rls::RateLimitService::NewStub(channel_);
  }

  void TearDown() override {
    if (service_) {
      service_->shutdown();
      service_->wait();
    }
    std::filesystem::remove_all(dir_);
  }

  grpc::Status call(const rls::RateLimitRequest& r, rls::RateLimitResponse* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return stub_->ShouldRateLimit(&ctx, r, out);
  }

  // 1,000 requests from 8 threads, each under (per-user 100/min AND per-IP 150/min) over 10
  // users sharing 2 addresses: no limit admits more than its count, and every admitted
  // request is counted in both of its limits (the store's counts are exactly the admissions).
  // `exact`: each address admits exactly its limit (500 ask); on a cluster a reservation
  // about to be given back may deny a request that would fit, so only "at most".
  void race(bool exact = true) {
    std::atomic<int> next{0};
    std::vector<std::atomic<int>> by_user(10), by_ip(2);
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&] {
        for (int i; (i = next.fetch_add(1)) < 1000;) {
          const int u = i % 10;
          rls::RateLimitResponse r;
          const auto s = call(request({{{"user", "u" + std::to_string(u)}},
                                       {{"remote_address", "10.0.0." + std::to_string(u % 2)}}}),
                              &r);
          ASSERT_TRUE(s.ok()) << s.error_message();
          if (r.overall_code() == rls::RateLimitResponse::OK) {
            ++by_user[u];
            ++by_ip[u % 2];
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    for (int ip = 0; ip < 2; ++ip) {
      if (exact) {
        EXPECT_EQ(by_ip[ip].load(), 150);
      } else {
        EXPECT_LE(by_ip[ip].load(), 150);
        EXPECT_GT(by_ip[ip].load(), 0);
      }
      rls::RateLimitResponse r;
      auto check = request({{{"remote_address", "10.0.0." + std::to_string(ip)}}});
      check.mutable_descriptors(0)->mutable_hits_addend()->set_value(0);
      ASSERT_TRUE(call(check, &r).ok());
      EXPECT_EQ(r.statuses(0).limit_remaining(), static_cast<std::uint32_t>(150 - by_ip[ip]));
    }
    for (int u = 0; u < 10; ++u) {
      rls::RateLimitResponse r;
      auto check = request({{{"user", "u" + std::to_string(u)}}});
      check.mutable_descriptors(0)->mutable_hits_addend()->set_value(0);
      ASSERT_TRUE(call(check, &r).ok());
      // Denied requests charged nothing: what is left is the limit less the admissions.
      EXPECT_EQ(r.statuses(0).limit_remaining(), static_cast<std::uint32_t>(100 - by_user[u]))
          << "user " << u;
    }
  }

  std::filesystem::path dir_;
  std::unique_ptr<sluice::server::service> service_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<rls::RateLimitService::Stub> stub_;
};

// Verifies the racing requests on the memory store.
TEST_F(RlsServe, AllOrNothingUnderRacingRequestsOnMemory) {
  start("memory://");
  race();
}

// Verifies the racing requests on a real Redis: one script per request over both keys.
TEST_F(RlsServe, AllOrNothingUnderRacingRequestsOnRedis) {
  sluice::test::redis_server redis;
  start(redis.uri() + "?timeout=2s");
  race();
}

// Verifies the racing requests on a real Redis Cluster, whose two keys sit on different
// slots: reserved on each, given back when one denies.
TEST_F(RlsServe, AllOrNothingUnderRacingRequestsOnACluster) {
  sluice::test::redis_cluster cluster;
  start(cluster.uri() + "?timeout=2s");
  race(/*exact=*/false);
}

// Verifies that GET /metrics of `sluice serve` shows the rate limit service's counters once
// gRPC calls were answered.
TEST_F(RlsServe, MetricsPageShowsTheRateLimitService) {
  start("memory://");
  rls::RateLimitResponse r;
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(call(request({{{"api_key", "m"}}}), &r).ok());
  ASSERT_TRUE(call(request({{{"plan", "trial"}}}), &r).ok());
  sluice::test::e2e::client c(service_->port());
  const std::string text = c.call(boost::beast::http::verb::get, "/metrics").body();
  const std::string api = R"(sluice_rls_hits_total{domain="edge",descriptor="api_key",outcome=")";
  EXPECT_EQ(sluice::test::e2e::sample(text, api + R"(within_limit"})"), 2) << text;
  EXPECT_EQ(sluice::test::e2e::sample(text, api + R"(near_limit"})"), 1) << text;  // 3 of 3
  EXPECT_EQ(sluice::test::e2e::sample(text, api + R"(over_limit"})"), 1) << text;
  EXPECT_EQ(
      sluice::test::e2e::sample(
          text,
          R"(sluice_rls_hits_total{domain="edge",descriptor="plan_trial",outcome="near_limit"})"),
      1)
      << text;
  EXPECT_EQ(
      sluice::test::e2e::sample(text, R"(sluice_rls_requests_total{domain="edge",code="OK"})"), 4)
      << text;
  EXPECT_EQ(sluice::test::e2e::sample(
                text, R"(sluice_rls_requests_total{domain="edge",code="OVER_LIMIT"})"),
            1)
      << text;
}

// Verifies that malformed bytes are a gRPC error and the server keeps serving.
TEST_F(RlsServe, MalformedRequestIsAnErrorNotACrash) {
  start("memory://");
  grpc::GenericStub generic(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  const std::string garbage = "\x0a\xff\xff\xff\xff\x0f garbage";
  grpc::Slice slice(garbage);
  grpc::ByteBuffer in(&slice, 1), out;
  std::mutex mu;
  std::condition_variable cv;
  std::optional<grpc::Status> status;
  generic.UnaryCall(&ctx, "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
                    grpc::StubOptions(), &in, &out, [&](grpc::Status s) {
                      const std::lock_guard lock(mu);
                      status = std::move(s);
                      cv.notify_all();
                    });
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return status.has_value(); });
  EXPECT_FALSE(status->ok());
  rls::RateLimitResponse r;
  ASSERT_TRUE(call(request({{{"api_key", "after"}}}), &r).ok());
  EXPECT_EQ(r.statuses(0).limit_remaining(), 2u);
}

}  // namespace
