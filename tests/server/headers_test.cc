// Tests of the RateLimit header fields (draft-ietf-httpapi-ratelimit-headers-11) and
// Retry-After values the server writes.
#include "server/headers.h"

#include <gtest/gtest.h>

#include <chrono>

#include "support/test_util.h"

namespace {

using sluice::decision;
using sluice::server::ratelimit_field;
using sluice::server::ratelimit_policy_field;
using sluice::server::retry_after_field;
using sluice::server::sf_string;
using sluice::test::make;
using std::chrono::hours;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Verifies that policy names become structured-field Strings, with `"` and `\` escaped and
// bytes outside the printable ASCII range replaced.
TEST(SfString, QuotesAndEscapes) {
  EXPECT_EQ(sf_string("chat"), "\"chat\"");
  EXPECT_EQ(sf_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(sf_string(std::string_view("x\ny\x80", 4)), "\"x?y?\"");
  EXPECT_EQ(sf_string(""), "\"\"");
}

// Verifies the RateLimit-Policy value: q is the count, w the window in whole seconds.
TEST(RatelimitPolicyField, QuotaAndWindowInSeconds) {
  EXPECT_EQ(ratelimit_policy_field("chat", make(30, hours(1))), "\"chat\";q=30;w=3600");
  EXPECT_EQ(ratelimit_policy_field("api", make(7, seconds(90))), "\"api\";q=7;w=90");
  EXPECT_EQ(ratelimit_policy_field("day", make(1000, hours(24))), "\"day\";q=1000;w=86400");
}

// Verifies that windows the draft cannot express (not whole seconds) are rounded up, never
// to zero, so a client that keeps to the advertised rate keeps to the limit.
TEST(RatelimitPolicyField, SubSecondWindowsRoundUp) {
  EXPECT_EQ(ratelimit_policy_field("p", make(2, milliseconds(500))), "\"p\";q=2;w=1");
  EXPECT_EQ(ratelimit_policy_field("p", make(3, milliseconds(1500))), "\"p\";q=3;w=2");
  EXPECT_EQ(ratelimit_policy_field("p", make(1, microseconds(1))), "\"p\";q=1;w=1");
}

// Verifies r (what remains) and t (seconds until the key is full again, rounded up) on an
// allowed decision.
TEST(RatelimitField, AllowedShowsRemainingAndTimeToFull) {
  const decision d{true, 30, 29, microseconds(0), milliseconds(11200)};
  EXPECT_EQ(ratelimit_field("chat", d), "\"chat\";r=29;t=12");
  const decision fresh{true, 30, 30, microseconds(0), microseconds(0)};
  EXPECT_EQ(ratelimit_field("chat", fresh), "\"chat\";r=30;t=0");
  const decision exact{true, 5, 0, microseconds(0), seconds(60)};
  EXPECT_EQ(ratelimit_field("chat", exact), "\"chat\";r=0;t=60");
}

// Verifies that on a denial t equals the Retry-After value, so Retry-After never points
// before the end of the effective window (draft section 6).
TEST(RatelimitField, DeniedWindowEqualsRetryAfter) {
  const decision d{false, 30, 0, milliseconds(11200), seconds(3000)};
  EXPECT_EQ(retry_after_field(d), 12);
  EXPECT_EQ(ratelimit_field("chat", d), "\"chat\";r=0;t=12");
}

// Verifies Retry-After: floor(seconds) + 1, like the reference limiter, hence at least 1.
TEST(RetryAfterField, WholeSecondsAtLeastOne) {
  EXPECT_EQ(retry_after_field({false, 1, 0, microseconds(0), microseconds(0)}), 1);
  EXPECT_EQ(retry_after_field({false, 1, 0, microseconds(1), microseconds(1)}), 1);
  EXPECT_EQ(retry_after_field({false, 1, 0, milliseconds(999), seconds(1)}), 1);
  EXPECT_EQ(retry_after_field({false, 1, 0, seconds(1), seconds(1)}), 2);
  EXPECT_EQ(retry_after_field({false, 1, 0, seconds(59) + milliseconds(987), seconds(60)}), 60);
}

// Verifies that r is never negative (the draft requires a non-negative Integer).
TEST(RatelimitField, NegativeRemainingIsShownAsZero) {
  const decision d{false, 10, -3, seconds(2), seconds(2)};
  EXPECT_EQ(ratelimit_field("p", d), "\"p\";r=0;t=3");
}

}  // namespace
