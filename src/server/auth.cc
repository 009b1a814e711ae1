#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "core/text.h"

namespace sluice::server {

token_digest sha256(std::string_view token) noexcept {
  token_digest out{};
  unsigned int n = 0;
  EVP_Digest(token.data(), token.size(), out.data(), &n, EVP_sha256(), nullptr);
  return out;
}

std::optional<std::string_view> bearer_token(std::string_view authorization) noexcept {
  const std::string_view value = internal::trim(authorization);
  const std::size_t space = value.find(' ');
  if (space == std::string_view::npos || !internal::iequals(value.substr(0, space), "bearer")) {
    return std::nullopt;
  }
  return internal::trim(value.substr(space + 1));
}

bool matches_any(const token_digest& presented, std::span<const token_digest> digests) noexcept {
  // `|=`, not an early return: the time must not depend on which digest matches.
  bool match = false;
  for (const token_digest& d : digests) {
    match |= CRYPTO_memcmp(d.data(), presented.data(), d.size()) == 0;
  }
  return match;
}

}  // namespace sluice::server
