// Tests of bearer-token authentication: the digest, reading the Authorization field, and the
// comparison against every configured digest.
#include "server/auth.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

using sluice::server::bearer_token;
using sluice::server::matches_any;
using sluice::server::sha256;
using sluice::server::token_digest;

std::string hex(const token_digest& d) {
  std::string out;
  char byte[3];
  for (const unsigned char c : d) {
    std::snprintf(byte, sizeof byte, "%02x", c);
    out += byte;
  }
  return out;
}

TEST(Auth, Sha256MatchesTheStandardVectors) {
  // Verifies the digest against FIPS 180-2's "abc" and the empty string.
  EXPECT_EQ(hex(sha256("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hex(sha256("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Auth, BearerTokenReadsTheSchemeInAnyCase) {
  // Verifies the token comes out of `Bearer <token>` with the scheme in any case and spaces
  // and tabs around the value and the token dropped.
  struct good_case {
    std::string_view value;
    std::string_view token;
  };
  const good_case cases[] = {
      {"Bearer tok-1", "tok-1"},
      {"bearer tok-1", "tok-1"},
      {"BEARER tok-1", "tok-1"},
      {"Bearer  \t tok-1", "tok-1"},
      {" \tBearer tok-1 \t", "tok-1"},
      {"Bearer a b", "a b"},  // the rest of the value, inner space and all
  };
  for (const good_case& c : cases) {
    const std::optional<std::string_view> token = bearer_token(c.value);
    ASSERT_TRUE(token) << c.value;
    EXPECT_EQ(*token, c.token) << c.value;
  }
}

TEST(Auth, BearerTokenRefusesOtherValues) {
  // Verifies no token comes out of another scheme, a bare token, a scheme alone, or a scheme
  // separated by a tab rather than a space.
  const std::string_view refused[] = {
      "",          "tok-1",         "Basic dXNlcjpwYXNz", "Bearer",
      "Bearer   ", "Bearer\ttok-1", "Bearerx tok-1",      "Bear tok-1",
  };
  for (const std::string_view value : refused) EXPECT_FALSE(bearer_token(value)) << value;
}

TEST(Auth, MatchesAnyConfiguredDigest) {
  // Verifies a digest matches wherever it is in the list, and nothing matches a token that
  // is not there (a prefix or an extension of one included) or an empty list.
  const std::vector<token_digest> digests = {sha256("tok-1"), sha256("tok-2"), sha256("root")};
  EXPECT_TRUE(matches_any(sha256("tok-1"), digests));
  EXPECT_TRUE(matches_any(sha256("tok-2"), digests));
  EXPECT_TRUE(matches_any(sha256("root"), digests));
  EXPECT_FALSE(matches_any(sha256("tok-"), digests));
  EXPECT_FALSE(matches_any(sha256("tok-1x"), digests));
  EXPECT_FALSE(matches_any(sha256(""), digests));
  EXPECT_FALSE(matches_any(sha256("tok-1"), {}));
}

}  // namespace
