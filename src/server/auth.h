// Bearer tokens for the HTTP API (`Authorization: Bearer <token>`, RFC 6750). The handler
// keeps only the SHA-256 digest of each configured token, and checks a presented token by
// comparing its digest with every configured one, each in constant time: neither the time
// nor the number of comparisons depends on which token matches or how much of it, and
// fixed-size digests keep the configured tokens' lengths from showing. Rejects a value
// whose scheme is not Bearer (any case) or that has no space between scheme and token, and
// any token whose digest is not configured. Nothing here throws. Thread-safety: functions of
// their arguments only; safe from any thread.
#pragma once

#include <array>
#include <optional>
#include <span>
#include <string_view>

namespace sluice::server {

using token_digest = std::array<unsigned char, 32>;

// Returns the SHA-256 digest of `token`.
token_digest sha256(std::string_view token) noexcept;

// Returns the token of an Authorization field value `Bearer <token>`: the scheme in any case,
// then a space, with spaces and tabs around the value and the token ignored. Returns nothing
// for any other value (another scheme, no space after the scheme).
//   bearer_token(" bearer  abc ") == "abc"
//   bearer_token("Basic YWxhZGRpbg==") == std::nullopt
std::optional<std::string_view> bearer_token(std::string_view authorization) noexcept;

// Returns whether `presented` equals one of `digests`. Compares it with every one, each in
// constant time, whichever matches.
bool matches_any(const token_digest& presented, std::span<const token_digest> digests) noexcept;

}  // namespace sluice::server
