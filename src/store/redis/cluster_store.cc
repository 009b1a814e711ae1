#include "sluice/redis_cluster_store.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "store/redis/cluster.h"
#include "store/redis/connection.h"

namespace sluice {
namespace {

namespace asio = boost::asio;
using redis::kClusterSlots;
using redis::pending;
using redis::reply;
using redis::script_call;
using redis::script_op;
using redis::steady;

constexpr std::uint16_t kNoNode = 0xFFFF;
// Nodes are never forgotten (a call may still hold one); this bounds how many there can be.
constexpr std::size_t kMaxNodes = 1024;
// Failure domains: 0 for slots with no known master, then one per node index modulo 64.
constexpr std::size_t kNodeDomains = 64;
// How often the I/O thread checks whether the slot map should be read again.
constexpr auto kTick = std::chrono::milliseconds(100);
// How long a call waits between tries on a node that is still making its first
// connection, and after TRYAGAIN.
constexpr auto kRetryDelay = std::chrono::milliseconds(2);

// One Redis node the store has heard of: a seed, a master in a slot map, or the target of
// a redirection. Lives as long as the store.
struct node {
  redis::endpoint where;
  std::uint16_t index = 0;
  std::vector<std::shared_ptr<redis::connection>> pool;
  std::atomic<std::size_t> next{0};

  redis::connection& pick() {
    return *pool[next.fetch_add(1, std::memory_order_relaxed) % pool.size()];
  }
  bool up() const {
    return std::any_of(pool.begin(), pool.end(), [](const auto& c) { return c->ready(); });
  }
  // True while no connection has finished its first attempt: the node is brand new. Asked
  // on every call, so the answer is kept once it is false (it stays false).
  bool connecting() {
    if (settled.load(std::memory_order_relaxed)) return false;
    const bool any = std::any_of(pool.begin(), pool.end(),
                                 [](const auto& c) { return c->first_attempt_done(); });
    if (any) settled.store(true, std::memory_order_relaxed);
    return !any;
  }

  std::atomic<bool> settled{false};  // some connection has finished its first attempt
};

// One script call or reset on its way, kept whole so that it can be sent again after a
// redirection or a NOSCRIPT. `script` is set for script calls; resets are DEL of `key`.
struct call {
  std::optional<script_call> script;
  std::string key;
  int slot = 0;
  steady::time_point deadline;
  int redirects = 0;
  bool with_source = false;  // send EVAL with the script's source (after NOSCRIPT)
  // Takes the reply to the last try, or why there is none; called exactly once.
  std::function<void(result<reply>)> finished;
};

unexpected<error> unavailable(const std::string& why) {
  return make_error(errc::store_unavailable, "redis cluster: " + why);
}

}  // namespace

struct redis_cluster_store::impl {
  explicit impl(redis_cluster_options o)
      : options(std::move(o)), shared(std::make_shared<redis::shared_state>(options.connection)) {
    for (auto& o2 : owner) o2.store(kNoNode, std::memory_order_relaxed);
    for (auto& n : nodes) n.store(nullptr, std::memory_order_relaxed);
  }

  redis_cluster_options options;
  std::shared_ptr<redis::shared_state> shared;
  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::thread thread;

  // Routing, read by every caller without a lock: slot → node index → node.
  std::array<std::atomic<std::uint16_t>, kClusterSlots> owner;
  std::array<std::atomic<node*>, kMaxNodes> nodes;

  // The nodes themselves; added under `nodes_mu`.
  std::mutex nodes_mu;
  std::vector<std::unique_ptr<node>> owned;
  std::map<std::string, std::uint16_t> by_address;

  std::atomic<std::uint64_t> moved{0};
  std::atomic<std::uint64_t> asks{0};
  std::atomic<std::uint64_t> retries{0};
  std::atomic<std::uint64_t> refreshes{0};
  std::atomic<std::size_t> master_count{0};
  std::atomic<bool> refresh_wanted{true};
  std::atomic<bool> refresh_posted{false};

  // The first slot map, for the constructor to wait on.
  std::mutex map_mu;
  std::condition_variable map_cv;
  bool have_map = false;

  // The I/O thread's own.
  std::optional<asio::steady_timer> tick;
  std::set<std::shared_ptr<asio::steady_timer>> waits;  // calls waiting to be tried again
  std::vector<node*> masters;                           // of the map applied last
  bool mapped = false;                                  // a map has been applied
  std::array<bool, 1 + kNodeDomains> held{};            // domains with slots in that map
  bool refreshing = false;
  bool closing = false;
  std::size_t refresh_cursor = 0;
  steady::time_point last_refresh{};

  mutable std::mutex problem_mu;
  std::string problem;  // why the last slot map read failed; empty when it worked

  // --- nodes --------------------------------------------------------------------------

  // Returns the node at host:port, connecting to it if it is new; null when there are
  // too many nodes already.
  node* node_at(const std::string& host, std::uint16_t port) {
    redis::endpoint where{host, port, {}};
    const std::string address = where.text();
    std::lock_guard lock(nodes_mu);
    if (const auto it = by_address.find(address); it != by_address.end()) {
      return nodes[it->second].load(std::memory_order_relaxed);
    }
    if (owned.size() >= kMaxNodes) return nullptr;
    auto n = std::make_unique<node>();
    n->where = std::move(where);
    n->index = static_cast<std::uint16_t>(owned.size());
    for (std::size_t i = 0; i < shared->options.pool; ++i) {
      n->pool.push_back(redis::make_connection(io, shared, n->where));
    }
    for (auto& c : n->pool) c->start();
    node* raw = n.get();
    by_address.emplace(address, raw->index);
    owned.push_back(std::move(n));
    nodes[raw->index].store(raw, std::memory_order_release);
    return raw;
  }

  node* owner_of(int slot) const {
    const std::uint16_t index =
        owner[static_cast<std::size_t>(slot)].load(std::memory_order_acquire);
    return index == kNoNode ? nullptr : nodes[index].load(std::memory_order_acquire);
  }

  std::string redis_key(std::string_view key) const {
    const std::string& prefix = shared->options.key_prefix;
    std::string out;
    out.reserve(prefix.size() + key.size() + 3);
    out.append(prefix);
    if (!prefix.empty()) out += ':';
    if (options.hash_tag) out += '{';
    out.append(key);
    if (options.hash_tag) out += '}';
    return out;
  }

  // --- calls --------------------------------------------------------------------------

  void decide(const request& r, script_op op, completion done) {
    if (auto ok = redis::check_redis_request(r); !ok) return done(fail(ok.error()));
    ++shared->requests;
    auto c = std::make_shared<call>();
    c->script = redis::make_script_call(*shared, r, redis_key(r.key), op);
    c->slot = redis::key_slot(c->script->key);
    c->deadline = steady::now() + shared->options.timeout;
    c->finished = [count = r.limit.count, done = std::move(done), s = shared](result<reply> rep) {
      auto d = redis::to_decision(rep, count);
      if (!d) ++s->errors;
      done(std::move(d));
    };
    route(std::move(c));
  }

  void reset(std::string_view key, reset_completion done) {
    if (auto ok = redis::check_key(key); !ok) return done(fail(ok.error()));
    ++shared->requests;
    auto c = std::make_shared<call>();
    c->key = redis_key(key);
    c->slot = redis::key_slot(c->key);
    c->deadline = steady::now() + shared->options.timeout;
    c->finished = [done = std::move(done), s = shared](result<reply> rep) {
      auto r = redis::to_reset_result(rep);
      if (!r) ++s->errors;
      done(std::move(r));
    };
    route(std::move(c));
  }

  // --- acquire_all --------------------------------------------------------------------
  //
  // Keys on one slot go in one run of the multi-key script: atomic on that slot's master,
  // exactly as on one Redis. Keys on several slots cannot share a run (a script's keys must
  // share a slot), so each slot's keys are *reserved* by a run of their own, all sent at
  // once. When every run admits, the call is admitted. When one denies or fails, the runs
  // that admitted are voided by the release script, one call per slot, and only then is
  // the denial answered (each request's decision a peek: from the run that denied, or from
  // the release after the give-back), or the failure, the first in key order.
  //
  // What others see meanwhile: a reservation spends its units from its run until its
  // release, at most two deadlines later. A concurrent request on those keys may be denied
  // because of units a voided call held for that long; none is ever admitted beyond a
  // limit, since units are given back only after the call's denial is certain and only
  // those its own runs spent (scripts.h, the release script: sliding_log removes the run's
  // own members, sliding_counter subtracts from the window it counted in, gcra moves the
  // arrival time back by the run's share less what admissions since may have absorbed).
  // What cannot be given back exactly stays spent until it expires: over-counting, never
  // under-counting. The same holds when a release fails or times out, and for a run that
  // timed out (it may have admitted, and nothing is known to give back): the call then
  // fails with the first error, after the give-back of the runs known to have admitted.

  // The keys of one slot in an acquire_all, and what their runs answered.
  struct slot_group {
    int slot = 0;
    std::vector<std::size_t> members;  // the merged request of each key, in key order
    std::vector<std::int64_t> counts;  // each key's limit count
    script_call reservation;
    std::optional<result<redis::multi_reply>> reserved;
  };

  // One acquire_all on its way. Its groups answer on the I/O thread, or at once on the
  // caller's thread when they fail before any I/O: `mu` guards what they write.
  struct all_call {
    std::vector<std::size_t> group;  // the merged request of each request
    std::vector<slot_group> slots;
    std::vector<decision> per_key;  // by merged request
    std::optional<error> failure;
    all_completion done;
    std::mutex mu;
    std::size_t waiting = 0;
  };

  void decide_all(std::span<const request> rs, all_completion done) {
    std::vector<std::size_t> group;
    auto merged = redis::prepare_all(rs, group);
    if (!merged) return done(fail(merged.error()));
    if (merged->empty()) return done(std::vector<decision>{});
    if (merged->size() == 1) {
      auto [one, op] = redis::lone_call(merged->front());
      return decide(one, op, redis::spread_lone(std::move(group), std::move(done)));
    }
    auto a = std::make_shared<all_call>();
    a->group = std::move(group);
    std::vector<std::vector<redis::script_key>> keys;
    for (std::size_t m = 0; m < merged->size(); ++m) {
      const request& r = (*merged)[m];
      std::string key = redis_key(r.key);
      const int slot = redis::key_slot(key);
      std::size_t i = 0;
      while (i < a->slots.size() && a->slots[i].slot != slot) ++i;
      if (i == a->slots.size()) {
        a->slots.emplace_back().slot = slot;
        keys.emplace_back();
      }
      a->slots[i].members.push_back(m);
      a->slots[i].counts.push_back(r.limit.count);
      keys[i].push_back(redis::to_script_key(r, std::move(key), shared->packed_log()));
    }
    const std::string token = shared->next_token();
    for (std::size_t i = 0; i < a->slots.size(); ++i) {
      a->slots[i].reservation =
          redis::make_multi_call(script_op::acquire_all, std::move(keys[i]), token);
    }
    a->per_key.resize(merged->size());
    a->done = std::move(done);
    a->waiting = a->slots.size();
    const auto deadline = steady::now() + shared->options.timeout;
    for (std::size_t i = 0; i < a->slots.size(); ++i) {
      ++shared->requests;
      auto c = std::make_shared<call>();
      c->script = a->slots[i].reservation;
      c->slot = a->slots[i].slot;
      c->deadline = deadline;
      c->finished = [this, a, i](result<reply> r) { on_reserved(a, i, r); };
      route(std::move(c));
    }
  }

  void on_reserved(const std::shared_ptr<all_call>& a, std::size_t i, const result<reply>& rep) {
    auto reserved = redis::to_multi_reply(rep, a->slots[i].counts);
    if (!reserved) ++shared->errors;
    {
      std::lock_guard lock(a->mu);
      a->slots[i].reserved = std::move(reserved);
      if (--a->waiting > 0) return;
    }
    // Every run has answered: only this thread touches `a` until the releases are sent.
    bool denied = false;
    std::vector<std::size_t> admitted;
    for (std::size_t g = 0; g < a->slots.size(); ++g) {
      const slot_group& sg = a->slots[g];
      if (!*sg.reserved) {
        if (!a->failure) a->failure = sg.reserved->error();
        continue;
      }
      const auto& decisions = (*sg.reserved)->decisions;
      bool all = true;
      for (std::size_t k = 0; k < decisions.size(); ++k) {
        a->per_key[sg.members[k]] = decisions[k];
        all = all && decisions[k].allowed;
      }
      denied = denied || !all;
      if (all) admitted.push_back(g);
    }
    if (!denied && !a->failure) return answer(*a);
    if (admitted.empty()) return answer(*a);
    {
      std::lock_guard lock(a->mu);  // a release may answer at once, on this thread or another
      a->waiting = admitted.size();
    }
    const auto deadline = steady::now() + shared->options.timeout;
    for (const std::size_t g : admitted) {
      const slot_group& sg = a->slots[g];
      script_call release = sg.reservation;
      release.op = script_op::release;
      const redis::multi_reply& run = **sg.reserved;
      for (std::size_t k = 0; k < release.keys.size(); ++k) {
        redis::script_key& key = release.keys[k];
        key.reserved_at_us = key.now_us.value_or(run.now_us);
        key.reserved_reset_us = run.decisions[k].reset_after.count();
      }
      ++shared->requests;
      auto c = std::make_shared<call>();
      c->script = std::move(release);
      c->slot = sg.slot;
      c->deadline = deadline;
      c->finished = [this, a, g](result<reply> r) { on_released(a, g, r); };
      route(std::move(c));
    }
  }

  // After a release, its keys' decisions are its peeks; when it failed, they stay the
  // reservation's (whose units are still spent).
  void on_released(const std::shared_ptr<all_call>& a, std::size_t g, const result<reply>& rep) {
    const slot_group& sg = a->slots[g];
    auto released = redis::to_multi_reply(rep, sg.counts);
    if (!released) ++shared->errors;
    {
      std::lock_guard lock(a->mu);
      if (released) {
        for (std::size_t k = 0; k < sg.members.size(); ++k) {
          a->per_key[sg.members[k]] = released->decisions[k];
        }
      }
      if (--a->waiting > 0) return;
    }
    answer(*a);
  }

  void answer(all_call& a) {
    if (a.failure) return a.done(fail(*a.failure));
    std::vector<decision> out;
    out.reserve(a.group.size());
    for (const std::size_t m : a.group) out.push_back(a.per_key[m]);
    a.done(std::move(out));
  }

  // Answers the caller of `c` with `r`, the reply to its last try (or why there is none).
  void finish(call& c, result<reply> r) { c.finished(std::move(r)); }

  // Sends `c` to the master of its slot.
  void route(std::shared_ptr<call> c) {
    node* n = owner_of(c->slot);
    if (n == nullptr) {
      want_refresh();
      return finish(*c, unavailable("slot " + std::to_string(c->slot) + " has no known master" +
                                    refresh_problem()));
    }
    send(*n, std::move(c), false);
  }

  // Sends `c` to `n`; with `asking`, after ASKING (an ASK redirection).
  void send(node& n, std::shared_ptr<call> c, bool asking) {
    if (steady::now() >= c->deadline) {
      return finish(*c, make_error(errc::timeout, "redis cluster: no reply before the deadline"));
    }
    // A node heard of a moment ago is still connecting: wait for it rather than fail.
    if (n.connecting()) return later(std::move(c), &n, asking);
    pending p;
    p.deadline = c->deadline;
    node* from = &n;
    p.done = [this, from, c](result<reply> r) { on_reply(*from, c, std::move(r)); };
    if (!asking && batchable(*c)) {
      // The connection writes it, alone or in a batch of calls on the same slot (a
      // script's keys must share one). It resends a batch with its source after NOSCRIPT;
      // a redirection or another error of the whole batch comes back to each call here.
      p.batchable = true;
      p.group = c->slot;
      p.script = *c->script;
      return n.pick().submit(std::string(), std::move(p));
    }
    std::string command;
    if (asking) redis::append_command(command, {"ASKING"});
    if (c->script) {
      // After ASKING, the script goes with its source (EVAL): the importing node may not
      // have it cached, and a NOSCRIPT resend would go without ASKING and be sent back.
      const redis::script& s = shared->script_of(*c->script);
      redis::append_script_call(command, *c->script, s.sha,
                                asking || c->with_source ? s.source : std::string_view{});
    } else {
      redis::append_command(command, {"DEL", c->key});
    }
    // The pending holds no script: NOSCRIPT comes back here (on_reply), which has the call.
    if (!asking) return n.pick().submit(std::move(command), std::move(p));
    // ASKING's own reply is dropped (a pending with no completion); it and the call go out
    // back to back on one connection, as ASK requires.
    std::vector<pending> both(2);
    both[0].deadline = c->deadline;
    both[1] = std::move(p);
    n.pick().submit(std::move(command), std::move(both));
  }

  // True for the calls the connection may batch: single-key scripts, sent by EVALSHA.
  bool batchable(const call& c) const {
    return shared->batching() && c.script && !c.script->multi() && !c.with_source;
  }

  void on_reply(node& from, const std::shared_ptr<call>& c, result<reply> r) {
    if (!r) {
      // A lost connection or a node that stopped answering: its slots may have moved.
      if (r.error().code == errc::store_unavailable || r.error().code == errc::timeout) {
        want_refresh();
      }
      return finish(*c, std::move(r));
    }
    if (!r->is_error()) return finish(*c, std::move(r));
    const std::string& text = r->text;
    if (auto to = redis::parse_redirect(text)) {
      if (c->redirects >= options.max_redirects) {
        return finish(
            *c, make_error(errc::store_error,
                           "redis cluster: more than " + std::to_string(options.max_redirects) +
                               " redirections (last: " + text.substr(0, 100) + ")"));
      }
      ++c->redirects;
      node* target = node_at(to->host.empty() ? from.where.host : to->host, to->port);
      if (target == nullptr) {
        return finish(*c, unavailable("too many nodes to follow " + text.substr(0, 100)));
      }
      if (to->ask) {
        ++asks;
      } else {
        ++moved;
        owner[static_cast<std::size_t>(to->slot)].store(target->index, std::memory_order_release);
        want_refresh();
      }
      return send(*target, c, to->ask);
    }
    if (text.starts_with("NOSCRIPT") && c->script && !c->with_source) {
      // A restarted node, SCRIPT FLUSH: EVAL with the source caches it again.
      ++shared->script_loads;
      c->with_source = true;
      return send(from, c, false);
    }
    if (text.starts_with("TRYAGAIN")) {
      ++retries;
      return later(c, nullptr, false);
    }
    if (text.starts_with("CLUSTERDOWN") || text.starts_with("MASTERDOWN") ||
        text.starts_with("LOADING") || text.starts_with("READONLY")) {
      want_refresh();
      return finish(*c, unavailable(from.where.text() + ": " + text.substr(0, 200)));
    }
    finish(*c, std::move(r));
  }

  // Tries `c` again in a moment: on `n` (asking again when `asking`), or routed afresh.
  void later(std::shared_ptr<call> c, node* n, bool asking) {
    asio::post(io, [this, c = std::move(c), n, asking]() mutable {
      if (closing) return finish(*c, unavailable("the store was closed"));
      auto timer = std::make_shared<asio::steady_timer>(io, kRetryDelay);
      waits.insert(timer);
      timer->async_wait([this, timer, c = std::move(c), n, asking](auto ec) {
        waits.erase(timer);
        if (ec || closing) return finish(*c, unavailable("the store was closed"));
        if (n != nullptr) return send(*n, c, asking);
        route(c);
      });
    });
  }

  // --- the slot map -------------------------------------------------------------------

  void want_refresh() {
    refresh_wanted.store(true, std::memory_order_relaxed);
    if (refresh_posted.exchange(true)) return;
    asio::post(io, [this] {
      refresh_posted = false;
      refresh();
    });
  }

  // Why there is no slot map (yet), for the errors of calls that cannot be routed.
  std::string refresh_problem() const {
    std::lock_guard lock(problem_mu);
    return problem.empty() ? std::string() : " (" + problem + ")";
  }

  void set_problem(std::string why) {
    std::lock_guard lock(problem_mu);
    problem = std::move(why);
  }

  // Asks one reachable node for CLUSTER SLOTS, taking the nodes in turn.
  void refresh() {
    if (closing || refreshing) return;
    std::vector<node*> known;
    {
      std::lock_guard lock(nodes_mu);
      for (auto& n : owned) known.push_back(n.get());
    }
    node* ask = nullptr;
    for (std::size_t i = 0; i < known.size() && ask == nullptr; ++i) {
      node* n = known[(refresh_cursor + i) % known.size()];
      if (n->up()) ask = n;
    }
    ++refresh_cursor;
    if (ask == nullptr) {  // the tick tries again
      // With the reason of a node (AUTH refused, TLS handshake, ...): often all fail alike.
      if (masters.empty()) {
        set_problem("no node reachable to read the slot map from" +
                    (known.empty() ? std::string()
                                   : "; " + known.front()->pool.front()->unavailable_reason()));
      }
      return;
    }
    refreshing = true;
    refresh_wanted = false;
    last_refresh = steady::now();
    std::string command;
    redis::append_command(command, {"CLUSTER", "SLOTS"});
    // Long enough for a slot map, short enough that a hung node does not hold up the next
    // try on another node for long.
    const auto& o = shared->options;
    pending p;
    p.deadline = steady::now() + std::min(o.connect_timeout,
                                          std::max(4 * o.timeout, std::chrono::milliseconds(200)));
    p.done = [this, ask](result<reply> r) {
      refreshing = false;
      if (!r) return refresh_failed(ask->where.text() + ": " + r.error().message());
      auto ranges = redis::parse_cluster_slots(*r, ask->where.host);
      if (!ranges) return refresh_failed(ask->where.text() + ": " + ranges.error().message());
      apply(*ranges);
    };
    ask->pick().submit(std::move(command), std::move(p));
  }

  void refresh_failed(std::string why) {
    set_problem("reading the slot map: " + std::move(why));
    refresh_wanted = true;
  }

  // Returns the failure domain of node index `index` (kNoNode: slots with no known master).
  static std::size_t domain_of(std::uint16_t index) {
    return index == kNoNode ? 0 : 1 + index % kNodeDomains;
  }

  void apply(const std::vector<redis::slot_range>& ranges) {
    // The domains that hold slots before and after, to tell the limiter which ones came
    // (a promoted replica: probe at once) and which went (a dead master: nothing calls it).
    // A redirection may have moved a domain's last slot already: the map applied last counts.
    std::array<bool, 1 + kNodeDomains> before = held, after{};
    for (const auto& o : owner) before[domain_of(o.load(std::memory_order_relaxed))] = true;
    std::vector<std::uint16_t> table(kClusterSlots, kNoNode);
    std::vector<node*> now_masters;
    for (const auto& r : ranges) {
      node* n = node_at(r.host, r.port);
      if (n == nullptr) continue;
      if (std::find(now_masters.begin(), now_masters.end(), n) == now_masters.end()) {
        now_masters.push_back(n);
      }
      std::fill(table.begin() + r.first, table.begin() + r.last + 1, n->index);
    }
    for (int s = 0; s < kClusterSlots; ++s) {
      owner[static_cast<std::size_t>(s)].store(table[static_cast<std::size_t>(s)],
                                               std::memory_order_release);
      after[domain_of(table[static_cast<std::size_t>(s)])] = true;
    }
    for (std::size_t d = 0; d < before.size(); ++d) {
      if (before[d] && !after[d]) shared->emit({store_event::kind::retired, d, {}});
      if (!before[d] && after[d]) shared->emit({store_event::kind::reachable, d, {}});
    }
    held = after;
    masters = std::move(now_masters);
    mapped = true;
    master_count = masters.size();
    set_problem({});
    ++refreshes;
    {
      std::lock_guard lock(map_mu);
      have_map = true;
    }
    map_cv.notify_all();
  }

  bool degraded() const {
    return std::any_of(masters.begin(), masters.end(), [](node* n) { return !n->up(); });
  }

  void arm_tick() {
    // Until there is a map, look again soon: the seeds are still connecting.
    tick->expires_after(mapped ? kTick : kRetryDelay * 5);
    tick->async_wait([this](auto ec) {
      if (ec || closing) return;
      const bool due = refresh_wanted || !mapped || degraded() ||
                       steady::now() - last_refresh >= options.refresh_interval;
      if (due) refresh();
      arm_tick();
    });
  }

  void close() {
    closing = true;
    if (tick) tick->cancel();
    for (auto& t : waits) t->cancel();
    std::lock_guard lock(nodes_mu);
    for (auto& n : owned) {
      for (auto& c : n->pool) c->close();
    }
  }
};

redis_cluster_store::redis_cluster_store(redis_cluster_options options) {
  options.connection.pool = std::clamp<std::size_t>(options.connection.pool, 1, 64);
  options.max_redirects = std::clamp(options.max_redirects, 0, 16);
  impl_ = std::make_shared<impl>(std::move(options));
  impl& m = *impl_;
  m.work.emplace(m.io.get_executor());
  m.tick.emplace(m.io);
  m.shared->on_reconnected = [p = &m](const redis::endpoint& where) {
    std::uint16_t index = kNoNode;
    {
      std::lock_guard lock(p->nodes_mu);
      const auto it = p->by_address.find(where.text());
      if (it == p->by_address.end()) return;
      index = it->second;
    }
    p->shared->emit({store_event::kind::reachable, impl::domain_of(index), {}});
  };
  for (const auto& seed : m.options.seeds) m.node_at(seed.host, seed.port);
  m.thread = std::thread([io = &m.io] { io->run(); });
  asio::post(m.io, [p = &m] {
    p->refresh();
    p->arm_tick();
  });
  std::unique_lock lock(m.map_mu);
  m.map_cv.wait_for(lock, m.shared->options.connect_timeout, [&] { return m.have_map; });
}

redis_cluster_store::~redis_cluster_store() {
  impl& m = *impl_;
  m.work.reset();
  // Close everything on the I/O thread, then stop it once the closes' completions ran.
  asio::post(m.io, [p = &m] {
    p->close();
    asio::post(p->io, [p] { asio::post(p->io, [p] { p->io.stop(); }); });
  });
  m.thread.join();
}

void redis_cluster_store::async_acquire(const request& r, completion done) {
  impl_->decide(r, script_op::acquire, std::move(done));
}

void redis_cluster_store::async_peek(const request& r, completion done) {
  impl_->decide(r, script_op::peek, std::move(done));
}

void redis_cluster_store::async_acquire_all(std::span<const request> rs, all_completion done) {
  impl_->decide_all(rs, std::move(done));
}

void redis_cluster_store::async_refund(const request& r, completion done) {
  impl_->decide(r, script_op::refund, std::move(done));
}

void redis_cluster_store::async_reset(std::string_view key, reset_completion done) {
  impl_->reset(key, std::move(done));
}

void redis_cluster_store::set_listener(event_listener listen) {
  impl_->shared->set_listener(std::move(listen));
}

std::size_t redis_cluster_store::failure_domains() const noexcept { return 1 + kNodeDomains; }

std::size_t redis_cluster_store::failure_domain(std::string_view key) const noexcept {
  try {
    const std::uint16_t index =
        impl_->owner[static_cast<std::size_t>(slot_of(key))].load(std::memory_order_relaxed);
    return index == kNoNode ? 0 : 1 + index % kNodeDomains;
  } catch (...) {  // out of memory building the key
    return 0;
  }
}

std::string redis_cluster_store::redis_key(std::string_view key) const {
  return impl_->redis_key(key);
}

int redis_cluster_store::slot_of(std::string_view key) const {
  // Asked by the limiter on every decision (failure_domain): keys of usual length are put
  // together on the stack rather than in a new string.
  const std::string& prefix = impl_->shared->options.key_prefix;
  const bool tag = impl_->options.hash_tag;
  std::array<char, 256> buffer;
  if (prefix.size() + key.size() + 3 > buffer.size()) {
    return redis::key_slot(impl_->redis_key(key));
  }
  char* end = std::copy(prefix.begin(), prefix.end(), buffer.data());
  if (!prefix.empty()) *end++ = ':';
  if (tag) *end++ = '{';
  end = std::copy(key.begin(), key.end(), end);
  if (tag) *end++ = '}';
  return redis::key_slot(
      std::string_view(buffer.data(), static_cast<std::size_t>(end - buffer.data())));
}

std::string redis_cluster_store::describe() const {
  const auto& o = impl_->options;
  std::string out = o.connection.tls ? "rediss+cluster://" : "redis+cluster://";
  for (std::size_t i = 0; i < o.seeds.size(); ++i) {
    if (i > 0) out += ',';
    out += redis::endpoint{o.seeds[i].host, o.seeds[i].port, {}}.text();
  }
  return out + redis::describe_batching(o.connection);
}

redis_cluster_stats redis_cluster_store::stats() const {
  const impl& m = *impl_;
  redis_cluster_stats out;
  redis::read_common_stats(*m.shared, out);
  out.moved = m.moved.load();
  out.asks = m.asks.load();
  out.retries = m.retries.load();
  out.refreshes = m.refreshes.load();
  out.masters = m.master_count.load();
  std::array<std::int8_t, kMaxNodes> up{};  // 0: not asked yet, 1: up, -1: down
  for (int slot = 0; slot < kClusterSlots; ++slot) {
    const std::uint16_t index =
        m.owner[static_cast<std::size_t>(slot)].load(std::memory_order_acquire);
    if (index == kNoNode) continue;
    if (up[index] == 0) up[index] = m.nodes[index].load(std::memory_order_acquire)->up() ? 1 : -1;
    if (up[index] == 1) ++out.slots_served;
  }
  return out;
}

bool redis_cluster_store::on_io_thread() const noexcept {
  return std::this_thread::get_id() == impl_->thread.get_id();
}

store_health redis_cluster_store::health() const {
  const redis_cluster_stats s = stats();
  store_health h;
  h.ready = s.slots_served > 0;
  if (s.masters == 0) {
    h.detail = "no slot map read yet";
  } else if (s.slots_served < static_cast<std::size_t>(kClusterSlots)) {
    h.detail = std::to_string(s.slots_served) + " of " + std::to_string(kClusterSlots) +
               " slots have a reachable master (" + std::to_string(s.masters) + " masters)";
  }
  return h;
}

void redis_cluster_store::visit_metrics(const metric_visitor& visit) const {
  const redis_cluster_stats s = stats();
  redis::visit_common_metrics(visit, s);
  using kind = store_metric::kind;
  constexpr std::string_view redirects = "sluice_redis_cluster_redirects_total";
  constexpr std::string_view redirects_help = "MOVED and ASK redirections followed.";
  visit({redirects, redirects_help, kind::counter, "kind", "moved", s.moved});
  visit({redirects, redirects_help, kind::counter, "kind", "ask", s.asks});
  visit({"sluice_redis_cluster_retries_total",
         "TRYAGAIN replies tried again.",
         kind::counter,
         {},
         {},
         s.retries});
  visit({"sluice_redis_cluster_slot_map_reads_total",
         "Slot maps read (CLUSTER SLOTS) and applied.",
         kind::counter,
         {},
         {},
         s.refreshes});
  visit(
      {"sluice_redis_cluster_masters", "Masters in the slot map.", kind::gauge, {}, {}, s.masters});
  visit({"sluice_redis_cluster_slots_served",
         "Slots (of 16384) whose master has a connection up now.",
         kind::gauge,
         {},
         {},
         s.slots_served});
}

}  // namespace sluice
