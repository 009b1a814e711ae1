// `sluice bench`: a load generator, from one process. It keeps a fixed number of calls in
// flight over a set of keys for a fixed time and reports throughput and latency (from the
// call to its completion). `run_load` is the generator, whatever the calls are; `run_bench`
// drives a store's async API with it (`sluice bench --store`), `run_limiter_bench` a
// limiter's (`sluice bench --limiter`, `--deny-cache`), and `run_grpc_bench` (grpc_bench.h)
// Envoy's rate limit service (`sluice bench --grpc`).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "sluice/limit.h"
#include "sluice/limiter.h"
#include "sluice/store.h"

namespace sluice::cli {

// How a load runs, whatever it calls.
struct load_options {
  // Calls go to keys 0, 1, ..., keys - 1, round robin.
  std::size_t keys = 10000;
  // How long to issue calls; the calls still in flight then are waited for and counted.
  std::chrono::duration<double> seconds{5.0};
  // Calls in flight at once. The generator tops the window up whenever it has drained to
  // `inflight - refill` (at least 1), so calls go out in small bursts the callee can batch.
  std::size_t inflight = 256;
  std::size_t refill = 0;  // 0: inflight / 16
  // Generator threads, each with `inflight` calls of its own in flight over its own share of
  // the keys (thread t of n: keys [t * keys / n, (t + 1) * keys / n)); at most `keys`.
  std::size_t threads = 1;
};

// A load on a store's async API (`run_bench`).
struct bench_options : load_options {
  // The limit of every decision; the default admits everything a run can ask for.
  sluice::limit limit{1000000, std::chrono::seconds(1)};
  sluice::algorithm algorithm = sluice::algorithm::sliding_log;
  // Keys are `<prefix>:<i>`.
  std::string prefix = "bench";
};

// What one run measured. `decisions` counts calls answered with a decision; `errors` the
// calls that failed for any reason but a timeout, `timeouts` those past their deadline.
// Percentiles cover every call (decisions and failures), in microseconds, to within ~3%.
struct bench_report {
  std::uint64_t decisions = 0;
  double seconds = 0;  // from the first call to the last completion
  double per_second = 0;
  std::uint64_t allowed = 0;
  std::uint64_t denied = 0;
  std::uint64_t errors = 0;
  std::uint64_t timeouts = 0;
  double p50_us = 0;
  double p99_us = 0;
  double p999_us = 0;
};

// What one call of a load came to.
enum class call_outcome { allowed, denied, error, timeout };

struct load_state;  // the run's counters and latency histogram (bench.cc)
class call_token;

// Starts one call on key `key` (in [0, options.keys)) that ends with `token.complete(...)`,
// made now (inline) or later from any thread. Runs on `run_load`'s thread; must not block.
using start_call = std::function<void(std::size_t key, call_token token)>;

// One call of a load, in flight. Copyable, so it can ride in a `std::function` completion;
// copies stand for the same call, and exactly one `complete` must be made over all of them.
// Thread-safe: `complete` may run on any thread, and the run's state stays alive as long as
// a copy does, so a token completed late never touches freed memory.
class call_token {
 public:
  // Records the call's latency (from when it was started to now) and its outcome.
  void complete(call_outcome outcome) const;

 private:
  friend bench_report run_load(const load_options&, const start_call&);
  call_token(std::shared_ptr<load_state> state, std::chrono::steady_clock::time_point started)
      : state_(std::move(state)), started_(started) {}

  std::shared_ptr<load_state> state_;
  std::chrono::steady_clock::time_point started_;
};

// Runs `start` with `options.inflight` calls in flight, keys round robin, for
// `options.seconds`; then waits for every call to complete and returns what it measured.
// Blocks the calling thread, which is the one that starts every call; with
// `options.threads` > 1, each generator thread starts the calls on its keys, so `start` runs
// on several threads at once and must be thread-safe. The report sums them (latencies of all
// calls; `seconds` is the longest thread's).
//
//   run_load(o, [&](std::size_t key, call_token t) {
//     s.async_acquire(requests[key], [t](result<decision> d) { t.complete(outcome(d)); });
//   });
bench_report run_load(const load_options& options, const start_call& start);

// Runs the load described by `options` against `s` and returns what it measured. Blocks
// until every call it made has completed. Completions may run on any thread (the store's
// I/O thread, or inline); the generator's own thread is the caller's.
bench_report run_bench(store& s, const bench_options& options);

// Runs the load described by `options` through `lim`'s async API, with one policy: named
// `options.prefix` (so the store keys are the same `<prefix>:<i>` as run_bench's), with
// `options.limit` and `options.algorithm`, the deny cache on when `deny_cache`. Blocks until
// every call has completed; the limiter must not have a policy of that name yet.
bench_report run_limiter_bench(limiter& lim, const bench_options& options, bool deny_cache);

// Returns `r` as `sluice bench` prints it: decisions, seconds, per_second, allowed, denied,
// errors, timeouts, p50_us, p99_us, p999_us.
nlohmann::ordered_json bench_json(const bench_report& r);

}  // namespace sluice::cli
