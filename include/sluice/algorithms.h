// The three rate limiting algorithms as pure functions of (state, now, limit, cost).
//
// They read no clock and do no I/O: a store looks the state up, passes `now`, and keeps
// what the function leaves in the state. Each function returns the decision and, in
// `mode::acquire`, records an admitted request in the state; denied requests change
// nothing but may drop entries that have already expired. Times are microseconds since
// the Unix epoch. Preconditions (checked by `check_request`): 1 ≤ cost ≤ l.count and
// 0 ≤ now ≤ max_time.
//
// A state whose `expiry` is at or before `now` decides exactly like a fresh state, so a
// store may drop it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory_resource>

#include "sluice/decision.h"
#include "sluice/error.h"
#include "sluice/limit.h"

namespace sluice {

// The latest `now` sluice accepts (about 146,000 years after 1970).
inline constexpr std::chrono::microseconds max_time{std::int64_t{1} << 62};

// Returns success when `l`, `cost` and `now` meet the algorithms' preconditions, else
// `errc::invalid_limit` (a limit `make_limit` would refuse), `errc::invalid_cost`,
// `errc::cost_exceeds_limit` (a cost above the count can never be admitted) or
// `errc::invalid_time`.
result<void> check_request(const limit& l, std::int64_t cost, std::chrono::microseconds now);

// Returns whether `check_request` would succeed, without building an error: the test every
// decision pays for.
constexpr bool request_in_range(const limit& l, std::int64_t cost,
                                std::chrono::microseconds now) noexcept {
  return l.count >= 1 && l.window.count() >= 1 && l.window <= max_window &&
         l.count <= l.window.count() && cost >= 1 && cost <= l.count && now.count() >= 0 &&
         now <= max_time;
}

enum class mode : std::uint8_t {
  acquire,  // spend `cost` when it fits
  peek,     // answer as acquire would, spend nothing; `remaining` is what is available now
};

// GCRA with burst = count. The emission interval is window / count rounded up to a whole
// microsecond, so the sustained rate never exceeds the limit.
struct gcra_state {
  std::chrono::microseconds tat{0};  // theoretical arrival time; the key is full again at `tat`
};
decision gcra_decide(gcra_state& s, const limit& l, std::chrono::microseconds now,
                     std::int64_t cost, mode m) noexcept;
inline std::chrono::microseconds expiry(const gcra_state& s) noexcept { return s.tat; }

// Sliding window counter over windows aligned to multiples of the window since the epoch.
// The estimate is `current + ceil(previous * (window - elapsed) / window)`, the product and
// quotient in IEEE doubles (as the Redis scripts compute it; exact while the product stays
// below 2^53, monotonic past it).
struct counter_state {
  std::chrono::microseconds window_start{0};  // start of the window `current` counts
  std::int64_t previous = 0;                  // admitted in the window before it
  std::int64_t current = 0;                   // admitted in the window starting at window_start
};
decision sliding_counter_decide(counter_state& s, const limit& l, std::chrono::microseconds now,
                                std::int64_t cost, mode m) noexcept;
std::chrono::microseconds expiry(const counter_state& s, const limit& l) noexcept;

// The exact sliding log: one entry per distinct admission time, oldest first. Entries at
// or before `now - window` have expired. Not thread-safe; allocates from the memory
// resource it is given, which must outlive it.
class sliding_log_state {
 public:
  struct entry {
    std::chrono::microseconds at;
    std::int64_t count;
  };

  explicit sliding_log_state(
      std::pmr::memory_resource* mr = std::pmr::get_default_resource()) noexcept
      : mr_(mr) {}
  sliding_log_state(sliding_log_state&& other) noexcept;
  sliding_log_state& operator=(sliding_log_state&&) = delete;
  ~sliding_log_state();

  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  std::int64_t total() const noexcept { return total_; }  // sum of the entries' counts
  // Precondition: i < size(). 0 is the oldest entry.
  const entry& operator[](std::size_t i) const noexcept { return buf_[(head_ + i) & (cap_ - 1)]; }
  const entry& back() const noexcept { return (*this)[size_ - 1]; }
  // Bytes of entry storage held (for memory accounting).
  std::size_t capacity_bytes() const noexcept { return std::size_t{cap_} * sizeof(entry); }

  // Adds `count` at `at`, merging with the newest entry when the times are equal.
  // Returns false when memory could not be allocated (the state is unchanged).
  bool push_back(std::chrono::microseconds at, std::int64_t count) noexcept;
  void pop_front() noexcept;
  // Removes up to `units` from the newest entries; returns how many it removed.
  std::int64_t take_back(std::int64_t units) noexcept;
  // Gives memory back once the log is mostly empty.
  void shrink() noexcept;

 private:
  bool reallocate(std::uint32_t cap) noexcept;

  std::pmr::memory_resource* mr_;
  entry* buf_ = nullptr;
  std::uint32_t cap_ = 0;  // a power of two, or 0
  std::uint32_t head_ = 0;
  std::uint32_t size_ = 0;
  std::int64_t total_ = 0;
};
decision sliding_log_decide(sliding_log_state& s, const limit& l, std::chrono::microseconds now,
                            std::int64_t cost, mode m) noexcept;
std::chrono::microseconds expiry(const sliding_log_state& s, const limit& l) noexcept;

// Refunds: give back up to `cost` units that acquires spent, never more than is spent, so a
// key never has more than its full limit available. Each returns the units given back.
// gcra: the arrival time moves back by cost emission intervals, not before `now`.
std::int64_t gcra_refund(gcra_state& s, const limit& l, std::chrono::microseconds now,
                         std::int64_t cost) noexcept;
// sliding_counter: from the current window's count first, then the previous window's.
std::int64_t sliding_counter_refund(counter_state& s, const limit& l, std::chrono::microseconds now,
                                    std::int64_t cost) noexcept;
// sliding_log: the newest entries still in the window, as if the latest admissions had not
// been made.
std::int64_t sliding_log_refund(sliding_log_state& s, const limit& l, std::chrono::microseconds now,
                                std::int64_t cost) noexcept;

}  // namespace sluice
