#include "sluice/limit.h"

#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "core/text.h"
#include "sluice/algorithms.h"

namespace sluice {

using std::chrono::microseconds;
namespace {

using internal::iequals;
using internal::quote;
using internal::trim;

struct unit {
  std::string_view name;
  std::int64_t micros;
};

constexpr std::int64_t kSecond = 1000000;
constexpr std::array<unit, 29> kUnits{{
    {"us", 1},
    {"usec", 1},
    {"microsecond", 1},
    {"microseconds", 1},
    {"ms", 1000},
    {"msec", 1000},
    {"millisecond", 1000},
    {"milliseconds", 1000},
    {"s", kSecond},
    {"sec", kSecond},
    {"secs", kSecond},
    {"second", kSecond},
    {"seconds", kSecond},
    {"m", 60 * kSecond},
    {"min", 60 * kSecond},
    {"mins", 60 * kSecond},
    {"minute", 60 * kSecond},
    {"minutes", 60 * kSecond},
    {"h", 3600 * kSecond},
    {"hr", 3600 * kSecond},
    {"hrs", 3600 * kSecond},
    {"hour", 3600 * kSecond},
    {"hours", 3600 * kSecond},
    {"d", 86400 * kSecond},
    {"day", 86400 * kSecond},
    {"days", 86400 * kSecond},
    {"w", 7 * 86400 * kSecond},
    {"week", 7 * 86400 * kSecond},
    {"weeks", 7 * 86400 * kSecond},
}};

// Units printed by to_string, largest first.
constexpr std::array<unit, 6> kCanonical{{{"d", 86400 * kSecond},
                                          {"h", 3600 * kSecond},
                                          {"m", 60 * kSecond},
                                          {"s", kSecond},
                                          {"ms", 1000},
                                          {"us", 1}}};

bool is_space(char c) { return c == ' ' || c == '\t'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Parses the leading decimal digits of `s`; false when there are none or they overflow.
bool parse_digits(std::string_view& s, std::int64_t& value) {
  std::size_t i = 0;
  std::int64_t v = 0;
  while (i < s.size() && is_digit(s[i])) {
    const int d = s[i] - '0';
    if (v > (std::numeric_limits<std::int64_t>::max() - d) / 10) return false;
    v = v * 10 + d;
    ++i;
  }
  if (i == 0) return false;
  value = v;
  s.remove_prefix(i);
  return true;
}

// Parses `[n] unit` into microseconds; the error's detail says only what is wrong.
result<microseconds> parse_amount(std::string_view text, std::int64_t max_micros) {
  auto fail = [](std::string problem) {
    return make_error(errc::invalid_duration, std::move(problem));
  };
  std::string_view s = trim(text);
  if (s.empty()) return fail("is empty");
  if (s.front() == '-') return fail("must not be negative");
  std::int64_t n = 1;
  if (is_digit(s.front())) {
    if (!parse_digits(s, n)) return fail("is too long");
    s = trim(s);
  }
  if (s.empty()) return fail("needs a unit (us, ms, s, m, h, d or w)");
  for (const unit& u : kUnits) {
    if (!iequals(s, u.name)) continue;
    if (n > max_micros / u.micros) return fail("is too long");
    return microseconds{n * u.micros};
  }
  return fail("has an unknown unit " + quote(s) + " (use us, ms, s, m, h, d or w)");
}

}  // namespace

result<limit> make_limit(std::int64_t count, microseconds window) {
  auto fail = [&](std::string problem) {
    return make_error(errc::invalid_limit, "limit " + std::to_string(count) + "/" +
                                               std::to_string(window.count()) + "us: " + problem);
  };
  if (count < 1) return fail("count must be at least 1");
  if (window.count() < 1) return fail("window must be at least 1us");
  if (window > max_window) return fail("window must be at most 100 years");
  if (count > window.count()) return fail("finer than one admission per microsecond");
  return limit{count, window};
}

result<limit> parse_limit(std::string_view text) {
  auto fail = [&](std::string problem) {
    return make_error(errc::invalid_limit, "limit " + quote(text) + ": " + problem);
  };
  const std::string_view s = trim(text);
  if (s.empty()) return fail("is empty (write it as COUNT/WINDOW, e.g. 30/hour)");

  std::string_view count_text;
  std::string_view window_text;
  if (const auto slash = s.find('/'); slash != std::string_view::npos) {
    count_text = s.substr(0, slash);
    window_text = s.substr(slash + 1);
  } else {
    // "10 per minute": the word `per` between spaces, in any case.
    std::size_t per = std::string_view::npos;
    for (std::size_t i = 1; i + 4 < s.size(); ++i) {
      if (is_space(s[i - 1]) && iequals(s.substr(i, 3), "per") && is_space(s[i + 3])) {
        per = i;
        break;
      }
    }
    if (per == std::string_view::npos) {
      return fail("expected COUNT/WINDOW or COUNT per WINDOW, e.g. 30/hour");
    }
    count_text = s.substr(0, per);
    window_text = s.substr(per + 3);
  }

  count_text = trim(count_text);
  if (count_text.empty()) return fail("count is missing");
  if (count_text.front() == '-') return fail("count must be positive");
  std::int64_t count = 0;
  std::string_view rest = count_text;
  if (!parse_digits(rest, count)) {
    return is_digit(count_text.front()) ? fail("count is too large")
                                        : fail("count must be a whole number");
  }
  if (!rest.empty()) return fail("count must be a whole number");
  if (count < 1) return fail("count must be at least 1");

  if (trim(window_text).empty()) return fail("window is missing");
  if (window_text.find('/') != std::string_view::npos) return fail("has more than one '/'");
  const auto window = parse_amount(window_text, max_window.count());
  if (!window) return fail("window " + window.error().detail);
  if (window->count() < 1) return fail("window must be longer than zero");
  if (count > window->count()) {
    return fail("finer than one admission per microsecond; use a longer window");
  }
  return limit{count, *window};
}

std::string to_string(const limit& l) {
  return std::to_string(l.count) + "/" + format_duration(l.window);
}

result<microseconds> parse_duration(std::string_view text, bool allow_long) {
  const std::int64_t max = allow_long ? max_time.count() : max_window.count();
  auto d = parse_amount(text, max);
  if (!d)
    return make_error(errc::invalid_duration, "duration " + quote(text) + " " + d.error().detail);
  return d;
}

std::string format_duration(microseconds d) {
  const std::int64_t us = d.count();
  if (us == 0) return "0s";
  for (const unit& u : kCanonical) {
    if (us % u.micros == 0) return std::to_string(us / u.micros) + std::string(u.name);
  }
  return std::to_string(us) + "us";
}

result<algorithm> parse_algorithm(std::string_view name) {
  for (const auto a : {algorithm::sliding_log, algorithm::sliding_counter, algorithm::gcra}) {
    if (name == to_string(a)) return a;
  }
  return make_error(errc::invalid_algorithm,
                    "algorithm " + quote(name) + ": use sliding_log, sliding_counter or gcra");
}

std::string_view to_string(algorithm a) noexcept {
  switch (a) {
    case algorithm::sliding_log:
      return "sliding_log";
    case algorithm::sliding_counter:
      return "sliding_counter";
    case algorithm::gcra:
      return "gcra";
  }
  return "unknown";
}

}  // namespace sluice
