// The body of a decision request (`POST /v1/acquire`, `/v1/peek`): untrusted bytes from any
// client, read into the five fields the API knows. `parse_body` accepts exactly the bodies
// that nlohmann::json parses (RFC 8259, UTF-8, an optional BOM) to an object whose members are
// all among key, policy, limit, algorithm, cost and limits; a repeated member counts with its last
// value, except that a body with a NUL byte is refused (nlohmann's lexer would take one
// where a token could start as the end of the input and accept what follows unread; JSON has
// no raw NUL anywhere). It rejects anything else (not JSON, not an object, an unknown member) with
// the message and field of the 400 response. Values are only classified here; what each field must
// hold is the handler's business.
//
// The bodies clients send, a flat object of plain strings and small integers, are read by a
// hand-written fast path (`parse_flat`) that builds no DOM; whatever it does not handle it
// declines, and nlohmann reads the body instead, so every edge case stays as nlohmann says.
// fuzz/body_fuzzer.cc checks that the two agree.
//
// Nothing here throws, short of std::bad_alloc. No limits of its own: the HTTP server bounds the
// body's size, and nlohmann parses nesting of any depth without recursion. Thread-safety:
// functions of their arguments only; calls on different objects may run at once.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

namespace sluice::server {

// A field of a decision request's body, reduced to what the validation asks of it.
struct body_value {
  // `too_large`: an integer above INT64_MAX and at most UINT64_MAX. An integer outside
  // [INT64_MIN, UINT64_MAX] is `other`, as is any number with a fraction or an exponent
  // (1.0, 1e3): nlohmann reads those as floating point.
  enum class kind : std::uint8_t { absent, string, integer, too_large, other };
  kind k = kind::absent;
  std::string_view text;    // kind::string: the value, unescaped
  std::int64_t number = 0;  // kind::integer
};

// The fields of `{"key", "policy", "limit", "algorithm", "cost"}`, and `"limits"`, the list
// of a decision over several limits (an array: `other` here; the handler reads it from the
// DOM, which such a body always has, since parse_flat declines arrays).
struct body_fields {
  body_value key, policy, limit, algorithm, cost, limits;

  // Returns the field called `name`, or nullptr when there is none.
  body_value* find(std::string_view name) noexcept;
};

// Why a body was refused: the message and the field of the 400 response ("body", or the name
// of the unknown member).
struct body_error {
  std::string message;
  std::string field;
};

// Reads `body` into `out`, which must be default-constructed. Returns nothing when the body
// is accepted, else why not. The strings in `out` point into `body`, or into `dom` when the
// body needed a DOM; both must outlive `out`'s use.
//   nlohmann::json dom;
//   body_fields f;
//   if (auto e = parse_body(R"({"key":"a","cost":2})", f, dom)) { ... 400 ... }
std::optional<body_error> parse_body(std::string_view body, body_fields& out, nlohmann::json& dom);

// The fast path of `parse_body`: returns true when `body` is an object of known members, each
// at most once, whose values are strings of printable ASCII (0x20-0x7e) with no escapes or
// integers of at most 18 digits, with JSON whitespace anywhere between tokens and nothing
// else; `out` then holds the fields, pointing into `body`. Returns false, with `out` in any
// state, for everything else, valid JSON or not. Exposed for the fuzz target and tests.
bool parse_flat(std::string_view body, body_fields& out) noexcept;

// Returns how `parse_body` classifies a value of nlohmann's DOM; a string points into `v`.
body_value from_dom(const nlohmann::json& v) noexcept;

}  // namespace sluice::server
