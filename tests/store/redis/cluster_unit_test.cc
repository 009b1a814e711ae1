// The Redis Cluster pieces that need no server: key slots, redirections, slot maps, and
// redis+cluster:// URIs. The cluster tests (cluster_test.cc) check the same slots against
// a real cluster's CLUSTER KEYSLOT.
#include <gtest/gtest.h>

#include "sluice/redis_cluster_store.h"
#include "store/redis/cluster.h"

namespace sluice::redis {
namespace {

using namespace std::chrono_literals;

reply integer(std::int64_t v) {
  reply r;
  r.type = reply::kind::integer;
  r.integer = v;
  return r;
}

reply bulk(std::string s) {
  reply r;
  r.type = reply::kind::string;
  r.text = std::move(s);
  return r;
}

reply array(std::vector<reply> e) {
  reply r;
  r.type = reply::kind::array;
  r.elements = std::move(e);
  return r;
}

reply range(int first, int last, std::string host, int port) {
  return array({integer(first), integer(last),
                array({bulk(std::move(host)), integer(port), bulk("a1b2c3")}),
                array({bulk("127.0.0.1"), integer(9999), bulk("replica")})});
}

// Verifies the checksum against its published check value and Redis's documented slots.
TEST(KeySlot, MatchesRedis) {
  EXPECT_EQ(crc16("123456789"), 0x31C3);
  EXPECT_EQ(crc16(""), 0);
  EXPECT_EQ(key_slot("foo"), 12182);
  EXPECT_EQ(key_slot("bar"), 5061);
  EXPECT_EQ(key_slot("123456789"), 12739);
  EXPECT_EQ(key_slot(""), 0);
}

// Verifies the hash tag rules: the first '{', the first '}' after it, and a tag only when
// something is between them.
TEST(KeySlot, HashTags) {
  EXPECT_EQ(key_slot("{user1000}.following"), key_slot("{user1000}.followers"));
  EXPECT_EQ(key_slot("{user1000}.following"), 3443);
  EXPECT_EQ(key_slot("sluice:{a}"), key_slot("a"));
  EXPECT_EQ(key_slot("foo{}{bar}"), 8363);     // empty first tag: the whole key
  EXPECT_EQ(key_slot("foo{{bar}}zap"), 4015);  // the tag is "{bar"
  EXPECT_EQ(key_slot("foo{{bar}}zap"), key_slot("{bar"));
  EXPECT_EQ(key_slot("foo{bar}{zap}"), key_slot("bar"));
  EXPECT_EQ(key_slot("no{close"), key_slot(std::string_view("no{close")));
  EXPECT_EQ(key_slot(std::string("a\0b", 3)), crc16(std::string("a\0b", 3)) & 16383);
}

// Verifies that MOVED and ASK errors give the slot, host and port (IPv6 and empty hosts too).
TEST(ParseRedirect, ParsesMovedAndAsk) {
  auto m = parse_redirect("MOVED 3999 127.0.0.1:6381");
  ASSERT_TRUE(m);
  EXPECT_FALSE(m->ask);
  EXPECT_EQ(m->slot, 3999);
  EXPECT_EQ(m->host, "127.0.0.1");
  EXPECT_EQ(m->port, 6381);

  auto a = parse_redirect("ASK 16383 redis-2.internal:7000");
  ASSERT_TRUE(a);
  EXPECT_TRUE(a->ask);
  EXPECT_EQ(a->slot, 16383);
  EXPECT_EQ(a->host, "redis-2.internal");

  auto v6 = parse_redirect("MOVED 1 ::1:7001");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 7001);

  auto unknown_host = parse_redirect("MOVED 7 :7002");  // the server does not know its address
  ASSERT_TRUE(unknown_host);
  EXPECT_EQ(unknown_host->host, "");
  EXPECT_EQ(unknown_host->port, 7002);
}

// Verifies that other errors and malformed redirections are not taken for one.
TEST(ParseRedirect, RejectsWhatIsNotOne) {
  for (const char* text :
       {"ERR unknown command", "MOVED", "MOVED 3999", "MOVED x 127.0.0.1:1", "MOVED 16384 h:1",
        "MOVED -1 h:1", "ASK 1 host", "ASK 1 host:0", "ASK 1 host:65536",
        "ASK 1 host:", "moved 1 h:1", "TRYAGAIN Multiple keys request during rehashing of slot"}) {
    EXPECT_FALSE(parse_redirect(text)) << text;
  }
}

// Verifies that a CLUSTER SLOTS reply gives each range with its master.
TEST(ParseClusterSlots, ParsesRanges) {
  const reply r = array({range(0, 5460, "127.0.0.1", 7000), range(5461, 10922, "", 7001),
                         range(10923, 16383, "?", 7002)});
  auto ranges = parse_cluster_slots(r, "10.0.0.9");
  ASSERT_TRUE(ranges) << ranges.error().message();
  ASSERT_EQ(ranges->size(), 3u);
  EXPECT_EQ((*ranges)[0].first, 0);
  EXPECT_EQ((*ranges)[0].last, 5460);
  EXPECT_EQ((*ranges)[0].host, "127.0.0.1");
  EXPECT_EQ((*ranges)[0].port, 7000);
  EXPECT_EQ((*ranges)[1].host, "10.0.0.9");  // empty: the node asked
  EXPECT_EQ((*ranges)[2].host, "10.0.0.9");  // "?": unknown, the node asked
  EXPECT_EQ((*ranges)[2].last, 16383);

  // A cluster with no slots assigned yet answers an empty array: a valid, empty map.
  auto empty = parse_cluster_slots(array({}), "h");
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());
}

// Verifies that errors and malformed CLUSTER SLOTS replies are refused with a message.
TEST(ParseClusterSlots, RejectsBadReplies) {
  reply err;
  err.type = reply::kind::error;
  err.text = "ERR This instance has cluster support disabled";
  auto e = parse_cluster_slots(err, "h");
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message().find("cluster support disabled"), std::string::npos);

  const std::vector<reply> bad = {
      bulk("OK"),
      array({integer(1)}),
      array({array({integer(0), integer(10)})}),
      array({array({integer(0), integer(16384), array({bulk("h"), integer(1)})})}),
      array({array({integer(10), integer(9), array({bulk("h"), integer(1)})})}),
      array({array({integer(-1), integer(9), array({bulk("h"), integer(1)})})}),
      array({array({integer(0), integer(9), array({bulk("h")})})}),
      array({array({integer(0), integer(9), array({bulk("h"), integer(0)})})}),
      array({array({integer(0), integer(9), array({bulk("h"), integer(70000)})})}),
      array({array({integer(0), integer(9), array({integer(5), integer(1)})})}),
      array({array({bulk("0"), integer(9), array({bulk("h"), integer(1)})})}),
  };
  for (std::size_t i = 0; i < bad.size(); ++i) {
    auto r = parse_cluster_slots(bad[i], "h");
    EXPECT_FALSE(r) << "case " << i;
    if (!r) {
      EXPECT_EQ(r.error().code, errc::store_error);
    }
  }
}

// Verifies that a redis+cluster:// URI gives its seeds, credentials and options.
TEST(ParseRedisClusterUri, ParsesSeedsAndOptions) {
  auto o = parse_redis_cluster_uri(
      "redis+cluster://alice:p%40ss@10.0.0.1:7000,10.0.0.2,[::1]:7002?timeout=20ms&pool=2&"
      "prefix=chrysopedia:ratelimit&hash_tag=0&max_redirects=3&refresh_interval=2s");
  ASSERT_TRUE(o) << o.error().message();
  ASSERT_EQ(o->seeds.size(), 3u);
  EXPECT_EQ(o->seeds[0].host, "10.0.0.1");
  EXPECT_EQ(o->seeds[0].port, 7000);
  EXPECT_EQ(o->seeds[1].host, "10.0.0.2");
  EXPECT_EQ(o->seeds[1].port, 6379);
  EXPECT_EQ(o->seeds[2].host, "::1");
  EXPECT_EQ(o->seeds[2].port, 7002);
  EXPECT_EQ(o->connection.username, "alice");
  EXPECT_EQ(o->connection.password, "p@ss");
  EXPECT_EQ(o->connection.timeout, 20ms);
  EXPECT_EQ(o->connection.pool, 2u);
  EXPECT_EQ(o->connection.key_prefix, "chrysopedia:ratelimit");
  EXPECT_FALSE(o->connection.tls);
  EXPECT_FALSE(o->hash_tag);
  EXPECT_EQ(o->max_redirects, 3);
  EXPECT_EQ(o->refresh_interval, 2s);

  auto d = parse_redis_cluster_uri("rediss+cluster://h:1?tls_ca=/etc/ca.pem");
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_TRUE(d->connection.tls);
  EXPECT_EQ(d->connection.tls_ca_file, "/etc/ca.pem");
  EXPECT_TRUE(d->hash_tag);
  EXPECT_EQ(d->max_redirects, 5);
  EXPECT_EQ(d->refresh_interval, 10s);
}

// Verifies that malformed redis+cluster:// URIs are refused.
TEST(ParseRedisClusterUri, RejectsBadOnes) {
  for (const char* uri :
       {"redis://h:1", "redis+cluster://", "redis+cluster://h:1,,h:2", "redis+cluster://h:1,",
        "redis+cluster://h:1/3", "redis+cluster://h:x", "redis+cluster://h:1?hash_tag=yes",
        "redis+cluster://h:1?max_redirects=17", "redis+cluster://h:1?refresh_interval=0s",
        "redis+cluster://h:1?refresh_interval=soon", "redis+cluster://h:1?bogus=1",
        "redis+cluster://h:1?pool=0"}) {
    auto o = parse_redis_cluster_uri(uri);
    EXPECT_FALSE(o) << uri;
    if (!o) {
      EXPECT_EQ(o.error().code, errc::invalid_store_uri) << uri;
    }
  }
  // The password never shows in the message.
  auto o = parse_redis_cluster_uri("redis+cluster://u:hunter2@h:1/5");
  ASSERT_FALSE(o);
  EXPECT_EQ(o.error().message().find("hunter2"), std::string::npos) << o.error().message();
  EXPECT_NE(o.error().message().find("database 0"), std::string::npos) << o.error().message();
}

}  // namespace
}  // namespace sluice::redis
