// Fuzzes `sluice eval`'s input: any bytes give JSON lines or error lines, never a crash.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "cli/eval.h"
#include "sluice/memory_store.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  sluice::manual_clock clock;
  sluice::memory_store_options options;
  options.shards = 4;
  options.max_keys = 64;
  options.time_source = &clock;
  sluice::memory_store store(options);
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  std::ostringstream out;
  sluice::cli::run_eval(in, out, store, &clock, {});
  return 0;
}
