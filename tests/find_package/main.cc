// Verifies that an installed sluice links and decides (2/1s admits two and denies the
// third), and that open_store knows the Redis schemes exactly when sluice::redis is linked.
#include <sluice/sluice.h>

#include <cstdio>
#include <memory>
#include <string>

namespace {

int fail(const char* what, const std::string& why) {
  std::fprintf(stderr, "%s: %s\n", what, why.c_str());
  return 1;
}

}  // namespace

int main() {
  auto store = sluice::open_store("memory://?shards=4");
  if (!store) return fail("open_store(memory://)", store.error().message());
  sluice::limiter lim{*store};
  auto limit = sluice::parse_limit("2/1s");
  if (!limit) return fail("parse_limit", limit.error().message());
  if (auto added = lim.add_policy({"demo", *limit, sluice::algorithm::gcra}); !added) {
    return fail("add_policy", added.error().message());
  }
  const bool expected[] = {true, true, false};
  for (int i = 0; i < 3; ++i) {
    auto d = lim.acquire("demo", "user:42");
    if (!d) return fail("acquire", d.error().message());
    if (d->allowed != expected[i]) return fail("acquire", "decision " + std::to_string(i + 1));
  }

  // Port 1 on loopback: nothing listens, so a Redis store opens and is not ready.
  auto redis = sluice::open_store("redis://127.0.0.1:1?connect_timeout=100ms");
#ifdef SLUICE_TEST_REDIS
  if (!redis) return fail("open_store(redis://) with sluice::redis", redis.error().message());
  if ((*redis)->health().ready) return fail("redis health", "ready with nothing listening");
#else
  if (redis) return fail("open_store(redis://) without sluice::redis", "opened");
  if (redis.error().code != sluice::errc::unsupported_store) {
    return fail("open_store(redis://) without sluice::redis", redis.error().message());
  }
#endif
  std::puts("find_package consumer: ok");
  return 0;
}
