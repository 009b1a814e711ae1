// Tests of the decision body parser: what the hand-written fast path reads and what it
// leaves to nlohmann, how values are classified, and the errors a bad body gets.
#include "server/body.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace {

using sluice::server::body_error;
using sluice::server::body_fields;
using sluice::server::body_value;
using sluice::server::parse_body;
using sluice::server::parse_flat;
using kind = body_value::kind;
using json = nlohmann::json;

// A body parsed by parse_body, with the DOM its strings may point into.
struct parsed {
  body_fields fields;
  json dom;
  std::optional<body_error> error;
};

void parse(std::string_view body, parsed& out) {
  out.error = parse_body(body, out.fields, out.dom);
}

bool points_into(std::string_view part, std::string_view whole) {
  return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

TEST(BodyFlat, ReadsTheBodiesClientsSend) {
  // Verifies the fast path reads a flat body of plain strings and small integers, with JSON
  // whitespace anywhere between tokens, and its strings point into the body.
  const std::string_view body =
      " \r\n\t{ \"key\" :\t\"user:42\" ,\n\"limit\":\"30/hour\", \"algorithm\": \"gcra\","
      "\"cost\": -17 }\r\n";
  body_fields f;
  ASSERT_TRUE(parse_flat(body, f));
  EXPECT_EQ(f.key.k, kind::string);
  EXPECT_EQ(f.key.text, "user:42");
  EXPECT_TRUE(points_into(f.key.text, body));
  EXPECT_EQ(f.limit.text, "30/hour");
  EXPECT_EQ(f.algorithm.text, "gcra");
  EXPECT_EQ(f.cost.k, kind::integer);
  EXPECT_EQ(f.cost.number, -17);
  EXPECT_EQ(f.policy.k, kind::absent);
}

TEST(BodyFlat, ReadsTheLargestIntegersItTakes) {
  // Verifies 18 digits either way and -0 on the fast path.
  body_fields f;
  ASSERT_TRUE(parse_flat(R"({"cost":999999999999999999})", f));
  EXPECT_EQ(f.cost.number, 999'999'999'999'999'999);
  body_fields g;
  ASSERT_TRUE(parse_flat(R"({"cost":-999999999999999999})", g));
  EXPECT_EQ(g.cost.number, -999'999'999'999'999'999);
  body_fields h;
  ASSERT_TRUE(parse_flat(R"({"cost":-0})", h));
  EXPECT_EQ(h.cost.k, kind::integer);
  EXPECT_EQ(h.cost.number, 0);
  body_fields e;
  ASSERT_TRUE(parse_flat("{}", e));
  EXPECT_EQ(e.key.k, kind::absent);
}

TEST(BodyFlat, DeclinesWhatNlohmannMustRead) {
  // Verifies the fast path declines each kind of body outside what it reads, valid JSON or
  // not, so that nlohmann decides.
  const std::string_view declined[] = {
      R"({"key":"a\"b","policy":"p"})",              // an escape
      R"({"key":"\u0041","policy":"p"})",            // a \u escape, even of ASCII
      "{\"key\":\"caf\xc3\xa9\",\"policy\":\"p\"}",  // UTF-8 beyond ASCII
      "{\"key\":\"a\x7f\",\"policy\":\"p\"}",        // DEL, which JSON allows raw
      R"({"key":"a","key":"b","policy":"p"})",       // a repeated member
      R"({"key":"a","cots":1})",                     // an unknown member
      R"({"k\u0065y":"a","policy":"p"})",            // a known name, escaped
      R"({"cost":1000000000000000000})",             // 19 digits
      R"({"cost":1.0})",                             // a fraction
      R"({"cost":1e3})",                             // an exponent
      R"({"cost":true})",                            // a literal
      R"({"key":{"a":1}})",                          // nesting
      "\xef\xbb\xbf{}",                              // a BOM
      "{}\f",                                        // not JSON whitespace
      std::string_view("{}\0", 3),                   // a NUL after the object
      R"({"cost":01})",                              // not JSON
      R"({"key":"a",})",                             // not JSON
      "[]",                                          // not an object
      "",                                            // empty
  };
  for (const std::string_view body : declined) {
    body_fields f;
    EXPECT_FALSE(parse_flat(body, f)) << body;
  }
}

TEST(Body, UnescapesStringsThroughTheDom) {
  // Verifies escapes, \u sequences and surrogate pairs come out as UTF-8 pointing into the
  // DOM, and the fields the fast path saw before it declined are those of the DOM.
  parsed p;
  const std::string_view body =
      R"({"policy":"chat","key":"a\"b\\c\/d\n\u00e9\ud83d\ude00","cost":1.5})";
  parse(body, p);
  ASSERT_FALSE(p.error);
  EXPECT_EQ(p.fields.key.k, kind::string);
  EXPECT_EQ(p.fields.key.text, "a\"b\\c/d\n\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT_FALSE(points_into(p.fields.key.text, body));
  EXPECT_EQ(p.fields.policy.text, "chat");
  EXPECT_FALSE(points_into(p.fields.policy.text, body));
  EXPECT_EQ(p.fields.cost.k, kind::other);
}

TEST(Body, RepeatedMemberCountsWithItsLastValue) {
  // Verifies that a repeated member, which the fast path declines, takes its last value.
  parsed p;
  parse(R"({"key":"first","policy":"chat","key":"second"})", p);
  ASSERT_FALSE(p.error);
  EXPECT_EQ(p.fields.key.text, "second");
  EXPECT_EQ(p.fields.policy.text, "chat");
}

TEST(Body, ClassifiesNumbers) {
  // Verifies the class of each kind of number: integers to INT64_MAX, too_large up to
  // UINT64_MAX, and anything nlohmann reads as floating point (beyond either end, a fraction,
  // an exponent) as other.
  constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  struct number_case {
    const char* text;
    kind k;
    std::int64_t number;
  };
  const number_case cases[] = {
      {"1", kind::integer, 1},
      {"-0", kind::integer, 0},
      {"1000000000000000000", kind::integer, 1'000'000'000'000'000'000},
      {"9223372036854775807", kind::integer, kMax},
      {"-9223372036854775808", kind::integer, kMin},
      {"9223372036854775808", kind::too_large, 0},
      {"18446744073709551615", kind::too_large, 0},
      {"18446744073709551616", kind::other, 0},
      {"-9223372036854775809", kind::other, 0},
      {"1.0", kind::other, 0},
      {"1e3", kind::other, 0},
      {"-0.0", kind::other, 0},
      {"null", kind::other, 0},
      {"[1]", kind::other, 0},
  };
  for (const number_case& c : cases) {
    parsed p;
    parse(std::string(R"({"cost":)") + c.text + "}", p);
    ASSERT_FALSE(p.error) << c.text;
    EXPECT_EQ(p.fields.cost.k, c.k) << c.text;
    if (c.k == kind::integer) {
      EXPECT_EQ(p.fields.cost.number, c.number) << c.text;
    }
  }
}

TEST(Body, RejectsWithTheMessageAndField) {
  // Verifies each refusal's message and field: not JSON, not an object, an unknown member
  // (named by the field, quoted safely in the message).
  struct bad_case {
    std::string body;
    std::string message;
    std::string field;
  };
  const bad_case cases[] = {
      {"", "body is not valid JSON", "body"},
      {R"({"key":"a"} x)", "body is not valid JSON", "body"},
      {R"({"key":"a")", "body is not valid JSON", "body"},
      {"{\"key\":\"\xff\"}", "body is not valid JSON", "body"},   // not UTF-8
      {R"({"key":"\ud800"})", "body is not valid JSON", "body"},  // a lone surrogate
      {R"({"cost":01})", "body is not valid JSON", "body"},
      {R"(["key","a"])", "body must be a JSON object", "body"},
      {R"("key")", "body must be a JSON object", "body"},
      {R"({"key":"a","cots":1})",
       R"(unknown field "cots"; use key, policy or limit (+ algorithm), cost, or limits)", "cots"},
      {R"({"a\"b":1})",
       R"(unknown field "a\x22b"; use key, policy or limit (+ algorithm), cost, or limits)",
       "a\"b"},
  };
  for (const bad_case& c : cases) {
    parsed p;
    parse(c.body, p);
    ASSERT_TRUE(p.error) << c.body;
    EXPECT_EQ(p.error->message, c.message) << c.body;
    EXPECT_EQ(p.error->field, c.field) << c.body;
  }
}

TEST(Body, AcceptsABomBeforeTheObject) {
  // Verifies a UTF-8 byte order mark is read past, as nlohmann does.
  parsed p;
  parse("\xef\xbb\xbf{\"key\":\"k\",\"policy\":\"p\"}", p);
  ASSERT_FALSE(p.error);
  EXPECT_EQ(p.fields.key.text, "k");
}

TEST(Body, RefusesNulBytes) {
  // Verifies that a NUL byte anywhere is refused as not JSON, also after a complete object,
  // where nlohmann's lexer would stop reading and accept.
  parsed p;
  parse(std::string_view("{\"key\":\"k\",\"policy\":\"p\"}\0{]junk", 31), p);
  ASSERT_TRUE(p.error);
  EXPECT_EQ(p.error->message, "body is not valid JSON");
  parsed q;
  parse(std::string_view("{\"key\":\"k\0\"}", 12), q);  // inside a string
  ASSERT_TRUE(q.error);
  EXPECT_EQ(q.error->message, "body is not valid JSON");
}

}  // namespace
