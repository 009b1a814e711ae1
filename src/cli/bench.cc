#include "cli/bench.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sluice/error.h"

namespace sluice::cli {
namespace {

using steady = std::chrono::steady_clock;
constexpr auto relaxed = std::memory_order_relaxed;

// Latencies in nanoseconds, in log-linear buckets: exact below 64 ns, then 32 buckets per
// power of two, so a bucket's midpoint is within 1/64 of every value in it. Thread-safe;
// recording is one relaxed add, so completions on any thread can record.
class latency_histogram {
 public:
  void record(std::uint64_t ns) noexcept { counts_[index(ns)].fetch_add(1, relaxed); }

  // Adds every value `other` recorded.
  void add(const latency_histogram& other) noexcept {
    for (std::size_t i = 0; i < kBuckets; ++i) {
      counts_[i].fetch_add(other.counts_[i].load(relaxed), relaxed);
    }
  }

  // Returns the smallest recorded value v (its bucket's midpoint) such that at least
  // q of the values are at most v; 0 when nothing was recorded.
  double quantile_ns(double q) const noexcept {
    std::uint64_t total = 0;
    for (const auto& c : counts_) total += c.load(relaxed);
    if (total == 0) return 0;
    const auto rank = std::max<std::uint64_t>(
        1, static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total))));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < kBuckets; ++i) {
      seen += counts_[i].load(relaxed);
      if (seen >= rank) return midpoint(i);
    }
    return midpoint(kBuckets - 1);
  }

 private:
  static constexpr int kSubBits = 5;
  static constexpr std::size_t kSub = std::size_t{1} << kSubBits;
  static constexpr std::size_t kBuckets = kSub * (64 - kSubBits + 1);

  static std::size_t index(std::uint64_t v) noexcept {
    if (v < 2 * kSub) return static_cast<std::size_t>(v);
    const int shift = static_cast<int>(std::bit_width(v)) - 1 - kSubBits;  // at least 1
    return static_cast<std::size_t>(shift) * kSub + static_cast<std::size_t>(v >> shift);
  }

  static double midpoint(std::size_t i) noexcept {
    if (i < 2 * kSub) return static_cast<double>(i);
    const std::size_t shift = i / kSub - 1;
    const double top = static_cast<double>(i - shift * kSub);  // in [kSub, 2 kSub)
    return std::ldexp(top + 0.5, static_cast<int>(shift));
  }

  std::array<std::atomic<std::uint64_t>, kBuckets> counts_{};
};

// Returns what a call that came to `d` counts as.
call_outcome outcome_of(const result<decision>& d) {
  if (d) return d->allowed ? call_outcome::allowed : call_outcome::denied;
  return d.error().code == make_error_code(errc::timeout) ? call_outcome::timeout
                                                          : call_outcome::error;
}

// Returns `v` rounded to `digits` decimals, as the double that prints that way.
double round_to(double v, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::round(v * scale) / scale;
}

}  // namespace

// What the completions share with the generator. Thread-safe: completions update it from
// any thread while the generator waits on `inflight`. On the heap, held by every call's
// token as well, so that a completion finishing after the generator has seen the last
// count never touches freed memory.
struct load_state {
  // Calls made and not yet completed. An int: the type atomic waits on without a proxy.
  std::atomic<int> inflight{0};
  int low_water = 0;  // the generator sleeps until `inflight` drops to this
  std::atomic<std::uint64_t> allowed{0};
  std::atomic<std::uint64_t> denied{0};
  std::atomic<std::uint64_t> errors{0};
  std::atomic<std::uint64_t> timeouts{0};
  latency_histogram latency;

  // Blocks until at most `n` calls are in flight.
  void wait_until_at_most(int n) {
    for (int now = inflight.load(std::memory_order_acquire); now > n;
         now = inflight.load(std::memory_order_acquire)) {
      inflight.wait(now, std::memory_order_acquire);
    }
  }
};

void call_token::complete(call_outcome outcome) const {
  load_state& s = *state_;
  const auto elapsed = steady::now() - started_;
  s.latency.record(static_cast<std::uint64_t>(
      std::max<std::int64_t>(0, std::chrono::nanoseconds(elapsed).count())));
  switch (outcome) {
    case call_outcome::allowed:
      s.allowed.fetch_add(1, relaxed);
      break;
    case call_outcome::denied:
      s.denied.fetch_add(1, relaxed);
      break;
    case call_outcome::timeout:
      s.timeouts.fetch_add(1, relaxed);
      break;
    case call_outcome::error:
      s.errors.fetch_add(1, relaxed);
      break;
  }
  const int left = s.inflight.fetch_sub(1, std::memory_order_acq_rel) - 1;
  if (left == s.low_water || left == 0) s.inflight.notify_one();
}

bench_report run_load(const load_options& options, const start_call& start) {
  const std::size_t key_count = std::max<std::size_t>(1, options.keys);
  const std::size_t threads = std::clamp<std::size_t>(options.threads, 1, key_count);

  const auto begin = steady::now();
  const auto deadline = begin + std::chrono::duration_cast<steady::duration>(options.seconds);
  // One generator: calls on keys [first, first + count) until the deadline, then waits for
  // them all. Returns what its calls recorded.
  const auto generate = [&](std::size_t first, std::size_t count) {
    const int window = static_cast<int>(std::clamp<std::size_t>(options.inflight, 1, 1 << 20));
    const int refill =
        options.refill == 0
            ? std::max(1, window / 16)
            : static_cast<int>(std::clamp<std::size_t>(options.refill, 1, std::size_t(window)));
    auto state = std::make_shared<load_state>();
    state->low_water = window - refill;
    std::size_t next_key = 0;
    for (;;) {
      // Top the window up, then sleep until it has drained to the low-water mark. A callee
      // that completes inline (the memory store) never fills it and just runs back to back.
      int in_flight = state->inflight.load(std::memory_order_acquire);
      auto now = steady::now();
      if (now >= deadline) break;
      for (; in_flight < window; ++in_flight) {
        const std::size_t key = first + next_key;
        if (++next_key == count) next_key = 0;
        state->inflight.fetch_add(1, std::memory_order_acq_rel);
        start(key, call_token(state, now));
        now = steady::now();
      }
      state->wait_until_at_most(state->low_water);
    }
    state->wait_until_at_most(0);
    return state;
  };
  std::vector<std::shared_ptr<load_state>> states(threads);
  if (threads == 1) {
    states[0] = generate(0, key_count);
  } else {
    std::vector<std::thread> generators;
    generators.reserve(threads);
    for (std::size_t t = 0; t < threads; ++t) {
      const std::size_t first = t * key_count / threads;
      const std::size_t last = (t + 1) * key_count / threads;
      generators.emplace_back([&, t, first, last] { states[t] = generate(first, last - first); });
    }
    for (auto& g : generators) g.join();
  }
  const std::chrono::duration<double> took = steady::now() - begin;

  bench_report out;
  latency_histogram latency;
  for (const auto& s : states) {
    out.allowed += s->allowed.load();
    out.denied += s->denied.load();
    out.errors += s->errors.load();
    out.timeouts += s->timeouts.load();
    latency.add(s->latency);
  }
  out.decisions = out.allowed + out.denied;
  out.seconds = took.count();
  out.per_second = out.seconds > 0 ? static_cast<double>(out.decisions) / out.seconds : 0;
  out.p50_us = latency.quantile_ns(0.50) / 1000;
  out.p99_us = latency.quantile_ns(0.99) / 1000;
  out.p999_us = latency.quantile_ns(0.999) / 1000;
  return out;
}

bench_report run_bench(store& s, const bench_options& options) {
  const std::size_t key_count = std::max<std::size_t>(1, options.keys);
  std::vector<std::string> keys;
  keys.reserve(key_count);
  for (std::size_t i = 0; i < key_count; ++i) {
    keys.push_back(options.prefix + ":" + std::to_string(i));
  }
  return run_load(options, [&](std::size_t key, call_token token) {
    const request r{keys[key], options.limit, options.algorithm};
    s.async_acquire(
        r, [token = std::move(token)](result<decision> d) { token.complete(outcome_of(d)); });
  });
}

bench_report run_limiter_bench(limiter& lim, const bench_options& options, bool deny_cache) {
  const std::size_t key_count = std::max<std::size_t>(1, options.keys);
  std::vector<std::string> keys;
  keys.reserve(key_count);
  for (std::size_t i = 0; i < key_count; ++i) keys.push_back(std::to_string(i));
  policy p{options.prefix, options.limit, options.algorithm};
  p.deny_cache = deny_cache;
  // The CLI checks the prefix as a policy name before it gets here.
  if (auto ok = lim.add_policy(p); !ok) return {};
  const policy& registered = *lim.find_policy(options.prefix);
  return run_load(options, [&](std::size_t key, call_token token) {
    lim.async_acquire(registered, keys[key], 1, [token = std::move(token)](result<decision> d) {
      token.complete(outcome_of(d));
    });
  });
}

nlohmann::ordered_json bench_json(const bench_report& r) {
  nlohmann::ordered_json j;
  j["decisions"] = r.decisions;
  j["seconds"] = round_to(r.seconds, 3);
  j["per_second"] = round_to(r.per_second, 1);
  j["allowed"] = r.allowed;
  j["denied"] = r.denied;
  j["errors"] = r.errors;
  j["timeouts"] = r.timeouts;
  j["p50_us"] = round_to(r.p50_us, 2);
  j["p99_us"] = round_to(r.p99_us, 2);
  j["p999_us"] = round_to(r.p999_us, 2);
  return j;
}

}  // namespace sluice::cli
