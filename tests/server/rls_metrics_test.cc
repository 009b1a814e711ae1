// Tests of the rate limit service's counters without a handler: how a descriptor's hits
// divide among the outcomes, label text from untrusted bytes, the cap of detailed_metric
// values under racing threads, what a reload keeps, and the /metrics text they render as.
#include "server/rls_metrics.h"

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "server/envoy_config.h"
#include "server/metrics.h"
#include "support/test_util.h"

namespace {

using sluice::server::envoy_config;
using sluice::server::envoy_entry;
using sluice::server::label_text;
using sluice::server::rls_code;
using sluice::server::rls_hits;
using sluice::server::rls_metrics;
using sluice::server::rls_outcome;
using sluice::server::split_hits;
using sluice::test::must;

// One domain with a plain rule, a nested one, a detailed one and an unlimited one.
constexpr const char* kEdge = R"(domain: edge
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: remote_address
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: plan
    value: trial
    descriptors:
      - key: user
        rate_limit: {unit: second, requests_per_unit: 1}
  - key: path
    value: /health
    rate_limit: {unlimited: true}
)";

rls_hits hits(std::uint64_t within, std::uint64_t near, std::uint64_t over, std::uint64_t shadow) {
  return rls_hits{{within, near, over, shadow}};
}

bool has_line(const std::string& text, const std::string& line) {
  return text.find("\n" + line + "\n") != std::string::npos || text.rfind(line + "\n", 0) == 0;
}

std::size_t count_lines(const std::string& text, std::string_view prefix) {
  std::size_t n = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) n += line.starts_with(prefix) ? 1 : 0;
  return n;
}

std::string render(const rls_metrics& m) {
  std::string out;
  sluice::server::render_rls_metrics(out, m);
  return out;
}

const envoy_config& edge() {
  static const envoy_config c = must(sluice::server::parse_envoy_config(kEdge, "edge.yaml"));
  return c;
}

// Returns the rule of `edge()` whose stats_key is `key`.
const sluice::server::envoy_rate_limit& rule(std::string_view key) {
  for (const auto& rl : edge().rate_limits()) {
    if (rl.stats_key == key) return rl;
  }
  throw std::runtime_error("no rule " + std::string(key));
}

// Verifies the near-limit threshold (floor of 80%, in integers) and how hits divide: all
// over_limit or shadow_mode when denied, else those past the threshold near_limit, as
// envoyproxy splits one hits_addend, with no overflow at the extremes.
TEST(RlsMetrics, SplitHitsByOutcome) {
  EXPECT_EQ(sluice::server::near_limit_threshold(10), 8);
  EXPECT_EQ(sluice::server::near_limit_threshold(3), 2);
  EXPECT_EQ(sluice::server::near_limit_threshold(1), 0);
  EXPECT_EQ(sluice::server::near_limit_threshold(0), 0);
  EXPECT_EQ(sluice::server::near_limit_threshold(INT64_MAX), INT64_MAX / 5 * 4 + 1);

  EXPECT_EQ(split_hits(1, 10, 8, false, false), hits(1, 0, 0, 0));  // 8 of 10: at 80%
  EXPECT_EQ(split_hits(1, 10, 9, false, false), hits(0, 1, 0, 0));
  EXPECT_EQ(split_hits(3, 10, 10, false, false), hits(1, 2, 0, 0));  // 7 → 10
  EXPECT_EQ(split_hits(2, 10, 10, false, false), hits(0, 2, 0, 0));  // 8 → 10
  EXPECT_EQ(split_hits(10, 10, 10, false, false), hits(8, 2, 0, 0));
  EXPECT_EQ(split_hits(4, 10, 3, true, false), hits(0, 0, 4, 0));
  EXPECT_EQ(split_hits(4, 10, 3, true, true), hits(0, 0, 0, 4));
  EXPECT_EQ(split_hits(0, 10, 10, false, false), hits(0, 0, 0, 0));  // a check counts nothing
  EXPECT_EQ(split_hits(1, 1, 1, false, false), hits(0, 1, 0, 0));    // a limit of 1: 0 is 80%
  EXPECT_EQ(
      split_hits(INT64_MAX, INT64_MAX, INT64_MAX, false, false)[rls_outcome::near_limit],
      static_cast<std::uint64_t>(INT64_MAX - sluice::server::near_limit_threshold(INT64_MAX)));
  EXPECT_EQ(split_hits(5, 10, -3, false, false), hits(5, 0, 0, 0));  // nonsense use: no crash
}

// Verifies label text from untrusted bytes: UTF-8 is kept, control characters and every
// byte of malformed UTF-8 (overlong, surrogate, above U+10FFFF, cut short) become \xNN, and
// the text format then escapes backslash, quote and line feed.
TEST(RlsMetrics, LabelTextIsUtf8AndEscaped) {
  EXPECT_EQ(label_text("203.0.113.9"), "203.0.113.9");
  EXPECT_EQ(label_text("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  EXPECT_EQ(label_text(std::string_view("a\0b\x7f\tc\n", 7)), R"(a\x00b\x7f\x09c\x0a)");
  EXPECT_EQ(label_text("\xff\xfe"), R"(\xff\xfe)");
  EXPECT_EQ(label_text("\xc0\xaf"), R"(\xc0\xaf)");                  // overlong '/'
  EXPECT_EQ(label_text("\xed\xa0\x80"), R"(\xed\xa0\x80)");          // a surrogate
  EXPECT_EQ(label_text("\xf4\x90\x80\x80"), R"(\xf4\x90\x80\x80)");  // above U+10FFFF
  EXPECT_EQ(label_text("\xe2\x82"), R"(\xe2\x82)");                  // cut short
  EXPECT_EQ(label_text("\xe2\x82x"), R"(\xe2\x82x)");
  EXPECT_EQ(sluice::server::escape_label(label_text("a\"b\\c\nd")), R"(a\"b\\c\\x0ad)");
  EXPECT_EQ(sluice::server::escape_label("a\"b\\c\nd"), R"(a\"b\\c\nd)");

  std::string out;
  EXPECT_FALSE(sluice::server::append_label_text(out, "abc\xff", 5));  // \xff needs 4 bytes
  EXPECT_EQ(out, "abc");
  const std::string thousand(1000, 'v');  // entries borrow their bytes: it must outlive them
  const std::vector<envoy_entry> long_value = {{"k", thousand}};
  const std::string cut = sluice::server::entries_label(long_value);
  EXPECT_EQ(cut.size(), sluice::server::max_entries_label);
  EXPECT_TRUE(cut.ends_with("vvv..."));
  const std::vector<envoy_entry> two = {{"plan", "trial"}, {"user", "\xff"}};
  EXPECT_EQ(sluice::server::entries_label(two), R"(plan_trial.user_\xff)");
}

// Verifies the labels and zeros rendered once a configuration is installed: every limited
// rule by domain and descriptor (its stats_key less the domain), the domain's calls by code;
// nothing for the unlimited rule, nor before any install.
TEST(RlsMetrics, RendersEachRuleOfTheConfiguration) {
  rls_metrics m;
  EXPECT_EQ(render(m), "");
  const auto counters = m.install(edge());
  EXPECT_EQ(counters->rule(rule("edge.path_/health")), nullptr);
  counters->rule(rule("edge.user"))->series({}).add(hits(3, 1, 2, 0));
  counters->domain("edge").count(rls_code::ok);
  counters->domain("elsewhere").count(rls_code::invalid_argument);
  const std::string text = render(m);
  EXPECT_TRUE(has_line(text, "# TYPE sluice_rls_hits_total counter")) << text;
  EXPECT_TRUE(has_line(text, "# TYPE sluice_rls_requests_total counter")) << text;
  const std::string user = R"(sluice_rls_hits_total{domain="edge",descriptor="user",outcome=")";
  EXPECT_TRUE(has_line(text, user + R"(within_limit"} 3)")) << text;
  EXPECT_TRUE(has_line(text, user + R"(near_limit"} 1)")) << text;
  EXPECT_TRUE(has_line(text, user + R"(over_limit"} 2)")) << text;
  EXPECT_TRUE(has_line(text, user + R"(shadow_mode"} 0)")) << text;
  EXPECT_TRUE(has_line(
      text,
      R"(sluice_rls_hits_total{domain="edge",descriptor="plan_trial.user",outcome="within_limit"} 0)"))
      << text;
  EXPECT_EQ(text.find("path"), std::string::npos) << text;
  EXPECT_EQ(text.find("_override_"), std::string::npos) << text;  // nothing counted there
  EXPECT_TRUE(has_line(text, R"(sluice_rls_requests_total{domain="edge",code="OK"} 1)")) << text;
  EXPECT_TRUE(has_line(text, R"(sluice_rls_requests_total{domain="edge",code="UNAVAILABLE"} 0)"))
      << text;
  EXPECT_TRUE(
      has_line(text, R"(sluice_rls_requests_total{domain="_unknown_",code="INVALID_ARGUMENT"} 1)"))
      << text;
  // The detailed rule shows values only once it counts some.
  EXPECT_EQ(text.find("remote_address"), std::string::npos) << text;
}

// Verifies the cap of a detailed rule: the first `cap` values apart, the rest under
// `_other_`, a value counted apart staying so after the cap is reached, and a value equal to
// `_other_` counted there.
TEST(RlsMetrics, DetailedValuesAreCappedWithAnOverflowLabel) {
  rls_metrics m(3);
  auto* r = m.install(edge())->rule(rule("edge.remote_address"));
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(r->detailed());
  for (const char* v : {"a", "b", "c", "d", "e", "a"}) {
    const std::vector<envoy_entry> e = {{"remote_address", v}};
    r->series(e).add(hits(1, 0, 0, 0));
  }
  r->series_of("_other_").add(hits(0, 0, 1, 0));
  EXPECT_EQ(r->distinct(), 3u);
  const std::string text = render(m);
  const std::string prefix = R"(sluice_rls_hits_total{domain="edge",descriptor="remote_address",)";
  EXPECT_TRUE(has_line(text, prefix + R"(entries="remote_address_a",outcome="within_limit"} 2)"))
      << text;
  EXPECT_TRUE(has_line(text, prefix + R"(entries="remote_address_c",outcome="within_limit"} 1)"))
      << text;
  EXPECT_TRUE(has_line(text, prefix + R"(entries="_other_",outcome="within_limit"} 2)")) << text;
  EXPECT_TRUE(has_line(text, prefix + R"(entries="_other_",outcome="over_limit"} 1)")) << text;
  EXPECT_EQ(text.find("remote_address_d"), std::string::npos) << text;
  EXPECT_EQ(count_lines(text, prefix), 4u * 4u);  // 3 values and _other_, 4 outcomes each
}

// Verifies that 10,000 distinct values from 8 racing threads leave 100 labels and
// `_other_`, and that no hit is lost.
TEST(RlsMetrics, TenThousandDistinctValuesKeepTheLabelsBounded) {
  rls_metrics m;
  auto* r = m.install(edge())->rule(rule("edge.remote_address"));
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([r, t] {
      for (int i = t; i < 10000; i += 8) {
        const std::string v = "10." + std::to_string(i / 256) + ".0." + std::to_string(i % 256);
        const std::vector<envoy_entry> e = {{"remote_address", v}};
        r->series(e).add(hits(1, 0, 0, 0));
        r->series_of("remote_address_10.0.0.0").add(hits(0, 1, 0, 0));  // one value, often
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(r->distinct(), sluice::server::default_detailed_values);
  const std::string text = render(m);
  EXPECT_EQ(
      count_lines(text, R"(sluice_rls_hits_total{domain="edge",descriptor="remote_address",)"),
      (sluice::server::default_detailed_values + 1) * 4);
  std::uint64_t within = 0, near = 0;
  r->visit([&](std::string_view, const sluice::server::rls_series& s) {
    within += s.hits(rls_outcome::within_limit);
    near += s.hits(rls_outcome::near_limit);
  });
  EXPECT_EQ(within, 10000u);
  EXPECT_EQ(near, 10000u);
}

// Verifies a reload: a rule whose labels stay keeps its counter (no reset), a rule that
// vanishes leaves the page while the old counters still count, and a new rule starts at 0.
TEST(RlsMetrics, ReloadKeepsTheCountersOfRulesThatStay) {
  rls_metrics m;
  const auto first = m.install(edge());
  first->rule(rule("edge.user"))->series({}).add(hits(5, 0, 0, 0));
  first->domain("edge").count(rls_code::over_limit);
  const auto next_config = must(sluice::server::parse_envoy_config(
      "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, "
      "requests_per_unit: 1}\n  - key: tenant\n    rate_limit: {unit: hour, "
      "requests_per_unit: 1}\n",
      "edge.yaml"));
  const auto second = m.install(next_config);
  EXPECT_EQ(m.current(), second);
  // A call that started before the reload finishes on the old counters: still no crash.
  first->rule(rule("edge.plan_trial.user"))->series({}).add(hits(1, 0, 0, 0));
  second->rule(next_config.rate_limits()[0])->series({}).add(hits(1, 0, 0, 0));
  const std::string text = render(m);
  EXPECT_TRUE(has_line(
      text, R"(sluice_rls_hits_total{domain="edge",descriptor="user",outcome="within_limit"} 6)"))
      << text;
  EXPECT_TRUE(has_line(
      text, R"(sluice_rls_hits_total{domain="edge",descriptor="tenant",outcome="within_limit"} 0)"))
      << text;
  EXPECT_TRUE(has_line(text, R"(sluice_rls_requests_total{domain="edge",code="OVER_LIMIT"} 1)"))
      << text;
  EXPECT_EQ(text.find("plan_trial"), std::string::npos) << text;
  EXPECT_EQ(first->rule(next_config.rate_limits()[0]), nullptr);  // another configuration's
}

// Verifies that hostile configured names cannot break the page: a domain and descriptor
// with quotes, backslashes, a line feed and control characters render as one escaped line
// each, and a dot in the domain stays in the domain label.
TEST(RlsMetrics, HostileConfiguredNamesAreEscaped) {
  const auto c = must(sluice::server::parse_envoy_config(
      "domain: \"e.\\\"d\\\\g\\ne\\xff\"\ndescriptors:\n  - key: \"k\\x01\"\n"
      "    rate_limit: {unit: hour, requests_per_unit: 1}\n",
      "hostile.yaml"));
  rls_metrics m;
  m.install(c);
  const std::string text = render(m);
  EXPECT_TRUE(has_line(text, R"(sluice_rls_hits_total{domain="e.\"d\\g\\x0ae)"
                             "\xc3\xbf"
                             R"(",descriptor="k\\x01",outcome="over_limit"} 0)"))
      << text;
}

}  // namespace
