#include "limiter/deny_cache.h"

#include <algorithm>
#include <limits>
#include <new>

namespace sluice::internal {
namespace {

constexpr std::int64_t kMaxTime = std::numeric_limits<std::int64_t>::max();

// Returns a + b, saturated: waits come from the store, and a bad one must not wrap.
std::int64_t add_sat(std::int64_t a, std::int64_t b) noexcept {
  return b > 0 && a > kMaxTime - b ? kMaxTime : a + b;
}

// How many entries of a full shard are looked at to pick one to drop.
constexpr std::size_t kEvictSample = 8;
// Buckets swept for expired entries per new key (more than the one key it adds, so expired
// entries cannot pile up while new keys come in), and per new key in a full shard.
constexpr std::size_t kSweepBuckets = 2;
constexpr std::size_t kFullSweepBuckets = 16;

}  // namespace

deny_cache::deny_cache(std::size_t max_keys)
    : per_shard_(std::max<std::size_t>(1, (max_keys + shard_count - 1) / shard_count)),
      shards_(std::make_unique<shard[]>(shard_count)) {}

deny_cache::ticket deny_cache::locate(std::string_view key) const noexcept {
  ticket t;
  t.hash = hash{}(key);
  t.epoch = shard_of(t.hash).epoch.load(std::memory_order_acquire);
  return t;
}

std::optional<decision> deny_cache::find(const ticket& t, std::string_view key, const limit& l,
                                         algorithm a, std::int64_t cost,
                                         std::chrono::microseconds now) noexcept {
  shard& s = shard_of(t.hash);
  // Most keys are never denied: an empty shard answers without its lock.
  if (s.size.load(std::memory_order_relaxed) == 0) return std::nullopt;
  const std::int64_t at = now.count();
  const std::lock_guard lock(s.mu);
  const auto it = s.map.find(hashed{key, t.hash});
  if (it == s.map.end()) return std::nullopt;
  entry& e = it->second;
  if (e.lim != l || e.alg != a || at < e.received) return std::nullopt;
  if (at >= e.retry_at) {
    s.map.erase(it);
    s.size.store(s.map.size(), std::memory_order_relaxed);
    return std::nullopt;
  }
  if (cost < e.cost) return std::nullopt;
  e.hits->fetch_add(1, std::memory_order_relaxed);
  const std::chrono::microseconds retry(e.retry_at - at);
  const std::chrono::microseconds reset(std::max(e.reset_at, e.retry_at) - at);
  return decision{false, l.count, 0, retry, reset, decision_source::deny_cache};
}

void deny_cache::record(const ticket& t, std::string_view key, const limit& l, algorithm a,
                        std::int64_t cost, const decision& d, std::chrono::microseconds now,
                        std::atomic<std::uint64_t>* hits) noexcept {
  if (d.allowed || d.retry_after.count() <= 0 || cost < 1) return;
  const std::int64_t at = now.count();
  const entry fresh{at,
                    add_sat(at, d.retry_after.count()),
                    add_sat(at, std::max<std::int64_t>(0, d.reset_after.count())),
                    cost,
                    l,
                    a,
                    hits};
  shard& s = shard_of(t.hash);
  const std::lock_guard lock(s.mu);
  if (s.epoch.load(std::memory_order_relaxed) != t.epoch) return;
  try {
    const auto it = s.map.find(hashed{key, t.hash});
    if (it != s.map.end()) {
      entry& e = it->second;
      const bool live = e.lim == l && e.alg == a && at >= e.received && at < e.retry_at;
      // A larger cost's wait says nothing about the smaller one already kept.
      if (!live || cost <= e.cost) e = fresh;
      s.earliest = std::min(s.earliest, e.retry_at);
      return;
    }
    sweep(s, at, kSweepBuckets);
    if (s.map.size() >= per_shard_) make_room(s, at);
    s.map.emplace(std::string(key), fresh);
    s.earliest = s.map.size() == 1 ? fresh.retry_at : std::min(s.earliest, fresh.retry_at);
  } catch (const std::bad_alloc&) {
    // Not kept: the next acquire of the key asks the store, as without the cache.
  }
  s.size.store(s.map.size(), std::memory_order_relaxed);
}

void deny_cache::erase(std::string_view key) noexcept {
  shard& s = shard_of(hash{}(key));
  const std::lock_guard lock(s.mu);
  s.epoch.fetch_add(1, std::memory_order_release);
  if (s.size.load(std::memory_order_relaxed) == 0) return;
  if (const auto it = s.map.find(key); it != s.map.end()) s.map.erase(it);
  s.size.store(s.map.size(), std::memory_order_relaxed);
}

std::size_t deny_cache::size() const noexcept {
  std::size_t n = 0;
  for (std::size_t i = 0; i < shard_count; ++i) {
    n += shards_[i].size.load(std::memory_order_relaxed);
  }
  return n;
}

void deny_cache::sweep(shard& s, std::int64_t now, std::size_t buckets) noexcept {
  const std::size_t n = s.map.bucket_count();
  if (s.map.empty() || n == 0) return;
  for (std::size_t k = 0; k < buckets; ++k) {
    const std::size_t b = s.sweep_bucket++ % n;
    for (auto it = s.map.begin(b); it != s.map.end(b);) {
      const auto next = std::next(it);
      if (now >= it->second.retry_at || now < it->second.received) {
        s.map.erase(s.map.find(std::string_view(it->first)));
      }
      it = next;
    }
  }
}

void deny_cache::make_room(shard& s, std::int64_t now) noexcept {
  sweep(s, now, kFullSweepBuckets);
  if (s.map.size() < per_shard_) return;
  if (now >= s.earliest) {
    // Some entry's wait is over: find them all, so that a live denial never goes while an
    // expired one stays.
    std::int64_t earliest = std::numeric_limits<std::int64_t>::max();
    for (auto it = s.map.begin(); it != s.map.end();) {
      if (now >= it->second.retry_at || now < it->second.received) {
        it = s.map.erase(it);
      } else {
        earliest = std::min(earliest, it->second.retry_at);
        ++it;
      }
    }
    s.earliest = earliest;
    if (s.map.size() < per_shard_) return;
  }
  // Full of live denials: drop the one closest to its end in the next buckets in turn (a
  // rotating place, so new and old keys are as likely to be looked at).
  const std::size_t n = s.map.bucket_count();
  std::optional<std::string_view> victim;
  std::int64_t victim_at = 0;
  std::size_t seen = 0;
  for (std::size_t k = 0; k < n && seen < kEvictSample; ++k) {
    const std::size_t b = s.sweep_bucket++ % n;
    for (auto it = s.map.begin(b); it != s.map.end(b); ++it, ++seen) {
      if (!victim || it->second.retry_at < victim_at) {
        victim = it->first;
        victim_at = it->second.retry_at;
      }
    }
  }
  if (victim) s.map.erase(s.map.find(*victim));
}

}  // namespace sluice::internal
