// Small text helpers shared by the parts of sluice: quoting for error messages, %-decoding,
// ASCII case-insensitive comparison, trimming and the policy-name rule. Internal to sluice.
// Pure functions of their arguments: safe to call from any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace sluice::internal {

// Returns `text` in double quotes for an error message: at most 64 bytes (then "..."), with
// control bytes, quotes and backslashes escaped as \xNN, so any key or input prints safely.
std::string quote(std::string_view text);

// Returns `s` with %XX sequences decoded (and, with `plus_is_space`, `+` as a space, as in a
// URL's query), or nothing when a `%` is not followed by two hex digits.
std::optional<std::string> percent_decode(std::string_view s, bool plus_is_space);

// Returns whether `a` and `b` are equal when ASCII letters are compared without case (bytes
// outside A-Z and a-z must be equal): HTTP scheme names and field values, units of a limit.
bool iequals(std::string_view a, std::string_view b) noexcept;

// Returns `s` without the bytes of `blanks` at either end. The default, space and tab, is
// HTTP's optional whitespace (RFC 9110 OWS) and what may pad the parts of a limit.
//   trim("  30/hour\t") == "30/hour"
//   trim("tok\r\n", " \t\r\n") == "tok"
std::string_view trim(std::string_view s, std::string_view blanks = " \t") noexcept;

// Returns whether `name` may name a policy: 1 to 64 of A-Z a-z 0-9 _ . - (so it is safe in a
// store key, a metric label and a URL path segment unescaped).
bool valid_policy_name(std::string_view name) noexcept;

}  // namespace sluice::internal
