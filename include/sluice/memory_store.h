// The in-process store (`memory://`), sluice's embedded default.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
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

  // Snapshots (docs/DESIGN.md, "Snapshots"). The file the state is loaded from when the
  // store opens (a missing file is an empty store) and written to, atomically, every
  // `snapshot_interval` and when the store is destroyed. Empty: no snapshots.
  std::string snapshot_path{};
  // How often the state is written, by a thread of the store's own, on the steady clock;
  // 0: only when the store is destroyed (or `write_snapshot` is called).
  std::chrono::milliseconds snapshot_interval{10000};
  // A snapshot that cannot be read (corrupt, truncated, not a snapshot) fails the opening;
  // with `empty_on_error` the store starts empty instead, warns, and renames the file to
  // PATH.bad so that the next write does not destroy it.
  bool snapshot_empty_on_error = false;
  // Receives the store's warnings (a snapshot write failed, at most one per 10 s; a bad
  // snapshot skipped); may be empty.
  std::function<void(std::string_view)> warn{};
};

// Returns the options written in `uri`: memory://[?shards=N&max_keys=N&max_key_length=N
// &snapshot=PATH&snapshot_interval=10s&snapshot_on_error=fail|empty], each option as in
// memory_store_options (the others keep their defaults), or `errc::invalid_store_uri`
// naming the problem.
result<memory_store_options> parse_memory_uri(std::string_view uri);

struct memory_store_stats {
  std::uint64_t keys = 0;               // keys held now
  std::uint64_t expired = 0;            // keys dropped because they had expired
  std::uint64_t evicted = 0;            // live keys dropped to stay under max_keys
  std::uint64_t snapshots = 0;          // snapshots written
  std::uint64_t snapshot_failures = 0;  // snapshot writes that failed
  std::uint64_t loaded = 0;             // keys loaded from the snapshot at opening
};

// Sharded hash tables of per-key state. Thread-safe: decisions find their key without a
// shared lock and are serialised by the key's own lock, so decisions on different keys
// never contend; inserts and erasures take their shard's lock (docs/DESIGN.md, "The memory
// store"). Uses userspace RCU: each thread registers on its first call and unregisters when
// it exits. Idle keys are dropped as new keys arrive (each insert sweeps a few slots) and
// before a table grows, so expired keys never make a table grow; `purge_expired` drops them
// all at once.
//
// With a `snapshot_path` the store loads the file when it opens and writes its live keys to it
// periodically and when destroyed; the writes take each key's lock for a moment and never
// stop decisions for longer. The constructor throws std::runtime_error when the snapshot
// cannot be loaded; `open` returns the error instead.
class memory_store final : public sync_store {
 public:
  explicit memory_store(memory_store_options options = {});
  // Returns a store with `options`, loaded from its snapshot, or `errc::invalid_snapshot`
  // naming the file and what is wrong with it (`errc::store_error` when it cannot be read).
  static result<std::unique_ptr<memory_store>> open(memory_store_options options);
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
  // Ready; the detail says when the last snapshot write failed.
  store_health health() const override;
  // Reports sluice_memory_keys (gauge), sluice_memory_expired_total and
  // sluice_memory_evicted_total; with snapshots also sluice_memory_snapshots_total and
  // sluice_memory_snapshot_failures_total.
  void visit_metrics(const metric_visitor& visit) const override;

  memory_store_stats stats() const;
  // Drops every key expired at `now` at once. Returns how many were dropped.
  std::size_t purge_expired(std::chrono::microseconds now);
  // Writes the live keys to `snapshot_path` now. Returns how many were written, or the
  // error (also counted and warned about, as the periodic writes are). Thread-safe; one
  // write at a time.
  result<std::size_t> write_snapshot();

 private:
  struct impl;
  explicit memory_store(std::unique_ptr<impl> i);
  std::unique_ptr<impl> impl_;
};

}  // namespace sluice
