// Text helpers for error messages. Internal to sluice.
#pragma once

#include <string>
#include <string_view>

namespace sluice::internal {

// Returns `text` in double quotes for an error message: at most 64 bytes (then "..."), with
// control bytes, quotes and backslashes escaped as \xNN, so any key or input prints safely.
std::string quote(std::string_view text);

}  // namespace sluice::internal
