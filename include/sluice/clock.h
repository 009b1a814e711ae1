// Where sluice gets the time. Algorithms never read a clock: stores ask one and pass `now`
// down, so tests drive a manual clock and never sleep.
#pragma once

#include <atomic>
#include <chrono>

namespace sluice {

// A source of the current time, as microseconds since the Unix epoch.
// Implementations are thread-safe.
class clock {
 public:
  virtual ~clock() = default;
  virtual std::chrono::microseconds now() const noexcept = 0;
};

// Returns the process-wide wall clock (std::chrono::system_clock). Thread-safe.
const clock& system_clock() noexcept;

// A clock that moves only when told to. Thread-safe.
//
//   manual_clock c{std::chrono::seconds(100)};
//   c.advance(std::chrono::milliseconds(500));  // now() == 100.5 s
class manual_clock final : public clock {
 public:
  explicit manual_clock(std::chrono::microseconds start = std::chrono::microseconds{0}) noexcept
      : now_(start.count()) {}

  std::chrono::microseconds now() const noexcept override {
    return std::chrono::microseconds{now_.load(std::memory_order_acquire)};
  }
  void set(std::chrono::microseconds t) noexcept {
    now_.store(t.count(), std::memory_order_release);
  }
  // Moves the clock by `d`, which may be negative (a clock that steps back).
  void advance(std::chrono::microseconds d) noexcept {
    now_.fetch_add(d.count(), std::memory_order_acq_rel);
  }

 private:
  std::atomic<std::chrono::microseconds::rep> now_;
};

}  // namespace sluice
