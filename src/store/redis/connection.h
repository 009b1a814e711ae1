// What the single-server and the cluster Redis stores share: the per-store state (options,
// scripts, counters), one pipelined connection to one Redis server, and turning a script's
// reply into a decision. Internal to sluice::redis.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "sluice/decision.h"
#include "sluice/error.h"
#include "sluice/limit.h"
#include "sluice/redis_store.h"
#include "sluice/store.h"
#include "store/redis/pipeline.h"
#include "store/redis/resp.h"

namespace boost::asio {
class io_context;
}

namespace sluice::redis {

// Lua numbers are doubles: explicit times must stay where they are exact.
inline constexpr std::int64_t kMaxScriptTime = std::int64_t{1} << 52;

struct script {
  std::string_view source;
  std::string sha;
};

// Where one connection goes: a TCP host and port, or a Unix socket.
struct endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string unix_socket;

  // "host:port" ("[::1]:port" for IPv6) or the socket path, for messages and as a map key.
  std::string text() const;
};

// The pieces every connection of one store shares. Immutable after construction but for
// the counters.
struct shared_state {
  explicit shared_state(redis_store_options o);

  redis_store_options options;
  // The three algorithms' (indexed by algorithm), then acquire_all's, release's, the
  // batch script's and sliding_log's in the packed layout.
  std::array<script, 7> scripts;
  std::string instance;  // makes sliding_log members unique across processes
  std::atomic<std::uint64_t> seq{0};
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::uint64_t> errors{0};
  std::atomic<std::uint64_t> timeouts{0};
  std::atomic<std::uint64_t> reconnects{0};
  std::atomic<std::uint64_t> script_loads{0};
  std::atomic<std::uint64_t> batches{0};
  std::atomic<std::uint64_t> batched{0};
  std::atomic<std::size_t> connected{0};

  // Called on the I/O thread when a connection to `where` is up again after it had been
  // up before (a reconnect); set by the store before any connection starts. Empty: nothing.
  std::function<void(const endpoint& where)> on_reconnected;

  // The store's listener (store::set_listener) and the warnings said before there was one.
  // Thread-safe: `emit` calls the listener under the lock, so once set_listener returns the
  // old one is not running.
  void set_listener(store::event_listener listen);
  void emit(const store_event& e);

  // Returns true the first time it is asked about `where`: its persistence is checked once.
  bool first_check_of(const std::string& where);
  // Returns true the first time: the store warns about persistence once.
  bool first_persistence_warning() { return !persistence_warned.exchange(true); }

  std::mutex listener_mu;
  store::event_listener listener;    // guarded by listener_mu
  std::vector<std::string> unheard;  // warnings before a listener; guarded by listener_mu
  std::mutex checked_mu;
  std::vector<std::string> checked;  // endpoints whose persistence was checked
  std::atomic<bool> persistence_warned{false};

  // Returns the script `c` runs.
  const script& script_of(const script_call& c) const {
    if (c.op == script_op::acquire_all) return scripts[3];
    if (c.op == script_op::release) return scripts[4];
    if (c.packed()) return scripts[6];
    return scripts[static_cast<std::size_t>(c.algo)];
  }
  const script& batch_script() const { return scripts[5]; }
  // True when single-key calls go to connections unencoded, to be batched.
  bool batching() const { return options.batch > 1; }
  // True when sliding_log keeps its log in the packed layout (log_layout=packed).
  bool packed_log() const {
    return options.log_layout == redis_store_options::log_layout_kind::packed;
  }
  // A token no other call of any process uses: `<instance>:<sequence>`.
  std::string next_token();
};

// One connection to one Redis server: connect, handshake (AUTH, SELECT, SCRIPT LOAD), then
// pipeline every call written to it; on any failure answer everything waiting, back off,
// and connect again. Lives on the store's I/O thread; `submit` may be called from any
// thread.
class connection {
 public:
  virtual ~connection() = default;

  // Connects in the background.
  virtual void start() = 0;
  // Queues one command (or several that must stay together, like ASKING and the call after
  // it: `calls` holds one pending per command in `command`). When the connection is not
  // up, answers every call at once, on the calling thread, with `errc::store_unavailable`.
  // A `batchable` call comes with no command: the connection encodes it when it writes,
  // alone or in a batch (pipeline::assemble).
  virtual void submit(std::string command, pending call) = 0;
  virtual void submit(std::string command, std::vector<pending> calls) = 0;
  // True while the connection is up.
  virtual bool ready() const = 0;
  // True once the first connection attempt has succeeded or failed.
  virtual bool first_attempt_done() const = 0;
  // Why calls fail while the connection is not up, with its last error:
  // "redis 127.0.0.1:6379 is not connected (AUTH refused: WRONGPASS ...)".
  virtual std::string unavailable_reason() const = 0;
  // Waits until the first attempt is done, at most `limit`.
  virtual void wait_first_attempt(std::chrono::milliseconds limit) = 0;
  // Closes for good (the store is going away); answers everything waiting.
  virtual void close() = 0;
  virtual const endpoint& where() const = 0;
};

// What a connection does besides carrying a store's calls; the defaults are a Redis
// store's. The callbacks run on the I/O thread.
struct connection_hooks {
  // The server is a sentinel: the handshake is AUTH alone (no SELECT, no SCRIPT LOAD).
  bool sentinel = false;
  // The handshake ends with ROLE, and fails unless the server says it is a master.
  bool require_master = false;
  // Gets every reply that no call waits for (pub/sub messages); without it such a reply
  // fails the connection.
  std::function<void(const reply&)> on_push;
  // The handshake succeeded: the connection is up.
  std::function<void()> on_up;
  // A connection attempt failed or the connection was lost, and why.
  std::function<void(const std::string&)> on_down;
};

std::shared_ptr<connection> make_connection(boost::asio::io_context& io,
                                            std::shared_ptr<shared_state> shared, endpoint to,
                                            connection_hooks hooks = {});

// Returns the decision in a script's reply, or why there is none.
result<decision> to_decision(const result<reply>& r, std::int64_t count);

// What a multi-key script (acquire_all, release) answers: its time and one decision per key.
struct multi_reply {
  std::int64_t now_us = 0;
  std::vector<decision> decisions;
};
// Returns the multi-key reply in `r`, for keys whose limits have the counts `counts`, or
// why there is none.
result<multi_reply> to_multi_reply(const result<reply>& r, const std::vector<std::int64_t>& counts);
// Returns what a DEL's reply says of a reset.
result<void> to_reset_result(const result<reply>& r);

// Checks a key (1 to 65535 bytes).
result<void> check_key(std::string_view key);
// Checks a request before it goes to Redis: the key, the limit and cost, the explicit time.
result<void> check_redis_request(const request& r);
// Returns the script call for `r` on the Redis key `key`, with a fresh token.
script_call make_script_call(shared_state& shared, const request& r, std::string key, script_op op);

// Returns the requests of an `acquire_all` merged (`merge_requests`; `group` maps each
// request to its merged one) and checked as a single call's are, before any I/O. Each
// merged request's `now` is the time it is decided at, as the memory store resolves it:
// the latest explicit `now` among the requests up to its first one, or none (the server's
// TIME) before any.
result<std::vector<request>> prepare_all(std::span<const request> rs,
                                         std::vector<std::size_t>& group);
// An `acquire_all` whose requests merge into one key is that key's single-key call: an
// acquire when it spends (admitted exactly when the multi-key script's check of `cost`
// would admit, and a denied acquire changes nothing), a one-unit peek when it only checks.
// The single-key call is cheaper in Redis (no per-key argument table, one command fewer)
// and joins the connection's batches, where calls on one key are coalesced. `lone_call`
// returns that call's request and operation; `spread_lone` answers every request of the
// `acquire_all` (`group`, from prepare_all) with its decision.
std::pair<request, script_op> lone_call(const request& merged);
store::completion spread_lone(std::vector<std::size_t> group, store::all_completion done);
// Returns the multi-key script call of `op` over `keys`: the call's time is the first
// key's, and a key keeps its own `now_us` only when that differs.
script_call make_multi_call(script_op op, std::vector<script_key> keys, std::string token);
// Returns the key of `r` (a prepared request) for a multi-key call, on the Redis key `key`,
// with sliding_log in the packed layout when `packed_log`.
script_key to_script_key(const request& r, std::string key, bool packed_log = false);

// Returns what describe() adds for batching: "?batch=128" ("?batch=0" when off), and
// "&log_layout=packed" when sliding_log keeps the packed layout.
inline std::string describe_batching(const redis_store_options& o) {
  std::string out = "?batch=" + std::to_string(o.batch > 1 ? o.batch : 0);
  if (o.log_layout == redis_store_options::log_layout_kind::packed) out += "&log_layout=packed";
  return out;
}

// Copies the counters both Redis stores keep into `out`.
inline void read_common_stats(const shared_state& s, redis_store_stats& out) {
  out.requests = s.requests.load();
  out.errors = s.errors.load();
  out.timeouts = s.timeouts.load();
  out.reconnects = s.reconnects.load();
  out.script_loads = s.script_loads.load();
  out.batches = s.batches.load();
  out.batched = s.batched.load();
  out.connected = s.connected.load();
}

// Reports the counters both Redis stores keep (`Stats` is redis_store_stats or
// redis_cluster_stats) to a store's metric visitor.
template <class Stats>
void visit_common_metrics(const store::metric_visitor& visit, const Stats& s) {
  using kind = store_metric::kind;
  visit({"sluice_redis_requests_total",
         "Script runs (decisions, refunds, acquire_all) and resets sent to Redis.",
         kind::counter,
         {},
         {},
         s.requests});
  visit({"sluice_redis_errors_total",
         "Redis calls that ended in an error.",
         kind::counter,
         {},
         {},
         s.errors});
  visit({"sluice_redis_timeouts_total",
         "Redis calls that got no reply before their deadline.",
         kind::counter,
         {},
         {},
         s.timeouts});
  visit({"sluice_redis_reconnects_total",
         "Connections to Redis made again after a failure.",
         kind::counter,
         {},
         {},
         s.reconnects});
  visit({"sluice_redis_script_loads_total",
         "NOSCRIPT replies answered by sending the script's source.",
         kind::counter,
         {},
         {},
         s.script_loads});
  visit({"sluice_redis_batches_total",
         "Batch script runs sent, each deciding several calls.",
         kind::counter,
         {},
         {},
         s.batches});
  visit({"sluice_redis_batched_calls_total",
         "Calls decided in batch script runs.",
         kind::counter,
         {},
         {},
         s.batched});
  visit({"sluice_redis_connections",
         "Connections to Redis up now.",
         kind::gauge,
         {},
         {},
         s.connected});
}

}  // namespace sluice::redis
