#include "store/redis/pipeline.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "store/redis/connection.h"
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

// Verifies that, with a handler for unsolicited replies (a subscribed connection), a reply
// no call waits for goes to the handler, while a call's reply still goes to the call; and
// that without one such a reply is an error.
TEST(Pipeline, UnsolicitedRepliesGoToTheirHandler) {
  const std::string subscribed = "*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n";
  const std::string message =
      "*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$37\r\n"
      "m 127.0.0.1 6379 127.0.0.1 6380 extra\r\n";
  pipeline pl;
  std::vector<reply> pushed;
  pl.on_unsolicited([&](const reply& r) { pushed.push_back(r); });
  answers a;
  pl.push(call(a, steady::now() + 1h));
  std::vector<pending> resend;
  ASSERT_TRUE(pl.on_bytes(subscribed + message + message, resend));
  ASSERT_EQ(a.got.size(), 1u);
  ASSERT_TRUE(a.got[0]);
  EXPECT_EQ(a.got[0]->elements.at(0).text, "subscribe");
  ASSERT_EQ(pushed.size(), 2u);
  EXPECT_EQ(pushed[1].elements.at(2).text, "m 127.0.0.1 6379 127.0.0.1 6380 extra");

  pipeline plain;
  EXPECT_FALSE(plain.on_bytes(message, resend));
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

// Returns the RESP encoding of `args`, written out by hand.
std::string resp(const std::vector<std::string>& args) {
  std::string out = "*" + std::to_string(args.size()) + "\r\n";
  for (const auto& a : args) out += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
  return out;
}

// Verifies the multi-key call's encoding: its keys, the call's time (the first key's) and
// token, then each key's algorithm, count, window, cost and time, which is empty when it is
// the call's; a release adds each key's reservation time and reset_after.
TEST(Resp, EncodesMultiKeyScriptCalls) {
  const limit ten{10, std::chrono::seconds(60)};
  const request first{"a", ten, algorithm::gcra, 2, std::chrono::microseconds{500}};
  const request second{"b", ten, algorithm::sliding_log, 0, std::chrono::microseconds{500}};
  const request third{"c", ten, algorithm::sliding_counter, 1, std::chrono::microseconds{503}};
  script_call c = make_multi_call(
      script_op::acquire_all,
      {to_script_key(first, "p:a"), to_script_key(second, "p:b"), to_script_key(third, "p:c")},
      "id:9");
  std::string out;
  append_script_call(out, c, "abc");
  EXPECT_EQ(out, resp({"EVALSHA",
                       "abc",
                       "3",
                       "p:a",
                       "p:b",
                       "p:c",
                       "500",
                       "id:9",
                       "gcra",
                       "10",
                       "60000000",
                       "2",
                       "",
                       "sliding_log",
                       "10",
                       "60000000",
                       "0",
                       "",
                       "sliding_counter",
                       "10",
                       "60000000",
                       "1",
                       "503"}));
  c.op = script_op::release;
  c.keys[0].reserved_at_us = 500;
  c.keys[0].reserved_reset_us = 12000000;
  out.clear();
  append_script_call(out, c, "abc", "return 1");
  EXPECT_EQ(out, resp({"EVAL",
                       "return 1",
                       "3",
                       "p:a",
                       "p:b",
                       "p:c",
                       "500",
                       "id:9",
                       "gcra",
                       "10",
                       "60000000",
                       "2",
                       "",
                       "500",
                       "12000000",
                       "sliding_log",
                       "10",
                       "60000000",
                       "0",
                       "",
                       "0",
                       "0",
                       "sliding_counter",
                       "10",
                       "60000000",
                       "1",
                       "503",
                       "0",
                       "0"}));
}

// Verifies that the requests of an acquire_all are merged and each decided at the latest
// explicit time given up to its first request (none before any: the server's clock), and
// that bad input is refused there, before any I/O.
TEST(ScriptCall, PreparesAcquireAllRequests) {
  using std::chrono::microseconds;
  const limit ten{10, std::chrono::seconds(60)};
  std::vector<std::size_t> group;
  const request rs[] = {{"a", ten, algorithm::gcra, 1, {}},
                        {"b", ten, algorithm::gcra, 1, microseconds{7}},
                        {"a", ten, algorithm::gcra, 2, microseconds{9}},
                        {"c", ten, algorithm::gcra, 0, {}}};
  auto merged = prepare_all(rs, group);
  ASSERT_TRUE(merged) << merged.error().message();
  ASSERT_EQ(merged->size(), 3u);
  EXPECT_EQ(group, (std::vector<std::size_t>{0, 1, 0, 2}));
  EXPECT_EQ((*merged)[0].cost, 3);
  EXPECT_FALSE((*merged)[0].now.has_value());
  EXPECT_EQ((*merged)[1].now, microseconds{7});
  EXPECT_EQ((*merged)[2].now, microseconds{7});
  const request late[] = {{"a", ten, algorithm::gcra, 0, microseconds{std::int64_t{1} << 53}}};
  EXPECT_EQ(prepare_all(late, group).error().code, make_error_code(errc::invalid_time));
  const request empty[] = {{"", ten, algorithm::gcra, 0, {}}};
  EXPECT_EQ(prepare_all(empty, group).error().code, make_error_code(errc::invalid_key));
}

// Verifies that a multi-key reply is read as its time and one decision per key, and that
// anything else is a clear error: an error reply, the wrong number or kind of elements,
// numbers out of range.
TEST(ScriptReply, MultiKeyRepliesAreCheckedNotTrusted) {
  auto integers = [](std::vector<long long> v) {
    reply r;
    r.type = reply::kind::array;
    for (const long long x : v) {
      reply e;
      e.type = reply::kind::integer;
      e.integer = x;
      r.elements.push_back(e);
    }
    return r;
  };
  const std::vector<std::int64_t> counts = {5, 10};
  auto good = to_multi_reply(integers({77, 1, 4, 0, 9, 0, 10, 3, 2}), counts);
  ASSERT_TRUE(good) << good.error().message();
  EXPECT_EQ(good->now_us, 77);
  ASSERT_EQ(good->decisions.size(), 2u);
  EXPECT_TRUE(good->decisions[0].allowed);
  EXPECT_EQ(good->decisions[0].limit, 5);
  EXPECT_EQ(good->decisions[0].remaining, 4);
  EXPECT_EQ(good->decisions[0].reset_after.count(), 9);
  EXPECT_FALSE(good->decisions[1].allowed);
  EXPECT_EQ(good->decisions[1].limit, 10);
  EXPECT_EQ(good->decisions[1].retry_after.count(), 3);

  reply error;
  error.type = reply::kind::error;
  error.text = "ERR sluice: unknown algorithm x";
  std::vector<reply> bad = {
      error,
      integers({77, 1, 4, 0, 9}),                  // one key's worth for two
      integers({77, 1, 4, 0, 9, 0, 10, 3, 2, 5}),  // too many
      integers({77, 1, 6, 0, 9, 0, 10, 3, 2}),     // remaining above the count
      integers({77, 2, 4, 0, 9, 0, 10, 3, 2}),     // allowed neither 0 nor 1
      integers({77, 1, 4, 0, 9, 0, 10, -3, 2}),    // negative retry_after
      integers({-1, 1, 4, 0, 9, 0, 10, 3, 2}),     // negative time
  };
  reply text = integers({77, 1, 4, 0, 9, 0, 10, 3, 2});
  text.elements[3].type = reply::kind::string;
  bad.push_back(text);
  reply flat;
  flat.type = reply::kind::integer;
  bad.push_back(flat);
  for (std::size_t i = 0; i < bad.size(); ++i) {
    auto r = to_multi_reply(bad[i], counts);
    ASSERT_FALSE(r) << "reply " << i;
    EXPECT_EQ(r.error().code, make_error_code(errc::store_error)) << "reply " << i;
  }
  auto gone = to_multi_reply(make_error(errc::timeout, "late"), counts);
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().code, make_error_code(errc::timeout));
}

// --- batches ----------------------------------------------------------------------------

// A batchable single-key call on `key`, answered into `a`.
pending batchable(answers& a, std::string key, steady::time_point deadline,
                  script_op op = script_op::acquire, int group = 0) {
  pending p = call(a, deadline);
  p.batchable = true;
  p.group = group;
  p.script =
      script_call{algorithm::sliding_log, std::move(key), op, 10, 1000, 1, std::nullopt, "tok", {}};
  return p;
}

const script_shas kShas{{"LOG", "COUNTER", "GCRA"}, "BATCH", "PACKED"};

// Returns how many commands `bytes` holds (RESP arrays at the top level) and their first
// two arguments (EVALSHA and the sha, or the command's name).
std::vector<std::string> commands_in(const std::string& bytes) {
  reader r;
  r.feed(bytes);
  std::vector<std::string> out;
  for (;;) {
    auto next = r.next();
    EXPECT_TRUE(next);
    if (!next || !next->has_value()) break;
    const reply& c = **next;
    out.push_back(c.elements.size() > 1 ? c.elements[0].text + " " + c.elements[1].text
                                        : c.elements[0].text);
  }
  return out;
}

// A reply of four integers, as a single-key script answers.
std::string four(int allowed, int remaining) {
  return "*4\r\n:" + std::to_string(allowed) + "\r\n:" + std::to_string(remaining) +
         "\r\n:0\r\n:0\r\n";
}

// Verifies that batchable calls queued together are written as one batch script run of
// at most the maximum of calls, a lone one as its own script, and that the batch's keys
// are named once with each call's arguments after them.
TEST(Batch, QueuedCallsGoAsBatchesOfAtMostTheMaximum) {
  pipeline pl;
  answers a;
  std::vector<pending> q;
  const auto later = steady::now() + 1h;
  for (int i = 0; i < 5; ++i) q.push_back(batchable(a, i % 2 ? "k1" : "k0", later));
  std::string out;
  const assembled did = pl.assemble("", q, kShas, 2, 1 << 20, steady::now(), out);
  EXPECT_EQ(did.batches, 2u);
  EXPECT_EQ(did.batched, 4u);
  EXPECT_EQ(commands_in(out),
            (std::vector<std::string>{"EVALSHA BATCH", "EVALSHA BATCH", "EVALSHA LOG"}));
  EXPECT_EQ(pl.size(), 3u);
  EXPECT_TRUE(q.empty());
  // The first batch: 2 keys, then 7 arguments per call, the key by its index.
  reader r;
  r.feed(out);
  auto first = r.next();
  ASSERT_TRUE(first && first->has_value());
  const auto& e = (**first).elements;
  ASSERT_EQ(e.size(), 3u + 2 + 14);
  EXPECT_EQ(e[2].text, "2");
  EXPECT_EQ(e[3].text, "k0");
  EXPECT_EQ(e[4].text, "k1");
  EXPECT_EQ(e[5].text, "1");   // key index
  EXPECT_EQ(e[6].text, "al");  // acquire, sliding_log
  EXPECT_EQ(e[7].text, "10");
  EXPECT_EQ(e[8].text, "1000");
  EXPECT_EQ(e[9].text, "1");
  EXPECT_EQ(e[10].text, "");     // the server's time
  EXPECT_EQ(e[11].text, "tok");  // a sliding_log acquire's token
  EXPECT_EQ(e[12].text, "2");
}

// Verifies that a batch's reply answers each call from its own slot, in order.
TEST(Batch, EachCallGetsItsSlotOfTheReply) {
  pipeline pl;
  std::vector<answers> a(3);
  std::vector<pending> q;
  const auto later = steady::now() + 1h;
  for (int i = 0; i < 3; ++i) q.push_back(batchable(a[i], "k", later));
  std::string out;
  pl.assemble("", q, kShas, 512, 1 << 20, steady::now(), out);
  std::vector<pending> resend;
  ASSERT_TRUE(pl.on_bytes("*3\r\n" + four(1, 9) + four(1, 8) + four(0, 0), resend));
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(a[i].got.size(), 1u);
    auto d = to_decision(a[i].got[0], 10);
    ASSERT_TRUE(d);
    EXPECT_EQ(d->remaining, std::vector<int>({9, 8, 0})[i]);
  }
  EXPECT_EQ(pl.size(), 0u);
}

// Verifies that commands that are not batchable keep their place: batches close before
// them, so a reset between two acquires comes between them on the wire too.
TEST(Batch, OtherCommandsKeepTheirPlace) {
  pipeline pl;
  answers a;
  std::vector<pending> q;
  const auto later = steady::now() + 1h;
  q.push_back(batchable(a, "k", later));
  q.push_back(batchable(a, "k", later));
  std::string del;
  append_command(del, {"DEL", "k"});
  pending reset = call(a, later);
  reset.wire = del.size();
  q.push_back(std::move(reset));
  q.push_back(batchable(a, "k", later));
  std::string out;
  pl.assemble(del, q, kShas, 512, 1 << 20, steady::now(), out);
  EXPECT_EQ(commands_in(out), (std::vector<std::string>{"EVALSHA BATCH", "DEL k", "EVALSHA LOG"}));
  std::vector<pending> resend;
  ASSERT_TRUE(pl.on_bytes("*2\r\n" + four(1, 9) + four(1, 8) + ":1\r\n" + four(1, 9), resend));
  ASSERT_EQ(a.got.size(), 4u);
  EXPECT_EQ(a.got[2]->integer, 1);
}

// Verifies that calls of different groups (a cluster's slots) never share a batch, and
// that each group's calls stay in order.
TEST(Batch, GroupsNeverShareABatch) {
  pipeline pl;
  answers a;
  std::vector<pending> q;
  const auto later = steady::now() + 1h;
  for (int i = 0; i < 6; ++i) {
    q.push_back(batchable(a, "k" + std::to_string(i), later, script_op::acquire, i % 2));
  }
  q.push_back(batchable(a, "lone", later, script_op::peek, 7));
  std::string out;
  const assembled did = pl.assemble("", q, kShas, 512, 1 << 20, steady::now(), out);
  EXPECT_EQ(did.batches, 2u);
  EXPECT_EQ(did.batched, 6u);
  reader r;
  r.feed(out);
  for (int g = 0; g < 2; ++g) {
    auto c = r.next();
    ASSERT_TRUE(c && c->has_value());
    const auto& e = (**c).elements;
    ASSERT_EQ(e[2].text, "3");
    for (int k = 0; k < 3; ++k) EXPECT_EQ(e[3 + k].text, "k" + std::to_string(g + 2 * k));
  }
}

// Verifies the byte bound: a batch closes once its calls' arguments pass it.
TEST(Batch, BatchesAreBoundedInBytes) {
  pipeline pl;
  answers a;
  std::vector<pending> q;
  const auto later = steady::now() + 1h;
  for (int i = 0; i < 10; ++i)
    q.push_back(batchable(a, std::string(1000, static_cast<char>('a' + i)), later));
  std::string out;
  const assembled did = pl.assemble("", q, kShas, 512, 2500, steady::now(), out);
  EXPECT_EQ(did.batches, 3u);  // 3 calls pass 2,500 bytes; the tenth goes alone
  EXPECT_EQ(did.batched, 9u);
}

// Verifies deadlines stay per call: a call already past its deadline is answered
// `timeout` and not written; one that times out while its batch runs is answered
// `timeout` once and its slot of the reply is dropped, the others answered from theirs.
TEST(Batch, DeadlinesStayPerCall) {
  pipeline pl;
  answers late, quick, slow;
  const auto t0 = steady::now();
  std::vector<pending> q;
  q.push_back(batchable(late, "k", t0 - 1ms));
  q.push_back(batchable(quick, "k", t0 + 10ms));
  q.push_back(batchable(slow, "k", t0 + 1h));
  std::string out;
  const assembled did = pl.assemble("", q, kShas, 512, 1 << 20, t0, out);
  EXPECT_EQ(did.timed_out, 1u);
  ASSERT_EQ(late.got.size(), 1u);
  EXPECT_EQ(late.got[0].error().code, make_error_code(errc::timeout));
  EXPECT_EQ(did.batched, 2u);
  EXPECT_EQ(pl.next_deadline(), t0 + 10ms);
  EXPECT_EQ(pl.expire(t0 + 10ms), 1u);
  EXPECT_EQ(pl.expire(t0 + 20ms), 0u);
  ASSERT_EQ(quick.got.size(), 1u);
  EXPECT_EQ(quick.got[0].error().code, make_error_code(errc::timeout));
  EXPECT_EQ(pl.next_deadline(), t0 + 1h);
  std::vector<pending> resend;
  ASSERT_TRUE(pl.on_bytes("*2\r\n" + four(1, 9) + four(1, 8), resend));
  EXPECT_EQ(quick.got.size(), 1u);
  ASSERT_EQ(slow.got.size(), 1u);
  EXPECT_EQ(to_decision(slow.got[0], 10)->remaining, 8);
  EXPECT_EQ(pl.size(), 0u);
}

// Verifies what a batch that fails as a whole does: NOSCRIPT hands it back whole (with
// the calls still waiting) to be sent again with its source; another error reply, or a
// reply of the wrong shape, answers each of its calls once; a lost connection fails each.
TEST(Batch, ABatchThatFailsWholeAnswersEachCallOnce) {
  const auto t0 = steady::now();
  auto two = [&](pipeline& pl, answers& a, answers& b) {
    std::vector<pending> q;
    q.push_back(batchable(a, "k", t0 + 1h));
    q.push_back(batchable(b, "j", t0 + 1h));
    std::string out;
    pl.assemble("", q, kShas, 512, 1 << 20, t0, out);
  };
  {
    pipeline pl;
    answers a, b;
    two(pl, a, b);
    std::vector<pending> resend;
    ASSERT_TRUE(pl.on_bytes("-NOSCRIPT No matching script.\r\n", resend));
    ASSERT_EQ(resend.size(), 1u);
    ASSERT_EQ(resend[0].batch.size(), 2u);
    EXPECT_TRUE(a.got.empty() && b.got.empty());
    EXPECT_EQ(resend[0].batch[1].script->key, "j");
  }
  {
    pipeline pl;
    answers a, b;
    two(pl, a, b);
    std::vector<pending> resend;
    ASSERT_TRUE(pl.on_bytes("-MOVED 3999 127.0.0.1:6381\r\n", resend));
    EXPECT_TRUE(resend.empty());
    ASSERT_EQ(a.got.size(), 1u);
    ASSERT_EQ(b.got.size(), 1u);
    EXPECT_EQ(b.got[0]->text, "MOVED 3999 127.0.0.1:6381");
  }
  {
    pipeline pl;
    answers a, b;
    two(pl, a, b);
    std::vector<pending> resend;
    ASSERT_TRUE(pl.on_bytes("*1\r\n" + four(1, 1), resend));  // one slot for two calls
    ASSERT_EQ(a.got.size(), 1u);
    ASSERT_EQ(b.got.size(), 1u);
    EXPECT_EQ(a.got[0].error().code, make_error_code(errc::store_error));
  }
  {
    pipeline pl;
    answers a, b;
    two(pl, a, b);
    EXPECT_EQ(pl.expire(t0 + 2h), 2u);
    pl.fail_all(make_error(errc::store_unavailable, "gone").error());  // none twice
    ASSERT_EQ(a.got.size(), 1u);
    ASSERT_EQ(b.got.size(), 1u);
    EXPECT_EQ(a.got[0].error().code, make_error_code(errc::timeout));
  }
  {
    pipeline pl;
    answers a, b;
    two(pl, a, b);
    pl.fail_all(make_error(errc::store_unavailable, "gone").error());
    ASSERT_EQ(a.got.size(), 1u);
    ASSERT_EQ(b.got.size(), 1u);
    EXPECT_EQ(b.got[0].error().code, make_error_code(errc::store_unavailable));
  }
}

// Verifies that an error in one slot of a batch's reply (a key the script could not
// decide) answers only that call with it.
TEST(Batch, AnErrorInOneSlotAnswersThatCall) {
  pipeline pl;
  answers a, b;
  std::vector<pending> q;
  q.push_back(batchable(a, "k", steady::now() + 1h));
  q.push_back(batchable(b, "j", steady::now() + 1h));
  std::string out;
  pl.assemble("", q, kShas, 512, 1 << 20, steady::now(), out);
  std::vector<pending> resend;
  ASSERT_TRUE(pl.on_bytes("*2\r\n-WRONGTYPE no\r\n" + four(1, 3), resend));
  auto da = to_decision(a.got.at(0), 10);
  ASSERT_FALSE(da);
  EXPECT_EQ(da.error().code, make_error_code(errc::store_error));
  EXPECT_TRUE(to_decision(b.got.at(0), 10));
}

// Verifies how a packed sliding_log call is written: alone with the packed script's sha, in a
// batch with the letter `s` after its op's and no token, and in a multi-key call under the
// algorithm name sliding_log_packed (other algorithms' keys as they were).
TEST(Batch, PackedLogCallsUseTheirOwnScriptLetterAndName) {
  pipeline pl;
  answers a;
  const auto later = steady::now() + 1h;
  std::vector<pending> q;
  q.push_back(batchable(a, "k0", later));
  q.back().script->packed_log = true;
  std::string out;
  pl.assemble("", q, kShas, 128, 1 << 20, steady::now(), out);
  EXPECT_EQ(commands_in(out), (std::vector<std::string>{"EVALSHA PACKED"}));

  const script_op ops[] = {script_op::acquire, script_op::peek, script_op::refund};
  for (const script_op op : ops) q.push_back(batchable(a, "k1", later, op));
  for (pending& p : q) p.script->packed_log = true;
  q.push_back(batchable(a, "k1", later));  // the reference layout's
  out.clear();
  pl.assemble("", q, kShas, 128, 1 << 20, steady::now(), out);
  reader r;
  r.feed(out);
  auto batch = r.next();
  ASSERT_TRUE(batch && batch->has_value());
  const auto& e = (**batch).elements;
  ASSERT_EQ(e.size(), 3u + 1u + 7u * 4u);
  EXPECT_EQ(e[1].text, "BATCH");
  const char* modes[] = {"as", "ps", "rs", "al"};
  const char* tokens[] = {"", "", "", "tok"};
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(e[4 + 7 * i + 1].text, modes[i]) << "call " << i;
    EXPECT_EQ(e[4 + 7 * i + 6].text, tokens[i]) << "call " << i;
  }

  const limit ten{10, std::chrono::seconds(60)};
  const request log{"a", ten, algorithm::sliding_log, 1, std::chrono::microseconds{500}};
  const request gcra{"b", ten, algorithm::gcra, 1, std::chrono::microseconds{500}};
  script_call c =
      make_multi_call(script_op::acquire_all,
                      {to_script_key(log, "p:a", true), to_script_key(gcra, "p:b", true)}, "id:1");
  out.clear();
  append_script_call(out, c, "abc");
  EXPECT_EQ(out, resp({"EVALSHA", "abc", "2", "p:a", "p:b", "500", "id:1", "sliding_log_packed",
                       "10", "60000000", "1", "", "gcra", "10", "60000000", "1", ""}));
}

}  // namespace
}  // namespace sluice::redis
