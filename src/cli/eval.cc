#include "cli/eval.h"

#include <charconv>
#include <istream>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/limit.h"

namespace sluice::cli {
namespace {

std::vector<std::string_view> split(std::string_view line) {
  std::vector<std::string_view> tokens;
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    const std::size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    if (i > start) tokens.push_back(line.substr(start, i - start));
  }
  return tokens;
}

bool parse_int(std::string_view text, std::int64_t& out) {
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc() && ptr == end;
}

enum class op { acquire, peek, reset, refund };

struct line_request {
  std::string_view key;
  limit lim;
  algorithm algo = algorithm::sliding_log;
  std::int64_t cost = 1;
  op what = op::acquire;
};

std::string_view op_name(op o) {
  switch (o) {
    case op::acquire:
      return "acquire";
    case op::peek:
      return "peek";
    case op::reset:
      return "reset";
    case op::refund:
      return "refund";
  }
  return "acquire";
}

// Parses `KEY LIMIT [ALGORITHM] [COST] [peek|reset|refund]`.
result<line_request> parse_line(const std::vector<std::string_view>& tokens) {
  if (tokens.size() < 2) {
    return make_error(errc::invalid_limit,
                      "expected KEY LIMIT [ALGORITHM] [COST] [peek|reset|refund]");
  }
  line_request r;
  r.key = tokens[0];
  auto l = parse_limit(tokens[1]);
  if (!l) return fail(l.error());
  r.lim = *l;
  std::size_t i = 2;
  if (i < tokens.size()) {
    if (auto a = parse_algorithm(tokens[i])) {
      r.algo = *a;
      ++i;
    }
  }
  if (i < tokens.size() && parse_int(tokens[i], r.cost)) ++i;
  if (i < tokens.size()) {
    for (const op o : {op::peek, op::reset, op::refund}) {
      if (tokens[i] == op_name(o)) {
        r.what = o;
        ++i;
        break;
      }
    }
  }
  if (i < tokens.size()) {
    return make_error(errc::invalid_algorithm,
                      "unexpected \"" + std::string(tokens[i].substr(0, 64)) +
                          "\" (expected KEY LIMIT [ALGORITHM] [COST] [peek|reset|refund], in that "
                          "order; algorithms: sliding_log, sliding_counter, gcra)");
  }
  return r;
}

}  // namespace

nlohmann::ordered_json decision_json(const decision& d) {
  nlohmann::ordered_json j;
  j["allowed"] = d.allowed;
  j["limit"] = d.limit;
  j["remaining"] = d.remaining;
  j["retry_after_ms"] = ceil_ms(d.retry_after);
  j["reset_after_ms"] = ceil_ms(d.reset_after);
  return j;
}

void print_json_line(std::ostream& out, const nlohmann::ordered_json& j) {
  out << j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << '\n';
}

int run_eval(std::istream& in, std::ostream& out, store& s, manual_clock* clock,
             const eval_options& options) {
  int failed = 0;
  std::string line;
  for (std::int64_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const auto tokens = split(line);
    if (tokens.empty() || tokens[0].front() == '#') continue;
    if (options.echo) out << "> " << line << '\n';

    auto fail = [&](const std::string& message) {
      nlohmann::ordered_json j;
      j["line"] = number;
      j["error"] = message;
      print_json_line(out, j);
      ++failed;
    };

    if (tokens[0].front() == '@') {
      if (tokens[0] != "@advance" || tokens.size() != 2) {
        fail("unknown directive (the only one is @advance DURATION)");
      } else if (clock == nullptr) {
        fail("@advance needs --now (a manual clock)");
      } else if (auto d = parse_duration(tokens[1]); !d) {
        fail(d.error().message());
      } else {
        clock->advance(*d);
      }
      continue;
    }

    auto r = parse_line(tokens);
    if (!r) {
      fail(r.error().message());
      continue;
    }
    nlohmann::ordered_json j;
    j["key"] = std::string(r->key);
    j["op"] = op_name(r->what);
    if (r->what == op::reset) {
      if (auto ok = s.reset(r->key); !ok) {
        fail(ok.error().message());
        continue;
      }
      j["reset"] = true;
      print_json_line(out, j);
      continue;
    }
    const request q{r->key, r->lim, r->algo, r->cost, {}};
    auto d = r->what == op::peek ? s.peek(q) : r->what == op::refund ? s.refund(q) : s.acquire(q);
    if (!d) {
      fail(d.error().message());
      continue;
    }
    j.update(decision_json(*d));
    print_json_line(out, j);
  }
  return failed;
}

}  // namespace sluice::cli
