// The in-process store (`memory://`), sluice's embedded default.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "sluice/clock.h"
#include "sluice/error.h"
#include "sluice/store.h"

namespace sluice {

struct memory_store_options {
  // Independent partitions, each with its own lock for inserts and erasures; rounded up to
  // a power of two.
  std::size_t shards = 64;
  // Most keys held at once (0: no cap). At the cap, expired keys go first, then the
  // sampled key closest to expiring.
  std::size_t max_keys = 10'000'000;
  // Longest key accepted, in bytes (at most 65535).
  std::size_t max_key_length = 1024;
  // The time source when a request has no explicit `now`; must outlive the store.
  const clock* time_source = &system_clock();
};

// Returns the options written in `uri`: memory://[?shards=N&max_keys=N&max_key_length=N],
// each option as in memory_store_options (the others keep their defaults), or
// `errc::invalid_store_uri` naming the problem.
result<memory_store_options> parse_memory_uri(std::string_view uri);

struct memory_store_stats {
  std::uint64_t keys = 0;     // keys held now
  std::uint64_t expired = 0;  // keys dropped because they had expired
  std::uint64_t evicted = 0;  // live keys dropped to stay under max_keys
};

// Sharded hash tables of per-key state. Thread-safe: decisions find their key without a
// shared lock and are serialised by the key's own lock, so decisions on different keys
// never contend; inserts and erasures take their shard's lock (docs/DESIGN.md, "The memory
// store"). Uses userspace RCU: each thread registers on its first call and unregisters when
// it exits. Idle keys are dropped as new keys arrive (each insert sweeps a few slots) and
// before a table grows, so expired keys never make a table grow; `purge_expired` drops them
// all at once.
class memory_store final : public sync_store {
 public:
  explicit memory_store(memory_store_options options = {});
  ~memory_store() override;
  memory_store(const memory_store&) = delete;
  memory_store& operator=(const memory_store&) = delete;

  result<decision> acquire(const request& r) override;
  result<decision> peek(const request& r) override;
  result<void> reset(std::string_view key) override;
  // All or nothing under the locks of every shard and key involved (taken in one global
  // order).
  result<std::vector<decision>> acquire_all(std::span<const request> rs) override;
  result<decision> refund(const request& r) override;
  std::string describe() const override;
  // Reports sluice_memory_keys (gauge), sluice_memory_expired_total and
  // sluice_memory_evicted_total.
  void visit_metrics(const metric_visitor& visit) const override;

  memory_store_stats stats() const;
  // Drops every key expired at `now` at once. Returns how many were dropped.
  std::size_t purge_expired(std::chrono::microseconds now);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace sluice
