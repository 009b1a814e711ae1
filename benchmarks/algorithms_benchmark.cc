// The pure algorithms on one state, with no store around them: the floor that the
// memory store's figures are compared to.
//
// Simulated time advances by the limit's emission interval (10 ms for 100/1s) on every
// call, so each call is admitted and a sliding log holds 100 entries, dropping one and
// adding one per call, as it does in the store benchmarks.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>

#include "sluice/algorithms.h"
#include "sluice/decision.h"
#include "sluice/limit.h"

namespace {

using std::chrono::microseconds;

constexpr sluice::limit kLimit{100, std::chrono::seconds(1)};
constexpr std::int64_t kStepUs = 10'000;  // window / count: one request at the limit's rate
constexpr std::int64_t kStartUs = std::int64_t{1'700'000'000} * 1'000'000;

// Runs `decide(state, now)` in a loop and reports decisions per second and how many
// were admitted (100% when the steady state is the intended one).
template <class State, class Decide>
void run(benchmark::State& bench, State& s, std::int64_t now, Decide decide) {
  std::int64_t allowed = 0;
  for (auto _ : bench) {
    const sluice::decision d = decide(s, microseconds{now});
    allowed += d.allowed ? 1 : 0;
    benchmark::DoNotOptimize(d);
    now += kStepUs;
  }
  bench.SetItemsProcessed(bench.iterations());
  bench.counters["allowed_pct"] =
      benchmark::Counter(100.0 * static_cast<double>(allowed) /
                         static_cast<double>(bench.iterations() > 0 ? bench.iterations() : 1));
}

void gcra(benchmark::State& bench) {
  sluice::gcra_state s;
  run(bench, s, kStartUs, [](sluice::gcra_state& st, microseconds now) {
    return sluice::gcra_decide(st, kLimit, now, 1, sluice::mode::acquire);
  });
}

void sliding_counter(benchmark::State& bench) {
  sluice::counter_state s;
  run(bench, s, kStartUs, [](sluice::counter_state& st, microseconds now) {
    return sluice::sliding_counter_decide(st, kLimit, now, 1, sluice::mode::acquire);
  });
}

void sliding_log(benchmark::State& bench) {
  sluice::sliding_log_state s;
  std::int64_t now = kStartUs;
  for (std::int64_t i = 0; i < kLimit.count; ++i, now += kStepUs) {
    sluice::sliding_log_decide(s, kLimit, microseconds{now}, 1, sluice::mode::acquire);
  }
  run(bench, s, now, [](sluice::sliding_log_state& st, microseconds t) {
    return sluice::sliding_log_decide(st, kLimit, t, 1, sluice::mode::acquire);
  });
  bench.counters["entries"] = static_cast<double>(s.size());
}

BENCHMARK(gcra)->Name("algorithm/gcra");
BENCHMARK(sliding_counter)->Name("algorithm/sliding_counter");
BENCHMARK(sliding_log)->Name("algorithm/sliding_log/entries:100");

}  // namespace
