// The Lua scripts behind the Redis store: one per algorithm, each one atomic decision.
//
// Every script takes KEYS[1] = the key and
//   ARGV = mode ("acquire" | "peek"), count, window (µs), cost, now (µs, or "" for the
//          server's TIME), token (unique per call; sliding_log's members)
// and returns {allowed (0|1), remaining, retry_after (µs), reset_after (µs)}. The maths is
// the core's (src/core/*.cc), written again in Lua; the conformance tests hold them equal.
// Lua numbers are doubles: every integer stays below 2^53, and numbers go to Redis as
// strings formatted with %d, never through Lua's 14-digit tostring. Keys expire (PX) when
// their state would be fresh again; with an explicit `now`, 60 s later than that, since
// TTLs follow the server's real clock.
#pragma once

#include <string_view>

#include "sluice/limit.h"

namespace sluice::redis {

// Returns the script for `a`.
std::string_view script_source(algorithm a) noexcept;

}  // namespace sluice::redis
