// Feeds bytes to `sluice serve`'s YAML configuration loaders as a configuration file: its own
// (server/config.cc) and envoyproxy/ratelimit's (server/envoy_config.cc). Each must accept the
// bytes or refuse them with an error naming the file; never throw, never crash.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "server/config.h"
#include "server/envoy_config.h"

namespace {

template <class Result>
void expect_clean(const Result& r, std::string_view name) {
  if (r) return;
  const std::string message = r.error().message();
  if (message.find(name) == std::string::npos) {
    std::fprintf(stderr, "config_fuzzer: an error that does not name the file: %s\n",
                 message.c_str());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view yaml(reinterpret_cast<const char*>(data), size);
  expect_clean(sluice::server::parse_config(yaml, "fuzz.yaml"), "fuzz.yaml");
  expect_clean(sluice::server::parse_envoy_config(yaml, "edge.yaml"), "edge.yaml");
  return 0;
}
