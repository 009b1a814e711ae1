#include "core/striped.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <thread>
#include <vector>

namespace sluice::internal {
namespace {

TEST(StripedCounters, SumsEveryThreadsAddsExactly) {
  // 19 counters span three cache-line blocks per stripe; 2 stripes for 8 threads, so
  // threads share stripes and the adds must still all count.
  for (const std::size_t stripes : {std::size_t{1}, std::size_t{2}, std::size_t{64}}) {
    striped_counters c(19, stripes);
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&c, t] {
        for (int i = 0; i < 20000; ++i) {
          c.add(3);
          c.add(18, 2);
          c.add(static_cast<std::size_t>(t));
        }
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(c.sum(3), 8u * 20000 + 20000) << stripes;  // thread 3 adds to counter 3 too
    EXPECT_EQ(c.sum(18), 8u * 20000 * 2) << stripes;
    for (std::size_t i = 0; i < 8; ++i) {
      if (i != 3) {
        EXPECT_EQ(c.sum(i), 20000u) << stripes << " " << i;
      }
    }
    for (std::size_t i = 8; i < 18; ++i) EXPECT_EQ(c.sum(i), 0u) << stripes << " " << i;
  }
}

TEST(StripedCounters, ThreadsGetDistinctNumbers) {
  const std::size_t mine = thread_number();
  EXPECT_EQ(thread_number(), mine);  // fixed for the thread's life
  std::size_t other = mine;
  std::thread([&] { other = thread_number(); }).join();
  EXPECT_NE(other, mine);
}

}  // namespace
}  // namespace sluice::internal
