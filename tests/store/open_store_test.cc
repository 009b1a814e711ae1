// Tests of open_store and the memory store's URI (sluice/open_store.h): the URI parsed once
// into typed options, the program's options, and the schemes sluice::redis registers.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "sluice/clock.h"
#include "sluice/memory_store.h"
#include "sluice/open_store.h"

namespace sluice {
namespace {

// Verifies that parse_memory_uri reads every option and keeps the defaults of the others.
TEST(OpenStore, ParsesMemoryUri) {
  const result<memory_store_options> o = parse_memory_uri("memory://?shards=8&max_keys=100");
  ASSERT_TRUE(o) << o.error().message();
  EXPECT_EQ(o->shards, 8u);
  EXPECT_EQ(o->max_keys, 100u);
  EXPECT_EQ(o->max_key_length, memory_store_options{}.max_key_length);
  const result<memory_store_options> plain = parse_memory_uri("memory://");
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->shards, memory_store_options{}.shards);
}

// Verifies that bad memory URIs are refused with the problem named.
TEST(OpenStore, RefusesBadMemoryUris) {
  const struct {
    const char* uri;
    const char* says;
  } cases[] = {
      {"memory://host", "takes no host"},
      {"memory://?shards=0", "shards must be between 1 and 4096"},
      {"memory://?max_key_length=70000", "max_key_length must be between 1 and 65535"},
      {"memory://?max_keys=-1", "must be a whole number"},
      {"memory://?colour=blue", "unknown parameter \"colour\""},
      {"memory://?shards", "needs a value"},
  };
  for (const auto& c : cases) {
    const result<memory_store_options> o = parse_memory_uri(c.uri);
    ASSERT_FALSE(o) << c.uri;
    EXPECT_EQ(o.error().code, errc::invalid_store_uri) << c.uri;
    EXPECT_NE(o.error().message().find(c.says), std::string::npos) << o.error().message();
    const result<std::shared_ptr<store>> s = open_store(c.uri);
    ASSERT_FALSE(s) << c.uri;
    EXPECT_EQ(s.error().code, errc::invalid_store_uri);
  }
}

// Verifies that open_options.max_key_length sets the memory store's key limit unless the URI
// sets its own, which wins.
TEST(OpenStore, ProgramKeyLengthUnlessUriSaysOtherwise) {
  open_options o;
  o.max_key_length = 2000;
  const auto wide = open_store("memory://", o);
  ASSERT_TRUE(wide) << wide.error().message();
  EXPECT_NE((*wide)->describe().find("max_key_length=2000"), std::string::npos);
  const std::string key(1500, 'k');
  EXPECT_TRUE((*wide)->acquire({key, limit{1, std::chrono::seconds(1)}}));

  const auto narrow = open_store("memory://?max_key_length=10", o);
  ASSERT_TRUE(narrow);
  EXPECT_NE((*narrow)->describe().find("max_key_length=10"), std::string::npos);
  const result<decision> d = (*narrow)->acquire({key, limit{1, std::chrono::seconds(1)}});
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, errc::invalid_key);
}

// Verifies that the memory store decides on the clock given in open_options.
TEST(OpenStore, MemoryStoreUsesTheGivenClock) {
  manual_clock c{std::chrono::seconds(1000)};
  open_options o;
  o.time_source = &c;
  const auto s = open_store("memory://", o);
  ASSERT_TRUE(s);
  const request r{"k", limit{1, std::chrono::seconds(10)}, algorithm::sliding_log, 1, {}};
  EXPECT_TRUE((*s)->acquire(r)->allowed);
  EXPECT_FALSE((*s)->acquire(r)->allowed);
  c.advance(std::chrono::seconds(10));
  EXPECT_TRUE((*s)->acquire(r)->allowed);
}

// Verifies that unknown schemes and URIs without one are refused as invalid.
TEST(OpenStore, RefusesUnknownSchemes) {
  for (const char* uri : {"memcached://127.0.0.1", "127.0.0.1:6379", ""}) {
    const auto s = open_store(uri);
    ASSERT_FALSE(s) << uri;
    EXPECT_EQ(s.error().code, errc::invalid_store_uri) << uri;
  }
}

// Verifies that a program linked with sluice::redis (as this test is) opens redis:// through
// open_store: the scheme is registered by linking alone. Port 1 on loopback refuses at once;
// the store reports itself not ready, and why.
TEST(OpenStore, RedisSchemesAreRegisteredBySluiceRedis) {
  const auto s = open_store("redis://127.0.0.1:1?connect_timeout=200ms");
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_EQ((*s)->describe().rfind("redis://127.0.0.1:1", 0), 0u) << (*s)->describe();
  const store_health h = (*s)->health();
  EXPECT_FALSE(h.ready);
  EXPECT_FALSE(h.detail.empty());
  const auto bad = open_store("redis://127.0.0.1:1?pool=0");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, errc::invalid_store_uri);
}

// Verifies that the memory store reports its keys through the metric visitor.
TEST(OpenStore, MemoryStoreMetrics) {
  memory_store s;
  ASSERT_TRUE(s.acquire({"a", limit{5, std::chrono::seconds(1)}}));
  ASSERT_TRUE(s.acquire({"b", limit{5, std::chrono::seconds(1)}}));
  std::uint64_t keys = 99;
  int samples = 0;
  s.visit_metrics([&](const store_metric& m) {
    ++samples;
    if (m.name == "sluice_memory_keys") {
      EXPECT_EQ(m.type, store_metric::kind::gauge);
      keys = m.value;
    }
  });
  EXPECT_EQ(samples, 3);
  EXPECT_EQ(keys, 2u);
  EXPECT_TRUE(s.health().ready);
}

}  // namespace
}  // namespace sluice
