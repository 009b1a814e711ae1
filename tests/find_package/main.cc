// Verifies that an installed sluice links and decides: 2/1s admits two and denies the third.
#include <sluice/sluice.h>

#include <cstdio>
#include <memory>

int main() {
  sluice::limiter lim{std::make_shared<sluice::memory_store>()};
  auto limit = sluice::parse_limit("2/1s");
  if (!limit) {
    std::fprintf(stderr, "parse_limit: %s\n", limit.error().message().c_str());
    return 1;
  }
  if (auto added = lim.add_policy({"demo", *limit, sluice::algorithm::gcra}); !added) {
    std::fprintf(stderr, "add_policy: %s\n", added.error().message().c_str());
    return 1;
  }
  const bool expected[] = {true, true, false};
  for (int i = 0; i < 3; ++i) {
    auto d = lim.acquire("demo", "user:42");
    if (!d) {
      std::fprintf(stderr, "acquire %d: %s\n", i + 1, d.error().message().c_str());
      return 1;
    }
    if (d->allowed != expected[i]) {
      std::fprintf(stderr, "acquire %d: allowed=%d, expected %d\n", i + 1, d->allowed, expected[i]);
      return 1;
    }
  }
  std::puts("find_package consumer: ok");
  return 0;
}
