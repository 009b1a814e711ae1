// Fuzzes the limit, duration and algorithm parsers: any input gives a value or an error,
// and every limit that parses prints back to text that parses to the same limit.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "sluice/limit.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto l = sluice::parse_limit(text)) {
    if (l->count < 1 || l->window.count() < 1 || l->window > sluice::max_window ||
        l->count > l->window.count()) {
      std::abort();
    }
    auto again = sluice::parse_limit(sluice::to_string(*l));
    if (!again || !(*again == *l)) std::abort();
    if (!sluice::make_limit(l->count, l->window)) std::abort();
  } else if (l.error().message().empty()) {
    std::abort();
  }
  for (const bool allow_long : {false, true}) {
    if (auto d = sluice::parse_duration(text, allow_long)) {
      if (d->count() < 0) std::abort();
      auto again = sluice::parse_duration(sluice::format_duration(*d), allow_long);
      if (!again || *again != *d) std::abort();
    }
  }
  if (auto a = sluice::parse_algorithm(text)) {
    if (sluice::to_string(*a) != text) std::abort();
  }
  return 0;
}
