// Tests of the request handler with no socket: a request goes in, a response comes out.
// Every route, every error case (with the field it names), the RateLimit header fields'
// exact values, shadow mode, bearer tokens, and the failure modes as the API shows them.
// The memory store runs on a manual clock, so every number is exact.
#include "server/handlers.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/config.h"
#include "server/metrics.h"
#include "server/serve.h"
#include "sluice/clock.h"
#include "sluice/memory_store.h"

#include "support/fake_store.h"
#include "support/test_util.h"

namespace {

using sluice::algorithm;
using sluice::failure_mode;
using sluice::server::http_request;
using sluice::server::http_response;
using sluice::server::key_source;
using sluice::server::metrics;
using sluice::server::outcome;
using sluice::server::request_handler;
using sluice::server::route;
using sluice::server::served_policy;
using sluice::server::server_config;
using sluice::test::fake_store;
using sluice::test::fake_store_options;
using json = nlohmann::json;
using std::chrono::hours;
using std::chrono::seconds;
namespace http = boost::beast::http;

using header_list = std::vector<std::pair<std::string, std::string>>;

served_policy make_policy(const std::string& name, const std::string& limit,
                          algorithm a = algorithm::sliding_log, bool shadow = false,
                          key_source gate = {}) {
  served_policy p;
  p.policy.name = name;
  p.policy.limit = *sluice::parse_limit(limit);
  p.policy.algorithm = a;
  p.policy.shadow = shadow;
  p.gate_key = std::move(gate);
  return p;
}

// The configuration most tests use: chat 30/hour, a shadowed 1/hour, a gate keyed by a
// header and one keyed by a query parameter.
server_config base_config() {
  server_config c;
  c.max_key_bytes = 64;
  c.policies.push_back(make_policy("chat", "30/hour"));
  c.policies.push_back(make_policy("beta", "1/hour", algorithm::sliding_log, /*shadow=*/true));
  c.policies.push_back(make_policy("login", "2/1m", algorithm::gcra, false, {"X-User-Id", ""}));
  c.policies.push_back(make_policy("q", "2/1m", algorithm::sliding_counter, false, {"", "user"}));
  c.admin_open = true;  // resets without a token; Handlers.AdminCallsAreRefusedByDefault
  return c;
}

class Handlers : public ::testing::Test {
 protected:
  // Builds the handler for `c` on `s`, by default a memory store on the test's clock.
  void build(server_config c = base_config(), std::shared_ptr<sluice::store> s = nullptr) {
    config_ = std::move(c);
    if (!s) {
      sluice::memory_store_options o;
      o.time_source = &clock_;
      s = std::make_shared<sluice::memory_store>(o);
    }
    limiter_ = sluice::server::make_limiter(config_, std::move(s));
    std::vector<std::string> names;
    for (const auto& p : config_.policies) names.push_back(p.policy.name);
    metrics_ = std::make_unique<metrics>(std::move(names));
    handler_ = std::make_unique<request_handler>(config_, *limiter_, *metrics_);
  }

  static http_request make_request(http::verb method, const std::string& target,
                                   const std::string& body = {}, const header_list& headers = {}) {
    http_request req{method, target, 11};
    for (const auto& [name, value] : headers) req.set(name, value);
    req.body() = body;
    req.prepare_payload();
    return req;
  }

  http_response call(http::verb method, const std::string& target, const std::string& body = {},
                     const header_list& headers = {}) {
    if (!handler_) build();
    std::optional<http_response> got;
    int calls = 0;
    handler_->handle(make_request(method, target, body, headers), [&](http_response r) {
      ++calls;
      got = std::move(r);
    });
    EXPECT_EQ(calls, 1) << "the memory store answers before handle() returns, exactly once";
    return got ? std::move(*got) : http_response{};
  }

  http_response acquire(const std::string& body, const header_list& headers = {}) {
    return call(http::verb::post, "/v1/acquire", body, headers);
  }

  static json body_of(const http_response& r) {
    return json::parse(r.body(), nullptr, /*allow_exceptions=*/false);
  }

  // Checks a JSON error: its status, an "error" message, and the field it names ("" for
  // none).
  static void expect_error(const http_response& r, http::status status, const std::string& field) {
    EXPECT_EQ(r.result(), status) << r.body();
    EXPECT_EQ(r[http::field::content_type], "application/json");
    const json j = body_of(r);
    ASSERT_TRUE(j.is_object()) << r.body();
    EXPECT_TRUE(j.contains("error") && j["error"].is_string() && !j["error"].empty()) << r.body();
    if (field.empty()) {
      EXPECT_FALSE(j.contains("field")) << r.body();
    } else {
      EXPECT_EQ(j.value("field", ""), field) << r.body();
    }
  }

  sluice::manual_clock clock_{seconds(1'700'000'000)};
  server_config config_;
  std::unique_ptr<sluice::limiter> limiter_;
  std::unique_ptr<metrics> metrics_;
  std::unique_ptr<request_handler> handler_;
};

// Verifies POST /v1/acquire with a policy: 200, the five numbers and the policy's name.
TEST_F(Handlers, AcquireWithPolicyAnswersTheDecision) {
  const http_response r = acquire(R"({"key": "user:42", "policy": "chat"})");
  EXPECT_EQ(r.result(), http::status::ok);
  EXPECT_EQ(r[http::field::content_type], "application/json");
  EXPECT_EQ(r.body(), R"({"allowed":true,"limit":30,"remaining":29,"retry_after_ms":0,)"
                      R"("reset_after_ms":3600000,"policy":"chat"})");
  EXPECT_EQ(metrics_->decisions(metrics_->slot("chat"), outcome::allowed), 1u);
  EXPECT_EQ(metrics_->requests(route::acquire, 200), 1u);
}

// Verifies RateLimit-Policy and RateLimit on allowed and denied answers, and Retry-After
// (whole seconds, equal to t) on the denial only.
TEST_F(Handlers, RateLimitHeaderFieldsHaveExactValues) {
  http_response r = acquire(R"({"key": "u", "policy": "chat", "cost": 29})");
  EXPECT_EQ(r["RateLimit-Policy"], "\"chat\";q=30;w=3600");
  EXPECT_EQ(r["RateLimit"], "\"chat\";r=1;t=3600");
  EXPECT_EQ(r.count(http::field::retry_after), 0u);

  clock_.advance(seconds(3000));
  r = acquire(R"({"key": "u", "policy": "chat"})");  // the 30th: allowed, r=0
  EXPECT_EQ(r["RateLimit"], "\"chat\";r=0;t=3600");

  clock_.advance(seconds(588));  // the first 29 expire in 12 s
  r = acquire(R"({"key": "u", "policy": "chat"})");
  EXPECT_EQ(r.result(), http::status::ok);  // a denial is still 200 in the JSON API
  EXPECT_EQ(body_of(r)["allowed"], false);
  EXPECT_EQ(body_of(r)["retry_after_ms"], 12000);
  EXPECT_EQ(r["RateLimit-Policy"], "\"chat\";q=30;w=3600");
  EXPECT_EQ(r["RateLimit"], "\"chat\";r=0;t=13");
  EXPECT_EQ(r[http::field::retry_after], "13");
}

// Verifies POST /v1/peek: the same answer as acquire would give, and nothing spent.
TEST_F(Handlers, PeekSpendsNothing) {
  for (int i = 0; i < 3; ++i) {
    const http_response r =
        call(http::verb::post, "/v1/peek", R"({"key": "p", "policy": "chat", "cost": 2})");
    EXPECT_EQ(r.result(), http::status::ok);
    EXPECT_EQ(body_of(r)["remaining"], 30);
    EXPECT_EQ(r["RateLimit"], "\"chat\";r=30;t=0");
  }
  EXPECT_EQ(body_of(acquire(R"({"key": "p", "policy": "chat"})"))["remaining"], 29);
  EXPECT_EQ(metrics_->requests(route::peek, 200), 3u);
}

// Verifies an inline limit with an algorithm: decided like a policy, named in the fields
// and the body by its canonical form, counted as (inline).
TEST_F(Handlers, InlineLimitNamesItselfByTheLimit) {
  http_response r = acquire(R"({"key": "k", "limit": "2/1m", "algorithm": "gcra"})");
  EXPECT_EQ(r.result(), http::status::ok);
  EXPECT_EQ(r["RateLimit-Policy"], "\"2/1m\";q=2;w=60");
  EXPECT_EQ(r["RateLimit"], "\"2/1m\";r=1;t=30");
  EXPECT_EQ(body_of(r)["policy"], "2/1m");
  acquire(R"({"key": "k", "limit": "2/1m", "algorithm": "gcra"})");
  r = acquire(R"({"key": "k", "limit": "2/1m", "algorithm": "gcra"})");
  EXPECT_EQ(body_of(r)["allowed"], false);
  EXPECT_EQ(r[http::field::retry_after], "31");  // 30 s to the next emission, + 1
  EXPECT_EQ(metrics_->decisions(metrics_->inline_slot(), outcome::allowed), 2u);
  EXPECT_EQ(metrics_->decisions(metrics_->inline_slot(), outcome::denied), 1u);
}

// Verifies that an inline limit without an algorithm is the exact sliding log.
TEST_F(Handlers, InlineDefaultsToSlidingLog) {
  const http_response r = acquire(R"({"key": "k", "limit": "10 per minute", "cost": 3})");
  EXPECT_EQ(body_of(r)["remaining"], 7);
  EXPECT_EQ(body_of(r)["reset_after_ms"], 60000);
}

// Verifies a 400 naming the field for each kind of bad body.
TEST_F(Handlers, BodyErrorsNameTheField) {
  struct bad_case {
    const char* body;
    const char* field;
  };
  const bad_case cases[] = {
      {R"({"key": "u", "policy": "chat")", "body"},              // not JSON
      {R"(["key", "u"])", "body"},                               // not an object
      {"", "body"},                                              // empty
      {R"({"key": "u", "policy": "chat", "cots": 1})", "cots"},  // unknown field
      {R"({"policy": "chat"})", "key"},                          // no key
      {R"({"key": 42, "policy": "chat"})", "key"},               // not a string
      {R"({"key": "", "policy": "chat"})", "key"},               // empty key
      {R"({"key": "u", "policy": "chat", "cost": "2"})", "cost"},
      {R"({"key": "u", "policy": "chat", "cost": 1.5})", "cost"},
      {R"({"key": "u", "policy": "chat", "cost": true})", "cost"},
      {R"({"key": "u", "policy": "chat", "cost": 0})", "cost"},
      {R"({"key": "u", "policy": "chat", "cost": -3})", "cost"},
      {R"({"key": "u", "policy": "chat", "cost": 18446744073709551615})", "cost"},
      {R"({"key": "u", "policy": "chat", "cost": 31})", "cost"},  // more than the limit
      {R"({"key": "u"})", "policy"},                              // neither policy nor limit
      {R"({"key": "u", "policy": 7})", "policy"},
      {R"({"key": "u", "policy": "chat", "limit": "5/1s"})", "limit"},  // both
      {R"({"key": "u", "limit": "0/hour"})", "limit"},
      {R"({"key": "u", "limit": "30/fortnight"})", "limit"},
      {R"({"key": "u", "limit": 30})", "limit"},
      {R"({"key": "u", "limit": "5/1s", "algorithm": "leaky"})", "algorithm"},
      {R"({"key": "u", "limit": "5/1s", "algorithm": 1})", "algorithm"},
      {R"({"key": "u", "policy": "chat", "algorithm": "gcra"})", "algorithm"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.body);
    expect_error(acquire(c.body), http::status::bad_request, c.field);
  }
  EXPECT_EQ(metrics_->requests(route::acquire, 400), std::size(cases));
  EXPECT_EQ(metrics_->decisions(metrics_->slot("chat"), outcome::allowed), 0u);
}

// Verifies the key length limit (64 bytes here): 64 pass, 65 get 400 naming the key.
TEST_F(Handlers, OversizeKeyIsRefused) {
  EXPECT_EQ(acquire(R"({"key": ")" + std::string(64, 'k') + R"(", "policy": "chat"})").result(),
            http::status::ok);
  expect_error(acquire(R"({"key": ")" + std::string(65, 'k') + R"(", "policy": "chat"})"),
               http::status::bad_request, "key");
}

// Verifies 404 naming the policy for acquire, peek, gate and reset.
TEST_F(Handlers, UnknownPolicyIs404) {
  expect_error(acquire(R"({"key": "u", "policy": "nope"})"), http::status::not_found, "policy");
  expect_error(call(http::verb::post, "/v1/peek", R"({"key": "u", "policy": "nope"})"),
               http::status::not_found, "policy");
  expect_error(call(http::verb::get, "/v1/gate/nope", "", {{"X-Forwarded-For", "1.2.3.4"}}),
               http::status::not_found, "policy");
  expect_error(call(http::verb::delete_, "/v1/keys/nope/u"), http::status::not_found, "policy");
}

// Verifies 405 and the Allow field for each fixed route.
TEST_F(Handlers, WrongMethodIs405WithAllow) {
  const std::pair<const char*, const char*> cases[] = {
      {"/v1/acquire", "POST"}, {"/v1/peek", "POST"}, {"/v1/keys/chat/u", "DELETE"},
      {"/metrics", "GET"},     {"/healthz", "GET"},  {"/readyz", "GET"},
  };
  for (const auto& [target, allow] : cases) {
    SCOPED_TRACE(target);
    const http::verb wrong = std::string_view(allow) == "GET" ? http::verb::post : http::verb::get;
    const http_response r = call(wrong, target);
    expect_error(r, http::status::method_not_allowed, "");
    EXPECT_EQ(r[http::field::allow], allow);
  }
}

// Verifies 404 for paths the API does not have (a prefix is not enough).
TEST_F(Handlers, UnknownPathIs404) {
  for (const char* target : {"/", "/v1", "/v1/acquirex", "/metrics/x", "/v2/acquire"}) {
    SCOPED_TRACE(target);
    expect_error(call(http::verb::get, target), http::status::not_found, "");
  }
  EXPECT_EQ(metrics_->requests(route::other, 404), 5u);
}

// Verifies that a query string is not part of the path.
TEST_F(Handlers, QueryStringDoesNotChangeTheRoute) {
  EXPECT_EQ(call(http::verb::get, "/healthz?verbose=1").result(), http::status::ok);
}

// Verifies shadow mode: decided and counted as usual, always allowed (no Retry-After),
// the would-be denial flagged in the body and counted as shadow_denied.
TEST_F(Handlers, ShadowModeAllowsAndCountsWouldBeDenials) {
  http_response r = acquire(R"({"key": "s", "policy": "beta"})");
  EXPECT_EQ(body_of(r)["allowed"], true);
  EXPECT_FALSE(body_of(r).contains("shadow_denied"));
  r = acquire(R"({"key": "s", "policy": "beta"})");
  EXPECT_EQ(r.result(), http::status::ok);
  EXPECT_EQ(body_of(r)["allowed"], true);
  EXPECT_EQ(body_of(r)["shadow_denied"], true);
  EXPECT_EQ(body_of(r)["retry_after_ms"], 0);
  EXPECT_EQ(body_of(r)["remaining"], 0);
  EXPECT_EQ(r.count(http::field::retry_after), 0u);
  EXPECT_EQ(r["RateLimit"], "\"beta\";r=0;t=3600");

  // The gate lets it through too.
  r = call(http::verb::get, "/v1/gate/beta", "", {{"X-Forwarded-For", "s"}});
  EXPECT_EQ(r.result(), http::status::no_content);
  EXPECT_EQ(r.count(http::field::retry_after), 0u);

  const std::size_t slot = metrics_->slot("beta");
  EXPECT_EQ(metrics_->decisions(slot, outcome::allowed), 1u);
  EXPECT_EQ(metrics_->decisions(slot, outcome::shadow_denied), 2u);
  EXPECT_EQ(metrics_->decisions(slot, outcome::denied), 0u);
}

// Verifies the gate: 204 while allowed, 429 with Retry-After once the limit is spent, the
// RateLimit fields on both, the key taken from the configured header.
TEST_F(Handlers, GateAllowsThenRefusesWith429) {
  const header_list user = {{"X-User-Id", "alice"}};
  for (int i = 0; i < 2; ++i) {
    const http_response r = call(http::verb::get, "/v1/gate/login", "", user);
    EXPECT_EQ(r.result(), http::status::no_content);
    EXPECT_TRUE(r.body().empty());
    EXPECT_EQ(r["RateLimit-Policy"], "\"login\";q=2;w=60");
  }
  const http_response r = call(http::verb::get, "/v1/gate/login", "", user);
  EXPECT_EQ(r.result(), http::status::too_many_requests);
  EXPECT_EQ(r[http::field::retry_after], "31");
  EXPECT_EQ(r["RateLimit"], "\"login\";r=0;t=31");
  EXPECT_EQ(body_of(r)["allowed"], false);
  // Another user is not affected; neither is any method (auth_request passes the client's).
  EXPECT_EQ(call(http::verb::post, "/v1/gate/login", "", {{"X-User-Id", "bob"}}).result(),
            http::status::no_content);
  EXPECT_EQ(metrics_->requests(route::gate, 204), 3u);
  EXPECT_EQ(metrics_->requests(route::gate, 429), 1u);
}

// Verifies that X-Forwarded-For gives its first address, trimmed: the same key as the
// JSON API's "10.0.0.1" under the same policy.
TEST_F(Handlers, GateTakesTheFirstForwardedAddress) {
  EXPECT_EQ(call(http::verb::get, "/v1/gate/chat", "",
                 {{"X-Forwarded-For", " 10.0.0.1 , 192.168.0.1, 172.16.0.1"}})
                .result(),
            http::status::no_content);
  EXPECT_EQ(body_of(call(http::verb::post, "/v1/peek",
                         R"({"key": "10.0.0.1", "policy": "chat"})"))["remaining"],
            29);
}

// Verifies a query-parameter key, %-decoded (and `+` as a space).
TEST_F(Handlers, GateTakesTheKeyFromAQueryParameter) {
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(call(http::verb::get, "/v1/gate/q?x=1&user=al%69ce+b").result(),
              http::status::no_content);
  }
  EXPECT_EQ(call(http::verb::get, "/v1/gate/q?user=alice%20b").result(),
            http::status::too_many_requests);
}

// Verifies 400 naming the header or parameter when the request has no key.
TEST_F(Handlers, GateWithoutKeyIs400) {
  expect_error(call(http::verb::get, "/v1/gate/chat"), http::status::bad_request,
               "X-Forwarded-For");
  expect_error(call(http::verb::get, "/v1/gate/chat", "", {{"X-Forwarded-For", " , 1.2.3.4"}}),
               http::status::bad_request, "X-Forwarded-For");
  expect_error(call(http::verb::get, "/v1/gate/login", "", {{"X-Forwarded-For", "1.2.3.4"}}),
               http::status::bad_request, "X-User-Id");
  expect_error(call(http::verb::get, "/v1/gate/q?usr=x"), http::status::bad_request, "user");
  expect_error(call(http::verb::get, "/v1/gate/q?user=%zz"), http::status::bad_request, "user");
  expect_error(
      call(http::verb::get, "/v1/gate/chat", "", {{"X-Forwarded-For", std::string(65, 'a')}}),
      http::status::bad_request, "X-Forwarded-For");
}

// Verifies DELETE /v1/keys/{policy}/{key}: 204, and the key starts afresh.
TEST_F(Handlers, ResetForgetsTheKey) {
  for (int i = 0; i < 30; ++i) acquire(R"({"key": "r", "policy": "chat"})");
  EXPECT_EQ(body_of(acquire(R"({"key": "r", "policy": "chat"})"))["allowed"], false);
  const http_response r = call(http::verb::delete_, "/v1/keys/chat/r");
  EXPECT_EQ(r.result(), http::status::no_content);
  EXPECT_TRUE(r.body().empty());
  EXPECT_EQ(body_of(acquire(R"({"key": "r", "policy": "chat"})"))["remaining"], 29);
  EXPECT_EQ(metrics_->requests(route::reset, 204), 1u);
}

// Verifies that the key in the path is %-decoded, slashes included; `+` stays a plus.
TEST_F(Handlers, ResetDecodesTheKey) {
  acquire(R"({"key": "user/1 x+y", "policy": "chat"})");
  EXPECT_EQ(call(http::verb::delete_, "/v1/keys/chat/user%2F1%20x+y").result(),
            http::status::no_content);
  EXPECT_EQ(body_of(acquire(R"({"key": "user/1 x+y", "policy": "chat"})"))["remaining"], 29);
}

// Verifies 400 naming the key for a missing, empty, badly escaped or oversize key.
TEST_F(Handlers, ResetErrorsNameTheField) {
  expect_error(call(http::verb::delete_, "/v1/keys/chat"), http::status::bad_request, "key");
  expect_error(call(http::verb::delete_, "/v1/keys/chat/"), http::status::bad_request, "key");
  expect_error(call(http::verb::delete_, "/v1/keys/chat/a%2"), http::status::bad_request, "key");
  expect_error(call(http::verb::delete_, "/v1/keys/chat/" + std::string(65, 'k')),
               http::status::bad_request, "key");
}

// Verifies that a reset goes through the store's async reset, so nothing blocks on the
// store: handle() returns at once and the response comes when the store completes the
// call, later, on its own thread. Decisions are async the same way.
TEST_F(Handlers, ResetAndDecisionsAnswerWhenTheStoreCompletes) {
  auto store = std::make_shared<fake_store>(fake_store_options{.time_source = &clock_});
  build(base_config(), store);
  for (int i = 0; i < 30; ++i) acquire(R"({"key": "u", "policy": "chat"})");

  store->hold();
  int calls = 0;
  std::optional<http_response> reset;
  handler_->handle(make_request(http::verb::delete_, "/v1/keys/chat/u"), [&](http_response r) {
    ++calls;
    reset = std::move(r);
  });
  EXPECT_EQ(calls, 0) << "answered before the store completed the reset";
  std::optional<http_response> decided;
  handler_->handle(
      make_request(http::verb::post, "/v1/acquire", R"({"key": "u", "policy": "chat"})"),
      [&](http_response r) {
        ++calls;
        decided = std::move(r);
      });
  EXPECT_EQ(calls, 0) << "answered before the store completed the decision";

  std::thread io([&] { EXPECT_EQ(store->release(), 2u); });
  io.join();
  EXPECT_EQ(calls, 2);
  ASSERT_TRUE(reset);
  EXPECT_EQ(reset->result(), http::status::no_content);
  EXPECT_TRUE(reset->body().empty());
  ASSERT_TRUE(decided);
  EXPECT_EQ(body_of(*decided)["remaining"], 29);  // decided after the reset, afresh
  EXPECT_EQ(metrics_->requests(route::reset, 204), 1u);
}

// Verifies bearer tokens on the API: none or a wrong one gets 401 with WWW-Authenticate;
// a right one (any configured; the scheme in any case) or an admin token passes.
TEST_F(Handlers, ApiTokensAreRequiredWhenConfigured) {
  server_config c = base_config();
  c.api_tokens = {"tok-1", "tok-2"};
  c.admin_tokens = {"root"};
  build(c);
  const std::string body = R"({"key": "u", "policy": "chat"})";
  http_response r = acquire(body);
  expect_error(r, http::status::unauthorized, "Authorization");
  EXPECT_EQ(r[http::field::www_authenticate], "Bearer realm=\"sluice\"");
  expect_error(acquire(body, {{"Authorization", "Bearer tok-3"}}), http::status::unauthorized,
               "Authorization");
  expect_error(acquire(body, {{"Authorization", "Bearer tok-1x"}}), http::status::unauthorized,
               "Authorization");
  expect_error(acquire(body, {{"Authorization", "Basic tok-1"}}), http::status::unauthorized,
               "Authorization");
  expect_error(acquire(body, {{"Authorization", "tok-1"}}), http::status::unauthorized,
               "Authorization");
  EXPECT_EQ(acquire(body, {{"Authorization", "Bearer tok-1"}}).result(), http::status::ok);
  EXPECT_EQ(acquire(body, {{"Authorization", "bearer  tok-2"}}).result(), http::status::ok);
  EXPECT_EQ(acquire(body, {{"Authorization", "Bearer root"}}).result(), http::status::ok);
  expect_error(call(http::verb::get, "/v1/gate/chat", "", {{"X-Forwarded-For", "1.2.3.4"}}),
               http::status::unauthorized, "Authorization");
  EXPECT_EQ(call(http::verb::get, "/v1/gate/chat", "",
                 {{"X-Forwarded-For", "1.2.3.4"}, {"Authorization", "Bearer tok-2"}})
                .result(),
            http::status::no_content);
  // Unauthenticated callers learn nothing about policies.
  expect_error(acquire(R"({"key": "u", "policy": "nope"})"), http::status::unauthorized,
               "Authorization");
  // Health and metrics stay open.
  EXPECT_EQ(call(http::verb::get, "/healthz").result(), http::status::ok);
  EXPECT_EQ(call(http::verb::get, "/metrics").result(), http::status::ok);
}

// Verifies that a reset needs an admin token: an API token is not enough.
TEST_F(Handlers, ResetNeedsAnAdminToken) {
  server_config c = base_config();
  c.api_tokens = {"api"};
  c.admin_tokens = {"admin"};
  build(c);
  expect_error(call(http::verb::delete_, "/v1/keys/chat/u"), http::status::unauthorized,
               "Authorization");
  expect_error(call(http::verb::delete_, "/v1/keys/chat/u", "", {{"Authorization", "Bearer api"}}),
               http::status::unauthorized, "Authorization");
  EXPECT_EQ(call(http::verb::delete_, "/v1/keys/chat/u", "", {{"Authorization", "Bearer admin"}})
                .result(),
            http::status::no_content);
}

// Verifies that with no admin token configured a reset is refused, 403 with a JSON error that
// says how to allow it, unless admin_open is set; with an admin token admin_open changes
// nothing (a caller without the token still gets 401). API calls are not affected.
TEST_F(Handlers, AdminCallsAreRefusedByDefault) {
  server_config c = base_config();
  c.admin_open = false;
  build(c);
  http_response r = call(http::verb::delete_, "/v1/keys/chat/u");
  expect_error(r, http::status::forbidden, "Authorization");
  EXPECT_NE(body_of(r)["error"].get<std::string>().find("no admin token is configured"),
            std::string::npos)
      << r.body();
  EXPECT_NE(r.body().find("admin_open"), std::string::npos) << r.body();
  expect_error(call(http::verb::delete_, "/v1/keys/chat/u", "", {{"Authorization", "Bearer x"}}),
               http::status::forbidden, "Authorization");
  EXPECT_EQ(metrics_->requests(route::reset, 403), 2u);
  EXPECT_EQ(acquire(R"({"key": "u", "policy": "chat"})").result(), http::status::ok);

  c.admin_open = true;
  build(c);
  EXPECT_EQ(call(http::verb::delete_, "/v1/keys/chat/u").result(), http::status::no_content);

  c.admin_tokens = {"admin"};
  build(c);
  expect_error(call(http::verb::delete_, "/v1/keys/chat/u"), http::status::unauthorized,
               "Authorization");
  EXPECT_EQ(call(http::verb::delete_, "/v1/keys/chat/u", "", {{"Authorization", "Bearer admin"}})
                .result(),
            http::status::no_content);
}

// Verifies /healthz (always 200), /readyz (the store probe: 200 or 503) and /metrics (the
// text format, with the decisions made so far).
TEST_F(Handlers, HealthReadinessAndMetrics) {
  auto store = std::make_shared<fake_store>(
      fake_store_options{.uri = "redis://db:6379/0", .time_source = &clock_});
  build(base_config(), store);
  EXPECT_EQ(call(http::verb::get, "/healthz").result(), http::status::ok);
  http_response r = call(http::verb::get, "/readyz");
  EXPECT_EQ(r.result(), http::status::ok);
  EXPECT_EQ(body_of(r)["status"], "ready");
  EXPECT_EQ(body_of(r)["store"], "redis://db:6379/0");
  EXPECT_FALSE(body_of(r).contains("detail"));
  store->set_health({false, "not connected: connection refused"});
  r = call(http::verb::get, "/readyz");
  EXPECT_EQ(r.result(), http::status::service_unavailable);
  EXPECT_EQ(body_of(r)["status"], "store unreachable");
  EXPECT_EQ(body_of(r)["detail"], "not connected: connection refused");

  acquire(R"({"key": "m", "policy": "chat"})");
  r = call(http::verb::get, "/metrics");
  EXPECT_EQ(r.result(), http::status::ok);
  EXPECT_EQ(r[http::field::content_type], "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_NE(r.body().find("\nsluice_decisions_total{policy=\"chat\",outcome=\"allowed\"} 1\n"),
            std::string::npos);
  EXPECT_NE(r.body().find("\nsluice_http_requests_total{route=\"/readyz\",code=\"503\"} 1\n"),
            std::string::npos);
  // The store's own metrics follow (here the memory store's, which holds one key).
  EXPECT_NE(r.body().find("\nsluice_memory_keys 1\n"), std::string::npos) << r.body();
}

// Verifies the failure modes through the API: allow answers allowed, deny answers denied
// with Retry-After (429 at the gate), each body naming the mode that decided, both counted
// as fallbacks in the metrics.
TEST_F(Handlers, StoreDownFallsBackByPolicy) {
  server_config c;
  c.policies.push_back(make_policy("open", "5/1m"));
  c.policies.push_back(make_policy("shut", "5/1m"));
  c.policies.back().policy.on_failure = failure_mode::deny;
  c.admin_open = true;
  auto down = std::make_shared<fake_store>(fake_store_options{.uri = "redis://down:6379/0"});
  down->fail(sluice::errc::store_unavailable, "connection refused");
  build(c, down);
  http_response r = acquire(R"({"key": "u", "policy": "open"})");
  EXPECT_EQ(r.result(), http::status::ok);
  EXPECT_EQ(body_of(r)["allowed"], true);
  EXPECT_EQ(body_of(r)["remaining"], 5);
  EXPECT_EQ(body_of(r)["fallback"], "allow");
  r = acquire(R"({"key": "u", "policy": "shut"})");
  EXPECT_EQ(body_of(r)["allowed"], false);
  EXPECT_EQ(body_of(r)["fallback"], "deny");
  EXPECT_TRUE(r.count(http::field::retry_after));
  EXPECT_EQ(call(http::verb::get, "/v1/gate/shut", "", {{"X-Forwarded-For", "u"}}).result(),
            http::status::too_many_requests);
  // A reset cannot fall back: the store's error is a 503.
  expect_error(call(http::verb::delete_, "/v1/keys/open/u"), http::status::service_unavailable, "");
  const std::string text = call(http::verb::get, "/metrics").body();
  EXPECT_NE(text.find("\nsluice_fallbacks_total{mode=\"allow\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("\nsluice_fallbacks_total{mode=\"deny\"} 2\n"), std::string::npos);
  // Three decisions and the reset.
  EXPECT_NE(text.find("\nsluice_store_errors_total 4\n"), std::string::npos) << text;
}

// Verifies that a deny_cache policy's repeated denials are answered like the store's (a
// denial with Retry-After, no "fallback"), that a reset through the server clears them, and
// that /metrics counts the hits per policy and the keys held.
TEST_F(Handlers, DenyCacheAnswersLikeTheStoreAndShowsInMetrics) {
  server_config c = base_config();
  c.policies.push_back(make_policy("hot", "1/1h"));
  c.policies.back().policy.deny_cache = true;
  build(c);
  EXPECT_EQ(body_of(acquire(R"({"key": "u", "policy": "hot"})"))["allowed"], true);
  for (int i = 0; i < 4; ++i) {
    const http_response r = acquire(R"({"key": "u", "policy": "hot"})");
    const json j = body_of(r);
    EXPECT_EQ(j["allowed"], false);
    EXPECT_EQ(j["remaining"], 0);
    EXPECT_GT(j["retry_after_ms"].get<std::int64_t>(), 3'500'000);
    EXPECT_FALSE(j.contains("fallback")) << r.body();
    EXPECT_TRUE(r.count(http::field::retry_after));
  }
  EXPECT_EQ(limiter_->deny_cache_hits("hot"), 3u);
  std::string text = call(http::verb::get, "/metrics").body();
  EXPECT_NE(text.find("\nsluice_deny_cache_hits_total{policy=\"hot\"} 3\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("\nsluice_deny_cache_keys 1\n"), std::string::npos);
  EXPECT_NE(text.find("\nsluice_decisions_total{policy=\"hot\",outcome=\"denied\"} 4\n"),
            std::string::npos);
  EXPECT_EQ(call(http::verb::delete_, "/v1/keys/hot/u").result(), http::status::no_content);
  EXPECT_EQ(body_of(acquire(R"({"key": "u", "policy": "hot"})"))["allowed"], true);
  text = call(http::verb::get, "/metrics").body();
  EXPECT_NE(text.find("\nsluice_deny_cache_keys 0\n"), std::string::npos);
}

// Verifies that a handler refuses a configuration whose policies the limiter lacks, and
// make_limiter refuses a bad policy name.
// Verifies POST /v1/acquire with "limits": admitted while every limit admits, then denied
// as a whole with the denying limit named, the longest Retry-After, one RateLimit item per
// limit, and the other limits not charged.
TEST_F(Handlers, SeveralLimitsAreAllOrNothing) {
  server_config c = base_config();
  c.policies.push_back(make_policy("user", "2/1m"));
  c.policies.push_back(make_policy("ip", "3/1m"));
  build(c);
  const std::string body =
      R"({"limits":[{"policy":"user","key":"u1"},{"policy":"ip","key":"10.0.0.1"},)"
      R"({"limit":"10/1h","key":"u1","algorithm":"gcra","cost":0}]})";
  for (int i = 0; i < 2; ++i) {
    const http_response r = acquire(body);
    ASSERT_EQ(r.result(), http::status::ok) << r.body();
    const json j = body_of(r);
    EXPECT_EQ(j["allowed"], true);
    EXPECT_EQ(j["denied"], json::array());
    ASSERT_EQ(j["limits"].size(), 3u);
    EXPECT_EQ(j["limits"][0]["remaining"], 1 - i);
    EXPECT_EQ(j["limits"][2]["remaining"], 10);  // cost 0: checked, not spent
    EXPECT_EQ(r["RateLimit-Policy"], R"("user";q=2;w=60, "ip";q=3;w=60, "10/1h";q=10;w=3600)");
    EXPECT_EQ(r.count(http::field::retry_after), 0u);
  }
  const http_response denied = acquire(body);
  ASSERT_EQ(denied.result(), http::status::ok);
  const json j = body_of(denied);
  EXPECT_EQ(j["allowed"], false);
  EXPECT_EQ(j["denied"], json::array({0}));
  EXPECT_EQ(j["retry_after_ms"], 60000);
  EXPECT_EQ(j["limits"][1]["allowed"], true);
  EXPECT_EQ(denied[http::field::retry_after], "61");  // floor(60 s) + 1, as for one limit
  EXPECT_EQ(denied["RateLimit"], R"("user";r=0;t=61, "ip";r=1;t=60, "10/1h";r=10;t=0)");
  // The IP limit was charged twice, not three times.
  const json ip =
      body_of(call(http::verb::post, "/v1/peek", R"({"policy":"ip","key":"10.0.0.1"})"));
  EXPECT_EQ(ip["remaining"], 1);
}

// Verifies the errors of a "limits" body, each naming its field.
TEST_F(Handlers, SeveralLimitsErrorsNameTheField) {
  expect_error(acquire(R"({"limits":[]})"), http::status::bad_request, "limits");
  expect_error(acquire(R"({"limits":3})"), http::status::bad_request, "limits");
  expect_error(acquire(R"({"limits":"chat"})"), http::status::bad_request, "limits");
  expect_error(acquire(R"({"limits":null})"), http::status::bad_request, "limits");
  expect_error(acquire(R"({"limits":{"policy":"chat"}})"), http::status::bad_request, "limits");
  expect_error(acquire(R"({"limits":[{"policy":"chat","key":"k"}],"key":"k"})"),
               http::status::bad_request, "key");
  expect_error(acquire(R"({"limits":[{"policy":"chat","key":"k"},3]})"), http::status::bad_request,
               "limits[1]");
  expect_error(acquire(R"({"limits":[{"policy":"chat","key":"k","colour":1}]})"),
               http::status::bad_request, "limits[0].colour");
  expect_error(acquire(R"({"limits":[{"policy":"chat","key":""}]})"), http::status::bad_request,
               "limits[0].key");
  expect_error(acquire(R"({"limits":[{"policy":"nope","key":"k"}]})"), http::status::not_found,
               "limits[0].policy");
  expect_error(acquire(R"({"limits":[{"policy":"chat","key":"k","cost":-1}]})"),
               http::status::bad_request, "limits[0].cost");
  expect_error(acquire(R"({"limits":[{"policy":"chat","key":"k","cost":20},)"
                       R"({"policy":"chat","key":"k","cost":20}]})"),
               http::status::bad_request, "cost");
  expect_error(call(http::verb::post, "/v1/peek", R"({"limits":[{"policy":"chat","key":"k"}]})"),
               http::status::bad_request, "limits");
  std::string many = R"({"limits":[)";
  for (int i = 0; i < 65; ++i) many += std::string(i ? "," : "") + R"({"policy":"chat","key":"k"})";
  expect_error(acquire(many + "]}"), http::status::bad_request, "limits");
  // Nothing was charged by any of them.
  EXPECT_EQ(
      body_of(call(http::verb::post, "/v1/peek", R"({"policy":"chat","key":"k"})"))["remaining"],
      30);
}

// Verifies POST /v1/refund: units come back, never past the full limit, and errors as for
// acquire.
TEST_F(Handlers, RefundGivesBackUnits) {
  ASSERT_EQ(body_of(acquire(R"({"policy":"chat","key":"u","cost":20})"))["remaining"], 10);
  const http_response r =
      call(http::verb::post, "/v1/refund", R"({"policy":"chat","key":"u","cost":15})");
  ASSERT_EQ(r.result(), http::status::ok) << r.body();
  EXPECT_EQ(body_of(r)["remaining"], 25);
  EXPECT_EQ(body_of(call(http::verb::post, "/v1/refund",
                         R"({"policy":"chat","key":"u","cost":99})"))["remaining"],
            30);
  expect_error(call(http::verb::post, "/v1/refund", R"({"policy":"chat","key":"u","cost":0})"),
               http::status::bad_request, "cost");
  expect_error(call(http::verb::get, "/v1/refund"), http::status::method_not_allowed, "");
  EXPECT_NE(metrics_->render(limiter_->stats()).find("route=\"/v1/refund\""), std::string::npos);
}

TEST_F(Handlers, PoliciesMustBeRegistered) {
  server_config c = base_config();
  sluice::limiter lim(std::make_shared<sluice::memory_store>());
  metrics m({});
  EXPECT_THROW({ request_handler h(c, lim, m); }, std::invalid_argument);
  c.policies.push_back(make_policy("bad name!", "1/1s"));
  EXPECT_THROW(sluice::server::make_limiter(c, std::make_shared<sluice::memory_store>()),
               std::runtime_error);
}

// Verifies the JSON error shape, and that bytes that are not UTF-8 cannot break it.
TEST(ErrorResponse, ShapeOfTheBody) {
  http_response r =
      sluice::server::error_response(http::status::bad_request, "bad \xff key", "key");
  EXPECT_EQ(r.result(), http::status::bad_request);
  const json j = json::parse(r.body());
  EXPECT_EQ(j["field"], "key");
  EXPECT_TRUE(j["error"].is_string());
  r = sluice::server::error_response(http::status::not_found, "nothing here");
  EXPECT_EQ(r.body(), R"({"error":"nothing here"})");
}

}  // namespace
