// The Lua scripts behind the Redis stores. Each run is one atomic step on the server.
//
// One script per algorithm, on one key: KEYS[1] = the key and
//   ARGV = mode ("acquire" | "peek" | "refund"), count, window (µs), cost, now (µs, or ""
//          for the server's TIME), token (unique per call; sliding_log's members)
// It returns {allowed (0|1), remaining, retry_after (µs), reset_after (µs)}: the decision of
// an acquire or a peek of `cost`; for a refund, the peek of one unit after up to `cost`
// units were given back (the core's `*_refund`).
//
// The multi-key script of `acquire_all`: KEYS = the keys (distinct), and
//   ARGV = now (µs, or "" for TIME), token, then per key: algorithm name, count, window
//          (µs), cost (0: only checked), now (µs, or "" for the call's now)
// It peeks every key (a cost of 0 as one unit) and only when all are allowed acquires those
// of cost > 0. It returns {now, then per key allowed, remaining, retry_after, reset_after}:
// `now` is the call's time, in µs; each key's four numbers are its acquire's when all were
// admitted, else its peek's.
//
// The release script, a cluster's give-back of an `acquire_all` reservation that another
// slot's denial voided: KEYS and ARGV[1..2] as the multi-key script's (the reservation's
// token), then per key: algorithm name, count, window, cost, now ("" for the call's), and
// the reservation's time and reset_after (µs) for that key. It gives back what that
// reservation spent, never more than it can prove was its own (sliding_log: the members it
// added; sliding_counter: from the window it counted in, while that window still counts;
// gcra: the reservation's share of the arrival time, less what admissions made since may
// have absorbed), then returns what the multi-key script returns for a denial: {now, then
// per key the peek of max(cost, 1)}.
//
// The batch script: several single-key calls decided in one run, in order. KEYS = the
// distinct keys, and per call 7 arguments:
//   ARGV = key index (into KEYS, from 1), mode (op letter a|p|r for acquire, peek, refund,
//          then algorithm letter l|c|g|s for sliding_log, sliding_counter, gcra,
//          sliding_log_packed), count,
//          window (µs), cost, now (µs, or "" for the server's TIME, read once per run),
//          token (sliding_log acquires; "" otherwise)
// It returns one element per call: the four numbers the single-key script returns. Each
// key's calls are decided together (one read and one write of its state), in order, each
// as the single-key script would. An error answers the whole batch.
//
// The maths is the core's (src/core/*.cc), written again in Lua; the conformance tests hold
// them equal. Lua numbers are doubles: every integer stays below 2^53, and numbers go to
// Redis as strings formatted with %d, never through Lua's 14-digit tostring. Keys expire
// (PX) when their state would be fresh again; with an explicit `now`, 60 s later than that,
// since TTLs follow the server's real clock. Only acquires, refunds and releases write
// (and sliding_log's pruning of expired members): a peek of a key that holds another
// algorithm's state reads it as fresh and leaves it.
#pragma once

#include <string_view>

#include "sluice/limit.h"

namespace sluice::redis {

// Returns the single-key script for `a`.
std::string_view script_source(algorithm a) noexcept;
// Returns the single-key script of sliding_log in the packed layout (`log_layout=packed`):
// the same arguments and replies as script_source(algorithm::sliding_log), the log kept as
// one string of 16-byte entries (scripts.cc). The multi-key, release and batch scripts know
// it by the algorithm name "sliding_log_packed" (batch letter s).
std::string_view packed_log_script_source() noexcept;
// Returns the multi-key script of `acquire_all`.
std::string_view acquire_all_script_source() noexcept;
// Returns the release script (a cluster's give-back).
std::string_view release_script_source() noexcept;
// Returns the batch script (several single-key calls in one run).
std::string_view batch_script_source() noexcept;

}  // namespace sluice::redis
