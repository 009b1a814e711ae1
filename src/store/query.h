// Splitting store URIs' `?name=value&...` options. Internal to sluice (core and redis).
#pragma once

#include <charconv>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sluice/error.h"

namespace sluice::internal {

using query_params = std::vector<std::pair<std::string_view, std::string_view>>;

// Returns the `name=value` pairs of `query` (the part after '?'), empty parts skipped, or
// `errc::invalid_store_uri` with the detail "option \"x\" needs a value".
inline result<query_params> split_query(std::string_view query) {
  query_params out;
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (pair.empty()) continue;
    const std::size_t eq = pair.find('=');
    if (eq == std::string_view::npos) {
      return make_error(errc::invalid_store_uri,
                        "option \"" + std::string(pair.substr(0, 64)) + "\" needs a value");
    }
    out.emplace_back(pair.substr(0, eq), pair.substr(eq + 1));
  }
  return out;
}

// Parses all of `text` as a decimal number; false when it is not one or does not fit.
template <class T>
bool parse_number(std::string_view text, T& out) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size() && !text.empty();
}

}  // namespace sluice::internal
