// The limiter's local denial cache (docs/DESIGN.md, "The limiter contract", "Deny cache"):
// what the store said when it denied a key, kept in this process until the wait it gave has
// passed, so that the same or a larger cost is refused again without asking the store.
//
// It only ever denies: nobody's acquire (this process's or another's) can make a denied key
// admit sooner, so a cached denial is still the store's answer until its wait is over. What
// can make it admit sooner is a reset or a refund; the limiter clears the key here when it
// makes one, and one made by another process is seen only once the wait is over.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "sluice/algorithms.h"
#include "sluice/decision.h"
#include "sluice/limit.h"

namespace sluice::internal {

// Denials by store key, in shards that each have their own mutex, so keys in different
// shards never wait on each other. At most `max_keys` entries (split over the shards);
// expired entries are dropped as new keys come in, and at a shard's cap the entry closest to
// expiring among a few goes. Thread-safe.
class deny_cache {
 public:
  static constexpr std::size_t shard_count = 64;

  // Where a key lives, and the shard's clear count when it was looked up: a denial is
  // recorded only when no reset or refund went through the shard in between, so a store
  // answer from before a local reset never lands after it.
  struct ticket {
    std::size_t hash = 0;
    std::uint64_t epoch = 0;
  };

  // Precondition: max_keys >= 1.
  explicit deny_cache(std::size_t max_keys);
  deny_cache(const deny_cache&) = delete;
  deny_cache& operator=(const deny_cache&) = delete;

  // Returns the ticket of `key`, for `find` and `record`.
  ticket locate(std::string_view key) const noexcept;

  // Returns the cached denial of `cost` units of `key` under (`l`, `a`) at `now` (µs, the
  // clock the entry was recorded with), or nothing: no entry, one for another limit or
  // algorithm, one whose wait is over (dropped), one for a larger cost than `cost`, or a
  // `now` before the entry was recorded (a clock that stepped back, or another time base).
  // A hit is denied with remaining 0, `retry_after` the entry's wait left, `reset_after`
  // its reset left (at least retry_after), source `deny_cache`; it bumps the entry's
  // counter.
  std::optional<decision> find(const ticket& t, std::string_view key, const limit& l, algorithm a,
                               std::int64_t cost, std::chrono::microseconds now) noexcept;

  // Records the store's denial `d` of `cost` units of `key` under (`l`, `a`), received at
  // `now`. Keeps the smallest cost seen denied: a larger cost leaves a live entry alone, the
  // same or a smaller one replaces it. Hits are counted in `*hits` (must outlive the cache).
  // Does nothing when `d` is allowed or waits for nothing, or the shard was cleared since
  // `t` was taken. Never throws: out of memory, the denial is just not kept.
  void record(const ticket& t, std::string_view key, const limit& l, algorithm a, std::int64_t cost,
              const decision& d, std::chrono::microseconds now,
              std::atomic<std::uint64_t>* hits) noexcept;

  // Forgets `key` (a reset or a refund made through this limiter) and bumps its shard's
  // clear count.
  void erase(std::string_view key) noexcept;

  // Returns how many entries are kept now (expired ones not yet dropped included).
  std::size_t size() const noexcept;

 private:
  struct entry {
    std::int64_t received;  // µs: the `now` the denial was recorded at
    std::int64_t retry_at;  // received + retry_after
    std::int64_t reset_at;  // received + reset_after
    std::int64_t cost;      // the smallest cost seen denied
    limit lim;
    algorithm alg;
    std::atomic<std::uint64_t>* hits;
  };

  // A key with its hash, so that a lookup hashes the key once for the shard and the table.
  struct hashed {
    std::string_view key;
    std::size_t hash;
  };
  struct hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
    std::size_t operator()(const hashed& h) const noexcept { return h.hash; }
  };
  struct equal {
    using is_transparent = void;
    bool operator()(std::string_view a, std::string_view b) const noexcept { return a == b; }
    bool operator()(const hashed& a, std::string_view b) const noexcept { return a.key == b; }
    bool operator()(std::string_view a, const hashed& b) const noexcept { return a == b.key; }
  };

  struct alignas(64) shard {
    mutable std::mutex mu;
    std::atomic<std::uint64_t> epoch{0};  // bumped by every erase
    std::atomic<std::size_t> size{0};     // map.size(), readable without the lock
    std::size_t sweep_bucket = 0;         // the next bucket to sweep for expired entries
    // No entry's wait ends before this (µs): until then a full shard has nothing expired.
    std::int64_t earliest = 0;
    std::unordered_map<std::string, entry, hash, equal> map;
  };

  shard& shard_of(std::size_t h) const noexcept { return shards_[(h >> 20) % shard_count]; }
  // Drops the expired entries of the next `buckets` buckets in turn. Under the shard's lock.
  void sweep(shard& s, std::int64_t now, std::size_t buckets) noexcept;
  // Makes room for one more key in `s`, which is at its cap. Under the shard's lock.
  void make_room(shard& s, std::int64_t now) noexcept;

  const std::size_t per_shard_;
  const std::unique_ptr<shard[]> shards_;
};

}  // namespace sluice::internal
