#include "cli/eval.h"

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "sluice/memory_store.h"

namespace sluice::cli {
namespace {

struct eval_result {
  int status;
  std::vector<nlohmann::json> lines;
};

eval_result eval(const std::string& input, bool with_clock = true) {
  manual_clock clock;
  memory_store_options options;
  options.time_source = &clock;
  memory_store store(options);
  std::istringstream in(input);
  std::ostringstream out;
  eval_options eo;
  if (with_clock) eo.start = std::chrono::microseconds{0};
  const int status = run_eval(in, out, store, with_clock ? &clock : nullptr, eo);
  eval_result r{status, {}};
  std::istringstream lines(out.str());
  for (std::string line; std::getline(lines, line);) r.lines.push_back(nlohmann::json::parse(line));
  return r;
}

// Verifies that each request line gives one JSON decision with every field.
TEST(Eval, PrintsOneDecisionPerLine) {
  const auto r = eval("a 2/1s\na 2/1s\na 2/1s\n");
  ASSERT_EQ(r.lines.size(), 3u);
  EXPECT_EQ(r.status, 0);  // no line failed
  EXPECT_EQ(r.lines[0]["key"], "a");
  EXPECT_EQ(r.lines[0]["op"], "acquire");
  EXPECT_EQ(r.lines[0]["allowed"], true);
  EXPECT_EQ(r.lines[0]["limit"], 2);
  EXPECT_EQ(r.lines[0]["remaining"], 1);
  EXPECT_EQ(r.lines[0]["retry_after_ms"], 0);
  EXPECT_EQ(r.lines[0]["reset_after_ms"], 1000);
  EXPECT_EQ(r.lines[2]["allowed"], false);
  EXPECT_EQ(r.lines[2]["retry_after_ms"], 1000);
}

// Verifies that comments and blank lines are skipped and that line numbers still count them.
TEST(Eval, BadLineNamesItsNumberAndTheStreamGoesOn) {
  const auto r = eval("# comment\n\na 0/1s\na 2/1s fast\na 2/1s\n");
  ASSERT_EQ(r.lines.size(), 3u);
  EXPECT_EQ(r.status, 2);  // two lines failed
  EXPECT_EQ(r.lines[0]["line"], 3);
  EXPECT_NE(r.lines[0]["error"].get<std::string>().find("count must be at least 1"),
            std::string::npos);
  EXPECT_EQ(r.lines[1]["line"], 4);
  EXPECT_NE(r.lines[1]["error"].get<std::string>().find("fast"), std::string::npos);
  EXPECT_EQ(r.lines[2]["allowed"], true);
}

// Verifies algorithm, cost and peek tokens, in order.
TEST(Eval, ParsesAlgorithmCostAndPeek) {
  const auto r = eval("k 5/1m gcra 3 peek\nk 5/1m gcra 3\nk 5/1m gcra 3\n");
  ASSERT_EQ(r.lines.size(), 3u);
  EXPECT_EQ(r.lines[0]["op"], "peek");
  EXPECT_EQ(r.lines[0]["remaining"], 5);  // peek spent nothing
  EXPECT_EQ(r.lines[1]["remaining"], 2);
  EXPECT_EQ(r.lines[2]["allowed"], false);
  EXPECT_EQ(r.lines[2]["retry_after_ms"], 12000);  // one unit refills every 12 s
}

// Verifies that @advance moves the manual clock and that reset forgets the key.
TEST(Eval, AdvanceMovesTheClockAndResetForgets) {
  const auto r = eval("k 1/10s\nk 1/10s\n@advance 10s\nk 1/10s\nk 1/10s reset\nk 1/10s\n");
  ASSERT_EQ(r.lines.size(), 5u);
  EXPECT_EQ(r.lines[1]["allowed"], false);
  EXPECT_EQ(r.lines[2]["allowed"], true);
  EXPECT_EQ(r.lines[3]["reset"], true);
  EXPECT_EQ(r.lines[4]["allowed"], true);
}

// Verifies that refund gives back units and says what is available afterwards.
TEST(Eval, RefundGivesBackUnits) {
  const auto r = eval("k 10/1m gcra 8\nk 10/1m gcra 5 refund\nk 10/1m gcra 9 refund\n");
  ASSERT_EQ(r.lines.size(), 3u);
  EXPECT_EQ(r.lines[0]["remaining"], 2);
  EXPECT_EQ(r.lines[1]["op"], "refund");
  EXPECT_EQ(r.lines[1]["remaining"], 7);
  EXPECT_EQ(r.lines[2]["remaining"], 10);  // never more than the full limit
}

// Verifies that @advance without a manual clock, and unknown directives, are line errors.
TEST(Eval, DirectivesNeedAManualClock) {
  const auto r = eval("@advance 1s\n@jump 1s\n", /*with_clock=*/false);
  ASSERT_EQ(r.lines.size(), 2u);
  EXPECT_NE(r.lines[0]["error"].get<std::string>().find("--now"), std::string::npos);
  EXPECT_NE(r.lines[1]["error"].get<std::string>().find("directive"), std::string::npos);
}

// Verifies that a cost above the limit is an error line, not a denial with a wait.
TEST(Eval, CostAboveLimitIsAnError) {
  const auto r = eval("k 3/1m 4\n");
  ASSERT_EQ(r.lines.size(), 1u);
  EXPECT_NE(r.lines[0]["error"].get<std::string>().find("never be admitted"), std::string::npos);
}

// Verifies that keys that are not UTF-8 still print as valid JSON.
TEST(Eval, NonUtf8KeysPrintAsJson) {
  const auto r = eval("\xff\xfe 2/1s\n");
  ASSERT_EQ(r.lines.size(), 1u);
  EXPECT_EQ(r.lines[0]["allowed"], true);
}

}  // namespace
}  // namespace sluice::cli
