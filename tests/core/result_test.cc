// Tests of result<T> (sluice/error.h): the expected-shaped type every fallible call returns.
#include <gtest/gtest.h>

#include <string>
#include <type_traits>
#include <utility>

#include "sluice/error.h"
#include "sluice/limit.h"

namespace sluice {
namespace {

// Verifies that a failure built by make_error converts to a result of any type and keeps
// its code and detail.
TEST(Result, MakeErrorConvertsToAnyResult) {
  const result<int> i = make_error(errc::invalid_cost, "cost 0");
  const result<void> v = make_error(errc::invalid_key, "key is empty");
  ASSERT_FALSE(i);
  ASSERT_FALSE(v.has_value());
  EXPECT_EQ(i.error().code, errc::invalid_cost);
  EXPECT_EQ(i.error().message(), "cost 0");
  EXPECT_EQ(v.error().code, errc::invalid_key);
}

// Verifies that fail() passes one result's error on to a result of another type unchanged.
TEST(Result, FailPassesAnErrorOn) {
  const result<limit> bad = parse_limit("thirty per fortnight");
  ASSERT_FALSE(bad);
  const result<std::string> passed = fail(bad.error());
  ASSERT_FALSE(passed);
  EXPECT_EQ(passed.error().code, bad.error().code);
  EXPECT_EQ(passed.error().detail, bad.error().detail);
}

// Verifies that a default-constructed result holds a value-initialised T, so that it can be
// declared before it is assigned.
TEST(Result, DefaultHoldsValueInitialisedValue) {
  result<int> r;
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, 0);
  r = make_error(errc::timeout);
  EXPECT_FALSE(r);
  r = 7;
  EXPECT_EQ(r.value(), 7);
}

// Verifies value_or: the value when there is one, else the fallback.
TEST(Result, ValueOr) {
  const result<int> good = 3;
  const result<int> bad = make_error(errc::timeout);
  EXPECT_EQ(good.value_or(9), 3);
  EXPECT_EQ(bad.value_or(9), 9);
}

// Verifies that the value can be moved out of an rvalue result.
TEST(Result, MovesValueOut) {
  result<std::string> r = std::string(100, 'x');
  const std::string s = std::move(r).value();
  EXPECT_EQ(s.size(), 100u);
}

// Verifies that result is [[nodiscard]]-shaped like std::expected: it names its types.
TEST(Result, NamesItsTypes) {
  static_assert(std::is_same_v<result<int>::value_type, int>);
  static_assert(std::is_same_v<result<int>::error_type, error>);
  static_assert(std::is_same_v<result<void>::value_type, void>);
  static_assert(!std::is_convertible_v<error, result<int>>,
                "a failure is built with make_error or fail, as with std::unexpected");
}

// Verifies that reading the value of a failed result aborts with what it held, never
// dereferencing null (in every build type).
TEST(ResultDeathTest, ValueOfFailureAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const result<int> r = make_error(errc::invalid_limit, "limit \"x\": no slash");
  EXPECT_DEATH((void)r.value(), "value\\(\\) of a failed result.*no slash");
  EXPECT_DEATH((void)*r, "value\\(\\) of a failed result");
  const result<void> v = make_error(errc::timeout, "deadline passed");
  EXPECT_DEATH(v.value(), "value\\(\\) of a failed result.*deadline passed");
}

// Verifies that asking a good result for its error aborts with a clear message.
TEST(ResultDeathTest, ErrorOfSuccessAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const result<int> r = 1;
  EXPECT_DEATH((void)r.error(), "error\\(\\) of a successful result");
  const result<void> v;
  EXPECT_DEATH((void)v.error(), "error\\(\\) of a successful result");
}

}  // namespace
}  // namespace sluice
