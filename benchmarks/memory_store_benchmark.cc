// Benchmarks of sluice::memory_store: decisions per second for each algorithm on one hot
// key, 10k keys and 1M keys, with 1 and 2 threads; and heap bytes per key.
//
// Throughput (`memory_store/<algorithm>/<keys>`). The limit is 100/1s. Time is simulated
// and passed in `request::now`, so the steady state is well defined and does not depend
// on the machine's speed: every key is hit once per 9.9 ms of simulated time, 1% above its
// limit's rate. A sliding_log key then holds 100 entries and each request drops the
// oldest and adds one; 1 or 2% of requests are denied; and every key's state stays live
// for over half a window ahead, so the store's sweep never drops a key about to be used.
// Keys are created in a shuffled order, so that the store's nodes do not lie in memory in
// the order they are used. Each thread has its own simulated clock, advanced per
// decision, and its own slice of the keys. With the hot key all threads share the key:
// that is the contention case, and as their clocks drift apart the key sees time step
// back and forth, so about half the requests are denied. The store is built and warmed up
// once per case, outside the timing, and shared by the threads and the runs.
// Counters: `allowed_pct` (98 to 99 in the steady state) and `expired_pct` (decisions
// whose key the sweep had dropped, so that it was created again; 0 when all is well).
// The `/system_clock` variant leaves `now` empty, so the store reads its own clock.
//
// Memory (`memory_store/bytes_per_key/...`): a fresh store, N keys inserted with one
// acquire each, or 100 each for a full sliding log (round-robin over the keys, as real
// traffic interleaves them), and the heap growth from glibc's mallinfo2() minus the key
// bytes, divided by N: the store's own cost per key beside the key itself.
#include <benchmark/benchmark.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "sluice/algorithms.h"
#include "sluice/limit.h"
#include "sluice/memory_store.h"
#include "sluice/store.h"

namespace {

using sluice::algorithm;
using std::chrono::microseconds;

constexpr sluice::limit kLimit{100, std::chrono::seconds(1)};
constexpr std::int64_t kStartUs = std::int64_t{1'700'000'000} * 1'000'000;  // Nov 2023
// Simulated clocks count units of 10 ps from kStartUs, so that a thread's step per decision
// is a whole number even with 1M keys.
constexpr std::int64_t kUnitsPerUs = 100'000;
// Simulated time between two requests on one key: 9.9 ms, 1% less than window / count.
constexpr std::int64_t kKeyInterval = 9'900 * kUnitsPerUs;
constexpr std::int64_t kWindow = 1'000'000 * kUnitsPerUs;
constexpr int kMaxThreads = 2;

// Returns the keys `user:0` … `user:<n-1>`, built once per n.
const std::vector<std::string>& keys_for(std::size_t n) {
  static std::map<std::size_t, std::vector<std::string>> cache;
  auto [it, fresh] = cache.try_emplace(n);
  if (fresh) {
    it->second.reserve(n);
    for (std::size_t i = 0; i < n; ++i) it->second.push_back("user:" + std::to_string(i));
  }
  return it->second;
}

struct store_case {
  algorithm algo;
  std::size_t keys;
  bool own_clock;  // leave request::now empty: the store reads sluice::system_clock()
};

// One thread's simulated clock and position in its slice of the keys. Kept between the
// runs of a case, so that every run continues the same steady state.
struct alignas(64) lane {
  std::int64_t clock = 0;  // units of 10 ps since kStartUs
  std::size_t begin = 0;
  std::size_t end = 0;
  std::size_t cursor = 0;
};

// A warmed-up store for one case and the threads' lanes over it.
class store_fixture {
 public:
  // `c` must outlive the fixture.
  explicit store_fixture(const store_case& c) : case_(c), keys_(keys_for(c.keys)) {}

  const store_case& the_case() const { return case_; }

  // Makes the lanes ready for `threads` threads: runs warm-up rounds in exactly the
  // order and at the times the threads will use, so the first timed request on every
  // key comes one key interval after its previous one. Returns false on a store error.
  bool prepare(int threads) {
    if (threads == threads_) return true;
    std::int64_t start = 0;
    for (const lane& l : lanes_) start = std::max(start, l.clock);
    const auto n = static_cast<std::size_t>(threads);
    threads_ = threads;
    for (std::size_t t = 0; t < n; ++t) {
      lane& l = lanes_[t];
      l.begin = case_.keys == 1 ? 0 : t * case_.keys / n;
      l.end = case_.keys == 1 ? 1 : (t + 1) * case_.keys / n;
      l.cursor = l.begin;
      // Staggered by one tick, so that threads sharing the hot key take turns in time.
      l.clock = start + static_cast<std::int64_t>(t) * tick();
    }
    sluice::request r{{}, kLimit, case_.algo, 1, {}};
    const bool fresh = start == 0;
    if (fresh && !create_keys(r)) return false;
    // A sliding log needs a full window of requests to hold its steady 100 entries. Its
    // denials come in a cycle of about 100 requests whose phase is set by when the log
    // first filled up, so each key joins the warm-up at its own round, 0 to 99: the keys'
    // denials are then spread evenly over time, not all in the same round.
    const bool log = case_.algo == algorithm::sliding_log;
    const std::int64_t rounds = fresh && log ? kLimit.count * 3 / 2 + 2 : 1;
    for (std::int64_t round = 0; round < rounds; ++round) {
      for (bool more = true; more;) {
        more = false;
        for (std::size_t t = 0; t < n; ++t) {
          lane& l = lanes_[t];
          r.key = keys_[l.cursor];
          if (!case_.own_clock) r.now = now(l.clock);
          const bool skip = fresh && log && round < static_cast<std::int64_t>(l.cursor * 37 % 100);
          if (!skip && !store_.acquire(r)) return false;
          l.clock += step();
          if (++l.cursor == l.end) l.cursor = l.begin;
          more = more || l.cursor != l.begin;
        }
      }
    }
    return true;
  }

  // Creates every key before the clocks' start, in a shuffled order and at times spread
  // over the preceding window. The store's nodes then lie in memory in an order unrelated
  // to the order the keys are used in, as with real traffic; and the keys' denials (one
  // or two in a hundred) fall at different times instead of all in the same round. A
  // gcra key spends its whole burst at once, so that it starts (and, hit above its rate,
  // stays) more than half a window ahead.
  bool create_keys(sluice::request& r) {
    std::vector<std::size_t> order(keys_.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::shuffle(order.begin(), order.end(), std::mt19937_64{42});
    const bool gcra = case_.algo == algorithm::gcra;
    const std::int64_t span =
        (gcra ? kWindow / 2 : kWindow) / static_cast<std::int64_t>(order.size());
    r.cost = gcra ? kLimit.count : 1;
    std::int64_t clock = -span * static_cast<std::int64_t>(order.size());
    for (const std::size_t i : order) {
      r.key = keys_[i];
      if (!case_.own_clock) r.now = now(clock);
      if (!store_.acquire(r)) return false;
      clock += span;
    }
    r.cost = 1;
    return true;
  }

  static microseconds now(std::int64_t clock) {
    return microseconds{kStartUs + clock / kUnitsPerUs};
  }
  // Simulated time between two consecutive keys in the round-robin order.
  std::int64_t tick() const { return kKeyInterval / static_cast<std::int64_t>(case_.keys); }
  // Simulated time a thread's clock advances per decision: with T threads each key is
  // still hit once per key interval.
  std::int64_t step() const { return static_cast<std::int64_t>(threads_) * tick(); }

  lane& lane_of(int thread) { return lanes_[static_cast<std::size_t>(thread)]; }
  const std::vector<std::string>& keys() const { return keys_; }
  sluice::memory_store& store() { return store_; }

  std::uint64_t expired_at_start = 0;

 private:
  const store_case& case_;
  const std::vector<std::string>& keys_;
  sluice::memory_store store_;
  std::array<lane, kMaxThreads> lanes_{};
  int threads_ = 0;
};

// The fixture of the case being run. One at a time: the 1M-key sliding log alone holds
// about 2 GB.
std::unique_ptr<store_fixture> g_fixture;
bool g_fixture_ok = false;

constexpr std::array<store_case, 10> kCases{{
    {algorithm::gcra, 1, false},
    {algorithm::gcra, 10'000, false},
    {algorithm::gcra, 1'000'000, false},
    {algorithm::gcra, 10'000, true},
    {algorithm::sliding_counter, 1, false},
    {algorithm::sliding_counter, 10'000, false},
    {algorithm::sliding_counter, 1'000'000, false},
    {algorithm::sliding_log, 1, false},
    {algorithm::sliding_log, 10'000, false},
    {algorithm::sliding_log, 1'000'000, false},
}};

// Google Benchmark's Setup: runs before the threads of every run start.
template <std::size_t I>
void setup_case(const benchmark::State& state) {
  const store_case& c = kCases[I];
  if (g_fixture == nullptr || &g_fixture->the_case() != &c) {
    g_fixture.reset();
    g_fixture = std::make_unique<store_fixture>(c);
  }
  g_fixture_ok = g_fixture->prepare(state.threads());
  g_fixture->expired_at_start = g_fixture->store().stats().expired;
}

void decisions(benchmark::State& state) {
  if (!g_fixture_ok) {
    state.SkipWithError("the store failed during warm-up");
    return;
  }
  store_fixture& f = *g_fixture;
  lane& shared_lane = f.lane_of(state.thread_index());
  lane l = shared_lane;
  const std::vector<std::string>& keys = f.keys();
  sluice::memory_store& store = f.store();
  const bool own_clock = f.the_case().own_clock;
  const std::int64_t step = f.step();
  std::int64_t allowed = 0;
  std::int64_t failed = 0;

  sluice::request r{{}, kLimit, f.the_case().algo, 1, {}};
  for (auto _ : state) {
    r.key = keys[l.cursor];
    if (!own_clock) r.now = store_fixture::now(l.clock);
    const sluice::result<sluice::decision> d = store.acquire(r);
    if (d) {
      allowed += d->allowed ? 1 : 0;
    } else {
      ++failed;
    }
    benchmark::DoNotOptimize(d);
    if (++l.cursor == l.end) l.cursor = l.begin;
    l.clock += step;
  }
  shared_lane = l;

  if (failed > 0) state.SkipWithError("the store returned errors");
  const auto n = static_cast<double>(std::max<benchmark::IterationCount>(1, state.iterations()));
  state.SetItemsProcessed(state.iterations());
  state.counters["allowed_pct"] =
      benchmark::Counter(100.0 * static_cast<double>(allowed) / n, benchmark::Counter::kAvgThreads);
  if (state.thread_index() == 0) {
    // All threads have left the loop by now (Google Benchmark waits for them at its end).
    const std::uint64_t expired = store.stats().expired - f.expired_at_start;
    state.counters["expired_pct"] =
        benchmark::Counter(100.0 * static_cast<double>(expired) / (n * state.threads()));
  }
}

std::string keys_label(std::size_t keys) {
  if (keys == 1) return "hot_key";
  if (keys % 1'000'000 == 0) return "keys:" + std::to_string(keys / 1'000'000) + "M";
  if (keys % 1'000 == 0) return "keys:" + std::to_string(keys / 1'000) + "k";
  return "keys:" + std::to_string(keys);
}

template <std::size_t... I>
void register_decisions(std::index_sequence<I...>) {
  (benchmark::RegisterBenchmark(
       ("memory_store/" + std::string(sluice::to_string(kCases[I].algo)) + "/" +
        keys_label(kCases[I].keys) + (kCases[I].own_clock ? "/system_clock" : ""))
           .c_str(),
       decisions)
       ->Setup(setup_case<I>)
       ->Threads(1)
       ->Threads(2)
       ->UseRealTime(),
   ...);
}

// Returns the bytes malloc has handed out and not had back, or -1 where mallinfo2 is
// not available.
std::int64_t heap_in_use() {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  const struct mallinfo2 m = mallinfo2();
  return static_cast<std::int64_t>(m.uordblks + m.hblkhd);
#else
  return -1;
#endif
}

// Inserts `n` keys into a fresh store, each with `requests` acquires (at distinct
// times 10 ms apart, all admitted), and reports the heap growth per key beside the key
// bytes. Timed, so it also gives inserts per second.
void bytes_per_key(benchmark::State& state, algorithm algo, std::size_t n, int requests) {
  g_fixture.reset();  // nothing else on the heap changes while measuring
  if (heap_in_use() < 0) {
    state.SkipWithError("needs glibc's mallinfo2");
    return;
  }
  const std::vector<std::string>& keys = keys_for(n);
  std::int64_t key_bytes = 0;
  for (const std::string& k : keys) key_bytes += static_cast<std::int64_t>(k.size());

  for (auto _ : state) {
    state.PauseTiming();
    auto store = std::make_unique<sluice::memory_store>();
    const std::int64_t before = heap_in_use();
    state.ResumeTiming();

    sluice::request r{{}, kLimit, algo, 1, {}};
    std::int64_t refused = 0;
    for (int i = 0; i < requests; ++i) {
      r.now = microseconds{kStartUs + i * 10'000};
      for (const std::string& k : keys) {
        r.key = k;
        const auto d = store->acquire(r);
        refused += d && d->allowed ? 0 : 1;
      }
    }

    state.PauseTiming();
    const std::int64_t growth = heap_in_use() - before;
    const double per_key = static_cast<double>(growth - key_bytes) / static_cast<double>(n);
    state.counters["bytes_per_key"] = per_key;
    if (requests > 1) {
      state.counters["bytes_per_entry"] = per_key / static_cast<double>(requests);
    }
    if (refused > 0 || store->stats().keys != n) state.SkipWithError("not every request stored");
    store.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(n) * requests);
}

void register_memory() {
  struct memory_case {
    algorithm algo;
    std::size_t keys;
    int requests;
  };
  constexpr memory_case cases[] = {
      {algorithm::gcra, 1'000'000, 1},
      {algorithm::sliding_counter, 1'000'000, 1},
      {algorithm::sliding_log, 1'000'000, 1},
      {algorithm::gcra, 100'000, 1},
      {algorithm::sliding_counter, 100'000, 1},
      {algorithm::sliding_log, 100'000, 1},
      {algorithm::sliding_log, 100'000, static_cast<int>(kLimit.count)},
  };
  for (const memory_case& c : cases) {
    const std::string name = "memory_store/bytes_per_key/" +
                             std::string(sluice::to_string(c.algo)) + "/" + keys_label(c.keys) +
                             (c.requests > 1 ? "/entries:" + std::to_string(c.requests) : "");
    benchmark::RegisterBenchmark(name.c_str(), bytes_per_key, c.algo, c.keys, c.requests)
        ->Iterations(1)
        ->Unit(benchmark::kMillisecond);
  }
}

const bool registered = [] {
  register_decisions(std::make_index_sequence<kCases.size()>{});
  register_memory();
  return true;
}();

}  // namespace
