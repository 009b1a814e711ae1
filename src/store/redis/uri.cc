#include <optional>
#include <string>
#include <string_view>

#include "core/text.h"
#include "sluice/limit.h"
#include "sluice/redis_cluster_store.h"
#include "sluice/redis_sentinel_store.h"
#include "sluice/redis_store.h"
#include "store/query.h"

namespace sluice {
namespace {

using internal::parse_number;
// The most calls one batch script run decides.
constexpr std::size_t kMaxBatch = 4096;
constexpr std::size_t npos = std::string_view::npos;
using internal::percent_decode;

unexpected<error> bad(std::string_view uri, const std::string& problem) {
  // Never echo the password back: print the URI up to the credentials.
  std::string shown(
      uri.substr(0, uri.find("://") == std::string_view::npos ? uri.size() : uri.find("://") + 3));
  return make_error(errc::invalid_store_uri, "store \"" + shown + "...\": " + problem);
}

result<std::chrono::milliseconds> parse_ms(std::string_view value) {
  auto d = parse_duration(value);
  if (!d) return fail(d.error());
  return std::chrono::duration_cast<std::chrono::milliseconds>(*d);
}

// A multi-host URI cut into its parts: what follows "scheme://", less the query (after '?')
// and the user info (up to and with the last '@'). None when the scheme is neither of the
// two given.
struct multi_host_uri {
  std::string_view scheme;    // `plain` or `tls`
  std::string_view rest;      // "host:port[,host:port...][/path]"
  std::string_view query;     // without the '?'
  std::string_view userinfo;  // "user:password@", or empty
};

std::optional<multi_host_uri> split_multi_host(std::string_view uri, std::string_view plain,
                                               std::string_view tls) {
  const std::size_t scheme_end = uri.find("://");
  const std::string_view scheme = uri.substr(0, scheme_end);
  if (scheme_end == std::string_view::npos || (scheme != plain && scheme != tls)) {
    return std::nullopt;
  }
  multi_host_uri u;
  u.scheme = scheme;
  u.rest = uri.substr(scheme_end + 3);
  if (const std::size_t q = u.rest.find('?'); q != std::string_view::npos) {
    u.query = u.rest.substr(q + 1);
    u.rest = u.rest.substr(0, q);
  }
  if (const std::size_t at = u.rest.rfind('@'); at != std::string_view::npos) {
    u.userinfo = u.rest.substr(0, at + 1);
    u.rest = u.rest.substr(at + 1);
  }
  return u;
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
      if (!hostport.empty() && (!parse_number(hostport.substr(1), o.port) || o.port == 0)) {
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
    for (const char c : o.host) {
      const auto byte = static_cast<unsigned char>(c);
      if (byte <= ' ' || byte >= 0x7f || std::string_view("/?#@,&=[]{}").find(c) != npos) {
        return bad(uri, "host has a character no host name or address has");
      }
    }
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
    } else if (name == "batch") {
      if (!parse_number(std::string_view(value), o.batch) || o.batch > kMaxBatch) {
        return bad(uri, "batch must be a number from 0 (off) to " + std::to_string(kMaxBatch));
      }
    } else if (name == "batch_bytes") {
      if (!parse_number(std::string_view(value), o.batch_bytes) || o.batch_bytes < 1024) {
        return bad(uri, "batch_bytes must be a number of bytes, at least 1024");
      }
    } else if (name == "log_layout") {
      if (value == "reference") {
        o.log_layout = redis_store_options::log_layout_kind::reference;
      } else if (value == "packed") {
        o.log_layout = redis_store_options::log_layout_kind::packed;
      } else {
        return bad(uri, "log_layout must be reference or packed");
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
    if (!ok) return fail(ok.error());
  }
  if (o.timeout.count() <= 0) return bad(uri, "timeout must be positive");
  if (o.connect_timeout.count() <= 0) return bad(uri, "connect_timeout must be positive");
  if (o.reconnect_min.count() <= 0 || o.reconnect_max < o.reconnect_min) {
    return bad(uri, "reconnect_min must be positive and at most reconnect_max");
  }
  return o;
}

result<redis_cluster_options> parse_redis_cluster_uri(std::string_view uri) {
  const std::optional<multi_host_uri> parts =
      split_multi_host(uri, "redis+cluster", "rediss+cluster");
  if (!parts) return bad(uri, "expected redis+cluster://host:port[,host:port...]");
  auto [scheme, rest, query, userinfo] = *parts;
  std::string_view path;
  if (const std::size_t slash = rest.find('/'); slash != std::string_view::npos) {
    path = rest.substr(slash);
    rest = rest.substr(0, slash);
  }

  // The cluster's own options; the others are redis:// options for every connection.
  redis_cluster_options o;
  std::string connection_query;
  auto params = internal::split_query(query);
  if (!params) return bad(uri, params.error().detail);
  for (const auto& [name, value] : *params) {
    if (name == "hash_tag") {
      if (value != "0" && value != "1") return bad(uri, "hash_tag must be 0 or 1");
      o.hash_tag = value == "1";
    } else if (name == "max_redirects") {
      if (!parse_number(value, o.max_redirects) || o.max_redirects < 0 || o.max_redirects > 16) {
        return bad(uri, "max_redirects must be a number from 0 to 16");
      }
    } else if (name == "refresh_interval") {
      auto d = parse_ms(value);
      if (!d) return bad(uri, "refresh_interval: " + d.error().message());
      if (d->count() <= 0) return bad(uri, "refresh_interval must be positive");
      o.refresh_interval = *d;
    } else {
      connection_query.append(connection_query.empty() ? "?" : "&")
          .append(name)
          .append("=")
          .append(value);
    }
  }

  // Each seed is parsed as the redis:// URI it would be alone, with the shared parts.
  const std::string single_scheme = scheme == "rediss+cluster" ? "rediss://" : "redis://";
  while (true) {
    const std::size_t comma = rest.find(',');
    const std::string_view seed = rest.substr(0, comma);
    if (seed.empty()) return bad(uri, "empty host in the seed list");
    std::string single = single_scheme;
    single.append(userinfo).append(seed).append(path).append(connection_query);
    auto one = parse_redis_uri(single);
    if (!one) return bad(uri, one.error().detail.substr(one.error().detail.find(": ") + 2));
    if (one->db != 0) return bad(uri, "a cluster has only database 0");
    o.seeds.push_back({one->host, one->port});
    o.connection = std::move(*one);
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  if (o.seeds.size() > 64) return bad(uri, "at most 64 seeds");
  return o;
}

result<redis_sentinel_options> parse_redis_sentinel_uri(std::string_view uri) {
  const std::optional<multi_host_uri> parts =
      split_multi_host(uri, "redis+sentinel", "rediss+sentinel");
  if (!parts) return bad(uri, "expected redis+sentinel://host:port[,host:port...]/MASTER_NAME");
  auto [scheme, rest, query, userinfo] = *parts;
  const std::size_t slash = rest.find('/');
  if (slash == std::string_view::npos || slash + 1 == rest.size()) {
    return bad(uri, "no master name (redis+sentinel://host:port/MASTER_NAME)");
  }
  auto name = percent_decode(rest.substr(slash + 1), false);
  if (!name) return bad(uri, "broken %-escape in the master name");
  for (const char c : *name) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte <= ' ' || byte == 0x7f || c == '/') {
      return bad(uri, "the master name has a space, a control character or a '/'");
    }
  }
  rest = rest.substr(0, slash);

  // The sentinels' own options; the others are redis:// options for every connection.
  redis_sentinel_options o;
  o.master_name = std::move(*name);
  std::string connection_query;
  auto params = internal::split_query(query);
  if (!params) return bad(uri, params.error().detail);
  for (const auto& [option, value] : *params) {
    if (option == "sentinel_user" || option == "sentinel_password") {
      auto decoded = percent_decode(value, false);
      if (!decoded) return bad(uri, "broken %-escape in " + std::string(option));
      (option == "sentinel_user" ? o.sentinel_username : o.sentinel_password) = std::move(*decoded);
    } else {
      connection_query.append(connection_query.empty() ? "?" : "&")
          .append(option)
          .append("=")
          .append(value);
    }
  }
  if (!o.sentinel_username.empty() && o.sentinel_password.empty()) {
    return bad(uri, "sentinel_user needs sentinel_password");
  }

  // Each sentinel is parsed as the redis:// URI it would be alone, with the shared parts;
  // a sentinel's port has no default (26379 is only a convention), so it must be written.
  const std::string single_scheme = scheme == "rediss+sentinel" ? "rediss://" : "redis://";
  if (rest.empty()) return bad(uri, "no sentinel (redis+sentinel://host:port/MASTER_NAME)");
  while (true) {
    const std::size_t comma = rest.find(',');
    const std::string_view sentinel = rest.substr(0, comma);
    if (sentinel.empty()) return bad(uri, "empty host in the sentinel list");
    const std::size_t colon = sentinel.rfind(':');
    if (colon == std::string_view::npos || sentinel.substr(colon).find(']') != npos) {
      return bad(
          uri, "sentinel \"" + std::string(sentinel.substr(0, 64)) + "\" has no port (host:port)");
    }
    std::string single = single_scheme;
    single.append(userinfo).append(sentinel).append(connection_query);
    auto one = parse_redis_uri(single);
    if (!one) return bad(uri, one.error().detail.substr(one.error().detail.find(": ") + 2));
    o.sentinels.push_back({one->host, one->port});
    o.connection = std::move(*one);
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  if (o.sentinels.size() > 64) return bad(uri, "at most 64 sentinels");
  return o;
}

}  // namespace sluice
