// Text helpers for error messages. Internal to sluice.
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

}  // namespace sluice::internal
