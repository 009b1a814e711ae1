// A circuit breaker: stops calls to a store that keeps failing, and lets one probe call
// through now and then to find out when it is back (docs/DESIGN.md, invariant 3).
//
// Closed, every call goes through and consecutive failures are counted; at the threshold
// the breaker opens and refuses calls for `open_for`; then it is half-open and lets exactly
// one caller through as a probe. The probe's success closes it; its failure opens it again
// for twice as long, up to `max_open_for`.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string_view>

#include "sluice/clock.h"

namespace sluice {

struct breaker_options {
  // Consecutive failures that open a closed breaker (0 counts as 1).
  std::uint32_t failures_to_open = 5;
  // How long the breaker stays open after it trips (at least 1 µs).
  std::chrono::microseconds open_for = std::chrono::seconds(1);
  // The longest open period: each failed probe doubles the last one up to this (raised to
  // `open_for` when below it).
  std::chrono::microseconds max_open_for = std::chrono::seconds(30);
};

enum class breaker_state : std::uint8_t {
  closed,     // calls go through
  open,       // calls are refused until the open period is over
  half_open,  // one probe call is (or may be) in flight; the others are refused
};

// Returns "closed", "open" or "half_open".
std::string_view to_string(breaker_state s) noexcept;

struct breaker_stats {
  std::uint64_t opened = 0;         // times a closed breaker tripped open
  std::uint64_t probes = 0;         // probe calls let through while half-open
  std::uint64_t probes_failed = 0;  // probes that failed and opened the breaker again
};

// Thread-safe. While closed, `allow`, `on_success` and `on_abandoned` read one atomic and
// take no lock (unless failures are being counted); while open, `allow` reads the clock and
// two atomics until the probe is due. State changes take a mutex.
//
// The breaker cannot tell the probe's result from that of a call let through before it
// opened: any success closes it, and a failure while half-open counts as the probe's.
// Failures reported while open are ignored (they are calls from before it opened).
//
//   circuit_breaker b{{}, clock};
//   if (!b.allow()) return fallback();
//   auto r = call_store();
//   r ? b.on_success() : b.on_failure();
class circuit_breaker {
 public:
  // `time_source` must outlive the breaker.
  explicit circuit_breaker(breaker_options options = {},
                           const clock& time_source = system_clock()) noexcept;
  circuit_breaker(const circuit_breaker&) = delete;
  circuit_breaker& operator=(const circuit_breaker&) = delete;

  // Returns whether the caller may call the store now. Closed: true. Open: false until the
  // open period is over, then true for exactly one caller (the probe), which must report
  // back with `on_success`, `on_failure` or `on_abandoned`. Half-open: false while the
  // probe is out.
  bool allow() noexcept;
  // Reports a call that worked: closes the breaker, clears the failure count and restores
  // the initial open period.
  void on_success() noexcept;
  // Reports a call that failed: counts it while closed (opening at the threshold); while
  // half-open, opens again for twice the last period (capped).
  void on_failure() noexcept;
  // Reports a call that says nothing about the store (it failed on bad input): frees the
  // probe's slot for the next caller while half-open; changes nothing else.
  void on_abandoned() noexcept;

  // Makes a probe due at once while open (the store says it answers again): the next
  // `allow` lets one caller through. Changes nothing when closed or half-open.
  void probe_now() noexcept;
  // Closes the breaker and forgets its failures, as `on_success` does, for a failure domain
  // that holds no keys any more (nothing would ever probe it).
  void reset() noexcept { on_success(); }

  breaker_state state() const noexcept { return state_.load(std::memory_order_acquire); }
  // Returns how long until `allow` lets a probe through while open (zero once one is due);
  // zero when closed or half-open.
  std::chrono::microseconds next_probe_in() const noexcept;
  breaker_stats stats() const noexcept;
  const breaker_options& options() const noexcept { return options_; }

 private:
  void open_locked(std::int64_t now) noexcept;

  // Read on every call; kept on its own cache line, away from the limiter's counters.
  alignas(64) std::atomic<breaker_state> state_{breaker_state::closed};
  std::atomic<std::uint32_t> failures_{0};  // consecutive, while closed
  std::atomic<std::int64_t> opened_at_{0};  // µs, when it last opened
  std::atomic<std::int64_t> probe_at_{0};   // µs, when the open period ends
  std::atomic<bool> probe_out_{false};      // half-open: the probe has not reported yet

  alignas(64) std::mutex mu_;
  std::chrono::microseconds open_period_{};  // the current (possibly doubled) open period
  std::atomic<std::uint64_t> opened_{0};
  std::atomic<std::uint64_t> probes_{0};
  std::atomic<std::uint64_t> probes_failed_{0};

  breaker_options options_;
  const clock* clock_;
};

}  // namespace sluice
