#include "sluice/redis_store.h"

#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sluice/algorithms.h"
#include "store/redis/pipeline.h"
#include "store/redis/resp.h"
#include "store/redis/scripts.h"

namespace sluice {
namespace {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using redis::pending;
using redis::reply;
using redis::script_call;
using redis::steady;
using tcp = asio::ip::tcp;
using unix_socket = asio::local::stream_protocol::socket;

// Lua numbers are doubles: explicit times must stay where they are exact.
constexpr std::int64_t kMaxScriptTime = std::int64_t{1} << 52;

std::string sha1_hex(std::string_view text) {
  unsigned char digest[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (const unsigned char b : digest) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

struct script {
  std::string_view source;
  std::string sha;
};

// The pieces every connection of one store shares. Immutable after construction but for
// the counters.
struct shared_state {
  redis_store_options options;
  std::array<script, 3> scripts;  // indexed by algorithm
  std::string where;              // "host:port" or the socket path, for messages
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::uint64_t> errors{0};
  std::atomic<std::uint64_t> timeouts{0};
  std::atomic<std::uint64_t> reconnects{0};
  std::atomic<std::uint64_t> script_loads{0};
  std::atomic<std::size_t> connected{0};

  const script& script_for(algorithm a) const { return scripts[static_cast<std::size_t>(a)]; }
};

// One connection to Redis: connect, handshake (AUTH, SELECT, SCRIPT LOAD), then pipeline
// every call written to it; on any failure answer everything waiting, back off, and
// connect again. Lives on the store's I/O thread; `submit` may be called from any thread.
class connection : public std::enable_shared_from_this<connection> {
 public:
  connection(asio::io_context& io, std::shared_ptr<shared_state> shared)
      : io_(io), shared_(std::move(shared)), timer_(io), retry_timer_(io) {}

  void start() {
    asio::post(io_, [self = shared_from_this()] { self->connect(); });
  }

  // Queues one command. When the connection is not up, answers at once.
  void submit(std::string command, pending p) {
    {
      std::lock_guard lock(mu_);
      if (ready_ && !closed_) {
        incoming_bytes_ += command;
        incoming_.push_back(std::move(p));
        // A write in progress flushes again when it completes: no need to wake the thread.
        if (!flush_posted_ && !writing_) {
          flush_posted_ = true;
          asio::post(io_, [self = shared_from_this()] { self->flush(); });
        }
        return;
      }
    }
    p.done(make_error(errc::store_unavailable, unavailable_reason()));
  }

  bool ready() const {
    std::lock_guard lock(mu_);
    return ready_;
  }

  // Waits until the first handshake has succeeded or failed, at most `limit`.
  void wait_first_attempt(std::chrono::milliseconds limit) {
    std::unique_lock lock(mu_);
    first_cv_.wait_for(lock, limit, [&] { return first_attempt_done_; });
  }

  // Closes for good (the store is going away); answers everything waiting.
  void close() {
    asio::post(io_, [self = shared_from_this()] {
      {
        std::lock_guard lock(self->mu_);
        self->closed_ = true;
      }
      self->retry_timer_.cancel();
      self->drop(make_error(errc::store_unavailable, "redis: the store was closed"));
    });
  }

 private:
  std::string unavailable_reason() const {
    std::lock_guard lock(mu_);
    return "redis " + shared_->where + " is not connected" +
           (last_error_.empty() ? std::string() : " (" + last_error_ + ")");
  }

  const redis_store_options& options() const { return shared_->options; }

  // --- connecting -------------------------------------------------------------------

  void connect() {
    if (is_closed()) return;
    pipeline_ = std::make_unique<redis::pipeline>();
    const auto deadline = steady::now() + options().connect_timeout;
    timer_.expires_at(deadline);
    timer_.async_wait([self = shared_from_this(), gen = generation_](auto ec) {
      if (!ec && gen == self->generation_ && !self->handshaken_) {
        self->fail("connecting timed out");
      }
    });
    if (!options().unix_socket.empty()) {
      unix_ = std::make_unique<unix_socket>(io_);
      unix_->async_connect(asio::local::stream_protocol::endpoint(options().unix_socket),
                           [self = shared_from_this(), gen = generation_](auto ec) {
                             if (gen != self->generation_) return;
                             if (ec) return self->fail("connect: " + ec.message());
                             self->handshake();
                           });
      return;
    }
    auto resolver = std::make_shared<tcp::resolver>(io_);
    resolver->async_resolve(
        options().host, std::to_string(options().port),
        [self = shared_from_this(), resolver, gen = generation_](auto ec, auto endpoints) {
          if (gen != self->generation_) return;
          if (ec) return self->fail("resolve " + self->options().host + ": " + ec.message());
          self->tcp_ = std::make_unique<tcp::socket>(self->io_);
          asio::async_connect(*self->tcp_, endpoints, [self, gen](auto ec2, const auto&) {
            if (gen != self->generation_) return;
            if (ec2) return self->fail("connect: " + ec2.message());
            boost::system::error_code ignored;
            self->tcp_->set_option(tcp::no_delay(true), ignored);
            if (self->options().tls) return self->tls_handshake();
            self->handshake();
          });
        });
  }

  void tls_handshake() {
    boost::system::error_code ec;
    tls_context_ = std::make_unique<ssl::context>(ssl::context::tls_client);
    auto& ctx = *tls_context_;
    if (options().tls_ca_file.empty()) {
      ctx.set_default_verify_paths(ec);
    } else {
      ctx.load_verify_file(options().tls_ca_file, ec);
    }
    if (ec) return fail("TLS CA " + options().tls_ca_file + ": " + ec.message());
    if (!options().tls_cert_file.empty()) {
      ctx.use_certificate_chain_file(options().tls_cert_file, ec);
      if (!ec) ctx.use_private_key_file(options().tls_key_file, ssl::context::pem, ec);
      if (ec) return fail("TLS client certificate: " + ec.message());
    }
    ctx.set_verify_mode(options().tls_verify ? ssl::verify_peer : ssl::verify_none);
    tls_ = std::make_unique<ssl::stream<tcp::socket>>(std::move(*tcp_), ctx);
    tcp_.reset();
    const std::string name =
        options().tls_server_name.empty() ? options().host : options().tls_server_name;
    SSL* native = tls_->native_handle();
    boost::system::error_code not_an_address;
    asio::ip::make_address(name, not_an_address);
    if (not_an_address) {
      SSL_set_tlsext_host_name(native, name.c_str());
      SSL_set1_host(native, name.c_str());
    } else {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(native), name.c_str());
    }
    tls_->async_handshake(ssl::stream_base::client,
                          [self = shared_from_this(), gen = generation_](auto ec2) {
                            if (gen != self->generation_) return;
                            if (ec2) return self->fail("TLS handshake: " + ec2.message());
                            self->handshake();
                          });
  }

  // AUTH, SELECT and SCRIPT LOAD go out as one pipelined batch; the connection is ready
  // when all of them have answered OK.
  void handshake() {
    std::string batch;
    std::vector<std::string> what;
    if (!options().password.empty()) {
      if (options().username.empty()) {
        redis::append_command(batch, {"AUTH", options().password});
      } else {
        redis::append_command(batch, {"AUTH", options().username, options().password});
      }
      what.push_back("AUTH");
    }
    if (options().db != 0) {
      redis::append_command(batch, {"SELECT", std::to_string(options().db)});
      what.push_back("SELECT " + std::to_string(options().db));
    }
    for (const script& s : shared_->scripts) {
      redis::append_command(batch, {"SCRIPT", "LOAD", s.source});
      what.push_back("SCRIPT LOAD");
    }
    auto remaining = std::make_shared<std::size_t>(what.size());
    for (const std::string& step : what) {
      pending p;
      p.deadline = steady::now() + options().connect_timeout;
      p.done = [self = shared_from_this(), step, remaining, gen = generation_](result<reply> r) {
        if (gen != self->generation_) return;
        if (!r) return self->fail(step + ": " + r.error().message());
        if (r->is_error()) return self->fail(step + " refused: " + r->text);
        if (--*remaining == 0) self->on_ready();
      };
      pipeline_->push(std::move(p));
    }
    write_buffer_ = std::move(batch);
    {
      std::lock_guard lock(mu_);
      writing_ = true;
    }
    write();
    read();
  }

  void on_ready() {
    timer_.cancel();
    armed_at_.reset();
    handshaken_ = true;
    backoff_ = options().reconnect_min;
    if (connected_before_) ++shared_->reconnects;
    connected_before_ = true;
    ++shared_->connected;
    {
      std::lock_guard lock(mu_);
      ready_ = true;
      last_error_.clear();
      first_attempt_done_ = true;
    }
    first_cv_.notify_all();
    arm_deadline_timer();
  }

  // --- the pipeline -------------------------------------------------------------------

  void flush() {
    std::vector<pending> batch;
    {
      std::lock_guard lock(mu_);
      flush_posted_ = false;
      if (writing_ || incoming_.empty()) return;
      write_buffer_.swap(incoming_bytes_);
      batch.swap(incoming_);
      writing_ = true;
    }
    for (pending& p : batch) pipeline_->push(std::move(p));
    arm_deadline_timer();
    write();
  }

  void write() {
    with_stream([this](auto& s) {
      asio::async_write(s, asio::buffer(write_buffer_),
                        [self = shared_from_this(), gen = generation_](auto ec, std::size_t) {
                          if (gen != self->generation_) return;
                          if (ec) return self->fail("write: " + ec.message());
                          self->write_buffer_.clear();
                          {
                            std::lock_guard lock(self->mu_);
                            self->writing_ = false;
                          }
                          self->flush();
                        });
    });
  }

  void read() {
    with_stream([this](auto& s) {
      s.async_read_some(asio::buffer(read_buffer_), [self = shared_from_this(), gen = generation_](
                                                        auto ec, std::size_t n) {
        if (gen != self->generation_) return;
        if (ec)
          return self->fail(ec == asio::error::eof ? "the server closed the connection"
                                                   : "read: " + ec.message());
        std::vector<pending> resend;
        auto ok = self->pipeline_->on_bytes(std::string_view(self->read_buffer_.data(), n), resend);
        // A handshake reply can fail the connection from inside on_bytes.
        if (gen != self->generation_) return;
        if (!ok) return self->fail(ok.error().message());
        for (pending& p : resend) self->resend_with_source(std::move(p));
        self->read();
      });
    });
  }

  // After NOSCRIPT (a restarted server, SCRIPT FLUSH): EVAL with the source, which also
  // caches the script again for the EVALSHA calls after it.
  void resend_with_source(pending p) {
    ++shared_->script_loads;
    std::string command;
    const script& s = shared_->script_for(p.script->algo);
    redis::append_script_call(command, *p.script, s.sha, s.source);
    std::lock_guard lock(mu_);
    incoming_bytes_ += command;
    incoming_.push_back(std::move(p));
    if (!flush_posted_) {
      flush_posted_ = true;
      asio::post(io_, [self = shared_from_this()] { self->flush(); });
    }
  }

  std::chrono::milliseconds stall_limit() const {
    return std::max(4 * options().timeout, std::chrono::milliseconds(200));
  }

  // Keeps one timer armed for the earliest deadline of a waiting call. When only calls that
  // already timed out are waiting, it checks back after the stall limit: a server that
  // answers nothing for that long is dropped, so nothing waits on it forever.
  void arm_deadline_timer() {
    auto next = pipeline_->next_deadline();
    if (!next && pipeline_->size() > 0) next = steady::now() + stall_limit();
    if (!next || (armed_at_ && *armed_at_ <= *next)) return;
    armed_at_ = *next;
    timer_.expires_at(*next);
    timer_.async_wait([self = shared_from_this(), gen = generation_](auto ec) {
      if (ec || gen != self->generation_) return;
      self->armed_at_.reset();
      const auto now = steady::now();
      self->shared_->timeouts += self->pipeline_->expire(now);
      if (self->pipeline_->stalled(now, self->stall_limit())) {
        return self->fail("the server stopped answering");
      }
      self->arm_deadline_timer();
    });
  }

  // --- failure ------------------------------------------------------------------------

  void fail(const std::string& why) {
    const std::string message = "redis " + shared_->where + ": " + why;
    {
      std::lock_guard lock(mu_);
      last_error_ = why;
      first_attempt_done_ = true;
    }
    first_cv_.notify_all();
    drop(make_error(errc::store_unavailable, message));
    if (is_closed()) return;
    retry_timer_.expires_after(backoff_);
    backoff_ = std::min(backoff_ * 2, options().reconnect_max);
    retry_timer_.async_wait([self = shared_from_this()](auto ec) {
      if (!ec) self->connect();
    });
  }

  // Closes the socket and answers every call waiting on it with `e`.
  void drop(const error& e) {
    ++generation_;  // completions of the old socket's operations are ignored from here
    timer_.cancel();
    armed_at_.reset();
    if (handshaken_) --shared_->connected;
    handshaken_ = false;
    std::vector<pending> queued;
    {
      std::lock_guard lock(mu_);
      ready_ = false;
      writing_ = false;
      flush_posted_ = false;
      incoming_bytes_.clear();
      queued.swap(incoming_);
    }
    boost::system::error_code ignored;
    if (tcp_) tcp_->close(ignored);
    if (tls_) tls_->lowest_layer().close(ignored);
    if (unix_) unix_->close(ignored);
    // The sockets die with their pending handlers; keep them alive until those have run.
    asio::post(io_, [t = std::move(tcp_), s = std::move(tls_), u = std::move(unix_),
                     c = std::move(tls_context_)] {});
    write_buffer_.clear();
    if (pipeline_) pipeline_->fail_all(e);
    for (pending& p : queued) {
      if (p.done) p.done(e);
    }
  }

  bool is_closed() const {
    std::lock_guard lock(mu_);
    return closed_;
  }

  template <class F>
  void with_stream(F&& f) {
    if (tls_) return f(*tls_);
    if (tcp_) return f(*tcp_);
    if (unix_) return f(*unix_);
  }

  asio::io_context& io_;
  std::shared_ptr<shared_state> shared_;
  asio::steady_timer timer_;        // connect deadline, then call deadlines
  asio::steady_timer retry_timer_;  // reconnect backoff
  std::unique_ptr<tcp::socket> tcp_;
  std::unique_ptr<ssl::context> tls_context_;
  std::unique_ptr<ssl::stream<tcp::socket>> tls_;
  std::unique_ptr<unix_socket> unix_;
  std::unique_ptr<redis::pipeline> pipeline_;
  std::array<char, 64 * 1024> read_buffer_;
  std::string write_buffer_;
  std::uint64_t generation_ = 0;                // bumped on every drop
  std::optional<steady::time_point> armed_at_;  // what timer_ waits for, when armed
  bool handshaken_ = false;
  bool connected_before_ = false;
  std::chrono::milliseconds backoff_{options().reconnect_min};

  // Shared with submitting threads.
  mutable std::mutex mu_;
  std::condition_variable first_cv_;
  bool ready_ = false;
  bool closed_ = false;
  bool writing_ = false;
  bool flush_posted_ = false;
  bool first_attempt_done_ = false;
  std::string incoming_bytes_;
  std::vector<pending> incoming_;
  std::string last_error_;
};

// Blocks the calling thread until a completion runs. The store always answers by the
// call's deadline (or sooner), so the wait is bounded.
template <class T>
class waiter {
 public:
  std::function<void(result<T>)> completion() {
    return [this](result<T> r) {
      std::lock_guard lock(mu_);
      value_.emplace(std::move(r));
      cv_.notify_one();
    };
  }
  result<T> wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return value_.has_value(); });
    return std::move(*value_);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<result<T>> value_;
};

result<decision> to_decision(const result<reply>& r, std::int64_t count) {
  if (!r) return r.error();
  if (r->is_error()) return make_error(errc::store_error, "redis: script failed: " + r->text);
  const auto& e = r->elements;
  if (r->type != reply::kind::array || e.size() != 4) {
    return make_error(errc::store_error, "redis: unexpected script reply");
  }
  for (const reply& x : e) {
    if (x.type != reply::kind::integer) {
      return make_error(errc::store_error, "redis: unexpected script reply");
    }
  }
  decision d;
  d.allowed = e[0].integer == 1;
  d.limit = count;
  d.remaining = e[1].integer;
  d.retry_after = microseconds{e[2].integer};
  d.reset_after = microseconds{e[3].integer};
  if (d.remaining < 0 || d.remaining > count || d.retry_after.count() < 0 ||
      d.reset_after.count() < 0 || (e[0].integer != 0 && e[0].integer != 1)) {
    return make_error(errc::store_error, "redis: script reply out of range");
  }
  return d;
}

}  // namespace

struct redis_store::impl {
  std::shared_ptr<shared_state> shared = std::make_shared<shared_state>();
  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::vector<std::shared_ptr<connection>> connections;
  std::atomic<std::size_t> next{0};
  std::atomic<std::uint64_t> seq{0};
  std::string instance;  // makes sliding_log members unique across processes
  std::thread thread;

  connection& pick() {
    return *connections[next.fetch_add(1, std::memory_order_relaxed) % connections.size()];
  }

  result<void> check_key(std::string_view key) const {
    if (key.empty()) return make_error(errc::invalid_key, "key is empty");
    if (key.size() > 65535) {
      return make_error(errc::invalid_key,
                        "key is " + std::to_string(key.size()) + " bytes; the limit is 65535");
    }
    return {};
  }

  void decide(const request& r, bool acquire, completion done) {
    if (auto ok = check_key(r.key); !ok) return done(ok.error());
    const microseconds now = r.now.value_or(microseconds{0});
    if (auto ok = check_request(r.limit, r.cost, now); !ok) return done(ok.error());
    if (now.count() > kMaxScriptTime) {
      return done(make_error(errc::invalid_time, "time past 2^52us cannot be sent to Redis"));
    }
    ++shared->requests;
    script_call call;
    call.algo = r.algorithm;
    call.key.reserve(shared->options.key_prefix.size() + 1 + r.key.size());
    call.key.append(shared->options.key_prefix).append(":").append(r.key);
    call.acquire = acquire;
    call.count = r.limit.count;
    call.window_us = r.limit.window.count();
    call.cost = r.cost;
    if (r.now) call.now_us = r.now->count();
    call.token = instance;
    call.token += ':';
    call.token += std::to_string(seq.fetch_add(1, std::memory_order_relaxed));
    std::string command;
    redis::append_script_call(command, call, shared->script_for(r.algorithm).sha);
    pending p;
    p.deadline = steady::now() + shared->options.timeout;
    p.script = std::move(call);
    p.done = [count = r.limit.count, done = std::move(done), s = shared](result<reply> rep) {
      auto d = to_decision(rep, count);
      if (!d) {
        ++s->errors;
      }
      done(std::move(d));
    };
    pick().submit(std::move(command), std::move(p));
  }

  void reset(std::string_view key, reset_completion done) {
    if (auto ok = check_key(key); !ok) return done(ok.error());
    ++shared->requests;
    std::string full = shared->options.key_prefix + ":" + std::string(key);
    std::string command;
    redis::append_command(command, {"DEL", full});
    pending p;
    p.deadline = steady::now() + shared->options.timeout;
    p.done = [done = std::move(done), s = shared](result<reply> rep) {
      if (!rep) {
        ++s->errors;
        return done(rep.error());
      }
      if (rep->is_error()) {
        ++s->errors;
        return done(make_error(errc::store_error, "redis: DEL failed: " + rep->text));
      }
      done(result<void>{});
    };
    pick().submit(std::move(command), std::move(p));
  }
};

redis_store::redis_store(redis_store_options options) : impl_(std::make_shared<impl>()) {
  auto& s = *impl_->shared;
  options.pool = std::clamp<std::size_t>(options.pool, 1, 64);
  s.options = std::move(options);
  for (const algorithm a : {algorithm::sliding_log, algorithm::sliding_counter, algorithm::gcra}) {
    const auto source = redis::script_source(a);
    s.scripts[static_cast<std::size_t>(a)] = script{source, sha1_hex(source)};
  }
  s.where = s.options.unix_socket.empty() ? s.options.host + ":" + std::to_string(s.options.port)
                                          : s.options.unix_socket;
  std::random_device rd;
  char id[17];
  std::snprintf(id, sizeof id, "%08x%08x", rd(), rd());
  impl_->instance = id;

  impl_->work.emplace(impl_->io.get_executor());
  for (std::size_t i = 0; i < s.options.pool; ++i) {
    impl_->connections.push_back(std::make_shared<connection>(impl_->io, impl_->shared));
  }
  for (auto& c : impl_->connections) c->start();
  impl_->thread = std::thread([io = &impl_->io] { io->run(); });
  for (auto& c : impl_->connections) c->wait_first_attempt(s.options.connect_timeout);
}

redis_store::~redis_store() {
  for (auto& c : impl_->connections) c->close();
  impl_->work.reset();
  // Let the closes run, then stop whatever timers are still armed.
  asio::post(impl_->io, [io = &impl_->io] { io->stop(); });
  impl_->thread.join();
}

namespace {

// A sync call made on the store's own I/O thread (from inside a completion) would wait for
// itself; it gets an error instead.
bool on_io_thread(const std::thread& t) { return std::this_thread::get_id() == t.get_id(); }

error io_thread_error() {
  return make_error(errc::store_error,
                    "redis: a synchronous call from a completion would deadlock; use the async "
                    "form there");
}

}  // namespace

result<decision> redis_store::acquire(const request& r) {
  if (on_io_thread(impl_->thread)) return io_thread_error();
  waiter<decision> w;
  impl_->decide(r, true, w.completion());
  return w.wait();
}

result<decision> redis_store::peek(const request& r) {
  if (on_io_thread(impl_->thread)) return io_thread_error();
  waiter<decision> w;
  impl_->decide(r, false, w.completion());
  return w.wait();
}

result<void> redis_store::reset(std::string_view key) {
  if (on_io_thread(impl_->thread)) return io_thread_error();
  waiter<void> w;
  impl_->reset(key, w.completion());
  return w.wait();
}

void redis_store::async_acquire(const request& r, completion done) {
  impl_->decide(r, true, std::move(done));
}

void redis_store::async_peek(const request& r, completion done) {
  impl_->decide(r, false, std::move(done));
}

void redis_store::async_reset(std::string_view key, reset_completion done) {
  impl_->reset(key, std::move(done));
}

std::string redis_store::describe() const {
  const auto& o = impl_->shared->options;
  if (!o.unix_socket.empty()) return "unix://" + o.unix_socket;
  return std::string(o.tls ? "rediss://" : "redis://") + impl_->shared->where + "/" +
         std::to_string(o.db);
}

redis_store_stats redis_store::stats() const {
  const auto& s = *impl_->shared;
  redis_store_stats out;
  out.requests = s.requests.load();
  out.errors = s.errors.load();
  out.timeouts = s.timeouts.load();
  out.reconnects = s.reconnects.load();
  out.script_loads = s.script_loads.load();
  out.connected = s.connected.load();
  return out;
}

bool redis_store::ready() const {
  for (const auto& c : impl_->connections) {
    if (c->ready()) return true;
  }
  return false;
}

}  // namespace sluice
