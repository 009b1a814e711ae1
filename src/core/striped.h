// Counters that many threads add to and a reader sums now and then (metrics, statistics).
// Internal to sluice.
//
// One shared atomic per counter would be written by every thread on every event, and its
// cache line would move between cores each time. Here each thread adds to its own stripe: a
// copy of every counter on cache lines of its own. Threads are numbered in the order they
// first add; thread n uses stripe n mod stripes, so up to `stripes` threads never write a
// line another writes, and more threads still count exactly (the adds stay atomic), only
// sharing lines again. A sum reads every stripe without stopping the writers: it sees each
// add either whole or not yet.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace sluice::internal {

// Returns the calling thread's number: 0, 1, 2, ... in the order threads first ask.
std::size_t thread_number() noexcept;

// Returns the stripes a counter set has by default: the hardware threads rounded up to a
// power of two, at least 2 and at most 64.
std::size_t default_stripes() noexcept;

class striped_counters {
 public:
  // `counters` counters, all 0, each striped `stripes` ways (rounded up to a power of two).
  explicit striped_counters(std::size_t counters, std::size_t stripes = default_stripes());

  std::size_t size() const noexcept { return counters_; }

  // Adds `n` to counter `i` (< size()) on the calling thread's stripe.
  void add(std::size_t i, std::uint64_t n = 1) noexcept {
    block& b = blocks_[(thread_number() & mask_) * blocks_per_stripe_ + i / kPerBlock];
    b.v[i % kPerBlock].fetch_add(n, std::memory_order_relaxed);
  }

  // Returns the sum of counter `i` over every stripe.
  std::uint64_t sum(std::size_t i) const noexcept {
    std::uint64_t total = 0;
    for (std::size_t s = 0; s <= mask_; ++s) {
      total += blocks_[s * blocks_per_stripe_ + i / kPerBlock].v[i % kPerBlock].load(
          std::memory_order_relaxed);
    }
    return total;
  }

 private:
  static constexpr std::size_t kPerBlock = 8;  // 8 × 8 bytes: one cache line
  struct alignas(64) block {
    std::atomic<std::uint64_t> v[kPerBlock] = {};
  };

  std::size_t counters_;
  std::size_t blocks_per_stripe_;
  std::size_t mask_;
  std::unique_ptr<block[]> blocks_;
};

}  // namespace sluice::internal
