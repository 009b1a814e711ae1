#include "server/body.h"

#include <limits>

#include <nlohmann/json.hpp>

#include "core/text.h"

namespace sluice::server {

using json = nlohmann::json;

body_value* body_fields::find(std::string_view name) noexcept {
  if (name == "key") return &key;
  if (name == "policy") return &policy;
  if (name == "limit") return &limit;
  if (name == "algorithm") return &algorithm;
  if (name == "cost") return &cost;
  if (name == "limits") return &limits;
  return nullptr;
}

body_value from_dom(const json& v) noexcept {
  body_value out;
  if (v.is_string()) {
    out.k = body_value::kind::string;
    out.text = v.get_ref<const std::string&>();
  } else if (v.is_number_unsigned() &&
             v.get<std::uint64_t>() >
                 static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
    out.k = body_value::kind::too_large;
  } else if (v.is_number_integer()) {
    out.k = body_value::kind::integer;
    out.number = v.get<std::int64_t>();
  } else {
    out.k = body_value::kind::other;
  }
  return out;
}

bool parse_flat(std::string_view body, body_fields& out) noexcept {
  const char* p = body.data();
  const char* const end = p + body.size();
  const auto skip_ws = [&] {
    while (p != end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) ++p;
  };
  // Reads a string after its opening quote; false if it has an escape or a byte outside ASCII.
  const auto read_string = [&](std::string_view& s) {
    const char* const begin = p;
    while (p != end && *p != '"') {
      const auto c = static_cast<unsigned char>(*p);
      if (c < 0x20 || c > 0x7e || c == '\\') return false;
      ++p;
    }
    if (p == end) return false;
    s = std::string_view(begin, static_cast<std::size_t>(p - begin));
    ++p;
    return true;
  };
  skip_ws();
  if (p == end || *p != '{') return false;
  ++p;
  skip_ws();
  if (p != end && *p == '}') {
    ++p;
  } else {
    for (;;) {
      std::string_view name;
      if (p == end || *p != '"') return false;
      ++p;
      if (!read_string(name)) return false;
      body_value* v = out.find(name);
      if (v == nullptr || v->k != body_value::kind::absent) return false;
      skip_ws();
      if (p == end || *p != ':') return false;
      ++p;
      skip_ws();
      if (p == end) return false;
      if (*p == '"') {
        ++p;
        if (!read_string(v->text)) return false;
        v->k = body_value::kind::string;
      } else {
        const bool negative = *p == '-';
        if (negative) ++p;
        const char* const digits = p;
        while (p != end && *p >= '0' && *p <= '9') ++p;
        const auto count = p - digits;
        if (count == 0 || count > 18 || (*digits == '0' && count > 1)) return false;
        if (p != end && (*p == '.' || *p == 'e' || *p == 'E')) return false;
        std::int64_t n = 0;  // at most 18 digits: no overflow
        for (const char* d = digits; d != p; ++d) n = n * 10 + (*d - '0');
        v->k = body_value::kind::integer;
        v->number = negative ? -n : n;
      }
      skip_ws();
      if (p == end) return false;
      if (*p == '}') {
        ++p;
        break;
      }
      if (*p != ',') return false;
      ++p;
      skip_ws();
    }
  }
  skip_ws();
  return p == end;
}

std::optional<body_error> parse_body(std::string_view body, body_fields& out, json& dom) {
  // JSON has no raw NUL anywhere; nlohmann's lexer would take one as the end of the input and
  // accept whatever follows it unread.
  if (body.find('\0') != std::string_view::npos) {
    return body_error{"body is not valid JSON", "body"};
  }
  if (parse_flat(body, out)) return std::nullopt;
  // parse_flat may have filled some fields before it declined.
  out = body_fields{};
  dom = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (dom.is_discarded()) return body_error{"body is not valid JSON", "body"};
  if (!dom.is_object()) return body_error{"body must be a JSON object", "body"};
  for (const auto& [name, value] : dom.items()) {
    body_value* slot = out.find(name);
    if (slot == nullptr) {
      return body_error{"unknown field " + internal::quote(name) +
                            "; use key, policy or limit (+ algorithm), cost, or limits",
                        name};
    }
    *slot = from_dom(value);
  }
  return std::nullopt;
}

}  // namespace sluice::server
