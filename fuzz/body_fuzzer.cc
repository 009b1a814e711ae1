// Checks the decision body parser (server/body.cc) against nlohmann::json on the same bytes,
// and aborts, saying why on stderr, when they disagree:
//
//  1. The hand-written fast path, parse_flat, accepts exactly the bodies in its subset of
//     JSON, defined here from nlohmann's reading alone: nlohmann parses the bytes to an object
//     whose members are all key, policy, limit, algorithm or cost, none written twice, each a
//     string or an integer of at most 18 digits (|n| < 10^18), and every byte is printable
//     ASCII (0x20-0x7e) or JSON whitespace, with no backslash. The byte rule is what a DOM
//     cannot show: escapes (\u0041 reads as "A"), UTF-8 beyond ASCII, DEL, a BOM (nlohmann
//     skips one), and a NUL byte, at which nlohmann's lexer ends the input, so that it accepts
//     `{}` followed by NUL and anything. Outside the subset parse_flat must decline; inside,
//     it must give the fields nlohmann gives.
//  2. parse_body as a whole gives what nlohmann's DOM alone gives: the same refusal (message
//     and field) or the same five fields, a repeated member with its last value; except that
//     parse_body refuses any body with a NUL byte as not JSON, where nlohmann may end the
//     input at it and accept.
//
// Fields compare by class (absent, string, integer, too_large, other), strings by their bytes,
// integers by value. The classes, from the DOM: a string; an integer that fits in int64; an
// integer above INT64_MAX and at most UINT64_MAX is too_large; anything else is other,
// including integers beyond those bounds, which nlohmann reads as floating point.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/text.h"
#include "server/body.h"

namespace {

using sluice::server::body_error;
using sluice::server::body_fields;
using sluice::server::body_value;
using json = nlohmann::json;
using kind = body_value::kind;

constexpr std::string_view kNames[] = {"key", "policy", "limit", "algorithm", "cost", "limits"};
constexpr std::int64_t kFlatMax = 999'999'999'999'999'999;  // 18 digits

[[noreturn]] void fail(std::string_view bytes, const std::string& why) {
  std::string shown;
  for (const char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      shown += ch;
    } else {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      shown += hex;
    }
  }
  std::fprintf(stderr, "body_fuzzer: %s\n  input (%zu bytes): %s\n", why.c_str(), bytes.size(),
               shown.c_str());
  std::abort();
}

// The class of a DOM value, worked out here rather than by body.cc's from_dom.
body_value expected_value(const json& v) {
  body_value out;
  if (v.is_string()) {
    out.k = kind::string;
    out.text = v.get_ref<const std::string&>();
  } else if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      out.k = kind::too_large;
    } else {
      out.k = kind::integer;
      out.number = static_cast<std::int64_t>(u);
    }
  } else if (v.is_number_integer()) {
    out.k = kind::integer;
    out.number = v.get<std::int64_t>();
  } else {
    out.k = kind::other;
  }
  return out;
}

const char* kind_name(kind k) {
  switch (k) {
    case kind::absent:
      return "absent";
    case kind::string:
      return "string";
    case kind::integer:
      return "integer";
    case kind::too_large:
      return "too_large";
    case kind::other:
      return "other";
  }
  return "?";
}

std::string describe(const body_value& v) {
  std::string out = kind_name(v.k);
  if (v.k == kind::string) out += " " + sluice::internal::quote(v.text);
  if (v.k == kind::integer) out += " " + std::to_string(v.number);
  return out;
}

bool same(const body_value& a, const body_value& b) {
  if (a.k != b.k) return false;
  if (a.k == kind::string) return a.text == b.text;
  if (a.k == kind::integer) return a.number == b.number;
  return true;
}

// Aborts unless `got` holds, for each known member, what the object `dom` holds.
void expect_fields(std::string_view bytes, const char* who, body_fields& got, const json& dom) {
  for (const std::string_view name : kNames) {
    const auto it = dom.find(name);
    const body_value want = it == dom.end() ? body_value{} : expected_value(*it);
    const body_value& have = *got.find(name);
    if (!same(have, want)) {
      fail(bytes, std::string(who) + " reads " + std::string(name) + " as " + describe(have) +
                      ", nlohmann as " + describe(want));
    }
  }
}

// What nlohmann makes of the bytes, with nothing from body.cc.
struct reading {
  json dom;                           // discarded when the bytes are not JSON
  std::size_t top_keys = 0;           // members of the top-level object as written, repeats counted
  bool flat_subset = false;           // in parse_flat's subset, as defined at the top of the file
  std::optional<body_error> refusal;  // what parse_body must answer, if it refuses
};

reading read_with_nlohmann(std::string_view bytes) {
  reading r;
  r.dom = json::parse(bytes, nullptr, /*allow_exceptions=*/false);
  if (r.dom.is_discarded() || bytes.find('\0') != std::string_view::npos) {
    r.refusal = body_error{"body is not valid JSON", "body"};
    return r;
  }
  if (!r.dom.is_object()) {
    r.refusal = body_error{"body must be a JSON object", "body"};
    return r;
  }
  // The DOM keeps one value per name: count the members as written to see repeats.
  const json::parser_callback_t count = [&r](int depth, json::parse_event_t event, json&) {
    if (event == json::parse_event_t::key && depth == 1) ++r.top_keys;
    return true;
  };
  if (json::parse(bytes, count, /*allow_exceptions=*/false) != r.dom) {
    fail(bytes, "nlohmann's two parsers disagree");
  }

  bool known_only = true;
  bool flat_values = true;
  for (const auto& [name, value] : r.dom.items()) {
    bool known = false;
    for (const std::string_view k : kNames) known = known || name == k;
    if (!known) {
      known_only = false;
      // The first unknown member in the DOM's order (std::map: sorted by name) is named.
      if (!r.refusal) {
        r.refusal = body_error{"unknown field " + sluice::internal::quote(name) +
                                   "; use key, policy or limit (+ algorithm), cost, or limits",
                               name};
      }
      continue;
    }
    const body_value v = expected_value(value);
    const bool small_integer =
        v.k == kind::integer && v.number >= -kFlatMax && v.number <= kFlatMax;
    if (v.k != kind::string && !small_integer) flat_values = false;
  }
  bool plain_bytes = true;
  for (const char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    const bool json_ws = c == ' ' || c == '\t' || c == '\n' || c == '\r';
    if (c == '\\' || (!json_ws && (c < 0x20 || c > 0x7e))) plain_bytes = false;
  }
  r.flat_subset = known_only && r.top_keys == r.dom.size() && flat_values && plain_bytes;
  return r;
}

void check_flat(std::string_view bytes, const reading& r) {
  body_fields flat;
  const bool accepted = sluice::server::parse_flat(bytes, flat);
  if (accepted != r.flat_subset) {
    fail(bytes, accepted ? "parse_flat accepts a body outside its subset"
                         : "parse_flat declines a body in its subset");
  }
  if (!accepted) return;
  expect_fields(bytes, "parse_flat", flat, r.dom);
  for (const std::string_view name : kNames) {
    const body_value& v = *flat.find(name);
    if (v.k == kind::string && (v.text.data() < bytes.data() ||
                                v.text.data() + v.text.size() > bytes.data() + bytes.size())) {
      fail(bytes, "parse_flat's " + std::string(name) + " does not point into the body");
    }
  }
}

void check_body(std::string_view bytes, const reading& r) {
  body_fields fields;
  json dom;
  const std::optional<body_error> got = sluice::server::parse_body(bytes, fields, dom);
  if (got.has_value() != r.refusal.has_value()) {
    fail(bytes, got ? "parse_body refuses (" + got->message + ") what nlohmann accepts"
                    : "parse_body accepts what nlohmann refuses (" + r.refusal->message + ")");
  }
  if (got) {
    if (got->message != r.refusal->message || got->field != r.refusal->field) {
      fail(bytes, "parse_body refuses with " + sluice::internal::quote(got->message) + " on " +
                      sluice::internal::quote(got->field) + ", expected " +
                      sluice::internal::quote(r.refusal->message) + " on " +
                      sluice::internal::quote(r.refusal->field));
    }
    return;
  }
  expect_fields(bytes, "parse_body", fields, r.dom);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const reading r = read_with_nlohmann(bytes);
  check_flat(bytes, r);
  check_body(bytes, r);
  return 0;
}
