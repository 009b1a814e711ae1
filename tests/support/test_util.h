// Small helpers shared by sluice's tests.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <ostream>
#include <source_location>
#include <thread>
#include <utility>
#include <vector>

#include "sluice/decision.h"
#include "sluice/error.h"
#include "sluice/limit.h"

namespace sluice {

// Makes gtest print decisions readably on failure.
inline void PrintTo(const decision& d, std::ostream* os) {
  *os << "{allowed=" << d.allowed << ", limit=" << d.limit << ", remaining=" << d.remaining
      << ", retry_after=" << d.retry_after.count() << "us, reset_after=" << d.reset_after.count()
      << "us, source=" << to_string(d.source) << "}";
}

namespace test {

inline constexpr algorithm all_algorithms[] = {algorithm::sliding_log, algorithm::sliding_counter,
                                               algorithm::gcra};

// Returns the limit `count` per `window`, failing the test if it is not a valid one.
inline limit make(std::int64_t count, std::chrono::microseconds window) {
  const result<limit> l = make_limit(count, window);
  EXPECT_TRUE(l) << l.error().message();
  return l ? *l : limit{1, std::chrono::microseconds(1)};
}

// Returns the value of `r`. When `r` failed, fails the test (at the caller's line) with the
// error's message and returns a value-initialised T, so that the test goes on and reports
// what follows instead of aborting the binary.
//
//   EXPECT_TRUE(must(lim.acquire("chat", "u")).allowed);
template <class T>
T must(const result<T>& r, const std::source_location at = std::source_location::current()) {
  if (r) return *r;
  ADD_FAILURE_AT(at.file_name(), static_cast<int>(at.line())) << r.error().message();
  return T{};
}

// The same for results with no value: fails the test when `r` failed.
inline void must(const result<void>& r,
                 const std::source_location at = std::source_location::current()) {
  if (!r) ADD_FAILURE_AT(at.file_name(), static_cast<int>(at.line())) << r.error().message();
}

// Completions a test double holds back, as a store's I/O thread would, until the test runs
// them. Thread-safe.
class deferred_calls {
 public:
  void push(std::function<void()> call) {
    const std::lock_guard lock(mu_);
    pending_.push_back(std::move(call));
  }
  // Runs the calls held so far, on this thread; returns how many ran.
  std::size_t run() {
    std::vector<std::function<void()>> batch;
    {
      const std::lock_guard lock(mu_);
      batch.swap(pending_);
    }
    for (auto& call : batch) call();
    return batch.size();
  }

 private:
  std::mutex mu_;
  std::vector<std::function<void()>> pending_;
};

// Polls `ready` every 5 ms for up to `limit`: bounded waiting for something another process
// or thread does (a reconnect), never a measurement of time.
inline bool eventually(const std::function<bool()>& ready,
                       std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return ready();
}

}  // namespace test
}  // namespace sluice
