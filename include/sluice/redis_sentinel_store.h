// The Redis Sentinel store (`redis+sentinel://`, `rediss+sentinel://`): a Redis store whose
// server is the master that a group of sentinels names, followed across failovers. Each
// decision is one EVALSHA on the current master, exactly as on a single Redis.
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

struct redis_sentinel_node {
  std::string host;
  std::uint16_t port = 26379;
};

struct redis_sentinel_options {
  // The sentinels, asked in this order (starting after the last one that answered).
  std::vector<redis_sentinel_node> sentinels;
  // The name the sentinels monitor the master under (`sentinel monitor NAME ...`).
  std::string master_name;
  // AUTH to the sentinels (their `requirepass` or an ACL user); empty for none. The
  // master's credentials are `connection.username` / `connection.password`.
  std::string sentinel_username;
  std::string sentinel_password;
  // What the master's connections use, and the sentinels' too for TLS and timeouts: TLS
  // files, AUTH, db, timeouts, pool, batching, key prefix, reconnect backoff. `host`,
  // `port` and `unix_socket` are not used.
  redis_store_options connection;
  // Subscribe to one sentinel's `+switch-master` messages. Without it a failover is found
  // by a lost connection or a READONLY reply alone (tests turn it off to see those paths).
  bool subscribe = true;
};

// Returns the options written in `uri`:
//   redis+sentinel://[user:password@]host:port[,host:port...]/MASTER_NAME[?option=value&...]
//   rediss+sentinel://...                   (TLS to the sentinels and the master)
// user:password are the master's. Options: those of redis:// (db, timeout, connect_timeout,
// pool, prefix, reconnect_min, reconnect_max, batch, batch_bytes, tls_*), and
// sentinel_user, sentinel_password (%-encoded) for the sentinels' AUTH.
result<redis_sentinel_options> parse_redis_sentinel_uri(std::string_view uri);

// The counters of a single Redis store, over the masters it has used, and the sentinels'.
struct redis_sentinel_stats : redis_store_stats {
  std::uint64_t discoveries = 0;  // masters asked of the sentinels and found
  std::uint64_t failovers = 0;    // times the master's address changed after the first
  std::uint64_t readonly = 0;     // READONLY replies (a demoted master) seen
  std::string master;             // "host:port" of the master in use; empty for none yet
};

// Thread-safe. Owns one I/O thread, the master's pipelined connection (or `pool` of them),
// and one subscribed connection to a sentinel. A call while no master is reachable fails
// at once with `errc::store_unavailable` (the limiter's failure policy and breaker decide
// what then); calls in flight when the master goes fail the same way. The async forms call
// their completion on the I/O thread, exactly once, at the latest by the call's deadline.
class redis_sentinel_store final : public async_store {
 public:
  // Asks the sentinels for the master, connects, and waits up to twice `connect_timeout`
  // for the first connection, then returns either way.
  explicit redis_sentinel_store(redis_sentinel_options options);
  ~redis_sentinel_store() override;
  redis_sentinel_store(const redis_sentinel_store&) = delete;
  redis_sentinel_store& operator=(const redis_sentinel_store&) = delete;

  void async_acquire(const request& r, completion done) override;
  void async_peek(const request& r, completion done) override;
  void async_reset(std::string_view key, reset_completion done) override;
  void async_acquire_all(std::span<const request> rs, all_completion done) override;
  void async_refund(const request& r, completion done) override;
  std::string describe() const override;
  // Ready while a connection to the master is up; else the detail says why (no sentinel
  // answers, none knows the master, the master is down).
  store_health health() const override;
  // The sluice_redis_* metrics, and sluice_redis_sentinel_* (the master in use, failovers).
  void visit_metrics(const metric_visitor& visit) const override;
  // Events: `reachable` when a connection to the master (a new one after a failover, or the
  // same one back after a loss) is up; a `warning` once when the master keeps no data across
  // a restart (CONFIG GET appendonly and save, where allowed).
  void set_listener(event_listener listen) override;

  redis_sentinel_stats stats() const;

 private:
  bool on_io_thread() const noexcept override;

  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace sluice
