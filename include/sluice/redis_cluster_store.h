// The Redis Cluster store (`redis+cluster://`, `rediss+cluster://`): one limit shared by
// every process that talks to the same cluster. Each decision is one EVALSHA on the master
// that serves the key's slot, exactly as on a single Redis; the store follows the cluster's
// layout as it changes (failover, resharding).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/error.h"
#include "sluice/redis_store.h"
#include "sluice/store.h"

namespace sluice {

struct redis_cluster_node {
  std::string host;
  std::uint16_t port = 6379;
};

struct redis_cluster_options {
  // Where to ask for the slot map first; any reachable node (master or replica) will do.
  std::vector<redis_cluster_node> seeds;
  // What every connection uses: TLS, AUTH, timeouts, pool (connections per master), key
  // prefix, reconnect backoff. `host`, `port`, `unix_socket` are not used; `db` must be 0
  // (a cluster has one database).
  redis_store_options connection;
  // Keys are `<prefix>:{<key>}`: the braces make Redis hash the identity alone, so every
  // piece of one key's state sits in one slot, whatever the prefix. False keeps
  // `<prefix>:<key>`, the reference limiter's layout (each state is one Redis key, so it
  // too lives in one slot; see README "Redis Cluster"). With an empty prefix, `{<key>}` and
  // `<key>`.
  bool hash_tag = true;
  // How many MOVED / ASK redirections one call follows before it fails.
  int max_redirects = 5;
  // How often the slot map is read again when nothing asks for it. It is also read again
  // after a MOVED, a CLUSTERDOWN, a master's connection failing or a call timing out, and
  // every 100 ms while some master is unreachable.
  std::chrono::milliseconds refresh_interval{10000};
};

// Returns the options written in `uri`:
//   redis+cluster://[user:password@]host:port[,host:port...][?option=value&...]
//   rediss+cluster://...                          (TLS to every node)
// Options: those of redis:// (timeout, connect_timeout, pool, prefix, reconnect_min,
// reconnect_max, tls_*; db only as 0) and hash_tag (0|1), max_redirects (0..16),
// refresh_interval (a duration: 10s).
result<redis_cluster_options> parse_redis_cluster_uri(std::string_view uri);

// The counters of a single Redis store (requests, errors, timeouts, reconnects, script loads,
// connections up), over every node, and the routing's.
struct redis_cluster_stats : redis_store_stats {
  std::uint64_t moved = 0;       // MOVED redirections followed
  std::uint64_t asks = 0;        // ASK redirections followed
  std::uint64_t retries = 0;     // TRYAGAIN replies retried
  std::uint64_t refreshes = 0;   // slot maps read and applied
  std::size_t masters = 0;       // masters in the current slot map
  std::size_t slots_served = 0;  // slots whose master has a connection up now
};

// Thread-safe. Owns one I/O thread and a pipelined connection (or `pool` of them) per
// master. A call on a master that is down fails at once with `errc::store_unavailable`;
// the keys of the other masters are not affected, and `failure_domain` tells the limiter
// which master a key is on, so that its circuit breaker and failure policy act on that
// master's keys alone. The async forms call their completion on the I/O thread, exactly
// once, at the latest when the call's deadline passes.
class redis_cluster_store final : public async_store {
 public:
  // Starts connecting to the seeds and waits up to `connect_timeout` for the first slot
  // map, then returns either way (calls fail as unavailable until a map is read).
  explicit redis_cluster_store(redis_cluster_options options);
  ~redis_cluster_store() override;
  redis_cluster_store(const redis_cluster_store&) = delete;
  redis_cluster_store& operator=(const redis_cluster_store&) = delete;

  void async_acquire(const request& r, completion done) override;
  void async_peek(const request& r, completion done) override;
  void async_reset(std::string_view key, reset_completion done) override;
  // Keys on one slot: one run of a multi-key script on its master, atomic. Keys on several
  // slots: each slot's keys reserved by a run of their own, in parallel, and the runs that
  // admitted given back when another denies or fails (docs/DESIGN.md, "The Redis Cluster
  // store"): never admitted past a limit; a concurrent request may be denied meanwhile.
  void async_acquire_all(std::span<const request> rs, all_completion done) override;
  void async_refund(const request& r, completion done) override;
  std::string describe() const override;
  // Ready while a slot map is known and some master has a connection up (keys of a master
  // that is down get the failure policy until its replica takes over); the detail says how
  // many slots have a reachable master.
  store_health health() const override;
  // Reports the counters of `stats()` as sluice_redis_* metrics (and the routing as
  // sluice_redis_cluster_*).
  void visit_metrics(const metric_visitor& visit) const override;
  // Events: `reachable` for a node's domain when a connection to it is up again, or when it
  // becomes a master; `retired` for a domain whose masters hold no slots after a new slot map;
  // a `warning` once when a node keeps no data across a restart (CONFIG GET, where allowed).
  void set_listener(event_listener listen) override;

  // One domain per master (by the node's address, up to 64 apart; more share) plus one
  // for slots with no known master.
  std::size_t failure_domains() const noexcept override;
  std::size_t failure_domain(std::string_view key) const noexcept override;

  // Returns the Redis key that holds `key`'s state, and its slot.
  std::string redis_key(std::string_view key) const;
  int slot_of(std::string_view key) const;

  redis_cluster_stats stats() const;

 private:
  bool on_io_thread() const noexcept override;

  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace sluice
