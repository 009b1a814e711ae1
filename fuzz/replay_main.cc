// Runs a fuzz target without libFuzzer: every file of the corpus directories given on the
// command line, then `--random N` pseudo-random mutations of them (fixed seed). Lets every
// compiler and sanitizer build run the fuzz targets as tests.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
  std::vector<std::string> inputs;
  long random_runs = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--random" && i + 1 < argc) {
      random_runs = std::stol(argv[++i]);
      continue;
    }
    for (const auto& entry : std::filesystem::recursive_directory_iterator(arg)) {
      if (!entry.is_regular_file()) continue;
      std::ifstream f(entry.path(), std::ios::binary);
      inputs.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    }
  }
  for (const std::string& s : inputs) {
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
  }
  // $SLUICE_FUZZ_LAST names a file that holds each mutation before it runs: the input that
  // hung or was killed is there afterwards.
  const char* last = std::getenv("SLUICE_FUZZ_LAST");
  std::mt19937_64 rng(42);
  for (long r = 0; r < random_runs; ++r) {
    std::string s = inputs.empty() ? std::string() : inputs[rng() % inputs.size()];
    const int edits = static_cast<int>(rng() % 8) + 1;
    for (int e = 0; e < edits; ++e) {
      const auto byte = static_cast<char>(rng() & 0xff);
      switch (rng() % 3) {
        case 0:
          s.insert(s.empty() ? 0 : rng() % (s.size() + 1), 1, byte);
          break;
        case 1:
          if (!s.empty()) s.erase(rng() % s.size(), 1);
          break;
        default:
          if (!s.empty()) s[rng() % s.size()] = byte;
          break;
      }
    }
    if (last != nullptr) std::ofstream(last, std::ios::binary | std::ios::trunc) << s;
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
  }
  std::printf("%zu corpus inputs and %ld mutations ran without a failure\n", inputs.size(),
              random_runs);
  return 0;
}
