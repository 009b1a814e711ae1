#include "server/config.h"
#include "server/envoy_config.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

namespace sluice::server {
namespace {

using namespace std::chrono_literals;

// Returns the configuration in `yaml`, failing the test when it does not parse.
server_config good(std::string_view yaml) {
  auto c = parse_config(yaml, "t.yaml");
  EXPECT_TRUE(c) << c.error().message();
  return c ? *c : server_config{};
}

// Returns the error `yaml` gets, failing the test when it parses.
sluice::error bad(std::string_view yaml) {
  auto c = parse_config(yaml, "t.yaml");
  EXPECT_FALSE(c) << "parsed:\n" << yaml;
  return c ? sluice::error{} : c.error();
}

std::string message(std::string_view yaml) { return bad(yaml).message(); }

constexpr std::string_view kPolicies = "policies: {chat: {limit: 30/hour}}\n";

// A scratch directory, removed with everything in it at the end of the test.
class scratch_dir {
 public:
  scratch_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "sluice-config-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) throw std::system_error(errno, std::generic_category());
    path_ = tmpl;
  }
  ~scratch_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::filesystem::path write(const std::string& name, std::string_view text) const {
    std::ofstream(path_ / name, std::ios::binary) << text;
    return path_ / name;
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Sets an environment variable for the test's duration.
class scoped_env {
 public:
  scoped_env(const char* name, const char* value) : name_(name) {
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~scoped_env() { ::unsetenv(name_); }

 private:
  const char* name_;
};

// Verifies that every field of the file lands in its place in server_config.
TEST(Config, ReadsEveryField) {
  const server_config c = good(R"(
listen: "[::1]:9090"
grpc_listen: 0.0.0.0:8081
io_threads: 3
store: redis://user:pw@10.0.0.5:6380/2?timeout=20ms
breaker: {failures_to_open: 7, open_for: 250ms, max_open_for: 1m}
warn_interval: 2s
limits:
  max_connections: 500
  max_body_bytes: 4096
  max_key_bytes: 200
  header_timeout: 1500ms
  body_timeout: 2s
  idle_timeout: 30s
  drain_timeout: 0s
auth: {api_tokens: [abc123, "def.456=="], admin_tokens: [root-token], admin_open: true}
gate: {key_header: X-Real-IP, key_query: user}
log: {level: debug, access_log: true}
policies:
  chat: {limit: 30/hour, algorithm: sliding_log, on_failure: deny, shadow: true,
         gate: {key_header: X-User-Id}}
  api:
    limit: 100/1m
    algorithm: gcra
    on_failure: local
    deny_cache: yes
  login: {limit: 5/15m, algorithm: sliding_counter, gate: {key_header: "", key_query: who}}
deny_cache_max_keys: 5000
)");
  EXPECT_EQ(c.listen, "[::1]:9090");
  EXPECT_EQ(c.grpc_listen, "0.0.0.0:8081");
  EXPECT_EQ(c.io_threads, 3u);
  EXPECT_EQ(c.store, "redis://user:pw@10.0.0.5:6380/2?timeout=20ms");
  EXPECT_EQ(c.breaker.failures_to_open, 7u);
  EXPECT_EQ(c.breaker.open_for, 250ms);
  EXPECT_EQ(c.breaker.max_open_for, 1min);
  EXPECT_EQ(c.warn_interval, 2s);
  EXPECT_EQ(c.deny_cache_max_keys, 5000u);
  EXPECT_EQ(c.max_connections, 500u);
  EXPECT_EQ(c.max_body_bytes, 4096u);
  EXPECT_EQ(c.max_key_bytes, 200u);
  EXPECT_EQ(c.header_timeout, 1500ms);
  EXPECT_EQ(c.body_timeout, 2s);
  EXPECT_EQ(c.idle_timeout, 30s);
  EXPECT_EQ(c.drain_timeout, 0ms);
  EXPECT_EQ(c.api_tokens, (std::vector<std::string>{"abc123", "def.456=="}));
  EXPECT_EQ(c.admin_tokens, (std::vector<std::string>{"root-token"}));
  EXPECT_TRUE(c.admin_open);
  EXPECT_EQ(c.gate_key.header, "X-Real-IP");
  EXPECT_EQ(c.gate_key.query, "user");
  EXPECT_EQ(c.log_level, "debug");
  EXPECT_TRUE(c.access_log);
  EXPECT_EQ(c.source, "t.yaml");
  ASSERT_EQ(c.policies.size(), 3u);  // in file order

  const served_policy& chat = c.policies[0];
  EXPECT_EQ(chat.policy.name, "chat");
  EXPECT_EQ(chat.policy.limit, *parse_limit("30/hour"));
  EXPECT_EQ(chat.policy.algorithm, algorithm::sliding_log);
  EXPECT_EQ(chat.policy.on_failure, failure_mode::deny);
  EXPECT_TRUE(chat.policy.shadow);
  EXPECT_EQ(chat.gate_key.header, "X-User-Id");
  EXPECT_EQ(chat.gate_key.query, "user");  // not overridden: the top-level one

  const served_policy& api = c.policies[1];
  EXPECT_EQ(api.policy.name, "api");
  EXPECT_EQ(api.policy.limit, *parse_limit("100/1m"));
  EXPECT_EQ(api.policy.algorithm, algorithm::gcra);
  EXPECT_EQ(api.policy.on_failure, failure_mode::local);
  EXPECT_FALSE(api.policy.shadow);
  EXPECT_TRUE(api.policy.deny_cache);
  EXPECT_FALSE(chat.policy.deny_cache);  // off unless asked for
  EXPECT_EQ(api.gate_key.header, "X-Real-IP");

  const served_policy& login = c.policies[2];
  EXPECT_EQ(login.policy.algorithm, algorithm::sliding_counter);
  EXPECT_EQ(login.gate_key.header, "");
  EXPECT_EQ(login.gate_key.query, "who");
}

// Verifies that a file with only a policy leaves every other field at server_config's default.
TEST(Config, MissingFieldsKeepTheDefaults) {
  const server_config c = good(kPolicies);
  const server_config d;
  EXPECT_EQ(c.listen, d.listen);
  EXPECT_EQ(c.grpc_listen, "");  // no gRPC listener unless asked for
  EXPECT_EQ(c.io_threads, d.io_threads);
  EXPECT_EQ(c.store, d.store);
  EXPECT_EQ(c.breaker.failures_to_open, d.breaker.failures_to_open);
  EXPECT_EQ(c.breaker.open_for, d.breaker.open_for);
  EXPECT_EQ(c.breaker.max_open_for, d.breaker.max_open_for);
  EXPECT_EQ(c.warn_interval, d.warn_interval);
  EXPECT_EQ(c.max_connections, d.max_connections);
  EXPECT_EQ(c.max_body_bytes, d.max_body_bytes);
  EXPECT_EQ(c.max_key_bytes, d.max_key_bytes);
  EXPECT_EQ(c.header_timeout, d.header_timeout);
  EXPECT_EQ(c.body_timeout, d.body_timeout);
  EXPECT_EQ(c.idle_timeout, d.idle_timeout);
  EXPECT_EQ(c.drain_timeout, d.drain_timeout);
  EXPECT_TRUE(c.api_tokens.empty());
  EXPECT_TRUE(c.admin_tokens.empty());
  EXPECT_FALSE(c.admin_open);  // admin calls refused until a token or admin_open
  EXPECT_EQ(c.gate_key.header, "X-Forwarded-For");
  EXPECT_EQ(c.gate_key.query, "");
  EXPECT_EQ(c.log_level, "info");
  EXPECT_FALSE(c.access_log);
  ASSERT_EQ(c.policies.size(), 1u);
  EXPECT_EQ(c.policies[0].policy.algorithm, algorithm::sliding_log);
  EXPECT_EQ(c.policies[0].policy.on_failure, failure_mode::allow);
  EXPECT_FALSE(c.policies[0].policy.shadow);
  EXPECT_EQ(c.policies[0].gate_key.header, "X-Forwarded-For");
}

// Verifies that a policy's gate inherits the top-level gate even when that comes later in
// the file, and that empty sections count as empty maps.
TEST(Config, PolicyGateInheritsTheTopLevelGateFieldByField) {
  const server_config c = good(R"(
policies:
  a: {limit: 1/s, gate: {key_query: k}}
  b: {limit: 1/s}
auth:
limits: {}
gate: {key_header: X-Client}
)");
  ASSERT_EQ(c.policies.size(), 2u);
  EXPECT_EQ(c.policies[0].gate_key.header, "X-Client");
  EXPECT_EQ(c.policies[0].gate_key.query, "k");
  EXPECT_EQ(c.policies[1].gate_key.header, "X-Client");
  EXPECT_EQ(c.policies[1].gate_key.query, "");
}

// Verifies that examples/sluice.yaml, as shipped, loads and says what its comments say.
TEST(Config, ShippedExampleLoads) {
  const auto c = load_config(SLUICE_EXAMPLES_DIR "/sluice.yaml");
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->listen, "127.0.0.1:8080");
  EXPECT_EQ(c->grpc_listen, "");  // commented out: it needs envoy_config
  EXPECT_EQ(c->store, "memory://");
  EXPECT_EQ(c->source, SLUICE_EXAMPLES_DIR "/sluice.yaml");
  ASSERT_EQ(c->policies.size(), 3u);
  EXPECT_EQ(c->policies[0].policy.name, "chat");
  EXPECT_EQ(c->policies[0].policy.limit, *parse_limit("30/hour"));
  EXPECT_EQ(c->policies[0].gate_key.header, "X-User-Id");
  EXPECT_EQ(c->policies[1].policy.name, "api");
  EXPECT_EQ(c->policies[1].policy.algorithm, algorithm::gcra);
  EXPECT_EQ(c->policies[1].policy.on_failure, failure_mode::local);
  EXPECT_TRUE(c->policies[1].policy.deny_cache);
  EXPECT_EQ(c->deny_cache_max_keys, 100000u);
  EXPECT_EQ(c->policies[2].policy.name, "login");
  EXPECT_EQ(c->policies[2].policy.limit, *parse_limit("5/15m"));
  EXPECT_EQ(c->policies[2].policy.algorithm, algorithm::sliding_counter);
  EXPECT_TRUE(c->policies[2].policy.shadow);
  EXPECT_FALSE(c->admin_open);
}

// Verifies that load_config names the file it was given in its messages.
TEST(Config, LoadConfigNamesTheFile) {
  scratch_dir dir;
  const auto path = dir.write("sluice.yaml",
                              "listen: 127.0.0.1:1\npolicies:\n  chat:\n"
                              "    limit: 0/hour\n");
  const auto c = load_config(path);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message(),
            path.string() + ":4: policies.chat.limit: limit \"0/hour\": count must be at least 1");
  EXPECT_EQ(c.error().code, errc::invalid_limit);
}

// Verifies that a missing file, a directory and an oversized file are clear errors.
TEST(Config, UnreadableFiles) {
  scratch_dir dir;
  const auto missing = dir.path() / "nope.yaml";
  auto c = load_config(missing);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message(),
            missing.string() + ": cannot read the config: No such file or directory");
  EXPECT_EQ(c.error().code, std::errc::no_such_file_or_directory);

  c = load_config(dir.path());
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message(),
            dir.path().string() + ": cannot read the config: not a regular file");

  c = load_config(dir.write("big.yaml", std::string(2 << 20, '#')));
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("larger than 1 MiB"), std::string::npos);
}

// Verifies that an empty file, or one with only comments, is refused.
TEST(Config, EmptyFileIsAnError) {
  EXPECT_EQ(message(""), "t.yaml:1: the config is empty; it needs at least a \"policies\" map");
  EXPECT_EQ(message("# nothing here\n\n"),
            "t.yaml:1: the config is empty; it needs at least a \"policies\" map");
  scratch_dir dir;
  const auto path = dir.write("empty.yaml", "");
  const auto c = load_config(path);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message(),
            path.string() + ":1: the config is empty; it needs at least a \"policies\" map");
}

// Verifies that a bad limit names its line, the field and parse_limit's problem.
TEST(Config, BadLimit) {
  const auto e = bad("policies:\n  chat:\n    limit: 0/hour\n");
  EXPECT_EQ(e.message(),
            "t.yaml:3: policies.chat.limit: limit \"0/hour\": count must be at least 1");
  EXPECT_EQ(e.code, errc::invalid_limit);
  EXPECT_EQ(message("policies: {chat: {limit: 30/fortnight}}"),
            "t.yaml:1: policies.chat.limit: limit \"30/fortnight\": window has an unknown unit "
            "\"fortnight\" (use us, ms, s, m, h, d or w)");
  EXPECT_EQ(message("policies: {chat: {}}"),
            "t.yaml:1: policies.chat: missing \"limit\", e.g. limit: 30/hour");
  EXPECT_EQ(message("policies:\n  chat:\n    limit:\n"),
            "t.yaml:3: policies.chat.limit: expected a value, got nothing");
}

// Verifies that bad durations name the field, and that ranges are enforced.
TEST(Config, BadDuration) {
  auto e = bad(std::string("limits:\n  header_timeout: 5 parsecs\n") + std::string(kPolicies));
  EXPECT_EQ(e.message(),
            "t.yaml:2: limits.header_timeout: duration \"5 parsecs\" has an unknown "
            "unit \"parsecs\" (use us, ms, s, m, h, d or w)");
  EXPECT_EQ(e.code, errc::invalid_duration);
  EXPECT_EQ(message(std::string("limits: {idle_timeout: 0s}\n") + std::string(kPolicies)),
            "t.yaml:1: limits.idle_timeout: duration \"0s\" is out of range: use 1ms to 1d");
  EXPECT_EQ(message(std::string("limits: {body_timeout: 1500us}\n") + std::string(kPolicies)),
            "t.yaml:1: limits.body_timeout: duration \"1500us\" is not a whole number of "
            "milliseconds");
  EXPECT_EQ(message(std::string("warn_interval: 2d\n") + std::string(kPolicies)),
            "t.yaml:1: warn_interval: duration \"2d\" is out of range: use 0s to 1d");
  EXPECT_EQ(message(std::string("breaker: {open_for: -1s}\n") + std::string(kPolicies)),
            "t.yaml:1: breaker.open_for: duration \"-1s\" must not be negative");
}

// Verifies that the breaker's open periods must be in order, wherever the default sits.
TEST(Config, BreakerPeriodsInOrder) {
  EXPECT_EQ(message(std::string("breaker:\n  open_for: 10s\n  max_open_for: 5s\n") +
                    std::string(kPolicies)),
            "t.yaml:3: breaker.max_open_for: must be at least open_for (10s)");
  EXPECT_EQ(message(std::string("breaker: {open_for: 1m}\n") + std::string(kPolicies)),
            "t.yaml:1: breaker.max_open_for: must be at least open_for (1m); it defaults to 30s");
  EXPECT_EQ(message(std::string("breaker: {failures_to_open: 0}\n") + std::string(kPolicies)),
            "t.yaml:1: breaker.failures_to_open: \"0\" is out of range: use 1 to 1000000");
}

// Verifies that unknown keys are errors at every level, with a hint for near misses.
TEST(Config, UnknownKeys) {
  EXPECT_EQ(message(std::string("listn: 127.0.0.1:80\n") + std::string(kPolicies)),
            "t.yaml:1: listn: unknown key; did you mean \"listen\"?");
  EXPECT_EQ(message(std::string(kPolicies) + "limits:\n  max_conections: 10\n"),
            "t.yaml:3: limits.max_conections: unknown key; did you mean \"max_connections\"?");
  EXPECT_EQ(message("policies:\n  chat: {limit: 1/s, algoritm: gcra}\n"),
            "t.yaml:2: policies.chat.algoritm: unknown key; did you mean \"algorithm\"?");
  EXPECT_EQ(message(std::string(kPolicies) + "log: {colour: true}\n"),
            "t.yaml:2: log.colour: unknown key; expected one of level, access_log");
  EXPECT_EQ(message("policies: {chat: {limit: 1/s, gate: {header: X-A}}}"),
            "t.yaml:1: policies.chat.gate.header: unknown key; expected one of key_header, "
            "key_query");
  EXPECT_EQ(message(std::string(kPolicies) + "auth: {tokens: [a]}\n"),
            "t.yaml:2: auth.tokens: unknown key; expected one of api_tokens, api_tokens_env, "
            "api_tokens_file, admin_tokens, admin_tokens_env, admin_tokens_file, admin_open");
}

// Verifies that algorithms and failure modes are checked by name.
TEST(Config, UnknownAlgorithmAndFailureMode) {
  auto e = bad("policies:\n  chat: {limit: 1/s, algorithm: leaky_bucket}\n");
  EXPECT_EQ(e.message(),
            "t.yaml:2: policies.chat.algorithm: algorithm \"leaky_bucket\": use "
            "sliding_log, sliding_counter or gcra");
  EXPECT_EQ(e.code, errc::invalid_algorithm);
  e = bad("policies:\n  chat: {limit: 1/s, on_failure: retry}\n");
  EXPECT_EQ(e.message(),
            "t.yaml:2: policies.chat.on_failure: failure mode \"retry\": use allow, "
            "deny or local");
  EXPECT_EQ(e.code, errc::invalid_policy);
}

// Verifies that a key given twice (yaml-cpp keeps both) is refused, policies included.
TEST(Config, DuplicateKeys) {
  auto e = bad("policies:\n  chat: {limit: 1/s}\n  api: {limit: 2/s}\n  chat: {limit: 3/s}\n");
  EXPECT_EQ(e.message(), "t.yaml:4: policies.chat: given twice (first on line 2)");
  EXPECT_EQ(message(std::string("listen: a:1\n") + std::string(kPolicies) + "listen: b:2\n"),
            "t.yaml:3: listen: given twice (first on line 1)");
  EXPECT_EQ(message("policies: {chat: {limit: 1/s, limit: 2/s}}"),
            "t.yaml:1: policies.chat.limit: given twice (first on line 1)");
}

// Verifies that policy names follow the limiter's rule, and that an empty set is refused.
TEST(Config, PolicyNamesAndCount) {
  auto e = bad("policies:\n  \"chat room\": {limit: 1/s}\n");
  EXPECT_EQ(e.message(),
            "t.yaml:2: policies.\"chat room\": policy name \"chat room\": use 1 to 64 "
            "of A-Z a-z 0-9 _ . -");
  EXPECT_EQ(e.code, errc::invalid_policy);
  const std::string long_name(65, 'p');
  EXPECT_EQ(message("policies:\n  " + long_name + ": {limit: 1/s}\n"),
            "t.yaml:2: policies.\"" + long_name.substr(0, 64) + "...\": policy name \"" +
                long_name.substr(0, 64) + "...\": use 1 to 64 of A-Z a-z 0-9 _ . -");
  e = bad("listen: 127.0.0.1:1\npolicies: {}\n");
  EXPECT_EQ(e.message(), "t.yaml:2: policies: no policy defined; define at least one");
  EXPECT_EQ(e.code, errc::invalid_policy);
  EXPECT_EQ(message("listen: 127.0.0.1:1\npolicies:\n"),
            "t.yaml:2: policies: no policy defined; define at least one");
  EXPECT_EQ(message("listen: 127.0.0.1:1\n"),
            "t.yaml:1: policies: missing; define at least one, e.g. policies: {chat: {limit: "
            "30/hour}}");
}

// Verifies that store URIs are checked by parsing them, without connecting anywhere.
TEST(Config, StoreUris) {
  for (const char* ok : {"memory://", "memory://?shards=8&max_keys=1000", "redis://127.0.0.1:1",
                         "rediss://u:p@example.com:6380/1?tls_verify=0", "unix:///tmp/r.sock",
                         "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster?db=1",
                         "rediss+sentinel://:pw@s1:26379/m?sentinel_password=x"}) {
    EXPECT_EQ(good("store: " + std::string(ok) + "\n" + std::string(kPolicies)).store, ok);
  }
  auto e = bad(std::string(kPolicies) + "store: redis://127.0.0.1:notaport\n");
  EXPECT_EQ(e.code, errc::invalid_store_uri);
  EXPECT_EQ(e.message(),
            "t.yaml:2: store: store \"redis://...\": port must be a number from 1 "
            "to 65535");  // parse_redis_uri hides the URI: it may hold a password
  e = bad(std::string(kPolicies) + "store: mongo://db\n");
  EXPECT_EQ(e.message(),
            "t.yaml:2: store: unknown scheme \"mongo\"; use memory://, redis://, rediss://, "
            "unix://, redis+cluster:// or redis+sentinel://");
  EXPECT_EQ(message(std::string(kPolicies) + "store: localhost:6379\n"),
            "t.yaml:2: store: expected SCHEME://...; use memory://, redis://, rediss://, unix://, "
            "redis+cluster:// or redis+sentinel://");
  e = bad(std::string(kPolicies) + "store: redis+sentinel://:pw@10.0.0.1:26379\n");
  EXPECT_EQ(e.code, errc::invalid_store_uri);
  EXPECT_EQ(e.message(),
            "t.yaml:2: store: store \"redis+sentinel://...\": no master name "
            "(redis+sentinel://host:port/MASTER_NAME)");
  e = bad(std::string(kPolicies) + "store: memory://?shards=0\n");
  EXPECT_EQ(e.message(),
            "t.yaml:2: store: store \"memory://?shards=0\": shards must be between 1 and 4096");
  e = bad(std::string(kPolicies) + "store: redis+cluster://a:1,b:2/4\n");
  EXPECT_EQ(e.code, errc::invalid_store_uri);
  EXPECT_NE(e.message().find("only database 0"), std::string::npos) << e.message();
  e = bad(std::string(kPolicies) + "store: redis://h:1?colour=red\n");
  EXPECT_EQ(e.code, errc::invalid_store_uri);
}

// Verifies that a value of the wrong YAML type is refused with what was expected.
TEST(Config, WrongTypes) {
  const std::string p(kPolicies);
  EXPECT_EQ(message("- listen: a:1\n"), "t.yaml:1: expected a map of settings, got a list");
  EXPECT_EQ(message("just text\n"), "t.yaml:1: expected a map of settings, got a value");
  EXPECT_EQ(message(p + "limits:\n  - max_connections: 10\n"),
            "t.yaml:3: limits: expected a map, got a list");
  EXPECT_EQ(message(p + "io_threads: four\n"),
            "t.yaml:2: io_threads: expected a whole number, got \"four\"");
  EXPECT_EQ(message(p + "io_threads: \"4\"\n"),
            "t.yaml:2: io_threads: expected a whole number, got \"4\" (a quoted string)");
  EXPECT_EQ(message(p + "io_threads: -1\n"),
            "t.yaml:2: io_threads: expected a whole number, got \"-1\"");
  EXPECT_EQ(message(p + "io_threads: 99999999999999999999999\n"),
            "t.yaml:2: io_threads: \"99999999999999999999999\" is out of range: use 0 to 1024");
  EXPECT_EQ(message(p + "limits: {max_key_bytes: 0}\n"),
            "t.yaml:2: limits.max_key_bytes: \"0\" is out of range: use 1 to 65535");
  EXPECT_EQ(message(p + "listen: [a, b]\n"), "t.yaml:2: listen: expected a value, got a list");
  EXPECT_EQ(message("policies:\n  - chat: {limit: 1/s}\n"),
            "t.yaml:2: policies: expected a map of name: {limit: ...}, got a list (write chat: "
            "{limit: 30/hour})");
  EXPECT_EQ(message("policies:\n  chat: 30/hour\n"),
            "t.yaml:2: policies.chat: expected a map such as {limit: 30/hour}, got a value");
  EXPECT_EQ(message("policies: {chat: {limit: 1/s, shadow: maybe}}"),
            "t.yaml:1: policies.chat.shadow: expected true or false, got \"maybe\"");
  EXPECT_EQ(message("policies: {chat: {limit: 1/s, shadow: \"true\"}}"),
            "t.yaml:1: policies.chat.shadow: expected true or false, got \"true\"");
  EXPECT_EQ(message("policies: {chat: {limit: 1/s, deny_cache: 1}}"),
            "t.yaml:1: policies.chat.deny_cache: expected true or false, got \"1\"");
  EXPECT_EQ(message("policies: {chat: {limit: 1/s, deny_cache: [true]}}"),
            "t.yaml:1: policies.chat.deny_cache: expected a value, got a list");
  EXPECT_EQ(message("policies: {chat: {limit: 1/s, deny_cahce: true}}"),
            "t.yaml:1: policies.chat.deny_cahce: unknown key; did you mean \"deny_cache\"?");
  EXPECT_EQ(message(p + "deny_cache_max_keys: -5\n"),
            "t.yaml:2: deny_cache_max_keys: expected a whole number, got \"-5\"");
  EXPECT_EQ(message(p + "deny_cache_max_keys: 1000000000\n"),
            "t.yaml:2: deny_cache_max_keys: \"1000000000\" is out of range: use 0 to 100000000");
  EXPECT_EQ(message(p + "auth: {api_tokens: abc}\n"),
            "t.yaml:2: auth.api_tokens: expected a list of tokens, got a value");
  EXPECT_EQ(message(p + "auth: {api_tokens: [[a]]}\n"),
            "t.yaml:2: auth.api_tokens[0]: expected a token, got a list");
  EXPECT_EQ(message(p + "? [a, b]\n: 1\n"),
            "t.yaml:2: the top level: a key must be a name, not a list");
  EXPECT_EQ(message(p + "gate: X-User-Id\n"), "t.yaml:2: gate: expected a map, got a value");
}

// Verifies that malformed YAML is reported at its line, with yaml-cpp's reason.
TEST(Config, MalformedYaml) {
  auto e = bad("listen: 127.0.0.1:1\npolicies: {chat: {limit: 1/s}\nstore: memory://\n");
  EXPECT_EQ(e.code, std::errc::invalid_argument);
  EXPECT_EQ(e.message().rfind("t.yaml:", 0), 0u);
  EXPECT_NE(e.message().find("malformed YAML: "), std::string::npos) << e.message();
  EXPECT_EQ(message("listen: 127.0.0.1:1\n  store: memory://\n"),
            "t.yaml:2: malformed YAML: illegal map value (column 8)");
  EXPECT_EQ(message("listen: *nowhere\n"),
            "t.yaml:1: malformed YAML: the referenced anchor is not defined (column 9)");
  EXPECT_EQ(message(std::string(kPolicies) + "---\nlisten: a:1\n"),
            "t.yaml:3: more than one YAML document (a second ---)");
}

// Verifies that input on which yaml-cpp's LoadAll never returns (it yields empty documents
// forever, growing without bound; found by fuzz/config_fuzzer.cc) is refused at once, by
// both loaders.
TEST(Config, InputThatLoopsYamlCppIsRefused) {
  for (const char* yaml : {",a:\n", ",olicties:\n  chat:\n    limit: 0/4hour\n"}) {
    auto c = parse_config(yaml, "t.yaml");
    ASSERT_FALSE(c) << yaml;
    EXPECT_NE(c.error().message().find("more than one YAML document"), std::string::npos)
        << c.error().message();
    auto e = parse_envoy_config(yaml, "t.yaml");
    ASSERT_FALSE(e) << yaml;
    EXPECT_NE(e.error().message().find("t.yaml:"), std::string::npos) << e.error().message();
  }
  EXPECT_EQ(second_yaml_document_line("a: 1\n"), 0);
  EXPECT_EQ(second_yaml_document_line("a: 1\n---\nb: 2\n"), 3);
}

// Verifies that listen addresses are checked for form (not resolved).
TEST(Config, ListenAddresses) {
  const std::string p(kPolicies);
  EXPECT_EQ(good("listen: 0.0.0.0:0\n" + p).listen, "0.0.0.0:0");
  EXPECT_EQ(good("listen: localhost:80\n" + p).listen, "localhost:80");
  EXPECT_EQ(message("listen: 8080\n" + p),
            "t.yaml:1: listen: expected HOST:PORT, e.g. 127.0.0.1:8080");
  EXPECT_EQ(message("listen: 127.0.0.1:70000\n" + p),
            "t.yaml:1: listen: port \"70000\" must be a number from 0 to 65535");
  EXPECT_EQ(message("listen: :80\n" + p),
            "t.yaml:1: listen: expected HOST:PORT, e.g. 127.0.0.1:8080 (the host is missing)");
  EXPECT_EQ(message("listen: ::1:80\n" + p),
            "t.yaml:1: listen: an IPv6 host is written in brackets: [::1]:8080");
  EXPECT_EQ(message("listen: \"bad host:80\"\n" + p),
            "t.yaml:1: listen: host \"bad host\" is not a host name or address");
}

// Verifies that grpc_listen is checked as listen is, that it may not be listen's own fixed
// address, and that two port-0 addresses are fine (each picks its own port).
TEST(Config, GrpcListenAddress) {
  const std::string p(kPolicies);
  EXPECT_EQ(good("grpc_listen: \"[::1]:50051\"\n" + p).grpc_listen, "[::1]:50051");
  EXPECT_EQ(good("listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0\n" + p).grpc_listen, "127.0.0.1:0");
  EXPECT_EQ(message("grpc_listen: 8081\n" + p),
            "t.yaml:1: grpc_listen: expected HOST:PORT, e.g. 127.0.0.1:8080");
  EXPECT_EQ(message(p + "grpc_listen: 127.0.0.1:65536\n"),
            "t.yaml:2: grpc_listen: port \"65536\" must be a number from 0 to 65535");
  EXPECT_EQ(message("grpc_listen: [a, b]\n" + p),
            "t.yaml:1: grpc_listen: expected a value, got a list");
  EXPECT_EQ(message("grpc_listen: 127.0.0.1:9000\nlisten: 127.0.0.1:9000\n" + p),
            "t.yaml:1: grpc_listen: the same address as listen (127.0.0.1:9000)");
  EXPECT_EQ(message("grpc_listen: 127.0.0.1:8080\n" + p),  // listen's default
            "t.yaml:1: grpc_listen: the same address as listen (127.0.0.1:8080)");
  EXPECT_EQ(message("grpc_listn: 127.0.0.1:8081\n" + p),
            "t.yaml:1: grpc_listn: unknown key; did you mean \"grpc_listen\"?");
}

// Verifies envoy_config: a directory, relative to the config's own, and that with it the
// policies map may be left out (Envoy's descriptors bring their own limits).
TEST(Config, EnvoyConfigDirectory) {
  const server_config c = good("grpc_listen: 127.0.0.1:0\nenvoy_config: envoy/ratelimit\n");
  EXPECT_EQ(c.envoy_config, (std::filesystem::current_path() / "envoy/ratelimit").string());
  EXPECT_TRUE(c.policies.empty());
  EXPECT_EQ(good("envoy_config: /etc/sluice/envoy\n").envoy_config, "/etc/sluice/envoy");
  EXPECT_EQ(message("envoy_config: \"\"\n"),
            "t.yaml:1: envoy_config: a directory of envoyproxy/ratelimit YAML files");
  EXPECT_EQ(message("envoy_config: [a]\n"), "t.yaml:1: envoy_config: expected a value, got a list");
}

// Verifies that listen_problem, which checks the --grpc-listen flag, says what the config
// says of a listen address.
TEST(Config, ListenProblem) {
  EXPECT_EQ(listen_problem("127.0.0.1:0"), "");
  EXPECT_EQ(listen_problem("[::]:8081"), "");
  EXPECT_EQ(listen_problem("8081"), "expected HOST:PORT, e.g. 127.0.0.1:8080");
  EXPECT_EQ(listen_problem("::1:8081"), "an IPv6 host is written in brackets: [::1]:8080");
}

// Verifies that gate sources are checked, and that a gate with no source is refused.
TEST(Config, GateKeySources) {
  const std::string p(kPolicies);
  EXPECT_EQ(message(p + "gate: {key_header: \"X User\"}\n"),
            "t.yaml:2: gate.key_header: \"X User\" is not an HTTP header name");
  EXPECT_EQ(message(p + "gate: {key_query: \"a&b\"}\n"),
            "t.yaml:2: gate.key_query: \"a&b\" is not a query parameter name (use A-Z a-z 0-9 _ "
            ". - ~)");
  EXPECT_EQ(message(p + "gate: {key_header: \"\"}\n"),
            "t.yaml:2: gate: the gate needs a key_header or a key_query to find the key");
  EXPECT_EQ(message("policies:\n  chat:\n    limit: 1/s\n    gate: {key_header: \"\"}\n"),
            "t.yaml:4: policies.chat.gate: the gate needs a key_header or a key_query to find "
            "the key");
  const server_config c = good(p + "gate: {key_header: \"\", key_query: user}\n");
  EXPECT_EQ(c.policies[0].gate_key.header, "");
  EXPECT_EQ(c.policies[0].gate_key.query, "user");
}

// Verifies that log levels are checked by name.
TEST(Config, LogLevel) {
  EXPECT_EQ(good(std::string(kPolicies) + "log: {level: \"off\"}\n").log_level, "off");
  EXPECT_EQ(
      message(std::string(kPolicies) + "log: {level: verbose}\n"),
      "t.yaml:2: log.level: log level \"verbose\": use trace, debug, info, warn, error or off");
}

// Verifies that tokens come from an environment variable, comma-separated, and that an
// unset or empty variable is an error rather than authentication quietly turned off.
TEST(Config, TokensFromTheEnvironment) {
  const std::string p(kPolicies);
  {
    scoped_env env("SLUICE_TEST_API_TOKENS", " tok-1 , tok_2,,tok.3 ");
    const server_config c = good(p + "auth: {api_tokens_env: SLUICE_TEST_API_TOKENS}\n");
    EXPECT_EQ(c.api_tokens, (std::vector<std::string>{"tok-1", "tok_2", "tok.3"}));
    EXPECT_TRUE(c.admin_tokens.empty());
  }
  {
    scoped_env env("SLUICE_TEST_API_TOKENS", nullptr);
    EXPECT_EQ(message(p + "auth: {api_tokens_env: SLUICE_TEST_API_TOKENS}\n"),
              "t.yaml:2: auth.api_tokens_env: environment variable SLUICE_TEST_API_TOKENS is not "
              "set");
  }
  {
    scoped_env env("SLUICE_TEST_API_TOKENS", " , ");
    EXPECT_EQ(message(p + "auth: {admin_tokens_env: SLUICE_TEST_API_TOKENS}\n"),
              "t.yaml:2: auth.admin_tokens_env: environment variable SLUICE_TEST_API_TOKENS holds "
              "no token");
  }
  {
    scoped_env env("SLUICE_TEST_API_TOKENS", "good,s3cr3t with space");
    const std::string m = message(p + "auth: {api_tokens_env: SLUICE_TEST_API_TOKENS}\n");
    EXPECT_EQ(m.rfind("t.yaml:2: auth.api_tokens_env: environment variable SLUICE_TEST_API_TOKENS: "
                      "token 2 is not a bearer token",
                      0),
              0u)
        << m;
    EXPECT_EQ(m.find("s3cr3t"), std::string::npos) << "a secret in a message: " << m;
  }
  EXPECT_EQ(message(p + "auth: {api_tokens_env: \"1 BAD\"}\n"),
            "t.yaml:2: auth.api_tokens_env: \"1 BAD\" is not an environment variable name");
}

// Verifies that tokens come from a file relative to the config's directory, one a line.
TEST(Config, TokensFromAFile) {
  scratch_dir dir;
  dir.write("admin.txt", "# admins\nroot-1\n\n  root-2  \n");
  const auto path = dir.write("sluice.yaml", std::string(kPolicies) +
                                                 "auth: {admin_tokens_file: admin.txt, "
                                                 "api_tokens: [x]}\n");
  const auto c = load_config(path);
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->admin_tokens, (std::vector<std::string>{"root-1", "root-2"}));
  EXPECT_EQ(c->api_tokens, (std::vector<std::string>{"x"}));

  const auto missing =
      dir.write("b.yaml", std::string(kPolicies) + "auth: {admin_tokens_file: nope.txt}\n");
  const auto m = load_config(missing);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().message(), missing.string() + ":2: auth.admin_tokens_file: cannot read \"" +
                                     (dir.path() / "nope.txt").string() +
                                     "\": not a file of at most 1 MiB");
}

// Verifies the tls section: files relative to the config, both cert and key, files that
// exist, no unknown key.
TEST(Config, TlsFiles) {
  scratch_dir dir;
  dir.write("s.crt", "cert");
  dir.write("s.key", "key");
  dir.write("ca.crt", "ca");
  const auto path = dir.write("sluice.yaml", std::string(kPolicies) +
                                                 "tls: {cert: s.crt, key: s.key, client_ca: "
                                                 "ca.crt}\n");
  const auto c = load_config(path);
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->tls.cert, (dir.path() / "s.crt").string());
  EXPECT_EQ(c->tls.key, (dir.path() / "s.key").string());
  EXPECT_EQ(c->tls.client_ca, (dir.path() / "ca.crt").string());
  EXPECT_TRUE(c->tls.enabled());
  EXPECT_FALSE(good(kPolicies).tls.enabled());

  const auto half = dir.write("half.yaml", std::string(kPolicies) + "tls: {cert: s.crt}\n");
  EXPECT_EQ(load_config(half).error().message(),
            half.string() + ":2: tls: needs both cert and key (PEM files)");
  const auto missing =
      dir.write("missing.yaml", std::string(kPolicies) + "tls: {cert: s.crt, key: no.key}\n");
  EXPECT_EQ(load_config(missing).error().message(),
            missing.string() + ":2: tls.key: cannot read \"" + (dir.path() / "no.key").string() +
                "\": not a file of at most 1 MiB");
  EXPECT_EQ(message(std::string(kPolicies) + "tls: {cert: a, key: b, ca: c}\n"),
            "t.yaml:2: tls.ca: unknown key; expected one of cert, key, client_ca");
}

// Verifies that a kind of token has one source, and that bad tokens are not echoed.
TEST(Config, TokenSourcesAndSecrecy) {
  const std::string p(kPolicies);
  EXPECT_EQ(message(p + "auth:\n  api_tokens: [a]\n  api_tokens_env: X\n"),
            "t.yaml:4: auth.api_tokens_env: give api_tokens one way only; api_tokens is on line 3");
  const std::string m = message(p + "auth:\n  api_tokens: [fine, \"hunter 2\"]\n");
  EXPECT_EQ(m,
            "t.yaml:3: auth.api_tokens[1]: not a bearer token (use 1 to 4096 of A-Z a-z 0-9 - "
            ". _ ~ + /, then any =); its value is not shown");
  EXPECT_EQ(good(p + "auth: {api_tokens: []}\n").api_tokens.size(), 0u);
}

// Verifies that nothing escapes as an exception, whatever the input.
TEST(Config, NeverThrows) {
  const std::string inputs[] = {
      std::string(100000, '['),
      std::string(5000, '{') + std::string(5000, '}'),
      std::string("\x00\xff\xfe garbage \x01", 14),
      "policies: !!binary AAAA\n",
      "&a [*a]\n",
      "policies: {chat: {limit: 99999999999999999999999/s}}\n",
      "\t- x\n",
  };
  for (const std::string& in : inputs) {
    EXPECT_NO_THROW({
      auto c = parse_config(in, "t.yaml");
      EXPECT_FALSE(c);
      if (!c) {
        EXPECT_EQ(c.error().message().rfind("t.yaml", 0), 0u) << c.error().message();
      }
    });
  }
}

}  // namespace
}  // namespace sluice::server
