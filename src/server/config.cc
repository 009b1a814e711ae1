// Reading `sluice serve`'s YAML configuration into a server_config.
//
// The file is a map; every key is optional except `policies` (examples/sluice.yaml shows
// each one with a comment):
//
//   listen: 127.0.0.1:8080        # host:port, [v6]:port; port 0 picks a free one
//   grpc_listen: 127.0.0.1:8081   # Envoy's rate limit service over gRPC; unset: off
//   envoy_config: envoy/          # envoyproxy/ratelimit's YAML files, for grpc_listen
//   tls: {cert: server.crt, key: server.key, client_ca: ca.crt}  # PEM files; both listeners
//                                 # speak TLS; with client_ca, clients need a certificate
//   io_threads: 0                 # 0: one per core
//   store: memory://              # or redis://, rediss://, unix://, redis+cluster://,
//                                 # redis+sentinel://
//   breaker: {failures_to_open: 5, open_for: 1s, max_open_for: 30s}
//   warn_interval: 10s
//   deny_cache_max_keys: 100000   # keys the deny cache holds (deny_cache policies); 0: off
//   limits: {max_connections: 10000, max_body_bytes: 16384, max_key_bytes: 1024,
//            header_timeout: 5s, body_timeout: 5s, idle_timeout: 60s, drain_timeout: 10s}
//   auth:                         # per kind, one of: a list, an environment variable
//     api_tokens: [t1, t2]        # (comma-separated), or a file (one token a line, #
//     admin_tokens_env: VAR       # comments); a relative file is relative to the config
//     api_tokens_file: tokens.txt
//     admin_open: false           # true: with no admin token, anyone may reset keys
//   gate: {key_header: X-Forwarded-For, key_query: ""}   # "" turns a source off
//   log: {level: info, access_log: false}                # trace debug info warn error off
//   policies:                     # at least one; names are [A-Za-z0-9_.-]{1,64}
//     chat: {limit: 30/hour, algorithm: sliding_log, on_failure: allow, shadow: false,
//            gate: {key_header: X-User-Id}}   # per field, overrides the top-level gate
//     api:  {limit: 100/1m, algorithm: gcra, on_failure: local, deny_cache: true}
//
// Strictness is the point: an unknown key, a key given twice, a list where a map belongs, a
// quoted "4" where a number belongs are all errors, so that a typo cannot quietly leave a
// default in place. Every error reads `<file>:<line>: <field path>: <problem>`.
//
// The reader throws a private exception at the first problem; the two entry points catch it
// (and anything yaml-cpp throws) and return it as an `error`. Start-up code only.
#include "server/config.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <optional>
#include <span>
#include <sstream>
#include <string_view>
#include <system_error>
#include <utility>

#include "core/text.h"
#include "sluice/open_store.h"
#include "sluice/redis_cluster_store.h"
#include "sluice/redis_sentinel_store.h"
#include "sluice/redis_store.h"

namespace sluice::server {
namespace {

using internal::quote;
using internal::trim;
using internal::valid_policy_name;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using namespace std::chrono_literals;

// Config files are small; a larger one is a wrong path, not a config.
constexpr std::uintmax_t kMaxFileBytes = 1 << 20;
constexpr microseconds kMaxTimeout = 24h;

// The first problem found; carried out of the reader to the entry points.
struct config_failure {
  sluice::error e;
};

// The structural problems (wrong type, unknown key, ...) have no sluice code of their own.
std::error_code invalid_config() { return std::make_error_code(std::errc::invalid_argument); }

// A key and its value in a YAML map.
struct entry {
  std::string key;
  YAML::Node key_node;
  YAML::Node value;
};

std::string_view type_name(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar:
      return n.Tag() == "!" ? "a quoted string" : "a value";
    default:
      return "nothing";
  }
}

// A plain (unquoted, untagged) scalar, or one tagged with the YAML core tag `core`.
bool plain_or(const YAML::Node& n, std::string_view core) {
  return n.Tag() == "?" || n.Tag() == std::string("tag:yaml.org,2002:") + std::string(core);
}

// Returns the Levenshtein distance between `a` and `b`, for "did you mean" hints.
std::size_t distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

// An HTTP header name: an RFC 9110 token.
bool valid_header_name(std::string_view name) {
  constexpr std::string_view kSpecial = "!#$%&'*+-.^_`|~";
  return !name.empty() && name.size() <= 128 && std::all_of(name.begin(), name.end(), [&](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           kSpecial.find(c) != std::string_view::npos;
  });
}

bool valid_query_name(std::string_view name) {
  return !name.empty() && name.size() <= 128 &&
         std::all_of(name.begin(), name.end(), [](char c) { return is_name_char(c) || c == '~'; });
}

// A bearer token as RFC 6750 writes it (b64token): 1*( ALPHA / DIGIT / "-" / "." / "_" /
// "~" / "+" / "/" ) *"=".
bool valid_token(std::string_view token) {
  if (token.empty() || token.size() > 4096) return false;
  std::size_t end = token.find_last_not_of('=');
  if (end == std::string_view::npos) return false;
  return std::all_of(token.begin(), token.begin() + static_cast<std::ptrdiff_t>(end) + 1,
                     [](char c) { return is_name_char(c) || c == '~' || c == '+' || c == '/'; });
}

// `host:port`, with the host a name, an IPv4 address or a bracketed IPv6 address. Returns
// the problem, or "" when `text` is fine. Names are not resolved here.
std::string check_listen(std::string_view text) {
  const std::size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return "expected HOST:PORT, e.g. 127.0.0.1:8080";
  const std::string_view host = text.substr(0, colon);
  const std::string_view port = text.substr(colon + 1);
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value > 65535) {
    return "port " + quote(port) + " must be a number from 0 to 65535";
  }
  if (host.empty()) return "expected HOST:PORT, e.g. 127.0.0.1:8080 (the host is missing)";
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return "an IPv6 host is written [::1]";
    const std::string_view v6 = host.substr(1, host.size() - 2);
    const bool ok = std::all_of(v6.begin(), v6.end(), [](char c) {
      return std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.';
    });
    if (!ok) return "host " + quote(host) + " is not an IPv6 address";
    return {};
  }
  if (host.find(':') != std::string_view::npos) {
    return "an IPv6 host is written in brackets: [::1]:8080";
  }
  if (!std::all_of(host.begin(), host.end(), is_name_char)) {
    return "host " + quote(host) + " is not a host name or address";
  }
  return {};
}

class reader {
 public:
  reader(std::string name, std::filesystem::path base_dir)
      : name_(std::move(name)), base_dir_(std::move(base_dir)) {}

  server_config read(const std::vector<YAML::Node>& documents) {
    if (documents.size() > 1) {
      fail_at(line_of(documents[1], 1), "", "more than one YAML document (a second ---)");
    }
    const YAML::Node root = documents.empty() ? YAML::Node() : documents.front();
    if (!root.IsDefined() || root.IsNull()) {
      fail_at(1, "", "the config is empty; it needs at least a \"policies\" map");
    }
    if (!root.IsMap()) {
      fail_at(line_of(root, 1), "",
              "expected a map of settings, got " + std::string(type_name(root)));
    }
    server_config c;
    bool have_policies = false;
    static constexpr std::array kTop = {
        "listen", "grpc_listen", "envoy_config",  "tls",     "io_threads",
        "store",  "breaker",     "warn_interval", "limits",  "deny_cache_max_keys",
        "auth",   "gate",        "log",           "policies"};
    const entry* grpc_entry = nullptr;
    const std::vector<entry> top = entries(root, "", kTop);
    for (const entry& e : top) {
      const std::string& p = e.key;
      if (p == "listen") {
        c.listen = text(e, p);
        if (auto problem = check_listen(c.listen); !problem.empty()) fail(e, p, problem);
      } else if (p == "grpc_listen") {
        c.grpc_listen = text(e, p);
        if (auto problem = check_listen(c.grpc_listen); !problem.empty()) fail(e, p, problem);
        grpc_entry = &e;
      } else if (p == "envoy_config") {
        std::filesystem::path dir = text(e, p);
        if (dir.empty()) fail(e, p, "a directory of envoyproxy/ratelimit YAML files");
        if (dir.is_relative()) dir = base_dir_ / dir;
        c.envoy_config = dir.string();
      } else if (p == "tls") {
        read_tls(e, c.tls);
      } else if (p == "io_threads") {
        c.io_threads = number(e, p, 0, 1024);
      } else if (p == "store") {
        c.store = text(e, p);
        check_store(e, p, c.store);
      } else if (p == "breaker") {
        read_breaker(e, c.breaker);
      } else if (p == "warn_interval") {
        c.warn_interval = millis(e, p, 0ms);
      } else if (p == "deny_cache_max_keys") {
        c.deny_cache_max_keys = number(e, p, 0, 100000000);
      } else if (p == "limits") {
        read_limits(e, c);
      } else if (p == "auth") {
        read_auth(e, c);
      } else if (p == "gate") {
        read_gate(e, p, c.gate_key);
      } else if (p == "log") {
        read_log(e, c);
      } else if (p == "policies") {
        read_policies(e, c.policies);
        have_policies = true;
      }
    }
    // Port 0 picks two different free ports; a fixed one cannot serve both.
    if (grpc_entry != nullptr && c.grpc_listen == c.listen && !c.listen.ends_with(":0")) {
      fail(*grpc_entry, "grpc_listen", "the same address as listen (" + c.listen + ")");
    }
    if (!have_policies && c.envoy_config.empty()) {
      fail_at(line_of(root, 1), "policies",
              "missing; define at least one, e.g. policies: {chat: {limit: 30/hour}}");
    }
    // A policy's gate starts from the top-level one, wherever that is in the file.
    for (std::size_t i = 0; i < c.policies.size(); ++i) {
      const gate_override& o = gate_overrides_[i];
      key_source& k = c.policies[i].gate_key;
      k = c.gate_key;
      if (o.header) k.header = *o.header;
      if (o.query) k.query = *o.query;
      if (k.header.empty() && k.query.empty()) {
        fail_at(o.line, "policies." + c.policies[i].policy.name + ".gate",
                "the gate needs a key_header or a key_query to find the key");
      }
    }
    return c;
  }

  // Reports a problem at a line (1-based) and field path.
  [[noreturn]] void fail_at(int line, std::string_view path, std::string problem,
                            std::error_code code = invalid_config()) const {
    std::string detail = name_ + ":" + std::to_string(line) + ": ";
    if (!path.empty()) detail += std::string(path) + ": ";
    detail += problem;
    throw config_failure{{code, std::move(detail)}};
  }

 private:
  // A policy's own gate fields, applied once the top-level gate is known.
  struct gate_override {
    std::optional<std::string> header;
    std::optional<std::string> query;
    int line = 1;
  };

  static int line_of(const YAML::Node& n, int fallback) {
    return n.IsDefined() && n.Mark().line >= 0 ? n.Mark().line + 1 : fallback;
  }
  // The line of `e`'s value, or of its key when the value is empty (yaml-cpp marks an
  // empty value at the next token, often on the next line).
  static int line_of(const entry& e) {
    const int key_line = line_of(e.key_node, 1);
    return e.value.IsNull() ? key_line : line_of(e.value, key_line);
  }

  [[noreturn]] void fail(const entry& e, std::string_view path, std::string problem,
                         std::error_code code = invalid_config()) const {
    fail_at(line_of(e), path, std::move(problem), code);
  }
  // The same with a sluice error's detail (which names the value) and code.
  [[noreturn]] void fail(const entry& e, std::string_view path, const sluice::error& err) const {
    fail_at(line_of(e), path, err.message(), err.code);
  }

  static std::string join(std::string_view path, std::string_view key) {
    std::string k = valid_policy_name(key) ? std::string(key) : quote(key);
    return path.empty() ? k : std::string(path) + "." + k;
  }

  // Returns the entries of the map `e.value` in file order, failing on a value that is no
  // map, on a key given twice, and (when `known` is not empty) on a key not in `known`.
  // An empty value (`auth:` with nothing below) is an empty map.
  std::vector<entry> entries(const entry& e, std::string_view path,
                             std::span<const char* const> known) const {
    if (e.value.IsNull()) return {};
    if (!e.value.IsMap()) {
      fail(e, path, "expected a map, got " + std::string(type_name(e.value)));
    }
    return entries(e.value, path, known);
  }

  std::vector<entry> entries(const YAML::Node& map, std::string_view path,
                             std::span<const char* const> known) const {
    std::vector<entry> out;
    for (const auto& kv : map) {
      entry e{"", kv.first, kv.second};
      const std::string where = path.empty() ? std::string("the top level") : std::string(path);
      if (!kv.first.IsScalar()) {
        fail_at(line_of(kv.first, line_of(map, 1)), where,
                "a key must be a name, not " + std::string(type_name(kv.first)));
      }
      e.key = kv.first.Scalar();
      const std::string p = join(path, e.key);
      for (const entry& seen : out) {
        if (seen.key == e.key) {
          fail_at(line_of(e.key_node, 1), p,
                  "given twice (first on line " + std::to_string(line_of(seen.key_node, 1)) + ")");
        }
      }
      if (!known.empty() && std::find(known.begin(), known.end(), e.key) == known.end()) {
        fail_at(line_of(e.key_node, 1), p, unknown_key_problem(e.key, known));
      }
      out.push_back(std::move(e));
    }
    return out;
  }

  static std::string unknown_key_problem(std::string_view key, std::span<const char* const> known) {
    const char* best = nullptr;
    std::size_t best_distance = 3;  // suggest only close names
    for (const char* k : known) {
      if (const std::size_t d = distance(key, k); d < best_distance) {
        best = k;
        best_distance = d;
      }
    }
    if (best != nullptr) return "unknown key; did you mean \"" + std::string(best) + "\"?";
    std::string list;
    for (const char* k : known) list += (list.empty() ? "" : ", ") + std::string(k);
    return "unknown key; expected one of " + list;
  }

  // Returns the scalar value of `e`; fails on a map, a list or nothing.
  std::string text(const entry& e, std::string_view path) const {
    if (!e.value.IsScalar())
      fail(e, path, "expected a value, got " + std::string(type_name(e.value)));
    return e.value.Scalar();
  }

  std::size_t number(const entry& e, std::string_view path, std::uint64_t min,
                     std::uint64_t max) const {
    const std::string s = text(e, path);
    std::uint64_t value = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (!plain_or(e.value, "int") || ec == std::errc::invalid_argument ||
        end != s.data() + s.size() || s.empty()) {
      fail(e, path,
           "expected a whole number, got " + quote(s) +
               (e.value.Tag() == "!" ? " (a quoted string)" : ""));
    }
    if (ec == std::errc::result_out_of_range || value < min || value > max) {
      fail(
          e, path,
          quote(s) + " is out of range: use " + std::to_string(min) + " to " + std::to_string(max));
    }
    return static_cast<std::size_t>(value);
  }

  bool boolean(const entry& e, std::string_view path) const {
    const std::string s = text(e, path);
    if (plain_or(e.value, "bool")) {
      if (s == "true" || s == "True" || s == "TRUE" || s == "yes" || s == "on") return true;
      if (s == "false" || s == "False" || s == "FALSE" || s == "no" || s == "off") return false;
    }
    fail(e, path, "expected true or false, got " + quote(s));
  }

  microseconds duration(const entry& e, std::string_view path, microseconds min,
                        microseconds max = kMaxTimeout) const {
    const std::string s = text(e, path);
    auto d = parse_duration(s);
    if (!d) fail(e, path, d.error());
    if (*d < min || *d > max) {
      fail(e, path,
           "duration " + quote(s) + " is out of range: use " + format_duration(min) + " to " +
               format_duration(max),
           make_error_code(errc::invalid_duration));
    }
    return *d;
  }

  milliseconds millis(const entry& e, std::string_view path, milliseconds min) const {
    const microseconds d = duration(e, path, min);
    if (d.count() % 1000 != 0) {
      fail(e, path, "duration " + quote(text(e, path)) + " is not a whole number of milliseconds",
           make_error_code(errc::invalid_duration));
    }
    return std::chrono::duration_cast<milliseconds>(d);
  }

  // A store URI is checked by parsing it, never by connecting. memory:// is opened: that
  // only allocates, and checks its options exactly as `sluice serve` will.
  void check_store(const entry& e, std::string_view path, std::string_view uri) const {
    const std::size_t sep = uri.find("://");
    const std::string_view scheme = sep == std::string_view::npos ? "" : uri.substr(0, sep);
    if (scheme == "memory") {
      if (auto s = open_store(uri); !s) fail(e, path, s.error());
      return;
    }
    if (scheme == "redis" || scheme == "rediss" || scheme == "unix" || scheme == "redis+unix") {
      if (auto o = parse_redis_uri(uri); !o) fail(e, path, o.error());
      return;
    }
    if (scheme == "redis+cluster" || scheme == "rediss+cluster") {
      if (auto o = parse_redis_cluster_uri(uri); !o) fail(e, path, o.error());
      return;
    }
    if (scheme == "redis+sentinel" || scheme == "rediss+sentinel") {
      if (auto o = parse_redis_sentinel_uri(uri); !o) fail(e, path, o.error());
      return;
    }
    // Only the scheme is shown: the rest of a URI may hold a password.
    fail(e, path,
         (sep == std::string_view::npos ? std::string("expected SCHEME://...")
                                        : "unknown scheme " + quote(scheme)) +
             "; use memory://, redis://, rediss://, unix://, redis+cluster:// or "
             "redis+sentinel://",
         make_error_code(errc::invalid_store_uri));
  }

  void read_breaker(const entry& section, breaker_options& b) const {
    static constexpr std::array kKeys = {"failures_to_open", "open_for", "max_open_for"};
    const entry* max_entry = nullptr;
    const auto list = entries(section, "breaker", kKeys);
    for (const entry& e : list) {
      const std::string p = join("breaker", e.key);
      if (e.key == "failures_to_open") {
        b.failures_to_open = static_cast<std::uint32_t>(number(e, p, 1, 1000000));
      } else if (e.key == "open_for") {
        b.open_for = duration(e, p, 1ms);
      } else if (e.key == "max_open_for") {
        b.max_open_for = duration(e, p, 1ms);
        max_entry = &e;
      }
    }
    if (b.max_open_for < b.open_for) {
      const std::string problem = "must be at least open_for (" + format_duration(b.open_for) + ")";
      if (max_entry != nullptr) fail(*max_entry, "breaker.max_open_for", problem);
      fail_at(line_of(section), "breaker.max_open_for", problem + "; it defaults to 30s");
    }
  }

  void read_limits(const entry& section, server_config& c) const {
    static constexpr std::array kKeys = {"max_connections", "max_body_bytes", "max_key_bytes",
                                         "header_timeout",  "body_timeout",   "idle_timeout",
                                         "drain_timeout"};
    for (const entry& e : entries(section, "limits", kKeys)) {
      const std::string p = join("limits", e.key);
      if (e.key == "max_connections") {
        c.max_connections = number(e, p, 1, 10000000);
      } else if (e.key == "max_body_bytes") {
        c.max_body_bytes = number(e, p, 64, 64 << 20);
      } else if (e.key == "max_key_bytes") {
        c.max_key_bytes = number(e, p, 1, 65535);
      } else if (e.key == "header_timeout") {
        c.header_timeout = millis(e, p, 1ms);
      } else if (e.key == "body_timeout") {
        c.body_timeout = millis(e, p, 1ms);
      } else if (e.key == "idle_timeout") {
        c.idle_timeout = millis(e, p, 1ms);
      } else if (e.key == "drain_timeout") {
        c.drain_timeout = millis(e, p, 0ms);
      }
    }
  }

  void read_auth(const entry& section, server_config& c) const {
    static constexpr std::array kKeys = {"api_tokens",   "api_tokens_env",   "api_tokens_file",
                                         "admin_tokens", "admin_tokens_env", "admin_tokens_file",
                                         "admin_open"};
    const entry* source[2] = {nullptr, nullptr};  // api, admin: one source each
    for (const entry& e : entries(section, "auth", kKeys)) {
      const std::string p = join("auth", e.key);
      if (e.key == "admin_open") {
        c.admin_open = boolean(e, p);
        continue;
      }
      const bool admin = e.key.starts_with("admin");
      const std::string_view kind = admin ? "admin_tokens" : "api_tokens";
      if (const entry* first = source[admin ? 1 : 0]; first != nullptr) {
        fail(e, p,
             "give " + std::string(kind) + " one way only; " + first->key + " is on line " +
                 std::to_string(line_of(*first)));
      }
      source[admin ? 1 : 0] = &e;
      std::vector<std::string>& tokens = admin ? c.admin_tokens : c.api_tokens;
      if (e.key.ends_with("_env")) {
        tokens = tokens_from_env(e, p);
      } else if (e.key.ends_with("_file")) {
        tokens = tokens_from_file(e, p);
      } else {
        tokens = token_list(e, p);
      }
    }
  }

  std::vector<std::string> token_list(const entry& e, std::string_view path) const {
    if (e.value.IsNull()) return {};
    if (!e.value.IsSequence()) {
      fail(e, path, "expected a list of tokens, got " + std::string(type_name(e.value)));
    }
    std::vector<std::string> tokens;
    for (std::size_t i = 0; i < e.value.size(); ++i) {
      const YAML::Node item = e.value[i];
      const entry at{e.key, e.key_node, item};
      const std::string p = std::string(path) + "[" + std::to_string(i) + "]";
      if (!item.IsScalar()) fail(at, p, "expected a token, got " + std::string(type_name(item)));
      if (!valid_token(item.Scalar())) fail(at, p, bad_token_problem());
      tokens.push_back(item.Scalar());
    }
    return tokens;
  }

  // Tokens are secrets: messages say which one is wrong, never what it is.
  static std::string bad_token_problem() {
    return "not a bearer token (use 1 to 4096 of A-Z a-z 0-9 - . _ ~ + /, then any =); "
           "its value is not shown";
  }

  // Tokens in `text`, separated by commas (or newlines); blank parts skipped.
  std::vector<std::string> split_tokens(const entry& e, std::string_view path,
                                        std::string_view text, std::string_view where) const {
    std::vector<std::string> tokens;
    std::size_t n = 0;
    while (!text.empty()) {
      const std::size_t end = text.find_first_of(",\n");
      // Line breaks too: a token file may end its lines in CRLF.
      const std::string_view token = trim(text.substr(0, end), " \t\r\n");
      text = end == std::string_view::npos ? std::string_view{} : text.substr(end + 1);
      if (token.empty() || token.front() == '#') continue;
      ++n;
      if (!valid_token(token)) {
        fail(e, path,
             std::string(where) + ": token " + std::to_string(n) + " is " + bad_token_problem());
      }
      tokens.emplace_back(token);
    }
    // An empty source would turn authentication off without a word: refuse it.
    if (tokens.empty()) fail(e, path, std::string(where) + " holds no token");
    return tokens;
  }

  std::vector<std::string> tokens_from_env(const entry& e, std::string_view path) const {
    const std::string var = text(e, path);
    if (var.empty() || !std::all_of(var.begin(), var.end(), [](char c) {
          return is_name_char(c) && c != '.' && c != '-';
        })) {
      fail(e, path, quote(var) + " is not an environment variable name");
    }
    const char* value = std::getenv(var.c_str());
    if (value == nullptr) fail(e, path, "environment variable " + var + " is not set");
    return split_tokens(e, path, value, "environment variable " + var);
  }

  std::vector<std::string> tokens_from_file(const entry& e, std::string_view path) const {
    const std::string file = readable_file(e, path);
    std::ifstream in(file, std::ios::binary);
    std::stringstream content;
    content << in.rdbuf();
    if (!in) fail(e, path, "cannot read " + quote(file));
    return split_tokens(e, path, content.str(), "file " + quote(file));
  }

  void read_gate(const entry& section, std::string_view path, key_source& k) const {
    gate_override o = read_gate_fields(section, path);
    if (o.header) k.header = *o.header;
    if (o.query) k.query = *o.query;
    if (k.header.empty() && k.query.empty()) {
      fail(section, path, "the gate needs a key_header or a key_query to find the key");
    }
  }

  gate_override read_gate_fields(const entry& section, std::string_view path) const {
    static constexpr std::array kKeys = {"key_header", "key_query"};
    gate_override o;
    o.line = line_of(section);
    for (const entry& e : entries(section, path, kKeys)) {
      const std::string p = join(path, e.key);
      const std::string value = e.value.IsNull() ? std::string() : text(e, p);
      if (e.key == "key_header") {
        if (!value.empty() && !valid_header_name(value)) {
          fail(e, p, quote(value) + " is not an HTTP header name");
        }
        o.header = value;
      } else {
        if (!value.empty() && !valid_query_name(value)) {
          fail(e, p, quote(value) + " is not a query parameter name (use A-Z a-z 0-9 _ . - ~)");
        }
        o.query = value;
      }
    }
    return o;
  }

  void read_tls(const entry& section, tls_files& t) const {
    static constexpr std::array kKeys = {"cert", "key", "client_ca"};
    for (const entry& e : entries(section, "tls", kKeys)) {
      const std::string p = join("tls", e.key);
      std::string& file = e.key == "cert" ? t.cert : e.key == "key" ? t.key : t.client_ca;
      file = readable_file(e, p);
    }
    if (t.cert.empty() || t.key.empty()) {
      fail(section, "tls", "needs both cert and key (PEM files)");
    }
  }

  // Returns the file named by `e` (relative to the config's directory), which must be a
  // readable regular file of at most 1 MiB.
  std::string readable_file(const entry& e, std::string_view path) const {
    std::filesystem::path file = text(e, path);
    if (file.empty()) fail(e, path, "the file name is empty");
    if (file.is_relative()) file = base_dir_ / file;
    std::error_code ec;
    if (!std::filesystem::is_regular_file(file, ec) ||
        std::filesystem::file_size(file, ec) > kMaxFileBytes) {
      fail(e, path, "cannot read " + quote(file.string()) + ": not a file of at most 1 MiB");
    }
    return file.string();
  }

  void read_log(const entry& section, server_config& c) const {
    static constexpr std::array kKeys = {"level", "access_log"};
    static constexpr std::array kLevels = {"trace", "debug", "info", "warn", "error", "off"};
    for (const entry& e : entries(section, "log", kKeys)) {
      const std::string p = join("log", e.key);
      if (e.key == "level") {
        c.log_level = text(e, p);
        if (std::find(kLevels.begin(), kLevels.end(), c.log_level) == kLevels.end()) {
          fail(e, p,
               "log level " + quote(c.log_level) + ": use trace, debug, info, warn, error or off");
        }
      } else {
        c.access_log = boolean(e, p);
      }
    }
  }

  void read_policies(const entry& section, std::vector<served_policy>& out) {
    if (section.value.IsSequence()) {
      fail(section, "policies",
           "expected a map of name: {limit: ...}, got a list (write chat: {limit: 30/hour})");
    }
    const auto list = entries(section, "policies", {});
    if (list.empty()) {
      fail(section, "policies", "no policy defined; define at least one",
           make_error_code(errc::invalid_policy));
    }
    for (const entry& e : list) {
      const std::string p = join("policies", e.key);
      if (!valid_policy_name(e.key)) {
        fail_at(line_of(e.key_node, 1), p,
                "policy name " + quote(e.key) + ": use 1 to 64 of A-Z a-z 0-9 _ . -",
                make_error_code(errc::invalid_policy));
      }
      out.push_back(read_policy(e, p));
    }
  }

  served_policy read_policy(const entry& section, const std::string& path) {
    static constexpr std::array kKeys = {"limit",  "algorithm",  "on_failure",
                                         "shadow", "deny_cache", "gate"};
    if (!section.value.IsMap()) {
      fail(section, path,
           "expected a map such as {limit: 30/hour}, got " + std::string(type_name(section.value)));
    }
    served_policy sp;
    sp.policy.name = section.key;
    gate_override gate;
    gate.line = line_of(section);
    bool have_limit = false;
    for (const entry& e : entries(section, path, kKeys)) {
      const std::string p = join(path, e.key);
      if (e.key == "limit") {
        auto l = parse_limit(text(e, p));
        if (!l) fail(e, p, l.error());
        sp.policy.limit = *l;
        have_limit = true;
      } else if (e.key == "algorithm") {
        auto a = parse_algorithm(text(e, p));
        if (!a) fail(e, p, a.error());
        sp.policy.algorithm = *a;
      } else if (e.key == "on_failure") {
        auto m = parse_failure_mode(text(e, p));
        if (!m) fail(e, p, m.error());
        sp.policy.on_failure = *m;
      } else if (e.key == "shadow") {
        sp.policy.shadow = boolean(e, p);
      } else if (e.key == "deny_cache") {
        sp.policy.deny_cache = boolean(e, p);
      } else if (e.key == "gate") {
        gate = read_gate_fields(e, p);
      }
    }
    if (!have_limit) {
      fail(section, path, "missing \"limit\", e.g. limit: 30/hour",
           make_error_code(errc::invalid_policy));
    }
    gate_overrides_.push_back(std::move(gate));
    return sp;
  }

  std::string name_;
  std::filesystem::path base_dir_;
  std::vector<gate_override> gate_overrides_;  // one per policy, in order
};

result<server_config> parse(std::string_view yaml, const std::string& name,
                            const std::filesystem::path& base_dir) {
  reader r(name, base_dir);
  try {
    const std::string text(yaml);
    if (const int line = second_yaml_document_line(text); line != 0) {
      r.fail_at(line, "", "more than one YAML document (a second ---)");
    }
    std::vector<YAML::Node> documents = YAML::LoadAll(text);
    server_config c = r.read(documents);
    c.source = name;
    return c;
  } catch (const config_failure& f) {
    return fail(f.e);
  } catch (const YAML::Exception& e) {
    const int line = e.mark.line >= 0 ? e.mark.line + 1 : 1;
    std::string problem = "malformed YAML: " + e.msg;
    if (e.mark.column >= 0) problem += " (column " + std::to_string(e.mark.column + 1) + ")";
    return fail(
        sluice::error{invalid_config(), name + ":" + std::to_string(line) + ": " + problem});
  } catch (const std::exception& e) {
    return fail(sluice::error{invalid_config(), name + ": cannot read the config: " + e.what()});
  }
}

}  // namespace

std::string listen_problem(std::string_view address) { return check_listen(address); }

namespace {

// Sees only where documents, and the second one's first node, start.
class document_counter final : public YAML::EventHandler {
 public:
  int documents = 0;
  int second_start = 0;  // the line of its `---`
  int second_node = 0;   // the line of its first node, where the old loader pointed

  void OnDocumentStart(const YAML::Mark& mark) override {
    if (++documents == 2) second_start = mark.line + 1;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { node(mark); }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { node(mark); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                const std::string&) override {
    node(mark);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    node(mark);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {
    node(mark);
  }
  void OnMapEnd() override {}

 private:
  void node(const YAML::Mark& mark) {
    if (documents == 2 && second_node == 0) second_node = mark.line + 1;
  }
};

}  // namespace

int second_yaml_document_line(const std::string& yaml) {
  std::istringstream in(yaml);
  YAML::Parser parser(in);
  document_counter counter;
  int handled = 0;
  while (handled < 2 && parser.HandleNextDocument(counter)) ++handled;
  if (handled < 2) return 0;
  if (counter.second_node > 0) return counter.second_node;
  return counter.second_start > 0 ? counter.second_start : 1;
}

result<server_config> parse_config(std::string_view yaml, const std::string& name) {
  return parse(yaml, name, std::filesystem::current_path());
}

result<server_config> load_config(const std::filesystem::path& path) {
  const std::string name = path.string();
  try {
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (ec || !std::filesystem::exists(status)) {
      if (!ec) ec = std::make_error_code(std::errc::no_such_file_or_directory);
      return fail(sluice::error{ec, name + ": cannot read the config: " + ec.message()});
    }
    if (!std::filesystem::is_regular_file(status)) {
      return fail(sluice::error{std::make_error_code(std::errc::invalid_argument),
                                name + ": cannot read the config: not a regular file"});
    }
    if (std::filesystem::file_size(path) > kMaxFileBytes) {
      return fail(sluice::error{std::make_error_code(std::errc::file_too_large),
                                name + ": cannot read the config: larger than 1 MiB"});
    }
    std::ifstream in(path, std::ios::binary);
    std::stringstream content;
    content << in.rdbuf();
    if (!in) {
      const std::error_code read_ec(errno != 0 ? errno : EIO, std::generic_category());
      return fail(sluice::error{read_ec, name + ": cannot read the config: " + read_ec.message()});
    }
    return parse(content.str(), name, path.parent_path());
  } catch (const std::exception& e) {
    return fail(sluice::error{std::make_error_code(std::errc::io_error),
                              name + ": cannot read the config: " + e.what()});
  }
}

}  // namespace sluice::server
