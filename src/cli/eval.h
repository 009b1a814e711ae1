// `sluice eval` and the JSON shape of decisions printed by the CLI.
#pragma once

#include <iosfwd>
#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

#include "sluice/clock.h"
#include "sluice/decision.h"
#include "sluice/store.h"

namespace sluice::cli {

// Returns `d` as the CLI prints it: allowed, limit, remaining, retry_after_ms,
// reset_after_ms (milliseconds rounded up).
nlohmann::ordered_json decision_json(const decision& d);

// Writes `j` on one line; bytes that are not UTF-8 are replaced, never fatal.
void print_json_line(std::ostream& out, const nlohmann::ordered_json& j);

struct eval_options {
  // When set, time is a manual clock starting here, moved by `@advance DURATION` lines;
  // otherwise the store's own clock.
  std::optional<std::chrono::microseconds> start;
  // Print each input line, prefixed with "> ", before its result.
  bool echo = false;
};

// Reads requests from `in`, one per line: `KEY LIMIT [ALGORITHM] [COST] [peek|reset|refund]`.
// Blank lines and lines starting with `#` are skipped. Prints one JSON object per request
// to `out`; a bad line prints {"line": N, "error": "..."} and the stream goes on.
// `clock` is the manual clock the store was opened with when `options.start` is set.
// Returns the number of lines that failed.
int run_eval(std::istream& in, std::ostream& out, store& s, manual_clock* clock,
             const eval_options& options);

}  // namespace sluice::cli
