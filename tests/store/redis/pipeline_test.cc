#include "store/redis/pipeline.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "store/redis/resp.h"

namespace sluice::redis {
namespace {

using namespace std::chrono_literals;

// Records what each call was answered with.
struct answers {
  std::vector<result<reply>> got;
  std::function<void(result<reply>)> sink() {
    return [this](result<reply> r) { got.push_back(std::move(r)); };
  }
};

pending call(answers& a, steady::time_point deadline) {
  pending p;
  p.done = a.sink();
  p.deadline = deadline;
  return p;
}

// Verifies that replies are matched to calls in order, even when split across reads.
TEST(Pipeline, MatchesRepliesInOrderAcrossSplitReads) {
  pipeline pl;
  answers a;
  const auto later = steady::now() + 1h;
  for (int i = 0; i < 3; ++i) pl.push(call(a, later));
  std::vector<pending> resend;
  const std::string bytes = "+OK\r\n:42\r\n*4\r\n:1\r\n:9\r\n:0\r\n$3\r\nabc\r\n";
  for (char c : bytes) ASSERT_TRUE(pl.on_bytes(std::string_view(&c, 1), resend));
  ASSERT_EQ(a.got.size(), 3u);
  EXPECT_EQ(a.got[0]->type, reply::kind::status);
  EXPECT_EQ(a.got[0]->text, "OK");
  EXPECT_EQ(a.got[1]->integer, 42);
  ASSERT_EQ(a.got[2]->elements.size(), 4u);
  EXPECT_EQ(a.got[2]->elements[1].integer, 9);
  EXPECT_EQ(a.got[2]->elements[3].text, "abc");
  EXPECT_EQ(pl.size(), 0u);
  EXPECT_TRUE(resend.empty());
}

// Verifies that a call past its deadline is answered with a timeout once, and that its
// late reply is read and dropped without shifting the replies of later calls.
TEST(Pipeline, TimedOutCallsAnswerOnceAndTheirRepliesAreDropped) {
  pipeline pl;
  answers first, second;
  const auto t0 = steady::now();
  pl.push(call(first, t0 + 10ms));
  pl.push(call(second, t0 + 1h));
  EXPECT_EQ(pl.next_deadline(), t0 + 10ms);
  EXPECT_EQ(pl.expire(t0 + 5ms), 0u);
  EXPECT_EQ(pl.expire(t0 + 10ms), 1u);
  EXPECT_EQ(pl.expire(t0 + 20ms), 0u);  // answered once only
  ASSERT_EQ(first.got.size(), 1u);
  EXPECT_EQ(first.got[0].error().code, make_error_code(errc::timeout));
  EXPECT_EQ(pl.next_deadline(), t0 + 1h);
  std::vector<pending> resend;
  ASSERT_TRUE(pl.on_bytes(":1\r\n:2\r\n", resend));
  EXPECT_EQ(first.got.size(), 1u);
  ASSERT_EQ(second.got.size(), 1u);
  EXPECT_EQ(second.got[0]->integer, 2);
}

// Verifies that a call pushed after others with an earlier deadline (one sent again after a
// redirection, or a short call behind a long one) is timed out at its own deadline.
TEST(Pipeline, DeadlinesOutOfOrderAreEachKept) {
  pipeline pl;
  answers slow, quick, later;
  const auto t0 = steady::now();
  pl.push(call(slow, t0 + 1s));
  pl.push(call(quick, t0 + 10ms));
  pl.push(call(later, t0 + 500ms));
  EXPECT_EQ(pl.next_deadline(), t0 + 10ms);
  EXPECT_EQ(pl.expire(t0 + 10ms), 1u);
  ASSERT_EQ(quick.got.size(), 1u);
  EXPECT_EQ(quick.got[0].error().code, make_error_code(errc::timeout));
  EXPECT_EQ(pl.next_deadline(), t0 + 500ms);
  std::vector<pending> resend;
  ASSERT_TRUE(pl.on_bytes(":1\r\n", resend));  // the slow call's reply
  ASSERT_EQ(slow.got.size(), 1u);
  // Answered calls leave the estimate early at worst: expire() makes it exact again.
  EXPECT_LE(pl.next_deadline(), t0 + 500ms);
  EXPECT_EQ(pl.expire(t0 + 400ms), 0u);
  EXPECT_EQ(pl.next_deadline(), t0 + 500ms);
  ASSERT_TRUE(pl.on_bytes(":2\r\n:3\r\n", resend));  // the quick call's late reply is dropped
  EXPECT_TRUE(later.got.size() == 1 && later.got[0] && later.got[0]->integer == 3);
  EXPECT_EQ(quick.got.size(), 1u);
  EXPECT_EQ(pl.next_deadline(), std::nullopt);
}

// Verifies that a server that stops answering is detected once the oldest deadline is
// far enough behind.
TEST(Pipeline, DetectsAStalledServer) {
  pipeline pl;
  answers a;
  const auto t0 = steady::now();
  EXPECT_FALSE(pl.stalled(t0 + 1h, 1ms));  // nothing waiting
  pl.push(call(a, t0 + 50ms));
  EXPECT_FALSE(pl.stalled(t0 + 100ms, 200ms));
  EXPECT_TRUE(pl.stalled(t0 + 251ms, 200ms));
}

// Verifies that NOSCRIPT hands script calls back for resending instead of answering them.
TEST(Pipeline, NoscriptHandsScriptCallsBack) {
  pipeline pl;
  answers a;
  pending p = call(a, steady::now() + 1h);
  p.script =
      script_call{algorithm::gcra, "k", script_op::acquire, 5, 1000, 1, std::nullopt, "t", {}};
  pl.push(std::move(p));
  pl.push(call(a, steady::now() + 1h));  // a plain command: its error goes to the caller
  std::vector<pending> resend;
  ASSERT_TRUE(pl.on_bytes("-NOSCRIPT No matching script.\r\n-NOSCRIPT x\r\n", resend));
  ASSERT_EQ(resend.size(), 1u);
  EXPECT_EQ(resend[0].script->key, "k");
  ASSERT_EQ(a.got.size(), 1u);
  EXPECT_TRUE(a.got[0]->is_error());
}

// Verifies that bytes that are not RESP, and replies nobody asked for, are errors.
TEST(Pipeline, MalformedStreamsAreErrors) {
  {
    pipeline pl;
    answers a;
    pl.push(call(a, steady::now() + 1h));
    std::vector<pending> resend;
    auto r = pl.on_bytes("!garbage\r\n", resend);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, make_error_code(errc::store_error));
    EXPECT_NE(r.error().message().find("malformed"), std::string::npos);
  }
  {
    pipeline pl;
    std::vector<pending> resend;
    auto r = pl.on_bytes("+OK\r\n", resend);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("no call"), std::string::npos);
  }
}

// Verifies that fail_all answers every waiting call, including ones that timed out never.
TEST(Pipeline, FailAllAnswersEveryWaitingCall) {
  pipeline pl;
  answers a;
  for (int i = 0; i < 4; ++i) pl.push(call(a, steady::now() + 1h));
  pl.fail_all(make_error(errc::store_unavailable, "gone").error());
  ASSERT_EQ(a.got.size(), 4u);
  for (const auto& r : a.got) EXPECT_EQ(r.error().code, make_error_code(errc::store_unavailable));
  EXPECT_EQ(pl.size(), 0u);
}

// Verifies the RESP encoding of commands, binary-safe.
TEST(Resp, EncodesCommandsAsBulkStringArrays) {
  std::string out;
  append_command(out, {"SET", std::string_view("a\0b", 3), ""});
  constexpr char kWant[] = "*3\r\n$3\r\nSET\r\n$3\r\na\0b\r\n$0\r\n\r\n";
  EXPECT_EQ(out, std::string(kWant, sizeof kWant - 1));
}

// Verifies the script call's encoding: EVALSHA by default, EVAL with the source.
TEST(Resp, EncodesScriptCalls) {
  script_call c{algorithm::sliding_log,
                "p:k",
                script_op::peek,
                30,
                3600000000,
                2,
                1700000000000000,
                "id:7",
                {}};
  std::string out;
  append_script_call(out, c, "abc");
  EXPECT_EQ(
      out,
      "*10\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n1\r\n$3\r\np:k\r\n$4\r\npeek\r\n$2\r\n30\r\n"
      "$10\r\n3600000000\r\n$1\r\n2\r\n$16\r\n1700000000000000\r\n$4\r\nid:7\r\n");
  out.clear();
  c.now_us.reset();
  append_script_call(out, c, "abc", "return 1");
  EXPECT_TRUE(out.starts_with("*10\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n"));
  EXPECT_NE(out.find("$0\r\n\r\n"), std::string::npos);  // no explicit time: the server's
}

}  // namespace
}  // namespace sluice::redis
