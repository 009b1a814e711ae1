#include "sluice/error.h"

#include <cstdio>
#include <cstdlib>
#include <string>

namespace sluice {
namespace {

class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "sluice"; }

  std::string message(int code) const override {
    switch (static_cast<errc>(code)) {
      case errc::invalid_limit:
        return "invalid limit";
      case errc::invalid_algorithm:
        return "invalid algorithm";
      case errc::invalid_duration:
        return "invalid duration";
      case errc::invalid_key:
        return "invalid key";
      case errc::invalid_cost:
        return "invalid cost";
      case errc::cost_exceeds_limit:
        return "cost exceeds the limit and can never be admitted";
      case errc::invalid_time:
        return "time out of range";
      case errc::invalid_policy:
        return "invalid policy";
      case errc::unknown_policy:
        return "unknown policy";
      case errc::invalid_store_uri:
        return "invalid store URI";
      case errc::unsupported_store:
        return "unsupported store";
      case errc::store_full:
        return "store full";
      case errc::store_unavailable:
        return "store unavailable";
      case errc::timeout:
        return "store timed out";
      case errc::store_error:
        return "store error";
      case errc::invalid_snapshot:
        return "invalid snapshot";
    }
    return "unknown sluice error " + std::to_string(code);
  }
};

}  // namespace

namespace internal {

void bad_result_access(const char* what, const error* held) noexcept {
  if (held != nullptr) {
    std::fprintf(stderr, "sluice: %s (it holds the error: %s)\n", what, held->message().c_str());
  } else {
    std::fprintf(stderr, "sluice: %s\n", what);
  }
  std::fflush(stderr);
  std::abort();
}

}  // namespace internal

const std::error_category& sluice_category() noexcept {
  static const category instance;
  return instance;
}

}  // namespace sluice
