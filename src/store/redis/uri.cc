#include <string>
#include <string_view>

#include "core/text.h"
#include "sluice/limit.h"
#include "sluice/redis_store.h"
#include "store/redis/query.h"

namespace sluice {
namespace {

using internal::parse_number;
using internal::percent_decode;

error bad(std::string_view uri, const std::string& problem) {
  // Never echo the password back: print the URI up to the credentials.
  std::string shown(
      uri.substr(0, uri.find("://") == std::string_view::npos ? uri.size() : uri.find("://") + 3));
  return make_error(errc::invalid_store_uri, "store \"" + shown + "...\": " + problem);
}

result<std::chrono::milliseconds> parse_ms(std::string_view value) {
  auto d = parse_duration(value);
  if (!d) return d.error();
  return std::chrono::duration_cast<std::chrono::milliseconds>(*d);
}

}  // namespace

result<redis_store_options> parse_redis_uri(std::string_view uri) {
  redis_store_options o;
  const std::size_t scheme_end = uri.find("://");
  if (scheme_end == std::string_view::npos) return bad(uri, "expected redis://host:port");
  const std::string_view scheme = uri.substr(0, scheme_end);
  std::string_view rest = uri.substr(scheme_end + 3);

  std::string_view query;
  if (const std::size_t q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }

  if (scheme == "unix" || scheme == "redis+unix") {
    if (rest.empty() || rest.front() != '/') return bad(uri, "expected unix:///path/to/socket");
    o.unix_socket = std::string(rest);
  } else if (scheme == "redis" || scheme == "rediss") {
    o.tls = scheme == "rediss";
    if (const std::size_t at = rest.rfind('@'); at != std::string_view::npos) {
      const std::string_view userinfo = rest.substr(0, at);
      rest = rest.substr(at + 1);
      const std::size_t colon = userinfo.find(':');
      const std::string_view user = userinfo.substr(0, colon);
      const std::string_view pass =
          colon == std::string_view::npos ? std::string_view{} : userinfo.substr(colon + 1);
      // redis://:password@host is a password without a user; redis://password@host too
      // (the form redis-cli accepts).
      if (colon == std::string_view::npos) {
        auto password = percent_decode(user, false);
        if (!password) return bad(uri, "broken %-escape in password");
        o.password = std::move(*password);
      } else {
        auto name = percent_decode(user, false);
        auto password = percent_decode(pass, false);
        if (!name || !password) return bad(uri, "broken %-escape in user or password");
        o.username = std::move(*name);
        o.password = std::move(*password);
      }
    }
    std::string_view hostport = rest.substr(0, rest.find('/'));
    if (const std::size_t slash = rest.find('/'); slash != std::string_view::npos) {
      const std::string_view db = rest.substr(slash + 1);
      if (!db.empty() && (!parse_number(db, o.db) || o.db < 0)) {
        return bad(uri, "database must be a number (redis://host:port/0)");
      }
    }
    if (!hostport.empty() && hostport.front() == '[') {  // [::1]:6379
      const std::size_t close = hostport.find(']');
      if (close == std::string_view::npos) return bad(uri, "unclosed [ in host");
      o.host = std::string(hostport.substr(1, close - 1));
      hostport = hostport.substr(close + 1);
      if (!hostport.empty() && hostport.front() != ':') return bad(uri, "expected :port");
      if (!hostport.empty() && !parse_number(hostport.substr(1), o.port)) {
        return bad(uri, "port must be a number from 1 to 65535");
      }
    } else {
      const std::size_t colon = hostport.rfind(':');
      if (colon != std::string_view::npos) {
        if (!parse_number(hostport.substr(colon + 1), o.port) || o.port == 0) {
          return bad(uri, "port must be a number from 1 to 65535");
        }
        hostport = hostport.substr(0, colon);
      }
      if (!hostport.empty()) o.host = std::string(hostport);
    }
    if (o.host.empty()) return bad(uri, "host is empty");
  } else {
    return bad(uri, "unknown scheme (use redis://, rediss:// or unix://)");
  }

  auto params = internal::split_query(query);
  if (!params) return bad(uri, params.error().detail);
  for (const auto& [name, raw] : *params) {
    const auto decoded = percent_decode(raw, false);
    if (!decoded) return bad(uri, "broken %-escape");
    const std::string& value = *decoded;
    const std::string n(name);
    auto duration = [&](std::chrono::milliseconds& field) -> result<void> {
      auto d = parse_ms(value);
      if (!d) return bad(uri, n + ": " + d.error().message());
      field = *d;
      return {};
    };
    result<void> ok;
    if (name == "timeout") {
      ok = duration(o.timeout);
    } else if (name == "connect_timeout") {
      ok = duration(o.connect_timeout);
    } else if (name == "reconnect_min") {
      ok = duration(o.reconnect_min);
    } else if (name == "reconnect_max") {
      ok = duration(o.reconnect_max);
    } else if (name == "pool") {
      if (!parse_number(std::string_view(value), o.pool) || o.pool < 1 || o.pool > 64) {
        return bad(uri, "pool must be a number from 1 to 64");
      }
    } else if (name == "db") {
      if (!parse_number(std::string_view(value), o.db) || o.db < 0) {
        return bad(uri, "db must be a number");
      }
    } else if (name == "prefix") {
      o.key_prefix = value;
    } else if (name == "tls_ca") {
      o.tls_ca_file = value;
    } else if (name == "tls_cert") {
      o.tls_cert_file = value;
    } else if (name == "tls_key") {
      o.tls_key_file = value;
    } else if (name == "tls_server_name") {
      o.tls_server_name = value;
    } else if (name == "tls_verify") {
      if (value != "0" && value != "1") return bad(uri, "tls_verify must be 0 or 1");
      o.tls_verify = value == "1";
    } else {
      return bad(uri, "unknown option \"" + n + "\"");
    }
    if (!ok) return ok.error();
  }
  if (o.timeout.count() <= 0) return bad(uri, "timeout must be positive");
  if (o.connect_timeout.count() <= 0) return bad(uri, "connect_timeout must be positive");
  if (o.reconnect_min.count() <= 0 || o.reconnect_max < o.reconnect_min) {
    return bad(uri, "reconnect_min must be positive and at most reconnect_max");
  }
  return o;
}

}  // namespace sluice
