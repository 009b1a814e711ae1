#include "server/headers.h"

#include <algorithm>
#include <charconv>

namespace sluice::server {
namespace {

constexpr std::int64_t kMicrosPerSecond = 1000000;
// The longest ";r=<int64>;t=<int64>".
constexpr std::size_t kNumbersMax = 2 * (3 + 20);

// Returns `d` in whole seconds, rounded up; 0 for zero or less.
std::int64_t ceil_seconds(std::chrono::microseconds d) noexcept {
  if (d.count() <= 0) return 0;
  return d.count() / kMicrosPerSecond + (d.count() % kMicrosPerSecond != 0 ? 1 : 0);
}

}  // namespace

std::string sf_string(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out += '"';
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c < 0x20 || c > 0x7e) {
      out += '?';
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

std::string ratelimit_policy_field(std::string_view name, const limit& l) {
  const std::int64_t w = std::max<std::int64_t>(1, ceil_seconds(l.window));
  return sf_string(name) + ";q=" + std::to_string(l.count) + ";w=" + std::to_string(w);
}

std::string ratelimit_field(std::string_view name, const decision& d) {
  const std::string sf_name = sf_string(name);
  std::string out(sf_name.size() + kNumbersMax, '\0');
  char* const end = write_ratelimit_field(out.data(), out.data() + out.size(), sf_name, d);
  out.resize(static_cast<std::size_t>(end - out.data()));
  return out;
}

char* write_ratelimit_field(char* out, char* end, std::string_view sf_name,
                            const decision& d) noexcept {
  if (static_cast<std::size_t>(end - out) < sf_name.size() + kNumbersMax) return nullptr;
  const std::int64_t r = std::max<std::int64_t>(0, d.remaining);
  const std::int64_t t = d.allowed ? ceil_seconds(d.reset_after) : retry_after_field(d);
  out = std::copy(sf_name.begin(), sf_name.end(), out);
  out = std::copy_n(";r=", 3, out);
  out = std::to_chars(out, end, r).ptr;
  out = std::copy_n(";t=", 3, out);
  return std::to_chars(out, end, t).ptr;
}

std::int64_t retry_after_field(const decision& d) noexcept {
  return std::max<std::int64_t>(1, d.retry_after.count() / kMicrosPerSecond + 1);
}

}  // namespace sluice::server
