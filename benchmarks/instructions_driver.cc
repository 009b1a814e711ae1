// The loop whose instructions benchmarks/instructions_compare.sh counts under callgrind:
// `drive` makes N acquires on a memory store over 10 000 keys with an explicit clock that
// steps 7 µs a decision, after a warm-up that inserts every key. Built by the script against
// any two builds of sluice::core (it uses only what every version has), so that instruction
// counts, which a busy machine does not change, compare the decision path before and after.
//   instructions_driver ALGORITHM N     (ALGORITHM: 0 sliding_log, 1 sliding_counter, 2 gcra)
#include <sluice/memory_store.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

__attribute__((noinline)) long drive(sluice::memory_store& s, const std::vector<std::string>& keys,
                                     sluice::algorithm a, long n, long t0) {
  sluice::request r;
  r.limit = sluice::limit{100, std::chrono::seconds(1)};
  r.algorithm = a;
  long allowed = 0;
  for (long i = 0; i < n; ++i) {
    r.key = keys[static_cast<std::size_t>(i) % keys.size()];
    r.now = std::chrono::microseconds(t0 + i * 7);
    auto d = s.acquire(r);
    if (d && d->allowed) ++allowed;
  }
  return allowed;
}

int main(int argc, char** argv) {
  const int algo = std::atoi(argv[1]);
  const long n = std::atol(argv[2]);
  sluice::memory_store s;
  std::vector<std::string> keys;
  for (int i = 0; i < 10000; ++i) keys.push_back("user:" + std::to_string(i));
  const auto a = static_cast<sluice::algorithm>(algo);
  drive(s, keys, a, 20000, 1'000'000'000'000);  // warm: every key inserted
  std::printf("%ld\n", drive(s, keys, a, n, 1'000'000'200'000));
}
