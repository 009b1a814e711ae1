#include "sluice/clock.h"

#include <chrono>

namespace sluice {

using std::chrono::microseconds;
namespace {

class wall_clock final : public clock {
 public:
  std::chrono::microseconds now() const noexcept override {
    return std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::system_clock::now().time_since_epoch());
  }
};

}  // namespace

const clock& system_clock() noexcept {
  static const wall_clock instance;
  return instance;
}

}  // namespace sluice
