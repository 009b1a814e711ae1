// The IETF RateLimit header fields and Retry-After, as `sluice serve` writes them on every
// decision response.
//
// Follows draft-ietf-httpapi-ratelimit-headers-11 (23 May 2026), the structured-field form
// (RFC 9651 Lists of Items whose value is a String naming the policy):
//   RateLimit-Policy: "chat";q=30;w=3600     quota q per window w seconds (Section 3)
//   RateLimit: "chat";r=29;t=12              r units available now, effective window t s (4)
// and `Retry-After: <seconds>` (RFC 9110) on denials.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "sluice/decision.h"
#include "sluice/limit.h"

namespace sluice::server {

// Returns `text` as a structured-field String: in double quotes, `"` and `\` escaped.
// Bytes the syntax does not allow (outside 0x20..0x7E) become `?`.
//   sf_string("chat")  // "\"chat\""
std::string sf_string(std::string_view text);

// Returns the RateLimit-Policy field value of policy `name` with limit `l`. The window is
// in whole seconds, as the draft allows no finer; a window that is not a whole number of
// seconds is rounded up (so a client that keeps to it keeps to the limit), at least 1.
//   ratelimit_policy_field("chat", 30/1h)  // "\"chat\";q=30;w=3600"
std::string ratelimit_policy_field(std::string_view name, const limit& l);

// Returns the RateLimit field value for decision `d` under policy `name`: r is what remains
// (never negative); t is, when allowed, the seconds until the key is back to its full limit
// (rounded up), and when denied, the Retry-After value, so that Retry-After never points
// before the end of the effective window (Section 6).
//   ratelimit_field("chat", {allowed, 30, 29, 0, 11.2 s})  // "\"chat\";r=29;t=12"
std::string ratelimit_field(std::string_view name, const decision& d);

// Writes the RateLimit field value of ratelimit_field to [out, end), where `sf_name` is the
// policy's name already as a structured-field String (sf_string(name)); allocates nothing,
// for the request path. Returns the end of what it wrote, or nullptr when it does not fit.
char* write_ratelimit_field(char* out, char* end, std::string_view sf_name,
                            const decision& d) noexcept;

// Returns the Retry-After value for a denial: whole seconds, at least 1 (the reference
// limiter's `floor(seconds) + 1`). Precondition: !d.allowed.
std::int64_t retry_after_field(const decision& d) noexcept;

}  // namespace sluice::server
