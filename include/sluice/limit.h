// Limits ("30/hour"), algorithms and durations: parsing, validation, canonical printing.
//
// A limit is `count` per `window`. Parsing accepts `30/hour`, `100/1m`, `5/10s`, `2/500ms`,
// `1000/1d`, `10 per minute`; `to_string` prints the canonical form (`30/1h`), which parses
// back to the same limit.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "sluice/error.h"

namespace sluice {

// The longest window sluice accepts: 100 years. Keeps every sum of times far from overflow.
inline constexpr std::chrono::microseconds max_window{std::int64_t{100} * 366 * 24 * 3600 *
                                                      1000000};

// A validated limit. Build one with `parse_limit` or `make_limit`.
struct limit {
  std::int64_t count = 0;  // admissions (units of cost) per window; 1 ≤ count ≤ window in µs
  std::chrono::microseconds window{0};  // 1 µs ≤ window ≤ max_window

  friend bool operator==(const limit&, const limit&) = default;
};

// Returns a limit of `count` per `window`, or `errc::invalid_limit` naming the problem:
// count below 1, window below 1 µs or above `max_window`, or a limit finer than one
// admission per microsecond (count > window in µs).
result<limit> make_limit(std::int64_t count, std::chrono::microseconds window);

// Returns the limit written in `text`.
//   parse_limit("30/hour")        -> 30 per 1h
//   parse_limit("2/500ms")        -> 2 per 500ms
//   parse_limit("10 per minute")  -> 10 per 1m
// Units: us, ms, s/sec/second(s), m/min/minute(s), h/hr/hour(s), d/day(s), w/week(s).
result<limit> parse_limit(std::string_view text);

// Returns the canonical form, `<count>/<n><unit>` with the largest unit that divides the
// window exactly: `30/1h`, `2/500ms`, `7/90s`.
std::string to_string(const limit& l);

// Returns a duration written as `<n><unit>` (`1500ms`, `30s`, `2h`); a bare unit means one
// of it (`hour`). At most `max_window`, or with `allow_long` at most 2^62 µs (for absolute
// times such as `1700000000s`).
result<std::chrono::microseconds> parse_duration(std::string_view text, bool allow_long = false);

// Returns `d` as `<n><unit>` with the largest unit that divides it exactly.
std::string format_duration(std::chrono::microseconds d);

// How a limit is enforced. docs/DESIGN.md, "The algorithms", weighs them.
enum class algorithm : std::uint8_t {
  sliding_log,      // exact sliding window; memory O(count) per key
  sliding_counter,  // two aligned fixed windows, the previous one weighted; O(1)
  gcra,             // generic cell rate algorithm (token bucket, burst = count); O(1)
};

// Returns the algorithm named `sliding_log`, `sliding_counter` or `gcra`.
result<algorithm> parse_algorithm(std::string_view name);

// Returns the algorithm's name, as `parse_algorithm` accepts it.
std::string_view to_string(algorithm a) noexcept;

}  // namespace sluice
