#include "sluice/breaker.h"

#include <algorithm>
#include <limits>

namespace sluice {
namespace {

using std::chrono::microseconds;

std::int64_t saturating_add(std::int64_t a, std::int64_t b) noexcept {
  constexpr std::int64_t max = std::numeric_limits<std::int64_t>::max();
  constexpr std::int64_t min = std::numeric_limits<std::int64_t>::min();
  if (b > 0 && a > max - b) return max;
  if (b < 0 && a < min - b) return min;
  return a + b;
}

breaker_options normalized(breaker_options o) noexcept {
  o.failures_to_open = std::max<std::uint32_t>(o.failures_to_open, 1);
  o.open_for = std::max(o.open_for, microseconds(1));
  o.max_open_for = std::max(o.max_open_for, o.open_for);
  return o;
}

}  // namespace

std::string_view to_string(breaker_state s) noexcept {
  switch (s) {
    case breaker_state::closed:
      return "closed";
    case breaker_state::open:
      return "open";
    case breaker_state::half_open:
      return "half_open";
  }
  return "unknown";
}

circuit_breaker::circuit_breaker(breaker_options options, const clock& time_source) noexcept
    : open_period_(normalized(options).open_for),
      options_(normalized(options)),
      clock_(&time_source) {}

bool circuit_breaker::allow() noexcept {
  const breaker_state s = state_.load(std::memory_order_acquire);
  if (s == breaker_state::closed) return true;
  // Refusals need no lock: they are most calls while the store is down.
  if (s == breaker_state::half_open && probe_out_.load(std::memory_order_relaxed)) return false;
  if (s == breaker_state::open) {
    const std::int64_t now = clock_->now().count();
    // A clock that stepped back before the opening must not keep the breaker open longer.
    if (now < probe_at_.load(std::memory_order_relaxed) &&
        now >= opened_at_.load(std::memory_order_relaxed)) {
      return false;
    }
  }

  std::lock_guard lock(mu_);
  switch (state_.load(std::memory_order_relaxed)) {
    case breaker_state::closed:
      return true;
    case breaker_state::open: {
      const std::int64_t now = clock_->now().count();
      if (now < probe_at_.load(std::memory_order_relaxed) &&
          now >= opened_at_.load(std::memory_order_relaxed)) {
        return false;
      }
      break;
    }
    case breaker_state::half_open:
      if (probe_out_.load(std::memory_order_relaxed)) return false;
      break;
  }
  probe_out_.store(true, std::memory_order_relaxed);
  state_.store(breaker_state::half_open, std::memory_order_release);
  probes_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void circuit_breaker::on_success() noexcept {
  if (state_.load(std::memory_order_acquire) == breaker_state::closed &&
      failures_.load(std::memory_order_relaxed) == 0) {
    return;
  }
  std::lock_guard lock(mu_);
  failures_.store(0, std::memory_order_relaxed);
  open_period_ = options_.open_for;
  probe_out_.store(false, std::memory_order_relaxed);
  state_.store(breaker_state::closed, std::memory_order_release);
}

void circuit_breaker::on_failure() noexcept {
  std::lock_guard lock(mu_);
  switch (state_.load(std::memory_order_relaxed)) {
    case breaker_state::closed: {
      const std::uint32_t n = failures_.load(std::memory_order_relaxed) + 1;
      failures_.store(n, std::memory_order_relaxed);
      if (n >= options_.failures_to_open) {
        opened_.fetch_add(1, std::memory_order_relaxed);
        open_locked(clock_->now().count());
      }
      return;
    }
    case breaker_state::open:
      return;
    case breaker_state::half_open:
      open_period_ = open_period_ > options_.max_open_for / 2
                         ? options_.max_open_for
                         : std::min(open_period_ * 2, options_.max_open_for);
      probes_failed_.fetch_add(1, std::memory_order_relaxed);
      open_locked(clock_->now().count());
      return;
  }
}

void circuit_breaker::on_abandoned() noexcept {
  if (state_.load(std::memory_order_acquire) == breaker_state::closed) return;
  std::lock_guard lock(mu_);
  if (state_.load(std::memory_order_relaxed) == breaker_state::half_open) {
    probe_out_.store(false, std::memory_order_relaxed);
  }
}

void circuit_breaker::probe_now() noexcept {
  if (state_.load(std::memory_order_acquire) != breaker_state::open) return;
  std::lock_guard lock(mu_);
  if (state_.load(std::memory_order_relaxed) != breaker_state::open) return;
  const std::int64_t now = clock_->now().count();
  if (now < probe_at_.load(std::memory_order_relaxed)) {
    probe_at_.store(now, std::memory_order_relaxed);
    // A clock at the opening itself (a manual one) must see the probe due too.
    opened_at_.store(std::min(opened_at_.load(std::memory_order_relaxed), now),
                     std::memory_order_relaxed);
  }
}

void circuit_breaker::open_locked(std::int64_t now) noexcept {
  failures_.store(0, std::memory_order_relaxed);
  probe_out_.store(false, std::memory_order_relaxed);
  opened_at_.store(now, std::memory_order_relaxed);
  probe_at_.store(saturating_add(now, open_period_.count()), std::memory_order_relaxed);
  state_.store(breaker_state::open, std::memory_order_release);
}

std::chrono::microseconds circuit_breaker::next_probe_in() const noexcept {
  if (state_.load(std::memory_order_acquire) != breaker_state::open) return microseconds(0);
  const std::int64_t now = clock_->now().count();
  const std::int64_t at = probe_at_.load(std::memory_order_relaxed);
  if (now >= at || now < opened_at_.load(std::memory_order_relaxed)) return microseconds(0);
  return microseconds(at - now);
}

breaker_stats circuit_breaker::stats() const noexcept {
  return {opened_.load(std::memory_order_relaxed), probes_.load(std::memory_order_relaxed),
          probes_failed_.load(std::memory_order_relaxed)};
}

}  // namespace sluice
