// Tests of the clocks sluice reads time from.
#include "sluice/clock.h"

#include <gtest/gtest.h>

#include <chrono>

namespace {

using std::chrono::duration_cast;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Verifies that a manual clock starts where told and moves only by set and advance.
TEST(ManualClock, MovesOnlyWhenTold) {
  sluice::manual_clock c{seconds(100)};
  EXPECT_EQ(c.now(), seconds(100));
  EXPECT_EQ(c.now(), seconds(100));
  c.advance(milliseconds(500));
  EXPECT_EQ(c.now(), microseconds(100'500'000));
  c.set(seconds(7));
  EXPECT_EQ(c.now(), seconds(7));
}

// Verifies that a manual clock can step back, as wall clocks sometimes do.
TEST(ManualClock, AdvancesBackwards) {
  sluice::manual_clock c{seconds(10)};
  c.advance(microseconds(-1));
  EXPECT_EQ(c.now(), microseconds(9'999'999));
}

// Verifies that a default manual clock starts at the epoch and works through the interface.
TEST(ManualClock, DefaultsToEpochThroughInterface) {
  sluice::manual_clock c;
  const sluice::clock& as_clock = c;
  EXPECT_EQ(as_clock.now(), microseconds(0));
  c.advance(microseconds(3));
  EXPECT_EQ(as_clock.now(), microseconds(3));
}

// Verifies that the system clock reads std::chrono::system_clock in microseconds since 1970.
TEST(SystemClock, ReadsWallClock) {
  const auto before =
      duration_cast<microseconds>(std::chrono::system_clock::now().time_since_epoch());
  const microseconds now = sluice::system_clock().now();
  const auto after =
      duration_cast<microseconds>(std::chrono::system_clock::now().time_since_epoch());
  EXPECT_LE(before, now);
  EXPECT_LE(now, after);
  EXPECT_EQ(&sluice::system_clock(), &sluice::system_clock());
}

}  // namespace
