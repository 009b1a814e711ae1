// Tests of limits, durations and algorithm names: parsing, validation, canonical printing;
// and of the error category and result type they report through.
#include "sluice/limit.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/error.h"

namespace sluice {

// Makes gtest print limits readably on failure.
void PrintTo(const limit& l, std::ostream* os) {
  *os << "{count=" << l.count << ", window=" << l.window.count() << "us}";
}

}  // namespace sluice

namespace {

using sluice::result;
using std::chrono::hours;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

constexpr microseconds days(std::int64_t n) { return hours(24 * n); }

struct good_limit_case {
  std::string text;
  std::int64_t count;
  microseconds window;
};

// Verifies that every documented spelling of a limit parses to the intended count and window.
TEST(ParseLimit, AcceptsDocumentedForms) {
  const std::vector<good_limit_case> cases = {
      {"30/hour", 30, hours(1)},
      {"100/1m", 100, minutes(1)},
      {"5/10s", 5, seconds(10)},
      {"2/500ms", 2, milliseconds(500)},
      {"1000/1d", 1000, days(1)},
      {"10 per minute", 10, minutes(1)},
      {"1/1us", 1, microseconds(1)},
      {"7/90s", 7, seconds(90)},
      {" 30 / hour ", 30, hours(1)},
      {"30 /hour", 30, hours(1)},
      {"30/ hour", 30, hours(1)},
      {"1000/1ms", 1000, milliseconds(1)},  // exactly one per microsecond
      {"5/10sec", 5, seconds(10)},
      {"5/second", 5, seconds(1)},
      {"5/2seconds", 5, seconds(2)},
      {"5/min", 5, minutes(1)},
      {"5/3minutes", 5, minutes(3)},
      {"5/2h", 5, hours(2)},
      {"5/hr", 5, hours(1)},
      {"5/2hours", 5, hours(2)},
      {"5/day", 5, days(1)},
      {"5/2days", 5, days(2)},
      {"5/1w", 5, days(7)},
      {"5/week", 5, days(7)},
      {"5/2weeks", 5, days(14)},
      {"1/36600d", 1, days(36600)},  // exactly max_window
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    const result<sluice::limit> l = sluice::parse_limit(c.text);
    ASSERT_TRUE(l) << l.error().message();
    EXPECT_EQ(l->count, c.count);
    EXPECT_EQ(l->window, c.window);
  }
}

// Verifies that each malformed or out-of-range limit is rejected with invalid_limit and a detail.
TEST(ParseLimit, RejectsBadLimitsWithDetail) {
  const std::vector<std::string> cases = {
      "",
      "   ",
      "0/hour",
      "-1/hour",
      "abc",
      "30",
      "30/",
      "/hour",
      "30/0s",
      "30/fortnight",
      "99999999999999999999/1s",  // count overflows int64
      "30/1000000000000d",        // window overflows int64 microseconds
      "1/36601d",                 // just beyond max_window
      "2000/1ms",                 // finer than one admission per microsecond
      "1.5/1s",
      "30/hour/x",
      "30/-1s",
      "30/1.5s",
  };
  for (const auto& text : cases) {
    SCOPED_TRACE("\"" + text + "\"");
    const result<sluice::limit> l = sluice::parse_limit(text);
    ASSERT_FALSE(l) << sluice::to_string(*l);
    EXPECT_EQ(l.error().code, sluice::errc::invalid_limit);
    EXPECT_FALSE(l.error().detail.empty());
    // Says where: the detail quotes the text it rejects.
    EXPECT_NE(l.error().detail.find(text), std::string::npos) << l.error().detail;
  }
}

struct canonical_case {
  std::string text;
  std::string canonical;
};

// Verifies that to_string prints the largest exact unit, with no weeks.
TEST(LimitToString, PrintsCanonicalForm) {
  const std::vector<canonical_case> cases = {
      {"30/hour", "30/1h"},       {"2/500ms", "2/500ms"},   {"7/90s", "7/90s"},
      {"1/1d", "1/1d"},           {"1/7d", "1/7d"},         {"1/1w", "1/7d"},
      {"100/1m", "100/1m"},       {"1/1us", "1/1us"},       {"5/1500ms", "5/1500ms"},
      {"1/90m", "1/90m"},         {"1/25h", "1/25h"},       {"1/1001us", "1/1001us"},
      {"10 per minute", "10/1m"}, {"1/60s", "1/1m"},        {"1/1000ms", "1/1s"},
      {"1/48h", "1/2d"},          {"1/36600d", "1/36600d"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    const result<sluice::limit> l = sluice::parse_limit(c.text);
    ASSERT_TRUE(l) << l.error().message();
    EXPECT_EQ(sluice::to_string(*l), c.canonical);
  }
}

// Verifies that parsing the canonical form gives back the same limit, for varied windows.
TEST(LimitToString, RoundTripsThroughParse) {
  const std::vector<microseconds> windows = {microseconds(1), microseconds(999),
                                             milliseconds(1), milliseconds(1500),
                                             seconds(1),      seconds(61),
                                             minutes(1),      minutes(90),
                                             hours(1),        hours(25),
                                             days(1),         days(7),
                                             days(36600),     microseconds(86'400'000'001)};
  for (const microseconds w : windows) {
    for (const std::int64_t count : {std::int64_t{1}, std::int64_t{7}, std::int64_t{1000}}) {
      const result<sluice::limit> l = sluice::make_limit(count, w);
      if (count > w.count()) {
        EXPECT_FALSE(l);
        continue;
      }
      ASSERT_TRUE(l) << l.error().message();
      const std::string text = sluice::to_string(*l);
      SCOPED_TRACE(text);
      const result<sluice::limit> back = sluice::parse_limit(text);
      ASSERT_TRUE(back) << back.error().message();
      EXPECT_EQ(*back, *l);
    }
  }
}

// Verifies that make_limit accepts the boundaries of the valid range and rejects just past them.
TEST(MakeLimit, ChecksCountAndWindowRange) {
  EXPECT_TRUE(sluice::make_limit(1, microseconds(1)));
  EXPECT_TRUE(sluice::make_limit(1, sluice::max_window));
  EXPECT_TRUE(sluice::make_limit(1000, milliseconds(1)));

  struct bad {
    std::int64_t count;
    microseconds window;
  };
  const std::vector<bad> cases = {
      {0, seconds(1)},
      {-1, seconds(1)},
      {1, microseconds(0)},
      {1, microseconds(-1)},
      {1, sluice::max_window + microseconds(1)},
      {1001, milliseconds(1)},
      {2, microseconds(1)},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(std::to_string(c.count) + " per " + std::to_string(c.window.count()) + "us");
    const result<sluice::limit> l = sluice::make_limit(c.count, c.window);
    ASSERT_FALSE(l);
    EXPECT_EQ(l.error().code, sluice::errc::invalid_limit);
    EXPECT_FALSE(l.error().detail.empty());
  }
}

// Verifies that max_window is the documented 100 years of 366 days.
TEST(MakeLimit, MaxWindowIsOneHundredLongYears) { EXPECT_EQ(sluice::max_window, days(36600)); }

struct duration_case {
  std::string text;
  microseconds expected;
};

// Verifies that durations parse with and without a count, including zero.
TEST(ParseDuration, AcceptsDocumentedForms) {
  const std::vector<duration_case> cases = {
      {"1500ms", milliseconds(1500)},
      {"30s", seconds(30)},
      {"hour", hours(1)},
      {"0s", microseconds(0)},
      {"2h", hours(2)},
      {"1us", microseconds(1)},
      {"3d", days(3)},
      {"minute", minutes(1)},
      {"1w", days(7)},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    const result<microseconds> d = sluice::parse_duration(c.text);
    ASSERT_TRUE(d) << d.error().message();
    EXPECT_EQ(*d, c.expected);
  }
}

// Verifies that malformed or negative durations are rejected with invalid_duration.
TEST(ParseDuration, RejectsBadDurations) {
  for (const std::string text : {"-1s", "abc", "", "1.5s", "10", "10fortnights", "s10"}) {
    SCOPED_TRACE("\"" + text + "\"");
    const result<microseconds> d = sluice::parse_duration(text);
    ASSERT_FALSE(d) << d->count();
    EXPECT_EQ(d.error().code, sluice::errc::invalid_duration);
  }
}

// Verifies that durations beyond max_window need allow_long, which admits absolute times.
TEST(ParseDuration, LongDurationsNeedAllowLong) {
  // 4e9 s is about 127 years: more than max_window, far less than 2^62 us.
  const result<microseconds> plain = sluice::parse_duration("4000000000s");
  ASSERT_FALSE(plain);
  EXPECT_EQ(plain.error().code, sluice::errc::invalid_duration);

  const result<microseconds> long_ok = sluice::parse_duration("4000000000s", true);
  ASSERT_TRUE(long_ok) << long_ok.error().message();
  EXPECT_EQ(*long_ok, seconds(4'000'000'000));

  const result<microseconds> too_long = sluice::parse_duration("5000000000000000000us", true);
  ASSERT_FALSE(too_long);
  EXPECT_EQ(too_long.error().code, sluice::errc::invalid_duration);
}

// Verifies that format_duration picks the largest exact unit and round-trips through parsing.
TEST(FormatDuration, PrintsLargestExactUnit) {
  const std::vector<duration_case> cases = {
      {"1500ms", milliseconds(1500)},
      {"30s", seconds(30)},
      {"1h", hours(1)},
      {"90s", seconds(90)},
      {"1d", days(1)},
      {"7d", days(7)},
      {"1us", microseconds(1)},
      {"1001us", microseconds(1001)},
      {"90m", minutes(90)},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    EXPECT_EQ(sluice::format_duration(c.expected), c.text);
    const result<microseconds> back = sluice::parse_duration(sluice::format_duration(c.expected));
    ASSERT_TRUE(back) << back.error().message();
    EXPECT_EQ(*back, c.expected);
  }
}

// Verifies that the three algorithm names parse and print back to themselves.
TEST(ParseAlgorithm, RoundTripsTheThreeNames) {
  const std::vector<std::pair<std::string_view, sluice::algorithm>> cases = {
      {"sliding_log", sluice::algorithm::sliding_log},
      {"sliding_counter", sluice::algorithm::sliding_counter},
      {"gcra", sluice::algorithm::gcra},
  };
  for (const auto& [name, a] : cases) {
    SCOPED_TRACE(name);
    const result<sluice::algorithm> parsed = sluice::parse_algorithm(name);
    ASSERT_TRUE(parsed) << parsed.error().message();
    EXPECT_EQ(*parsed, a);
    EXPECT_EQ(sluice::to_string(a), name);
  }
}

// Verifies that an unknown algorithm name is rejected with invalid_algorithm.
TEST(ParseAlgorithm, RejectsUnknownNames) {
  for (const std::string_view name : {"token_bucket", "", "sliding", "gcra "}) {
    SCOPED_TRACE(name);
    const result<sluice::algorithm> a = sluice::parse_algorithm(name);
    ASSERT_FALSE(a);
    EXPECT_EQ(a.error().code, sluice::errc::invalid_algorithm);
  }
}

// Verifies that sluice's error codes live in the "sluice" category and have messages.
TEST(Error, CategoryNamesAndMessages) {
  const std::error_code ec = sluice::errc::invalid_limit;
  EXPECT_EQ(ec.category(), sluice::sluice_category());
  EXPECT_STREQ(ec.category().name(), "sluice");
  EXPECT_TRUE(static_cast<bool>(ec));
  for (int e = static_cast<int>(sluice::errc::invalid_limit);
       e <= static_cast<int>(sluice::errc::timeout); ++e) {
    SCOPED_TRACE(e);
    EXPECT_FALSE(sluice::make_error_code(static_cast<sluice::errc>(e)).message().empty());
  }
  EXPECT_NE(sluice::make_error_code(sluice::errc::invalid_key).message(),
            sluice::make_error_code(sluice::errc::invalid_cost).message());
}

// Verifies that error::message prefers the detail and falls back to the code's message.
TEST(Error, MessagePrefersDetail) {
  EXPECT_EQ(sluice::make_error(sluice::errc::invalid_key, "key is empty").error().message(),
            "key is empty");
  EXPECT_EQ(sluice::make_error(sluice::errc::invalid_key).error().message(),
            sluice::make_error_code(sluice::errc::invalid_key).message());
}

// Verifies that result holds either a value or an error, and result<void> the same.
TEST(Result, HoldsValueOrError) {
  const result<int> ok = 42;
  ASSERT_TRUE(ok);
  EXPECT_EQ(*ok, 42);
  const result<int> bad = sluice::make_error(sluice::errc::timeout, "slow");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, sluice::errc::timeout);

  const result<void> v;
  EXPECT_TRUE(v);
  const result<void> fv = sluice::make_error(sluice::errc::store_full);
  ASSERT_FALSE(fv);
  EXPECT_EQ(fv.error().code, sluice::errc::store_full);
}

}  // namespace
