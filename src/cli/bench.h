// `sluice bench`: a load generator for one store, from one process, through the store's
// async API. It keeps a fixed number of decisions in flight over a set of keys for a fixed
// time and reports throughput and latency (from the call to its completion).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "sluice/limit.h"
#include "sluice/store.h"

namespace sluice::cli {

struct bench_options {
  // The limit of every decision; the default admits everything a run can ask for.
  sluice::limit limit{1000000, std::chrono::seconds(1)};
  sluice::algorithm algorithm = sluice::algorithm::sliding_log;
  // Keys are `<prefix>:<i>` for i in [0, keys), used round robin.
  std::string prefix = "bench";
  std::size_t keys = 10000;
  // How long to issue calls; the calls still in flight then are waited for and counted.
  std::chrono::duration<double> seconds{5.0};
  // Calls in flight at once. The generator tops the window up whenever it has drained to
  // `inflight - refill` (at least 1), so calls go out in small bursts the store can batch.
  std::size_t inflight = 256;
  std::size_t refill = 0;  // 0: inflight / 16
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

// Runs the load described by `options` against `s` and returns what it measured. Blocks
// until every call it made has completed. Completions may run on any thread (the store's
// I/O thread, or inline); the generator's own thread is the caller's.
bench_report run_bench(store& s, const bench_options& options);

// Returns `r` as `sluice bench` prints it: decisions, seconds, per_second, allowed, denied,
// errors, timeouts, p50_us, p99_us, p999_us.
nlohmann::ordered_json bench_json(const bench_report& r);

}  // namespace sluice::cli
