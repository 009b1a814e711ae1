#include "core/striped.h"

#include <algorithm>
#include <bit>
#include <thread>

namespace sluice::internal {
namespace {

std::atomic<std::size_t> next_thread{0};

}  // namespace

std::size_t thread_number() noexcept {
  thread_local const std::size_t n = next_thread.fetch_add(1, std::memory_order_relaxed);
  return n;
}

std::size_t default_stripes() noexcept {
  static const std::size_t n =
      std::bit_ceil(std::clamp<std::size_t>(std::thread::hardware_concurrency(), 2, 64));
  return n;
}

striped_counters::striped_counters(std::size_t counters, std::size_t stripes)
    : counters_(counters),
      blocks_per_stripe_(std::max<std::size_t>(1, (counters + kPerBlock - 1) / kPerBlock)),
      mask_(std::bit_ceil(std::max<std::size_t>(1, stripes)) - 1),
      blocks_(std::make_unique<block[]>(blocks_per_stripe_ * (mask_ + 1))) {}

}  // namespace sluice::internal
