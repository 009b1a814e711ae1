#include "server/handlers.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/text.h"
#include "server/auth.h"
#include "server/body.h"
#include "server/headers.h"

namespace sluice::server {
namespace {

using internal::iequals;
using internal::percent_decode;
using internal::quote;
using internal::trim;
using json = nlohmann::json;
using std::chrono::microseconds;

constexpr std::string_view kJson = "application/json";

// Returns the %-decoded value of the first parameter `name` in `query`, if there is one.
std::optional<std::string> query_parameter(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    const std::size_t eq = pair.find('=');
    const auto key = percent_decode(pair.substr(0, eq), true);
    if (!key || *key != name) continue;
    if (eq == std::string_view::npos) return std::string();
    return percent_decode(pair.substr(eq + 1), true);
  }
  return std::nullopt;
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

http_response json_response(http::status status, std::string body) {
  http_response res{status, 11};
  res.set(http::field::content_type, kJson);
  res.body() = std::move(body);
  return res;
}

http_response method_not_allowed(std::string_view allow) {
  http_response res = error_response(http::status::method_not_allowed,
                                     "method not allowed; use " + std::string(allow));
  res.set(http::field::allow, allow);
  return res;
}

http_response unauthorized() {
  http_response res =
      error_response(http::status::unauthorized, "missing or wrong bearer token", "Authorization");
  res.set(http::field::www_authenticate, "Bearer realm=\"sluice\"");
  return res;
}

// Returns the response for a failed decision or reset; `key_field` names where the key came
// from (the JSON field, a header or a query parameter).
http_response from_error(const error& e, std::string_view key_field) {
  if (e.code.category() == sluice_category()) {
    switch (static_cast<errc>(e.code.value())) {
      case errc::invalid_key:
        return error_response(http::status::bad_request, e.message(), key_field);
      case errc::invalid_cost:
      case errc::cost_exceeds_limit:
        return error_response(http::status::bad_request, e.message(), "cost");
      case errc::invalid_limit:
        return error_response(http::status::bad_request, e.message(), "limit");
      case errc::invalid_algorithm:
        return error_response(http::status::bad_request, e.message(), "algorithm");
      case errc::unknown_policy:
        return error_response(http::status::not_found, e.message(), "policy");
      case errc::store_full:
      case errc::store_unavailable:
      case errc::timeout:
      case errc::store_error:
        return error_response(http::status::service_unavailable, e.message());
      default:
        break;
    }
  }
  return error_response(http::status::internal_server_error, e.message());
}

// Returns `{"allowed", "limit", "remaining", "retry_after_ms", "reset_after_ms", "policy"}`,
// with `"shadow_denied": true` when a shadow policy denied and the answer says allowed, and
// `"fallback": "allow"|"deny"|"local"` when the store failed and that failure mode decided.
std::string decision_body(const decision& d, std::string_view json_name, bool shadow_denied) {
  std::string out;
  out.reserve(128 + json_name.size());
  const auto number = [&out](std::string_view name, std::int64_t n) {
    out += name;
    char text[20];
    out.append(text,
               static_cast<std::size_t>(std::to_chars(text, text + sizeof text, n).ptr - text));
  };
  out += d.allowed ? std::string_view("{\"allowed\":true") : std::string_view("{\"allowed\":false");
  number(",\"limit\":", d.limit);
  number(",\"remaining\":", d.remaining);
  number(",\"retry_after_ms\":", ceil_ms(d.retry_after));
  number(",\"reset_after_ms\":", ceil_ms(d.reset_after));
  out += ",\"policy\":";
  out += json_name;
  if (shadow_denied) out += ",\"shadow_denied\":true";
  if (const std::optional<failure_mode> mode = fallback_of(d.source)) {
    out += ",\"fallback\":\"";
    out += to_string(*mode);
    out += '"';
  }
  out += '}';
  return out;
}

}  // namespace

http_response error_response(http::status status, std::string_view message,
                             std::string_view field) {
  nlohmann::ordered_json j;
  j["error"] = message;
  if (!field.empty()) j["field"] = field;
  return json_response(status, dump(j));
}

// A configured policy, with what its responses repeat.
struct request_handler::served {
  const policy* p = nullptr;  // registered in the limiter: stays put
  key_source gate_key;
  std::size_t slot = 0;      // in the metrics
  std::string json_name;     // the name as a JSON string
  std::string sf_name;       // and as a structured-field String
  std::string policy_field;  // RateLimit-Policy
};

// An inline limit: a policy of its own for one request, kept until the decision is made.
struct inline_policy {
  policy p;
  std::string name;  // the limit's canonical form, naming it in the header fields
  std::string json_name;
  std::string sf_name;
  std::string policy_field;
};

struct request_handler::decision_call {
  const served* named = nullptr;            // either a configured policy
  std::shared_ptr<const inline_policy> in;  // or an inline limit
  std::string_view key;                     // borrowed for the call
  std::int64_t cost = 1;
  std::string_view key_field = "key";  // where the key came from, for errors
};

class request_handler::reply {
 public:
  reply(metrics& m, route r, respond done)
      : metrics_(&m), route_(r), start_(std::chrono::steady_clock::now()), done_(std::move(done)) {}

  void operator()(http_response&& res) {
    metrics_->count_request(route_, res.result_int(), std::chrono::steady_clock::now() - start_);
    done_(std::move(res));
  }

 private:
  metrics* metrics_;
  route route_;
  std::chrono::steady_clock::time_point start_;
  respond done_;
};

request_handler::request_handler(const server_config& config, limiter& lim, metrics& m)
    : limiter_(lim),
      metrics_(m),
      max_key_bytes_(config.max_key_bytes),
      admin_open_(config.admin_open) {
  for (const auto& t : config.api_tokens) api_digests_.push_back(sha256(t));
  for (const auto& t : config.admin_tokens) admin_digests_.push_back(sha256(t));
  for (const served_policy& sp : config.policies) {
    auto s = std::make_unique<served>();
    s->p = lim.find_policy(sp.policy.name);
    if (s->p == nullptr) {
      throw std::invalid_argument("policy " + quote(sp.policy.name) +
                                  " is not registered in the limiter");
    }
    s->gate_key = sp.gate_key;
    s->slot = m.slot(sp.policy.name);
    s->json_name = dump(json(sp.policy.name));
    s->sf_name = sf_string(sp.policy.name);
    s->policy_field = ratelimit_policy_field(sp.policy.name, s->p->limit);
    policies_.emplace(sp.policy.name, std::move(s));
  }
}

request_handler::~request_handler() = default;

const request_handler::served* request_handler::find(std::string_view name) const noexcept {
  const auto it = policies_.find(name);
  return it == policies_.end() ? nullptr : it->second.get();
}

bool request_handler::authorized(const http_request& req, bool admin) const {
  const auto& allowed = admin ? admin_digests_ : api_digests_;
  if (allowed.empty()) return true;
  const auto it = req.find(http::field::authorization);
  if (it == req.end()) return false;
  const auto token = bearer_token(it->value());
  if (!token) return false;
  const token_digest presented = sha256(*token);
  // An admin token is good for the API routes too; `|=` compares both lists, whichever matches.
  bool match = matches_any(presented, allowed);
  if (!admin) match |= matches_any(presented, admin_digests_);
  return match;
}

void request_handler::handle(http_request req, respond done) const {
  const std::string_view target = req.target();
  const std::string_view path = target.substr(0, target.find('?'));
  const http::verb method = req.method();

  if (path == "/v1/acquire" || path == "/v1/peek" || path == "/v1/refund") {
    const op what = path == "/v1/acquire" ? op::acquire
                    : path == "/v1/peek"  ? op::peek
                                          : op::refund;
    reply r(metrics_,
            what == op::acquire ? route::acquire
            : what == op::peek  ? route::peek
                                : route::refund,
            std::move(done));
    if (method != http::verb::post) return r(method_not_allowed("POST"));
    if (!authorized(req, false)) return r(unauthorized());
    return decide(req, what, std::move(r));
  }
  constexpr std::string_view kGate = "/v1/gate/";
  if (path.starts_with(kGate)) {
    // Any method: nginx auth_request and Envoy ext_authz pass on the client's.
    reply r(metrics_, route::gate, std::move(done));
    if (!authorized(req, false)) return r(unauthorized());
    return gate(req, path.substr(kGate.size()), std::move(r));
  }
  constexpr std::string_view kKeys = "/v1/keys/";
  if (path.starts_with(kKeys)) {
    reply r(metrics_, route::reset, std::move(done));
    if (method != http::verb::delete_) return r(method_not_allowed("DELETE"));
    if (admin_digests_.empty() && !admin_open_) {
      return r(error_response(http::status::forbidden,
                              "admin calls are off: no admin token is configured (set "
                              "auth.admin_tokens, or auth.admin_open: true to let anyone reset)",
                              "Authorization"));
    }
    if (!authorized(req, true)) return r(unauthorized());
    return reset(path.substr(kKeys.size()), std::move(r));
  }
  if (path == "/metrics") {
    reply r(metrics_, route::metrics, std::move(done));
    if (method != http::verb::get) return r(method_not_allowed("GET"));
    http_response res{http::status::ok, 11};
    res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    res.body() = metrics_.render(limiter_.stats());
    render_deny_cache_metrics(res.body(), limiter_, metrics_.policies());
    render_store_metrics(res.body(), limiter_.store());
    render_rls_metrics(res.body(), metrics_.rls());
    render_process_metrics(res.body());
    return r(std::move(res));
  }
  if (path == "/healthz") {
    reply r(metrics_, route::healthz, std::move(done));
    if (method != http::verb::get) return r(method_not_allowed("GET"));
    return r(json_response(http::status::ok, R"({"status":"ok"})"));
  }
  if (path == "/readyz") {
    reply r(metrics_, route::readyz, std::move(done));
    if (method != http::verb::get) return r(method_not_allowed("GET"));
    const store_health health = limiter_.store().health();
    const bool ready = health.ready;
    nlohmann::ordered_json j;
    j["status"] = ready ? "ready" : "store unreachable";
    j["store"] = limiter_.store().describe();
    if (!health.detail.empty()) j["detail"] = health.detail;
    return r(json_response(ready ? http::status::ok : http::status::service_unavailable, dump(j)));
  }
  reply r(metrics_, route::other, std::move(done));
  r(error_response(http::status::not_found, "no such route: " + quote(path)));
}

void request_handler::decide(const http_request& req, op what, reply r) const {
  body_fields f;
  json dom;  // only when the body is outside what parse_flat reads; `f` points into it
  if (const auto e = parse_body(req.body(), f, dom)) {
    return r(error_response(http::status::bad_request, e->message, e->field));
  }
  if (f.limits.k != body_value::kind::absent) {
    if (what != op::acquire) {
      return r(error_response(http::status::bad_request,
                              "limits (several limits at once) is for /v1/acquire only", "limits"));
    }
    for (const char* single : {"key", "policy", "limit", "algorithm", "cost"}) {
      if (f.find(single)->k != body_value::kind::absent) {
        return r(error_response(
            http::status::bad_request,
            std::string("give either limits or a single limit, not ") + single + " besides",
            single));
      }
    }
    // A string or an integer is read by parse_flat, which leaves no DOM; anything else is
    // in `dom`.
    const auto it = dom.is_object() ? dom.find("limits") : dom.end();
    if (f.limits.k != body_value::kind::other || it == dom.end()) {
      return r(
          error_response(http::status::bad_request, "limits must be an array of limits", "limits"));
    }
    return decide_all(*it, std::move(r));
  }
  decision_call call;
  if (auto bad = read_call(f, call, 1, "")) return r(std::move(*bad));
  run_decision(call, what, /*gate=*/false, std::move(r));
}

std::optional<http_response> request_handler::read_call(const body_fields& f, decision_call& call,
                                                        std::int64_t min_cost,
                                                        const std::string& where) const {
  const auto bad = [&](std::string message, std::string_view field) {
    return error_response(http::status::bad_request, where + message, where + std::string(field));
  };
  using kind = body_value::kind;

  if (f.key.k == kind::absent) return bad("key is required", "key");
  if (f.key.k != kind::string) return bad("key must be a string", "key");
  call.key = f.key.text;
  if (call.key.empty()) return bad("key must not be empty", "key");
  if (call.key.size() > max_key_bytes_) {
    return bad("key is " + std::to_string(call.key.size()) + " bytes; at most " +
                   std::to_string(max_key_bytes_) + " are allowed",
               "key");
  }

  if (f.cost.k != kind::absent) {
    if (f.cost.k == kind::too_large) return bad("cost is too large", "cost");
    if (f.cost.k != kind::integer) return bad("cost must be an integer", "cost");
    call.cost = f.cost.number;
    if (call.cost < min_cost) {
      return bad("cost must be at least " + std::to_string(min_cost), "cost");
    }
  }

  if (f.policy.k != kind::absent && f.limit.k != kind::absent) {
    return bad("give either a policy or an inline limit, not both", "limit");
  }
  if (f.policy.k != kind::absent) {
    if (f.policy.k != kind::string) return bad("policy must be a string", "policy");
    const std::string_view name = f.policy.text;
    call.named = find(name);
    if (call.named == nullptr) {
      return error_response(http::status::not_found, where + "no policy named " + quote(name),
                            where + "policy");
    }
    if (f.algorithm.k != kind::absent) {
      return bad("algorithm goes with an inline limit; policy " + quote(name) + " has its own",
                 "algorithm");
    }
  } else if (f.limit.k != kind::absent) {
    if (f.limit.k != kind::string)
      return bad("limit must be a string such as \"30/hour\"", "limit");
    const auto l = parse_limit(f.limit.text);
    if (!l) return bad(l.error().message(), "limit");
    auto in = std::make_shared<inline_policy>();
    in->p.limit = *l;
    if (f.algorithm.k != kind::absent) {
      if (f.algorithm.k != kind::string) return bad("algorithm must be a string", "algorithm");
      const auto a = parse_algorithm(f.algorithm.text);
      if (!a) return bad(a.error().message(), "algorithm");
      in->p.algorithm = *a;
    }
    in->name = to_string(*l);
    in->json_name = '"' + in->name + '"';  // a canonical limit needs no escaping
    in->sf_name = sf_string(in->name);
    in->policy_field = ratelimit_policy_field(in->name, *l);
    call.in = std::move(in);
  } else {
    return bad("policy (or an inline limit) is required", "policy");
  }
  return std::nullopt;
}

void request_handler::decide_all(const json& limits, reply r) const {
  if (!limits.is_array() || limits.empty() || limits.size() > max_requests_per_call) {
    return r(error_response(
        http::status::bad_request,
        "limits must be an array of 1 to " + std::to_string(max_requests_per_call) + " limits",
        "limits"));
  }
  std::vector<decision_call> calls(limits.size());
  for (std::size_t i = 0; i < limits.size(); ++i) {
    const std::string where = "limits[" + std::to_string(i) + "].";
    const json& item = limits[i];
    if (!item.is_object()) {
      return r(error_response(http::status::bad_request, where + " must be an object",
                              "limits[" + std::to_string(i) + "]"));
    }
    body_fields f;
    for (const auto& [name, value] : item.items()) {
      body_value* slot = f.find(name);
      if (slot == nullptr || slot == &f.limits) {
        return r(error_response(http::status::bad_request,
                                where + "unknown field " + quote(name) +
                                    "; use key, policy or limit (+ algorithm), cost",
                                where + name));
      }
      *slot = from_dom(value);
    }
    if (auto bad = read_call(f, calls[i], 0, where)) return r(std::move(*bad));
  }
  std::vector<spend> items;
  items.reserve(calls.size());
  for (const decision_call& c : calls) {
    items.push_back({c.named != nullptr ? c.named->p : &c.in->p, c.key, c.cost});
  }
  // The completion keeps the inline policies alive; the limiter copies the keys.
  std::vector<std::shared_ptr<const inline_policy>> inline_policies;
  std::vector<const served*> named;
  for (const decision_call& c : calls) {
    inline_policies.push_back(c.in);
    named.push_back(c.named);
  }
  limiter_.async_acquire_all(
      items, [this, inline_policies = std::move(inline_policies), named = std::move(named),
              r = std::move(r)](result<std::vector<decision>> got) mutable {
        if (!got) return r(from_error(got.error(), "limits"));
        const std::vector<decision>& ds = *got;
        bool all = true;
        for (const decision& d : ds) all = all && d.allowed;
        std::string policies, fields, body = "[";
        std::vector<std::size_t> denied;
        std::int64_t wait = 0;  // the longest Retry-After of the limits that denied
        microseconds longest{0};
        for (std::size_t i = 0; i < ds.size(); ++i) {
          const decision& d = ds[i];
          const served* s = named[i];
          const inline_policy* in = inline_policies[i].get();
          const std::string_view name = s != nullptr ? std::string_view(s->p->name) : in->name;
          outcome o = all ? outcome::allowed : outcome::denied;
          if (d.source == decision_source::shadow) o = outcome::shadow_denied;
          metrics_.count_decision(s != nullptr ? s->slot : metrics_.inline_slot(), o);
          if (i > 0) {
            policies += ", ";
            fields += ", ";
            body += ',';
          }
          policies += s != nullptr ? s->policy_field : in->policy_field;
          fields += ratelimit_field(name, d);
          body += decision_body(d, s != nullptr ? s->json_name : in->json_name,
                                d.source == decision_source::shadow);
          if (!d.allowed) {
            denied.push_back(i);
            wait = std::max(wait, retry_after_field(d));
            longest = std::max(longest, d.retry_after);
          }
        }
        body += ']';
        std::string out = all ? "{\"allowed\":true" : "{\"allowed\":false";
        out += ",\"retry_after_ms\":" + std::to_string(ceil_ms(longest)) + ",\"denied\":[";
        for (std::size_t k = 0; k < denied.size(); ++k) {
          if (k > 0) out += ',';
          out += std::to_string(denied[k]);
        }
        out += "],\"limits\":" + body + '}';
        http_response res{http::status::ok, 11};
        res.set("RateLimit-Policy", policies);
        res.set("RateLimit", fields);
        if (!all) res.set(http::field::retry_after, std::to_string(wait));
        res.set(http::field::content_type, kJson);
        res.body() = std::move(out);
        r(std::move(res));
      });
}

void request_handler::gate(const http_request& req, std::string_view rest, reply r) const {
  const auto name = percent_decode(rest, false);
  const served* s = name ? find(*name) : nullptr;
  if (s == nullptr) {
    return r(error_response(http::status::not_found,
                            "no policy named " + quote(name ? *name : std::string(rest)),
                            "policy"));
  }
  const key_source& from = s->gate_key;
  std::string_view key;
  std::string_view key_field;
  std::optional<std::string> decoded;  // a query parameter's value, which `key` points into
  if (!from.header.empty()) {
    if (const auto it = req.find(from.header); it != req.end()) {
      key = it->value();
      if (iequals(from.header, "X-Forwarded-For")) key = key.substr(0, key.find(','));
      key = trim(key);
      key_field = from.header;
    }
  }
  if (key.empty() && !from.query.empty()) {
    const std::string_view target = req.target();
    const std::size_t q = target.find('?');
    if (q != std::string_view::npos) {
      decoded = query_parameter(target.substr(q + 1), from.query);
      if (decoded) key = *decoded;
    }
    key_field = from.query;
  }
  if (key.empty()) {
    std::string where;
    if (!from.header.empty()) where = "header " + from.header;
    if (!from.query.empty())
      where += (where.empty() ? "" : " or ") + ("query parameter " + from.query);
    return r(error_response(http::status::bad_request,
                            "no key: the request has no " + (where.empty() ? "key" : where),
                            from.header.empty() ? from.query : from.header));
  }
  if (key.size() > max_key_bytes_) {
    return r(error_response(http::status::bad_request,
                            "key is " + std::to_string(key.size()) + " bytes; at most " +
                                std::to_string(max_key_bytes_) + " are allowed",
                            key_field));
  }
  decision_call call;
  call.named = s;
  call.key = key;
  call.key_field = key_field;
  run_decision(call, op::acquire, /*gate=*/true, std::move(r));
}

void request_handler::run_decision(const decision_call& call, op what, bool gate, reply r) const {
  auto complete = [this, named = call.named, in = call.in, gate,
                   key_field = call.key_field,  // "key", or a name in the configuration
                   r = std::move(r)](result<decision> got) mutable {
    if (!got) return r(from_error(got.error(), key_field));
    const std::string_view name = named != nullptr ? std::string_view(named->p->name) : in->name;
    const decision& shown = *got;
    outcome o = shown.allowed ? outcome::allowed : outcome::denied;
    if (shown.source == decision_source::shadow) o = outcome::shadow_denied;
    metrics_.count_decision(named != nullptr ? named->slot : metrics_.inline_slot(), o);

    http::status status = http::status::ok;
    if (gate) status = shown.allowed ? http::status::no_content : http::status::too_many_requests;
    http_response res{status, 11};
    res.set("RateLimit-Policy", named != nullptr ? named->policy_field : in->policy_field);
    char text[256];
    const std::string_view sf_name = named != nullptr ? named->sf_name : in->sf_name;
    if (const char* end = write_ratelimit_field(text, text + sizeof text, sf_name, shown)) {
      res.set("RateLimit", std::string_view(text, static_cast<std::size_t>(end - text)));
    } else {
      res.set("RateLimit", ratelimit_field(name, shown));
    }
    if (!shown.allowed) res.set(http::field::retry_after, std::to_string(retry_after_field(shown)));
    if (status != http::status::no_content) {
      res.set(http::field::content_type, kJson);
      res.body() = decision_body(shown, named != nullptr ? named->json_name : in->json_name,
                                 o == outcome::shadow_denied);
    }
    r(std::move(res));
  };
  const policy& p = call.named != nullptr ? *call.named->p : call.in->p;
  switch (what) {
    case op::acquire:
      return limiter_.async_acquire(p, call.key, call.cost, std::move(complete));
    case op::peek:
      return limiter_.async_peek(p, call.key, call.cost, std::move(complete));
    case op::refund:
      return limiter_.async_refund(p, call.key, call.cost, std::move(complete));
  }
}

void request_handler::reset(std::string_view rest, reply r) const {
  const std::size_t slash = rest.find('/');
  const auto name = percent_decode(rest.substr(0, slash), false);
  const served* s = name ? find(*name) : nullptr;
  if (s == nullptr) {
    return r(error_response(http::status::not_found,
                            "no policy named " + quote(name ? *name : std::string(rest)),
                            "policy"));
  }
  if (slash == std::string_view::npos) {
    return r(error_response(http::status::bad_request,
                            "key is missing: use /v1/keys/{policy}/{key}", "key"));
  }
  auto key = percent_decode(rest.substr(slash + 1), false);
  if (!key) return r(error_response(http::status::bad_request, "key has a bad %-escape", "key"));
  if (key->empty())
    return r(error_response(http::status::bad_request, "key must not be empty", "key"));
  if (key->size() > max_key_bytes_) {
    return r(error_response(http::status::bad_request,
                            "key is " + std::to_string(key->size()) + " bytes; at most " +
                                std::to_string(max_key_bytes_) + " are allowed",
                            "key"));
  }
  limiter_.async_reset(*s->p, *key, [r = std::move(r)](result<void> done) mutable {
    r(done ? http_response{http::status::no_content, 11} : from_error(done.error(), "key"));
  });
}

}  // namespace sluice::server
