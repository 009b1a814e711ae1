// The Redis store (`redis://`, `rediss://`, `unix://`): state shared by every process that
// talks to the same Redis. One decision is one EVALSHA of a Lua script: one round trip,
// atomic, timed by the Redis server's clock; under load, decisions waiting on one
// connection share one run of a batch script (`batch`), with the same answers.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "sluice/error.h"
#include "sluice/store.h"

namespace sluice {

struct redis_store_options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 6379;
  // A Unix socket path; when set, host and port are not used.
  std::string unix_socket;
  // TLS (rediss://). The server's certificate is verified against `tls_ca_file` (or the
  // system's CAs when empty) and its name against `tls_server_name` (default: host).
  bool tls = false;
  std::string tls_ca_file;
  std::string tls_cert_file;  // client certificate, for servers that ask for one
  std::string tls_key_file;
  std::string tls_server_name;
  bool tls_verify = true;
  // AUTH: a password alone, or an ACL user and password (Redis 6+).
  std::string username;
  std::string password;
  int db = 0;
  // Keys are `<key_prefix>:<key>`; the reference limiter's deployments use
  // `chrysopedia:ratelimit`. An empty prefix keeps keys verbatim (`<key>`, no colon).
  std::string key_prefix = "sluice";
  // Deadline of one decision, from the call to its answer.
  std::chrono::milliseconds timeout{50};
  // Deadline of connecting (TCP, TLS, AUTH, SELECT, script loading).
  std::chrono::milliseconds connect_timeout{1000};
  // Connections; decisions go round-robin, each connection pipelines many at once.
  std::size_t pool = 1;
  // Reconnect backoff: starts at the minimum, doubles up to the maximum.
  std::chrono::milliseconds reconnect_min{10};
  std::chrono::milliseconds reconnect_max{1000};
  // Batching: single-key decisions (acquire, peek, refund) waiting to be written on one
  // connection go as one script run that decides them all in order (one TIME, one reply),
  // with the decisions on one key read and written once. At most `batch` calls and about
  // `batch_bytes` of arguments in one run; 0 or 1 sends one script per decision.
  std::size_t batch = 128;
  std::size_t batch_bytes = 256 * 1024;
  // How sliding_log keeps its log in Redis. `reference`: a sorted set with one member per
  // unit, the reference limiter's layout (keys it shares). `packed`: one string of 16-byte
  // entries per key, a GET and a SET per decision; same decisions, cheaper for Redis, but not
  // readable by the reference limiter (and its keys read as empty, replaced on acquire).
  enum class log_layout_kind : std::uint8_t { reference, packed };
  log_layout_kind log_layout = log_layout_kind::reference;
};

// Returns the options written in `uri`:
//   redis://[user:password@]host[:port][/db][?option=value&...]
//   rediss://...                       (TLS)
//   unix:///path/to/redis.sock[?db=N&...]
// Options: timeout, connect_timeout (durations: 50ms, 1s), pool, prefix, reconnect_min,
// reconnect_max, tls_ca, tls_cert, tls_key, tls_server_name, tls_verify (0|1), db,
// batch (0: off; at most 4096), batch_bytes, log_layout (reference|packed).
// User and password may be %-encoded.
result<redis_store_options> parse_redis_uri(std::string_view uri);

struct redis_store_stats {
  std::uint64_t requests = 0;      // script runs (decisions, refunds, acquire_all) and resets sent
  std::uint64_t errors = 0;        // calls that ended in an error (of any kind)
  std::uint64_t timeouts = 0;      // calls that ended past their deadline
  std::uint64_t reconnects = 0;    // connections made after the first
  std::uint64_t script_loads = 0;  // NOSCRIPT replies answered by sending the script again
  std::uint64_t batches = 0;       // batch script runs sent (each deciding 2 or more calls)
  std::uint64_t batched = 0;       // calls decided in those runs
  std::size_t connected = 0;       // connections up now
};

// Thread-safe. Owns one I/O thread. Calls on a connection that is down fail at once with
// `errc::store_unavailable` (the limiter's failure policy and breaker decide what then);
// the store reconnects on its own with backoff. The async forms call their completion on
// the I/O thread, exactly once, at the latest when the call's deadline passes.
class redis_store final : public async_store {
 public:
  // Starts connecting and waits up to `connect_timeout` for the first connection, then
  // returns either way.
  explicit redis_store(redis_store_options options);
  ~redis_store() override;
  redis_store(const redis_store&) = delete;
  redis_store& operator=(const redis_store&) = delete;

  void async_acquire(const request& r, completion done) override;
  void async_peek(const request& r, completion done) override;
  void async_reset(std::string_view key, reset_completion done) override;
  // One run of a multi-key script: atomic on the server, one round trip.
  void async_acquire_all(std::span<const request> rs, all_completion done) override;
  void async_refund(const request& r, completion done) override;
  std::string describe() const override;
  // Ready while at least one connection is up; the detail names why one is down.
  store_health health() const override;
  // Reports the counters of `stats()` as sluice_redis_* metrics.
  void visit_metrics(const metric_visitor& visit) const override;
  // Events: `reachable` when a connection is up again after a loss; a `warning` once when
  // the server keeps no data across a restart (CONFIG GET appendonly and save, where allowed).
  void set_listener(event_listener listen) override;

  redis_store_stats stats() const;

 private:
  bool on_io_thread() const noexcept override;

  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace sluice
