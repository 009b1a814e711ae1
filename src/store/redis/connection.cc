#include "store/redis/connection.h"

#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <cstdio>
#include <random>

#include "sluice/algorithms.h"
#include "store/redis/scripts.h"

namespace sluice::redis {
namespace {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = asio::ip::tcp;
using unix_socket = asio::local::stream_protocol::socket;

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

// One connection to Redis: connect, handshake (AUTH, SELECT, SCRIPT LOAD), then pipeline
// every call written to it; on any failure answer everything waiting, back off, and
// connect again. Lives on the store's I/O thread; `submit` may be called from any thread.
class asio_connection final : public connection,
                              public std::enable_shared_from_this<asio_connection> {
 public:
  asio_connection(asio::io_context& io, std::shared_ptr<shared_state> shared, endpoint to,
                  connection_hooks hooks)
      : io_(io),
        shared_(std::move(shared)),
        to_(std::move(to)),
        hooks_(std::move(hooks)),
        where_(to_.text()),
        timer_(io),
        retry_timer_(io) {}

  void start() override {
    asio::post(io_, [self = shared_from_this()] { self->connect(); });
  }

  void submit(std::string command, pending call) override {
    if (enqueue(command, &call, 1)) return;
    call.done(make_error(errc::store_unavailable, unavailable_reason()));
  }

  void submit(std::string command, std::vector<pending> calls) override {
    if (enqueue(command, calls.data(), calls.size())) return;
    const error e = make_error(errc::store_unavailable, unavailable_reason()).error();
    for (pending& p : calls) {
      if (p.done) p.done(sluice::fail(e));
    }
  }

  bool ready() const override {
    std::lock_guard lock(mu_);
    return ready_;
  }

  bool first_attempt_done() const override {
    std::lock_guard lock(mu_);
    return first_attempt_done_;
  }

  // Waits until the first handshake has succeeded or failed, at most `limit`.
  void wait_first_attempt(std::chrono::milliseconds limit) override {
    std::unique_lock lock(mu_);
    first_cv_.wait_for(lock, limit, [&] { return first_attempt_done_; });
  }

  void close() override {
    asio::post(io_, [self = shared_from_this()] {
      {
        std::lock_guard lock(self->mu_);
        self->closed_ = true;
      }
      self->retry_timer_.cancel();
      self->drop(make_error(errc::store_unavailable, "redis: the store was closed").error());
    });
  }

  const endpoint& where() const override { return to_; }

 private:
  // Appends `command` and its calls to what the next flush writes; false (and nothing
  // queued) when the connection is not up.
  bool enqueue(const std::string& command, pending* calls, std::size_t n) {
    std::lock_guard lock(mu_);
    if (!ready_ || closed_) return false;
    incoming_bytes_ += command;
    for (std::size_t i = 0; i < n; ++i) {
      calls[i].wire = i == 0 ? command.size() : 0;
      incoming_batchable_ = incoming_batchable_ || calls[i].batchable;
      incoming_.push_back(std::move(calls[i]));
    }
    // A write in progress flushes again when it completes: no need to wake the thread.
    if (!flush_posted_ && !writing_) {
      flush_posted_ = true;
      asio::post(io_, [self = shared_from_this()] { self->flush(); });
    }
    return true;
  }

  std::string unavailable_reason() const override {
    std::lock_guard lock(mu_);
    return "redis " + where_ + " is not connected" +
           (last_error_.empty() ? std::string() : " (" + last_error_ + ")");
  }

  const redis_store_options& options() const { return shared_->options; }

  // --- connecting -------------------------------------------------------------------

  void connect() {
    if (is_closed()) return;
    pipeline_ = std::make_unique<redis::pipeline>();
    if (hooks_.on_push) pipeline_->on_unsolicited(hooks_.on_push);
    const auto deadline = steady::now() + options().connect_timeout;
    timer_.expires_at(deadline);
    timer_.async_wait([self = shared_from_this(), gen = generation_](auto ec) {
      if (!ec && gen == self->generation_ && !self->handshaken_) {
        self->fail("connecting timed out");
      }
    });
    if (!to_.unix_socket.empty()) {
      unix_ = std::make_unique<unix_socket>(io_);
      unix_->async_connect(asio::local::stream_protocol::endpoint(to_.unix_socket),
                           [self = shared_from_this(), gen = generation_](auto ec) {
                             if (gen != self->generation_) return;
                             if (ec) return self->fail("connect: " + ec.message());
                             self->handshake();
                           });
      return;
    }
    auto resolver = std::make_shared<tcp::resolver>(io_);
    resolver->async_resolve(
        to_.host, std::to_string(to_.port),
        [self = shared_from_this(), resolver, gen = generation_](auto ec, auto endpoints) {
          if (gen != self->generation_) return;
          if (ec) return self->fail("resolve " + self->to_.host + ": " + ec.message());
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
        options().tls_server_name.empty() ? to_.host : options().tls_server_name;
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
    if (options().db != 0 && !hooks_.sentinel) {
      redis::append_command(batch, {"SELECT", std::to_string(options().db)});
      what.push_back("SELECT " + std::to_string(options().db));
    }
    for (const script& s : shared_->scripts) {
      if (hooks_.sentinel) break;
      redis::append_command(batch, {"SCRIPT", "LOAD", s.source});
      what.push_back("SCRIPT LOAD");
    }
    if (hooks_.require_master) {
      redis::append_command(batch, {"ROLE"});
      what.push_back("ROLE");
    }
    if (what.empty()) {  // a sentinel without AUTH: PING proves it answers
      redis::append_command(batch, {"PING"});
      what.push_back("PING");
    }
    auto remaining = std::make_shared<std::size_t>(what.size());
    for (const std::string& step : what) {
      pending p;
      p.deadline = steady::now() + options().connect_timeout;
      p.done = [self = shared_from_this(), step, remaining, gen = generation_](result<reply> r) {
        if (gen != self->generation_) return;
        if (!r) return self->fail(step + ": " + r.error().message());
        if (r->is_error()) return self->fail(step + " refused: " + r->text);
        if (step == "ROLE") {
          const auto& e = r->elements;
          const std::string role = e.empty() ? std::string("?") : e.front().text;
          if (role != "master") return self->fail("ROLE says " + role + ", not master");
        }
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
    const bool again = connected_before_;
    if (again) ++shared_->reconnects;
    connected_before_ = true;
    ++shared_->connected;
    {
      std::lock_guard lock(mu_);
      ready_ = true;
      last_error_.clear();
      first_attempt_done_ = true;
    }
    // Before the first caller can go: its calls queue behind the check, so its answer
    // comes after the check's. A sentinel keeps no counters: only data nodes are asked.
    if (!hooks_.sentinel && shared_->first_check_of(where_)) check_persistence();
    first_cv_.notify_all();
    arm_deadline_timer();
    if (hooks_.on_up) hooks_.on_up();
    if (again && shared_->on_reconnected) shared_->on_reconnected(to_);
  }

  // Asks whether this server keeps its data across a restart (AOF or RDB snapshots) and
  // warns once per store when it keeps neither: a restart then forgets every counter. A
  // server that refuses CONFIG (renamed, or denied by an ACL) is not asked again, silently.
  void check_persistence() {
    std::string command;
    redis::append_command(command, {"CONFIG", "GET", "appendonly"});
    redis::append_command(command, {"CONFIG", "GET", "save"});
    struct answers {
      std::optional<std::string> appendonly, save;
      int left = 2;
    };
    auto got = std::make_shared<answers>();
    std::vector<pending> both(2);
    for (std::size_t i = 0; i < both.size(); ++i) {
      both[i].deadline = steady::now() + options().connect_timeout;
      both[i].done = [self = shared_from_this(), got, i](result<reply> r) {
        // CONFIG GET answers [name, value]; an error or anything else leaves it unknown.
        if (r && r->type == reply::kind::array && r->elements.size() == 2) {
          (i == 0 ? got->appendonly : got->save) = r->elements[1].text;
        }
        if (--got->left > 0) return;
        if (!got->appendonly || !got->save) return;
        if (*got->appendonly != "no" || !got->save->empty()) return;
        if (!self->shared_->first_persistence_warning()) return;
        const std::string text =
            "redis " + self->where_ +
            " keeps no data across a restart (appendonly no, save \"\"): a restart forgets "
            "every counter, and keys admit their whole limit again";
        self->shared_->emit({store_event::kind::warning, 0, text});
      };
    }
    submit(std::move(command), std::move(both));
  }

  // --- the pipeline -------------------------------------------------------------------

  void flush() {
    bool assemble = false;
    {
      std::lock_guard lock(mu_);
      flush_posted_ = false;
      if (writing_ || incoming_.empty()) return;
      flushing_.swap(incoming_);
      assemble = incoming_batchable_;
      incoming_batchable_ = false;
      if (assemble) {
        flushing_bytes_.swap(incoming_bytes_);
      } else {
        write_buffer_.swap(incoming_bytes_);
      }
      writing_ = true;
    }
    if (assemble) {
      // Calls answered here (a deadline already past) run their completions: no lock held.
      const auto& o = options();
      const script_shas shas{
          {shared_->scripts[0].sha, shared_->scripts[1].sha, shared_->scripts[2].sha},
          shared_->batch_script().sha,
          shared_->scripts[6].sha};
      write_buffer_.clear();
      const assembled did = pipeline_->assemble(flushing_bytes_, flushing_, shas, o.batch,
                                                o.batch_bytes, steady::now(), write_buffer_);
      flushing_bytes_.clear();
      shared_->batches += did.batches;
      shared_->batched += did.batched;
      shared_->timeouts += did.timed_out;
    } else {
      for (pending& p : flushing_) pipeline_->push(std::move(p));
      flushing_.clear();
    }
    arm_deadline_timer();
    if (write_buffer_.empty()) {  // every call timed out before it was written
      {
        std::lock_guard lock(mu_);
        writing_ = false;
      }
      return flush();
    }
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
    if (!p.batch.empty()) {
      // The calls of a batch still waiting, again as one run, of the batch script's source.
      std::vector<pending> live;
      for (pending& member : p.batch) {
        if (member.done) live.push_back(std::move(member));
      }
      if (live.size() == 1) {
        p = std::move(live.front());
      } else {
        std::vector<const script_call*> calls;
        for (const pending& member : live) calls.push_back(&*member.script);
        const script& s = shared_->batch_script();
        redis::append_batch_call(command, calls, s.sha, s.source);
        p.batch = std::move(live);
      }
    }
    if (p.batch.empty()) {
      const script& s = shared_->script_of(*p.script);
      redis::append_script_call(command, *p.script, s.sha, s.source);
    }
    p.batchable = false;  // written as it is now
    p.wire = command.size();
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
    const std::string message = "redis " + where_ + ": " + why;
    {
      std::lock_guard lock(mu_);
      last_error_ = why;
      first_attempt_done_ = true;
    }
    first_cv_.notify_all();
    drop(make_error(errc::store_unavailable, message).error());
    if (is_closed()) return;
    if (hooks_.on_down) hooks_.on_down(why);
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
      incoming_batchable_ = false;
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
      if (p.done) p.done(sluice::fail(e));
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
  const endpoint to_;
  const connection_hooks hooks_;
  const std::string where_;         // to_.text()
  asio::steady_timer timer_;        // connect deadline, then call deadlines
  asio::steady_timer retry_timer_;  // reconnect backoff
  std::unique_ptr<tcp::socket> tcp_;
  std::unique_ptr<ssl::context> tls_context_;
  std::unique_ptr<ssl::stream<tcp::socket>> tls_;
  std::unique_ptr<unix_socket> unix_;
  std::unique_ptr<redis::pipeline> pipeline_;
  std::array<char, 64 * 1024> read_buffer_;
  std::string write_buffer_;
  std::vector<pending> flushing_;  // what flush() takes from `incoming_`, on the I/O thread
  std::string flushing_bytes_;
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
  bool incoming_batchable_ = false;  // some call in `incoming_` is batchable
  std::string last_error_;
};
}  // namespace

shared_state::shared_state(redis_store_options o) : options(std::move(o)) {
  for (const algorithm a : {algorithm::sliding_log, algorithm::sliding_counter, algorithm::gcra}) {
    const auto source = script_source(a);
    scripts[static_cast<std::size_t>(a)] = script{source, sha1_hex(source)};
  }
  scripts[3] = script{acquire_all_script_source(), sha1_hex(acquire_all_script_source())};
  scripts[4] = script{release_script_source(), sha1_hex(release_script_source())};
  scripts[5] = script{batch_script_source(), sha1_hex(batch_script_source())};
  scripts[6] = script{packed_log_script_source(), sha1_hex(packed_log_script_source())};
  std::random_device rd;
  char id[17];
  std::snprintf(id, sizeof id, "%08x%08x", rd(), rd());
  instance = id;
}

void shared_state::set_listener(store::event_listener listen) {
  const std::lock_guard lock(listener_mu);
  listener = std::move(listen);
  if (!listener) return;
  for (const std::string& text : unheard) listener({store_event::kind::warning, 0, text});
  unheard.clear();
}

void shared_state::emit(const store_event& e) {
  const std::lock_guard lock(listener_mu);
  if (listener) return listener(e);
  if (e.what == store_event::kind::warning) unheard.emplace_back(e.text);
}

bool shared_state::first_check_of(const std::string& where) {
  const std::lock_guard lock(checked_mu);
  if (std::find(checked.begin(), checked.end(), where) != checked.end()) return false;
  checked.push_back(where);
  return true;
}

std::string shared_state::next_token() {
  std::string token = instance;
  token += ':';
  token += std::to_string(seq.fetch_add(1, std::memory_order_relaxed));
  return token;
}

std::string endpoint::text() const {
  if (!unix_socket.empty()) return unix_socket;
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

std::shared_ptr<connection> make_connection(asio::io_context& io,
                                            std::shared_ptr<shared_state> shared, endpoint to,
                                            connection_hooks hooks) {
  return std::make_shared<asio_connection>(io, std::move(shared), std::move(to), std::move(hooks));
}

namespace {

// Returns the decision in four integer replies (allowed, remaining, retry_after,
// reset_after) for a limit of `count`, or why they are not one.
result<decision> decision_of(const reply* four, std::int64_t count) {
  for (int i = 0; i < 4; ++i) {
    if (four[i].type != reply::kind::integer) {
      return make_error(errc::store_error, "redis: unexpected script reply");
    }
  }
  decision d;
  d.allowed = four[0].integer == 1;
  d.limit = count;
  d.remaining = four[1].integer;
  d.retry_after = std::chrono::microseconds{four[2].integer};
  d.reset_after = std::chrono::microseconds{four[3].integer};
  if (d.remaining < 0 || d.remaining > count || d.retry_after.count() < 0 ||
      d.reset_after.count() < 0 || (four[0].integer != 0 && four[0].integer != 1)) {
    return make_error(errc::store_error, "redis: script reply out of range");
  }
  return d;
}

}  // namespace

result<decision> to_decision(const result<reply>& r, std::int64_t count) {
  if (!r) return fail(r.error());
  if (r->is_error()) return make_error(errc::store_error, "redis: script failed: " + r->text);
  if (r->type != reply::kind::array || r->elements.size() != 4) {
    return make_error(errc::store_error, "redis: unexpected script reply");
  }
  return decision_of(r->elements.data(), count);
}

result<multi_reply> to_multi_reply(const result<reply>& r,
                                   const std::vector<std::int64_t>& counts) {
  if (!r) return fail(r.error());
  if (r->is_error()) return make_error(errc::store_error, "redis: script failed: " + r->text);
  const auto& e = r->elements;
  if (r->type != reply::kind::array || e.size() != 1 + 4 * counts.size() ||
      e[0].type != reply::kind::integer || e[0].integer < 0) {
    return make_error(errc::store_error, "redis: unexpected multi-key script reply");
  }
  multi_reply out;
  out.now_us = e[0].integer;
  out.decisions.reserve(counts.size());
  for (std::size_t i = 0; i < counts.size(); ++i) {
    auto d = decision_of(&e[1 + 4 * i], counts[i]);
    if (!d) return fail(d.error());
    out.decisions.push_back(*d);
  }
  return out;
}

result<void> to_reset_result(const result<reply>& r) {
  if (!r) return fail(r.error());
  if (r->is_error()) return make_error(errc::store_error, "redis: DEL failed: " + r->text);
  return {};
}

result<void> check_key(std::string_view key) {
  if (key.empty()) return make_error(errc::invalid_key, "key is empty");
  if (key.size() > 65535) {
    return make_error(errc::invalid_key,
                      "key is " + std::to_string(key.size()) + " bytes; the limit is 65535");
  }
  return {};
}

result<void> check_redis_request(const request& r) {
  if (auto ok = check_key(r.key); !ok) return ok;
  const std::chrono::microseconds now = r.now.value_or(std::chrono::microseconds{0});
  if (auto ok = check_request(r.limit, r.cost, now); !ok) return ok;
  if (now.count() > kMaxScriptTime) {
    return make_error(errc::invalid_time, "time past 2^52us cannot be sent to Redis");
  }
  return {};
}

script_call make_script_call(shared_state& shared, const request& r, std::string key,
                             script_op op) {
  script_call call;
  call.algo = r.algorithm;
  call.key = std::move(key);
  call.op = op;
  call.count = r.limit.count;
  call.window_us = r.limit.window.count();
  call.cost = r.cost;
  if (r.now) call.now_us = r.now->count();
  call.token = shared.next_token();
  call.packed_log = shared.packed_log();
  return call;
}

result<std::vector<request>> prepare_all(std::span<const request> rs,
                                         std::vector<std::size_t>& group) {
  auto merged = merge_requests(rs, group);
  if (!merged) return merged;
  std::optional<std::chrono::microseconds> now;
  for (request& r : *merged) {
    if (r.now) now = r.now;
    r.now = now;
    request checked = r;
    checked.cost = std::max<std::int64_t>(r.cost, 1);  // a check asks for one unit
    if (auto ok = check_redis_request(checked); !ok) return fail(ok.error());
  }
  return merged;
}

std::pair<request, script_op> lone_call(const request& merged) {
  request one = merged;
  if (one.cost > 0) return {one, script_op::acquire};
  one.cost = 1;  // a check asks for one unit
  return {one, script_op::peek};
}

store::completion spread_lone(std::vector<std::size_t> group, store::all_completion done) {
  return [group = std::move(group), done = std::move(done)](result<decision> d) mutable {
    if (!d) return done(fail(d.error()));
    done(std::vector<decision>(group.size(), *d));
  };
}

script_call make_multi_call(script_op op, std::vector<script_key> keys, std::string token) {
  script_call call;
  call.op = op;
  call.token = std::move(token);
  if (!keys.empty()) call.now_us = keys.front().now_us;
  for (script_key& k : keys) {
    if (k.now_us == call.now_us) k.now_us.reset();
  }
  call.keys = std::move(keys);
  return call;
}

script_key to_script_key(const request& r, std::string key, bool packed_log) {
  script_key k;
  k.packed_log = packed_log;
  k.key = std::move(key);
  k.algo = r.algorithm;
  k.count = r.limit.count;
  k.window_us = r.limit.window.count();
  k.cost = r.cost;
  if (r.now) k.now_us = r.now->count();
  return k;
}

}  // namespace sluice::redis
