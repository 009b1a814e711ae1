#include "sluice/redis_sentinel_store.h"

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "store/query.h"
#include "store/redis/connection.h"
#include "store/redis/single.h"

namespace sluice {
namespace {

namespace asio = boost::asio;
using redis::connection;
using redis::endpoint;
using redis::pending;
using redis::reply;
using redis::script_op;
using redis::steady;

// What the sentinels' connections use: the store's TLS and timeouts, the sentinels' AUTH.
redis_store_options sentinel_connection_options(const redis_sentinel_options& o) {
  redis_store_options s = o.connection;
  s.username = o.sentinel_username;
  s.password = o.sentinel_password;
  s.db = 0;
  s.pool = 1;
  s.batch = 0;
  return s;
}

}  // namespace

// Everything but the calling threads' picks and the counters lives on the I/O thread:
// asking the sentinels, the subscription, replacing the master's connections. `mu` guards
// what callers read: the master's connections, its address, why there is none.
struct redis_sentinel_store::impl : std::enable_shared_from_this<impl> {
  explicit impl(redis_sentinel_options o)
      : options(std::move(o)),
        shared(std::make_shared<redis::shared_state>(options.connection)),
        sentinel_shared(
            std::make_shared<redis::shared_state>(sentinel_connection_options(options))) {}

  const redis_sentinel_options options;
  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::shared_ptr<redis::shared_state> shared;           // the master's connections
  std::shared_ptr<redis::shared_state> sentinel_shared;  // the sentinels'
  std::thread thread;
  std::atomic<std::size_t> next{0};
  std::atomic<std::uint64_t> discoveries{0};
  std::atomic<std::uint64_t> failovers{0};
  std::atomic<std::uint64_t> readonly{0};

  // Read by callers.
  mutable std::mutex mu;
  std::condition_variable settled_cv;
  bool settled = false;  // the first discovery and master connection attempt are done
  std::vector<std::shared_ptr<connection>> masters;
  std::string master;  // "host:port"
  std::string why_none = "redis sentinel: the master has not been asked for yet";

  // I/O thread only.
  bool closing = false;
  std::optional<endpoint> master_at;
  std::uint64_t master_generation = 0;  // bumped when the master's connections are replaced
  bool discovering = false;
  bool force_reconnect = false;    // the next discovery replaces the connections even if
                                   // the address is the same (after READONLY)
  std::size_t first_sentinel = 0;  // where the next discovery starts
  std::size_t asked = 0;           // sentinels asked in this discovery
  std::uint64_t ask_generation = 0;
  std::vector<std::string> answers;  // what each sentinel asked in this discovery said
  std::shared_ptr<connection> probe;
  std::shared_ptr<connection> subscriber;
  std::size_t subscriber_index = 0;
  std::uint64_t subscriber_generation = 0;
  asio::steady_timer retry_timer{io};
  asio::steady_timer subscribe_timer{io};
  std::chrono::milliseconds retry_backoff = options.connection.reconnect_min;
  std::chrono::milliseconds subscribe_backoff = options.connection.reconnect_min;

  // ---- callers ------------------------------------------------------------------------

  // Returns a connection to the master, or nothing (and `why`) when there is none yet.
  std::shared_ptr<connection> pick(std::string& why) {
    std::lock_guard lock(mu);
    if (masters.empty()) {
      why = why_none;
      return nullptr;
    }
    return masters[next.fetch_add(1, std::memory_order_relaxed) % masters.size()];
  }

  redis::error_watch watch() {
    return [weak = weak_from_this()](const reply& r) {
      if (!r.text.starts_with("READONLY") && r.text.find("-READONLY") == std::string::npos) {
        return;
      }
      auto self = weak.lock();
      if (!self) return;
      ++self->readonly;
      asio::post(self->io, [self] {
        self->force_reconnect = true;
        self->discover();
      });
    };
  }

  template <class Done, class Submit>
  void with_master(Done& done, Submit submit) {
    std::string why;
    auto to = pick(why);
    if (!to) return done(make_error(errc::store_unavailable, why));
    submit(*to);
  }

  // ---- discovery (I/O thread) ---------------------------------------------------------

  // Asks the sentinels, one after the other, for the master's address; connects to it
  // when it is new. A discovery already under way covers this one.
  void discover() {
    if (closing || discovering) return;
    discovering = true;
    asked = 0;
    answers.clear();
    ask(first_sentinel);
  }

  void ask(std::size_t i) {
    const std::size_t n = options.sentinels.size();
    if (asked == n) return none_answered();
    ++asked;
    const std::uint64_t gen = ++ask_generation;
    const endpoint to{options.sentinels[i].host, options.sentinels[i].port, {}};
    redis::connection_hooks hooks;
    hooks.sentinel = true;
    hooks.on_up = [this, gen, i] {
      if (gen != ask_generation || closing) return;
      std::string command;
      redis::append_command(command, {"SENTINEL", "get-master-addr-by-name", options.master_name});
      pending p;
      p.deadline = steady::now() + options.connection.connect_timeout;
      p.done = [this, gen, i](result<reply> r) {
        asio::post(io, [this, gen, i, r = std::move(r)] { on_answer(gen, i, r); });
      };
      probe->submit(std::move(command), std::move(p));
    };
    hooks.on_down = [this, gen, i](const std::string& why) {
      if (gen != ask_generation || closing) return;
      next_sentinel(i, why);
    };
    if (probe) probe->close();
    probe = redis::make_connection(io, sentinel_shared, to, std::move(hooks));
    probe->start();
  }

  void next_sentinel(std::size_t i, const std::string& why) {
    const endpoint to{options.sentinels[i].host, options.sentinels[i].port, {}};
    answers.push_back(to.text() + ": " + why);
    ++ask_generation;  // nothing more from this sentinel's connection
    if (probe) probe->close();
    probe.reset();
    ask((i + 1) % options.sentinels.size());
  }

  void on_answer(std::uint64_t gen, std::size_t i, const result<reply>& r) {
    if (gen != ask_generation || closing) return;
    if (!r) return next_sentinel(i, r.error().message());
    if (r->is_error()) return next_sentinel(i, r->text);
    if (r->type == reply::kind::nil || (r->type == reply::kind::array && r->elements.empty())) {
      return next_sentinel(i, "does not know master \"" + options.master_name + "\"");
    }
    std::uint16_t port = 0;
    if (r->type != reply::kind::array || r->elements.size() != 2 || r->elements[0].text.empty() ||
        !internal::parse_number(std::string_view(r->elements[1].text), port) || port == 0) {
      return next_sentinel(i, "unexpected reply to SENTINEL get-master-addr-by-name");
    }
    ++ask_generation;
    if (probe) probe->close();
    probe.reset();
    discovering = false;
    first_sentinel = i;
    retry_backoff = options.connection.reconnect_min;
    ++discoveries;
    use_master(endpoint{r->elements[0].text, port, {}});
  }

  // Every sentinel was asked and none named the master: say why, and ask again later.
  void none_answered() {
    discovering = false;
    bool any_up = false;
    for (const std::string& a : answers) any_up = any_up || a.find("does not know") != npos;
    std::string why =
        any_up ? "redis sentinel: no sentinel knows master \"" + options.master_name + "\""
               : "redis sentinel: no sentinel answers";
    std::string list;
    for (const std::string& a : answers) list += (list.empty() ? " (" : "; ") + a;
    if (!list.empty()) why += list + ")";
    {
      std::lock_guard lock(mu);
      if (master_at) {
        // Keep the master we have: its connections reconnect on their own.
        why_none = why;
      } else {
        why_none = why;
        settled = true;
      }
    }
    settled_cv.notify_all();
    retry_timer.expires_after(retry_backoff);
    retry_backoff = std::min(retry_backoff * 2, options.connection.reconnect_max);
    retry_timer.async_wait([this](auto ec) {
      if (!ec) discover();
    });
  }

  // Connects to the master at `to`, replacing the connections to the old one (their calls
  // in flight fail as unavailable), unless it is where the store already is.
  void use_master(const endpoint& to) {
    if (closing) return;
    const bool same = master_at && master_at->host == to.host && master_at->port == to.port;
    if (same && !force_reconnect) return;
    force_reconnect = false;
    if (master_at && !same) ++failovers;
    master_at = to;
    const std::uint64_t gen = ++master_generation;
    std::vector<std::shared_ptr<connection>> fresh;
    auto first_attempts = std::make_shared<std::size_t>(options.connection.pool);
    for (std::size_t k = 0; k < options.connection.pool; ++k) {
      redis::connection_hooks hooks;
      hooks.require_master = true;
      hooks.on_up = [this, first_attempts] {
        if (*first_attempts > 0 && --*first_attempts == 0) settle();
        // One failure domain: a master connection up means decisions can go through (the
        // limiter's breaker probes at once instead of waiting out its open period).
        shared->emit({store_event::kind::reachable, 0, {}});
      };
      hooks.on_down = [this, gen, first_attempts](const std::string&) {
        if (*first_attempts > 0 && --*first_attempts == 0) settle();
        // The master may have moved: ask, at the pace of the connection's reconnects.
        if (gen == master_generation) discover();
      };
      fresh.push_back(redis::make_connection(io, shared, to, std::move(hooks)));
    }
    std::vector<std::shared_ptr<connection>> old;
    {
      std::lock_guard lock(mu);
      old.swap(masters);
      masters = fresh;
      master = to.text();
      why_none = "redis sentinel: master " + master + " is not connected";
    }
    for (auto& c : old) c->close();
    for (auto& c : fresh) c->start();
    if (options.subscribe && !subscriber) subscribe(first_sentinel);
  }

  void settle() {
    {
      std::lock_guard lock(mu);
      settled = true;
    }
    settled_cv.notify_all();
  }

  // ---- +switch-master (I/O thread) ----------------------------------------------------

  // Subscribes to `+switch-master` on sentinel `i`; on losing it, moves on to the next
  // sentinel after a backoff, and asks for the master again once subscribed (a switch may
  // have been missed meanwhile).
  void subscribe(std::size_t i) {
    if (closing) return;
    subscriber_index = i;
    const std::uint64_t gen = ++subscriber_generation;
    const endpoint to{options.sentinels[i].host, options.sentinels[i].port, {}};
    redis::connection_hooks hooks;
    hooks.sentinel = true;
    hooks.on_push = [this, gen](const reply& r) {
      if (gen == subscriber_generation) on_message(r);
    };
    hooks.on_up = [this, gen] {
      if (gen != subscriber_generation || closing) return;
      std::string command;
      redis::append_command(command, {"SUBSCRIBE", "+switch-master"});
      pending p;
      p.deadline = steady::now() + options.connection.connect_timeout;
      p.done = [this, gen](result<reply> r) {
        const bool ok = r && !r->is_error();
        asio::post(io, [this, gen, ok] {
          if (gen != subscriber_generation || closing) return;
          if (!ok) return resubscribe();
          subscribe_backoff = options.connection.reconnect_min;
          discover();
        });
      };
      subscriber->submit(std::move(command), std::move(p));
    };
    hooks.on_down = [this, gen](const std::string&) {
      if (gen == subscriber_generation) resubscribe();
    };
    if (subscriber) subscriber->close();
    subscriber = redis::make_connection(io, sentinel_shared, to, std::move(hooks));
    subscriber->start();
  }

  void resubscribe() {
    if (closing) return;
    ++subscriber_generation;
    if (subscriber) subscriber->close();
    subscriber.reset();
    subscribe_timer.expires_after(subscribe_backoff);
    subscribe_backoff = std::min(subscribe_backoff * 2, options.connection.reconnect_max);
    subscribe_timer.async_wait([this](auto ec) {
      if (!ec) subscribe((subscriber_index + 1) % options.sentinels.size());
    });
  }

  // ["message", "+switch-master", "<name> <old ip> <old port> <new ip> <new port>"]
  void on_message(const reply& r) {
    if (closing || r.type != reply::kind::array || r.elements.size() != 3 ||
        r.elements[0].text != "message") {
      return;
    }
    std::vector<std::string_view> words;
    std::string_view text = r.elements[2].text;
    while (!text.empty()) {
      const std::size_t space = text.find(' ');
      if (space != 0) words.push_back(text.substr(0, space));
      text = space == npos ? std::string_view{} : text.substr(space + 1);
    }
    std::uint16_t port = 0;
    if (words.size() != 5 || words[0] != options.master_name ||
        !internal::parse_number(words[4], port) || port == 0) {
      return;
    }
    ++discoveries;
    use_master(endpoint{std::string(words[3]), port, {}});
  }

  // ---- life ---------------------------------------------------------------------------

  void close_all() {
    closing = true;
    retry_timer.cancel();
    subscribe_timer.cancel();
    if (probe) probe->close();
    if (subscriber) subscriber->close();
    std::vector<std::shared_ptr<connection>> old;
    {
      std::lock_guard lock(mu);
      old.swap(masters);
      why_none = "redis sentinel: the store was closed";
    }
    for (auto& c : old) c->close();
  }

  static constexpr std::size_t npos = std::string_view::npos;
};

redis_sentinel_store::redis_sentinel_store(redis_sentinel_options options) {
  options.connection.pool = std::clamp<std::size_t>(options.connection.pool, 1, 64);
  impl_ = std::make_shared<impl>(std::move(options));
  impl_->work.emplace(impl_->io.get_executor());
  impl_->thread = std::thread([io = &impl_->io] { io->run(); });
  if (impl_->options.sentinels.empty()) {
    std::lock_guard lock(impl_->mu);
    impl_->why_none = "redis sentinel: no sentinels";
    return;
  }
  asio::post(impl_->io, [i = impl_.get()] { i->discover(); });
  std::unique_lock lock(impl_->mu);
  impl_->settled_cv.wait_for(lock, 2 * impl_->options.connection.connect_timeout,
                             [&] { return impl_->settled; });
}

redis_sentinel_store::~redis_sentinel_store() {
  asio::post(impl_->io, [i = impl_.get()] { i->close_all(); });
  impl_->work.reset();
  // Let the closes run, then stop whatever timers are still armed.
  asio::post(impl_->io, [io = &impl_->io] { asio::post(*io, [io] { io->stop(); }); });
  impl_->thread.join();
}

void redis_sentinel_store::set_listener(event_listener listen) {
  impl_->shared->set_listener(std::move(listen));
}

void redis_sentinel_store::async_acquire(const request& r, completion done) {
  impl_->with_master(done, [&](connection& to) {
    redis::submit_decide(impl_->shared, to, r, script_op::acquire, std::move(done), impl_->watch());
  });
}

void redis_sentinel_store::async_peek(const request& r, completion done) {
  impl_->with_master(done, [&](connection& to) {
    redis::submit_decide(impl_->shared, to, r, script_op::peek, std::move(done), impl_->watch());
  });
}

void redis_sentinel_store::async_refund(const request& r, completion done) {
  impl_->with_master(done, [&](connection& to) {
    redis::submit_decide(impl_->shared, to, r, script_op::refund, std::move(done), impl_->watch());
  });
}

void redis_sentinel_store::async_acquire_all(std::span<const request> rs, all_completion done) {
  impl_->with_master(done, [&](connection& to) {
    redis::submit_decide_all(impl_->shared, to, rs, std::move(done), impl_->watch());
  });
}

void redis_sentinel_store::async_reset(std::string_view key, reset_completion done) {
  impl_->with_master(done, [&](connection& to) {
    redis::submit_reset(impl_->shared, to, key, std::move(done), impl_->watch());
  });
}

std::string redis_sentinel_store::describe() const {
  const auto& o = impl_->options;
  std::string out = o.connection.tls ? "rediss+sentinel://" : "redis+sentinel://";
  for (std::size_t i = 0; i < o.sentinels.size(); ++i) {
    if (i > 0) out += ",";
    out += endpoint{o.sentinels[i].host, o.sentinels[i].port, {}}.text();
  }
  out += "/" + o.master_name + redis::describe_batching(o.connection) +
         "&db=" + std::to_string(o.connection.db);
  return out;
}

redis_sentinel_stats redis_sentinel_store::stats() const {
  redis_sentinel_stats out;
  redis::read_common_stats(*impl_->shared, out);
  out.discoveries = impl_->discoveries.load();
  out.failovers = impl_->failovers.load();
  out.readonly = impl_->readonly.load();
  std::lock_guard lock(impl_->mu);
  out.master = impl_->master;
  return out;
}

bool redis_sentinel_store::on_io_thread() const noexcept {
  return std::this_thread::get_id() == impl_->thread.get_id();
}

store_health redis_sentinel_store::health() const {
  std::vector<std::shared_ptr<connection>> masters;
  store_health h;
  {
    std::lock_guard lock(impl_->mu);
    masters = impl_->masters;
    h.detail = impl_->why_none;
  }
  std::size_t up = 0;
  std::string down;
  for (const auto& c : masters) {
    if (c->ready()) {
      ++up;
    } else if (down.empty()) {
      down = c->unavailable_reason();
    }
  }
  h.ready = up > 0;
  if (h.ready) {
    h.detail = up == masters.size() ? std::string()
                                    : std::to_string(up) + " of " + std::to_string(masters.size()) +
                                          " connections up; " + down;
  } else if (!down.empty() && h.detail.find("no sentinel") == std::string::npos) {
    h.detail = down;
  }
  return h;
}

void redis_sentinel_store::visit_metrics(const metric_visitor& visit) const {
  const redis_sentinel_stats s = stats();
  redis::visit_common_metrics(visit, s);
  using kind = store_metric::kind;
  visit({"sluice_redis_sentinel_master",
         "The master the sentinels named and the store uses (1), by address.", kind::gauge,
         "address", s.master, s.master.empty() ? 0u : 1u});
  visit({"sluice_redis_sentinel_failovers_total",
         "Times the master's address changed (a failover seen by the store).",
         kind::counter,
         {},
         {},
         s.failovers});
  visit({"sluice_redis_sentinel_discoveries_total",
         "Master addresses learned from the sentinels (asked, or +switch-master).",
         kind::counter,
         {},
         {},
         s.discoveries});
  visit({"sluice_redis_sentinel_readonly_total",
         "READONLY replies: the master in use had been demoted.",
         kind::counter,
         {},
         {},
         s.readonly});
}

}  // namespace sluice
