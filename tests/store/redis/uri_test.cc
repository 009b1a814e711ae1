#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "sluice/redis_cluster_store.h"
#include "sluice/redis_sentinel_store.h"
#include "sluice/redis_store.h"

namespace sluice {
namespace {

using namespace std::chrono_literals;

// Verifies the defaults and every part of a full redis:// URI.
TEST(ParseRedisUri, ParsesEveryPart) {
  auto o = parse_redis_uri(
      "redis://alice:p%40ss@cache.local:6380/3?timeout=20ms&connect_timeout=2s&pool=4&"
      "prefix=chrysopedia:ratelimit&reconnect_min=5ms&reconnect_max=2s");
  ASSERT_TRUE(o) << o.error().message();
  EXPECT_EQ(o->host, "cache.local");
  EXPECT_EQ(o->port, 6380);
  EXPECT_EQ(o->username, "alice");
  EXPECT_EQ(o->password, "p@ss");
  EXPECT_EQ(o->db, 3);
  EXPECT_EQ(o->timeout, 20ms);
  EXPECT_EQ(o->connect_timeout, 2s);
  EXPECT_EQ(o->pool, 4u);
  EXPECT_EQ(o->key_prefix, "chrysopedia:ratelimit");
  EXPECT_EQ(o->reconnect_min, 5ms);
  EXPECT_EQ(o->reconnect_max, 2s);
  EXPECT_FALSE(o->tls);

  auto d = parse_redis_uri("redis://localhost");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->port, 6379);
  EXPECT_EQ(d->db, 0);
  EXPECT_EQ(d->timeout, 50ms);
  EXPECT_EQ(d->key_prefix, "sluice");
}

// Verifies password-only forms, TLS, IPv6 and Unix sockets.
TEST(ParseRedisUri, ParsesOtherForms) {
  auto a = parse_redis_uri("redis://:secret@127.0.0.1:7000");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->username, "");
  EXPECT_EQ(a->password, "secret");
  auto t =
      parse_redis_uri("rediss://[::1]:6390?tls_ca=/tmp/ca.pem&tls_server_name=redis&tls_verify=1");
  ASSERT_TRUE(t) << t.error().message();
  EXPECT_TRUE(t->tls);
  EXPECT_EQ(t->host, "::1");
  EXPECT_EQ(t->port, 6390);
  EXPECT_EQ(t->tls_ca_file, "/tmp/ca.pem");
  EXPECT_EQ(t->tls_server_name, "redis");
  auto u = parse_redis_uri("unix:///run/redis/redis.sock?db=2");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->unix_socket, "/run/redis/redis.sock");
  EXPECT_EQ(u->db, 2);
}

// Verifies that bad URIs are refused with a message naming the problem, and that the
// message never shows the password.
TEST(ParseRedisUri, RejectsBadUrisWithoutLeakingPasswords) {
  struct bad_case {
    const char* uri;
    const char* says;
  };
  for (const auto& c : std::vector<bad_case>{
           {"redis://host:0", "port"},
           {"redis://[::1]:0", "port"},
           {"redis://bad host:6379", "character"},
           {"redis://h\x01st", "character"},
           {"redis://a&b=c", "character"},
           {"redis://host:99999", "port"},
           {"redis://host:abc", "port"},
           {"redis://host/x", "database"},
           {"redis://host?timeout=fast", "timeout"},
           {"redis://host?pool=0", "pool"},
           {"redis://host?color=blue", "unknown option"},
           {"redis://host?timeout", "needs a value"},
           {"redis://user:%zz@host", "escape"},
           {"ftp://host", "scheme"},
           {"unix://relative", "unix:///"},
           {"redis://:hunter2@host?reconnect_min=2s&reconnect_max=1s", "reconnect"},
       }) {
    auto o = parse_redis_uri(c.uri);
    ASSERT_FALSE(o) << c.uri;
    EXPECT_EQ(o.error().code, make_error_code(errc::invalid_store_uri)) << c.uri;
    EXPECT_NE(o.error().message().find(c.says), std::string::npos)
        << c.uri << " -> " << o.error().message();
    EXPECT_EQ(o.error().message().find("hunter2"), std::string::npos);
  }
}

// Verifies that log_layout is an option of every Redis URI form (reference by default,
// packed when asked, carried to every connection of a cluster or Sentinel store) and that
// another value is an error naming the allowed ones.
TEST(ParseRedisUri, LogLayoutIsAnOptionOfEveryForm) {
  using layout = redis_store_options::log_layout_kind;
  auto plain = parse_redis_uri("redis://127.0.0.1:7000");
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->log_layout, layout::reference);
  for (const char* uri : {"redis://127.0.0.1:7000?log_layout=packed",
                          "rediss://h:7000/2?timeout=1s&log_layout=packed",
                          "unix:///tmp/redis.sock?log_layout=packed"}) {
    auto o = parse_redis_uri(uri);
    ASSERT_TRUE(o) << uri << ": " << o.error().message();
    EXPECT_EQ(o->log_layout, layout::packed) << uri;
  }
  auto ref = parse_redis_uri("redis://h?log_layout=reference");
  ASSERT_TRUE(ref);
  EXPECT_EQ(ref->log_layout, layout::reference);
  auto cluster = parse_redis_cluster_uri("redis+cluster://a:1,b:2?log_layout=packed&hash_tag=1");
  ASSERT_TRUE(cluster) << cluster.error().message();
  EXPECT_EQ(cluster->connection.log_layout, layout::packed);
  auto sentinel = parse_redis_sentinel_uri("redis+sentinel://a:26379,b:26380/m?log_layout=packed");
  ASSERT_TRUE(sentinel) << sentinel.error().message();
  EXPECT_EQ(sentinel->connection.log_layout, layout::packed);
  for (const char* uri : {"redis://h?log_layout=zset",
                          "redis://h?log_layout=", "redis+cluster://a:1?log_layout=Packed",
                          "redis+sentinel://a:26379/m?log_layout=x"}) {
    std::string message;
    if (std::string_view(uri).starts_with("redis+cluster")) {
      auto o = parse_redis_cluster_uri(uri);
      ASSERT_FALSE(o) << uri;
      message = o.error().message();
    } else if (std::string_view(uri).starts_with("redis+sentinel")) {
      auto o = parse_redis_sentinel_uri(uri);
      ASSERT_FALSE(o) << uri;
      message = o.error().message();
    } else {
      auto o = parse_redis_uri(uri);
      ASSERT_FALSE(o) << uri;
      message = o.error().message();
    }
    EXPECT_NE(message.find("log_layout must be reference or packed"), std::string::npos)
        << uri << ": " << message;
  }
}

}  // namespace
}  // namespace sluice
