#include "server/http_server.h"

#include <signal.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/buffers_suffix.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include "core/text.h"
#include "server/handlers.h"
#include "server/metrics.h"

namespace sluice::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;
using executor = asio::io_context::executor_type;
using socket_type = asio::basic_stream_socket<tcp, executor>;
using acceptor_type = asio::basic_socket_acceptor<tcp, executor>;
using stream_type = beast::basic_stream<tcp, executor>;
using tls_stream_type = beast::ssl_stream<stream_type>;
namespace ssl = asio::ssl;
using timer_type =
    asio::basic_waitable_timer<std::chrono::steady_clock,
                               asio::wait_traits<std::chrono::steady_clock>, executor>;
using signal_set_type = asio::basic_signal_set<executor>;
using error_code = boost::system::error_code;
using namespace std::string_view_literals;

// What one read asks for; the buffer never holds more than a header and a bit.
constexpr std::size_t kReadSize = 8192;
// How long a closing connection reads (and drops) what the client still sends, so that the
// client sees the last response rather than a reset.
constexpr std::chrono::milliseconds kLingerMax{2000};
// How much longer than header_timeout the stream's own deadline gives a plain connection:
// the session's header timer answers 408 first; the stream closes it if that cannot.
constexpr std::chrono::milliseconds kHeaderGrace{1000};

// Says when a warning about a kind of event may be logged: at most once per 10 s, standing
// for every event since the last one logged. Thread-safe.
class log_limit {
 public:
  // Counts an event. Returns how many events the caller's log line stands for (this one
  // and those not logged since the last line), or 0 when it must not log now.
  std::uint64_t due() noexcept {
    unlogged_.fetch_add(1, std::memory_order_relaxed);
    const std::int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::steady_clock::now().time_since_epoch())
                                 .count();
    std::int64_t last = last_.load(std::memory_order_relaxed);
    if (last != kNever && now - last < kEvery) return 0;
    if (!last_.compare_exchange_strong(last, now, std::memory_order_relaxed)) return 0;
    return unlogged_.exchange(0, std::memory_order_relaxed);
  }

 private:
  static constexpr std::int64_t kNever = std::numeric_limits<std::int64_t>::min();
  static constexpr std::int64_t kEvery = 10000;  // ms
  std::atomic<std::int64_t> last_{kNever};
  std::atomic<std::uint64_t> unlogged_{0};
};

// The canned answer to a connection whose request header did not come in time.
const std::string& header_timeout_response() {
  static const std::string text = [] {
    const std::string body = R"({"error":"request header not received within header_timeout"})";
    return "HTTP/1.1 408 Request Timeout\r\nServer: sluice\r\nContent-Type: "
           "application/json\r\nConnection: close\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
  }();
  return text;
}

class session;

// One I/O thread and its io_context, with the sessions that live there.
struct worker {
  // Declared before the io_context: sessions destroyed with its queued handlers unlink
  // themselves from this list.
  std::mutex mu;
  session* sessions = nullptr;  // intrusive list, guarded by mu

  asio::io_context ioc{1};
  std::optional<asio::executor_work_guard<executor>> work;  // until the drain is over
  std::thread thread;
};

// Returns true when `ec` is the parser refusing the bytes (answered 400), rather than the
// connection ending or timing out (closed without an answer).
bool is_parse_error(const error_code& ec) {
  static const auto& category = make_error_code(beast::http::error::bad_target).category();
  return ec.category() == category && ec != beast::http::error::end_of_stream &&
         ec != beast::http::error::partial_message;
}

// Appends `n` in decimal.
void append_number(std::string& out, std::uint64_t n) {
  char text[20];
  const auto end = std::to_chars(text, text + sizeof text, n).ptr;
  out.append(text, static_cast<std::size_t>(end - text));
}

std::string endpoint_text(const tcp::endpoint& e) {
  const std::string host = e.address().to_string();
  return (e.address().is_v6() ? "[" + host + "]" : host) + ":" + std::to_string(e.port());
}

// Splits "host:port" / "[v6]:port"; an empty host means every IPv4 address.
std::pair<std::string, std::string> split_listen(const std::string& listen) {
  std::string host;
  std::string port;
  if (!listen.empty() && listen.front() == '[') {
    const std::size_t close = listen.find(']');
    if (close == std::string::npos || close + 1 >= listen.size() || listen[close + 1] != ':') {
      throw std::runtime_error("listen " + internal::quote(listen) + ": use [address]:port");
    }
    host = listen.substr(1, close - 1);
    port = listen.substr(close + 2);
  } else {
    const std::size_t colon = listen.rfind(':');
    if (colon == std::string::npos) {
      throw std::runtime_error("listen " + internal::quote(listen) + ": use host:port");
    }
    host = listen.substr(0, colon);
    port = listen.substr(colon + 1);
  }
  if (host.empty()) host = "0.0.0.0";
  if (port.empty()) throw std::runtime_error("listen " + internal::quote(listen) + ": no port");
  return {host, port};
}

}  // namespace

struct http_server::impl {
  impl(http_server_options o, const request_handler& h, metrics& m);
  ~impl();

  void accept();
  void on_accept(const error_code& ec, socket_type socket, worker& w);
  void begin_drain();
  void force();
  void finish();
  void session_closed() noexcept;
  void wait_signal();
  static void for_each_session(worker& w, const std::function<void(session&)>& fn);

  const http_server_options options;
  const request_handler& handler;
  metrics& counters;
  std::optional<ssl::context> tls;               // with options.tls: every session speaks TLS
  std::vector<std::unique_ptr<worker>> workers;  // before what runs on them; [0] accepts
  std::optional<acceptor_type> acceptor;
  std::optional<timer_type> drain_timer;
  std::optional<timer_type> accept_retry;
  std::optional<signal_set_type> signals;

  std::atomic<std::size_t> open{0};  // connections accepted and not yet closed
  std::atomic<bool> draining{false};
  std::atomic<bool> stopped{false};  // the I/O threads have been joined
  // Used on workers[0]'s thread only (and before start).
  std::size_t next_worker = 0;
  bool started = false;
  bool finished = false;
  std::chrono::steady_clock::time_point last_accept_warning{};
  log_limit refusal_log;         // connections over max_connections
  log_limit header_timeout_log;  // connections closed for a slow or missing header

  std::string address;
  std::uint16_t port = 0;
};

namespace {

// One connection: reads a request, hands it to the handler, writes the response, and again
// while the client keeps the connection alive. Not thread-safe: everything runs on its
// worker's thread, except the handler's completion, which dispatches back there first.
class session : public std::enable_shared_from_this<session> {
 public:
  session(http_server::impl& srv, worker& w, socket_type socket)
      : srv_(srv), w_(w), buffer_(srv.options.max_header_bytes + 2 * kReadSize) {
    if (srv_.tls) {
      tls_.emplace(std::move(socket), *srv_.tls);
    } else {
      plain_.emplace(std::move(socket));
    }
    const std::lock_guard lock(w_.mu);
    next_ = w_.sessions;
    if (next_ != nullptr) next_->prev_ = this;
    w_.sessions = this;
  }

  // May run on any thread (the last owner can be a store's completion).
  ~session() {
    {
      const std::lock_guard lock(w_.mu);
      (prev_ != nullptr ? prev_->next_ : w_.sessions) = next_;
      if (next_ != nullptr) next_->prev_ = prev_;
    }
    // Room for a new connection before the gauge says so.
    srv_.session_closed();
    srv_.counters.connection_closed();
  }

  session* next() const noexcept { return next_; }

  void start() {
    error_code ec;
    tcp_stream().socket().set_option(tcp::no_delay(true), ec);
    // For write()'s first, synchronous attempt (plain connections only).
    if (!tls_) tcp_stream().socket().non_blocking(true, ec);
    if (srv_.options.access_log) {
      const auto peer = tcp_stream().socket().remote_endpoint(ec);
      peer_ = ec ? "-" : endpoint_text(peer);
    }
    if (!tls_) {
      header_deadline_.emplace(tcp_stream().get_executor());
      return wait_for_request();
    }
    // The handshake counts against header_timeout, which restarts for the first request.
    tcp_stream().expires_after(srv_.options.header_timeout);
    tls_->async_handshake(
        ssl::stream_base::server, [self = shared_from_this()](const error_code& e) {
          if (e) return self->finish();  // not TLS, an untrusted client certificate, a timeout
          self->wait_for_request();
        });
  }

  // Shutting down: an idle connection closes now, a busy one after its response.
  void drain() {
    must_close_ = true;
    if (phase_ == phase::idle) tcp_stream().cancel();
  }

  void close_now() {
    must_close_ = true;
    tcp_stream().close();
  }

 private:
  enum class phase : std::uint8_t { idle, reading, handling, writing, closing };

  // Reads and parses the next request. The header and body are fed to the parser straight
  // from buffer_, without Beast's composed read operations: a request that arrives in one
  // segment costs one read and no posts.
  void wait_for_request() {
    if (must_close_ || srv_.draining.load()) return finish();
    parser_.emplace();
    parser_->header_limit(
        static_cast<std::uint32_t>(std::min<std::size_t>(srv_.options.max_header_bytes, 1u << 30)));
    parser_->body_limit(srv_.options.max_body_bytes);
    if (buffer_.size() > 0) {  // pipelined: the next request is here
      begin_header();
      return parse();
    }
    phase_ = phase::idle;
    // A new connection must send its header within header_timeout; a kept-alive one may
    // wait idle_timeout for its next request to begin.
    header_timer_running_ = first_;
    if (first_) {
      expect_header();
    } else {
      tcp_stream().expires_after(srv_.options.idle_timeout);
    }
    read_more();
  }

  // The first bytes of a request are here: header_timeout counts from now (or from the
  // connection's start, for its first request).
  void begin_header() {
    phase_ = phase::reading;
    if (!header_timer_running_) expect_header();
    header_timer_running_ = false;
  }

  // Starts header_timeout. A plain connection gets a 408 when it passes (the session's
  // timer); a TLS one is closed by the stream's deadline (no record can be written
  // outside the TLS stream's own operations).
  void expect_header() {
    if (!header_deadline_) return tcp_stream().expires_after(srv_.options.header_timeout);
    tcp_stream().expires_after(srv_.options.header_timeout + kHeaderGrace);
    header_due_ = std::chrono::steady_clock::now() + srv_.options.header_timeout;
    if (!header_timer_armed_) arm_header_timer();
  }

  // Waits for header_due_. The timer is not armed and cancelled per request: that made it
  // the reactor's earliest timer every time, one timerfd_settime system call and one posted
  // cancellation a request. It stays armed across requests instead; when it rings after the
  // header it was armed for was read, it re-arms for the newer header's deadline, so a
  // busy connection re-arms it once per header_timeout.
  void arm_header_timer() {
    header_timer_armed_ = true;
    header_deadline_->expires_at(header_due_);
    header_deadline_->async_wait([weak = weak_from_this()](const error_code& ec) {
      const auto self = weak.lock();
      if (!self) return;
      self->header_timer_armed_ = false;
      if (ec || !self->in_header()) return;
      if (std::chrono::steady_clock::now() < self->header_due_) return self->arm_header_timer();
      self->header_timed_out();
    });
  }

  // True while the session waits for a request header under header_timeout.
  bool in_header() const {
    return (phase_ == phase::idle && header_timer_running_) ||
           (phase_ == phase::reading && parser_ && !parser_->is_header_done());
  }

  // header_timeout passed on a plain connection: answers 408 (a non-blocking write, which
  // fits: nothing else is being written) and closes; the read in flight then ends.
  void header_timed_out() {
    log_header_timeout();
    srv_.counters.count_request(route::other, 408, srv_.options.header_timeout);
    error_code ignored;
    const std::string& text = header_timeout_response();
    tcp_stream().socket().write_some(asio::buffer(text), ignored);
    tcp_stream().socket().shutdown(tcp::socket::shutdown_both, ignored);
    finish();
  }

  void log_header_timeout() {
    const std::uint64_t n = srv_.header_timeout_log.due();
    if (n == 0) return;
    error_code ec;
    const auto peer = tcp_stream().socket().remote_endpoint(ec);
    spdlog::warn(
        "sluice serve: closed {} connection(s) that sent no complete request header within "
        "header_timeout ({} ms){}; the last from {}",
        n, srv_.options.header_timeout.count(), tls_ ? "" : ", answering 408",
        ec ? std::string("-") : endpoint_text(peer));
  }

  void read_more() {
    const std::size_t room = std::min(kReadSize, buffer_.max_size() - buffer_.size());
    if (room == 0) {
      began_ = std::chrono::steady_clock::now();
      return header_too_large();
    }
    read_some(buffer_.prepare(room),
              [self = shared_from_this()](const error_code& ec, std::size_t n) {
                // End of stream, a timeout, a reset: closed without an answer.
                if (ec) {
                  if (ec == beast::error::timeout && self->in_header()) {
                    self->log_header_timeout();
                  }
                  return self->finish();
                }
                self->buffer_.commit(n);
                if (self->phase_ == phase::idle) self->begin_header();
                self->parse();
              });
  }

  void parse() {
    while (!parser_->is_done()) {
      if (buffer_.size() == 0) return read_more();
      const bool had_header = parser_->is_header_done();
      error_code ec;
      const std::size_t used = parser_->put(buffer_.data(), ec);
      buffer_.consume(used);
      if (ec == http::error::need_more) return read_more();
      if (ec) return on_parse_error(ec, had_header);
      if (!had_header && parser_->is_header_done() && on_header()) return;
    }
    handle();
  }

  // The header is complete. Returns true when it started something (100 Continue) that
  // goes on with parse() itself.
  bool on_header() {
    began_ = std::chrono::steady_clock::now();
    if (parser_->is_done()) return false;
    tcp_stream().expires_after(srv_.options.body_timeout);
    const auto& req = parser_->get();
    const auto it = req.find(http::field::expect);
    if (it == req.end() || !internal::iequals(it->value(), "100-continue")) return false;
    static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
    write_all(asio::buffer(kContinue.data(), kContinue.size()),
              [self = shared_from_this()](const error_code& e, std::size_t) {
                if (e) return self->finish();
                self->parse();
              });
    return true;
  }

  void header_too_large() {
    reply_error(http::status::request_header_fields_too_large,
                "request header is larger than " + std::to_string(srv_.options.max_header_bytes) +
                    " bytes");
  }

  void on_parse_error(const error_code& ec, bool in_body) {
    if (!in_body) began_ = std::chrono::steady_clock::now();
    if (ec == http::error::header_limit) return header_too_large();
    // The parser refuses a declared Content-Length over the limit before reading the body.
    if (ec == http::error::body_limit) {
      return reply_error(
          http::status::payload_too_large,
          "body is larger than " + std::to_string(srv_.options.max_body_bytes) + " bytes", "body");
    }
    if (is_parse_error(ec)) {
      return reply_error(
          http::status::bad_request,
          (in_body ? "bad HTTP request body: " : "bad HTTP request: ") + ec.message());
    }
    finish();
  }

  void handle() {
    http_request req = parser_->release();
    parser_.reset();
    keep_alive_ = req.keep_alive();
    version_ = req.version();
    head_ = req.method() == http::verb::head;
    if (srv_.options.access_log) {
      method_ = std::string(req.method_string());
      target_ = std::string(req.target());
    }
    phase_ = phase::handling;
    tcp_stream().expires_never();
    // The completion may run here and now, or on the store's I/O thread: either way the
    // write starts on this session's thread.
    srv_.handler.handle(std::move(req), [self = shared_from_this()](http_response&& res) {
      const executor ex = self->tcp_stream().get_executor();
      if (ex.running_in_this_thread()) return self->write(std::move(res));
      asio::post(ex, [self = std::move(self), res = std::move(res)]() mutable {
        self->write(std::move(res));
      });
    });
  }

  // Answers a request the handler never saw (malformed, too large) and closes.
  void reply_error(http::status status, const std::string& message, std::string_view field = {}) {
    must_close_ = true;
    if (parser_ && parser_->is_header_done()) version_ = parser_->get().version();
    if (srv_.options.access_log) {
      method_ = "-";
      target_ = "-";
    }
    parser_.reset();
    srv_.counters.count_request(route::other, static_cast<unsigned>(status),
                                std::chrono::steady_clock::now() - began_);
    write(error_response(status, message, field));
  }

  void write(http_response&& res) {
    phase_ = phase::writing;
    res_ = std::move(res);
    const bool close = must_close_ || !keep_alive_ || srv_.draining.load();
    // Serialized here rather than by Beast's serializer, and the fields the session adds
    // (Server, Content-Length, Connection) written straight into the text: one string for
    // the header, one gathered write with the body.
    const unsigned status = res_.result_int();
    // No body, and no Content-Length, for 1xx, 204 and 304 (RFC 9110 8.6).
    const bool bodiless = status / 100 == 1 || status == 204 || status == 304;
    head_text_.clear();
    head_text_ += "HTTP/1."sv;
    head_text_ += version_ == 10 ? '0' : '1';
    head_text_ += ' ';
    append_number(head_text_, status);
    head_text_ += ' ';
    head_text_ += http::obsolete_reason(res_.result());
    head_text_ += "\r\n"sv;
    for (const auto& f : res_) {
      head_text_ += f.name_string();
      head_text_ += ": "sv;
      head_text_ += f.value();
      head_text_ += "\r\n"sv;
    }
    head_text_ += "Server: sluice\r\n"sv;
    if (!bodiless) {
      head_text_ += "Content-Length: "sv;
      append_number(head_text_, res_.body().size());
      head_text_ += "\r\n"sv;
    }
    if (version_ != 10 && close) head_text_ += "Connection: close\r\n"sv;
    if (version_ == 10 && !close) head_text_ += "Connection: keep-alive\r\n"sv;
    head_text_ += "\r\n"sv;
    // A response to HEAD has the header only; it still says how long the body would be.
    const std::size_t body_size = head_ || bodiless ? 0 : res_.body().size();
    const std::array<asio::const_buffer, 2> buffers = {asio::buffer(head_text_),
                                                       asio::buffer(res_.body().data(), body_size)};
    // Most responses fit in the socket's buffer: on a plain connection they are written at
    // once, without an asynchronous operation and its timer (the socket is non-blocking).
    // What does not fit, and every TLS record, goes on asynchronously, under body_timeout.
    error_code ec;
    std::size_t n = 0;
    if (!tls_) {
      const std::size_t total = head_text_.size() + body_size;
      n = tcp_stream().socket().write_some(buffers, ec);
      if (!ec && n == total) return on_write(ec, close, /*in_line=*/true);
      if (ec && ec != asio::error::would_block && ec != asio::error::try_again) {
        return on_write(ec, close, /*in_line=*/true);
      }
    }
    beast::buffers_suffix<std::array<asio::const_buffer, 2>> rest(buffers);
    rest.consume(ec ? 0 : n);
    tcp_stream().expires_after(srv_.options.body_timeout);
    write_all(rest, [self = shared_from_this(), close](const error_code& e, std::size_t) {
      self->on_write(e, close, /*in_line=*/false);
    });
  }

  // `in_line`: called from write() itself, which may be deep in a parse of pipelined
  // requests; the next one is then parsed from a fresh handler rather than recursively.
  void on_write(const error_code& ec, bool close, bool in_line) {
    if (srv_.options.access_log) {
      const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::steady_clock::now() - began_)
                          .count();
      spdlog::info("{} \"{} {}\" {} {} {}us", peer_, method_, target_, res_.result_int(),
                   res_.body().size(), us);
    }
    if (ec) return finish();
    res_ = {};
    head_ = false;
    if (close) return linger();
    first_ = false;
    if (in_line && buffer_.size() > 0) {
      return asio::post(tcp_stream().get_executor(),
                        [self = shared_from_this()] { self->wait_for_request(); });
    }
    wait_for_request();
  }

  // Closes after the last response: stops sending, then reads and drops what the client
  // still sends (a body that was refused, a pipelined request) until it closes too or a
  // short while passes, so its kernel does not see a reset before it has read the response.
  // On TLS, the same after a close_notify: what the client sends next is read and dropped
  // through TLS until it answers with its own close_notify, closes, or the time passes.
  void linger() {
    phase_ = phase::closing;
    buffer_.clear();
    tcp_stream().expires_after(
        std::min<std::chrono::milliseconds>(srv_.options.body_timeout, kLingerMax));
    if (tls_) {
      return tls_->async_shutdown(
          [self = shared_from_this()](const error_code&) { self->finish(); });
    }
    error_code ec;
    tcp_stream().socket().shutdown(tcp::socket::shutdown_send, ec);
    if (ec) return finish();
    drop_input();
  }

  void drop_input() {
    read_some(buffer_.prepare(kReadSize),
              [self = shared_from_this()](const error_code& ec, std::size_t) {
                if (ec) return self->finish();
                self->drop_input();
              });
  }

  void finish() {
    phase_ = phase::closing;
    tcp_stream().close();
  }

  // The TCP stream under the session, with its timer: the connection itself, or the one
  // under TLS.
  stream_type& tcp_stream() noexcept { return tls_ ? tls_->next_layer() : *plain_; }

  template <class Buffers, class Handler>
  void read_some(const Buffers& buffers, Handler&& handler) {
    if (tls_) return tls_->async_read_some(buffers, std::forward<Handler>(handler));
    plain_->async_read_some(buffers, std::forward<Handler>(handler));
  }

  template <class Buffers, class Handler>
  void write_all(const Buffers& buffers, Handler&& handler) {
    if (tls_) return asio::async_write(*tls_, buffers, std::forward<Handler>(handler));
    asio::async_write(*plain_, buffers, std::forward<Handler>(handler));
  }

  http_server::impl& srv_;
  worker& w_;
  session* prev_ = nullptr;  // in w_.sessions
  session* next_ = nullptr;

  std::optional<stream_type> plain_;                    // the connection, without TLS; or
  std::optional<tls_stream_type> tls_;                  // TLS over it
  std::optional<timer_type> header_deadline_;           // plain connections: header_timeout's 408
  std::chrono::steady_clock::time_point header_due_{};  // when the header read now must end
  bool header_timer_armed_ = false;                     // header_deadline_ has a wait pending
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http_response res_;
  std::string head_text_;  // res_'s status line and fields, as written
  phase phase_ = phase::idle;
  bool first_ = true;                  // no request yet on this connection
  bool header_timer_running_ = false;  // header_timeout has counted since the connection opened
  bool must_close_ = false;            // draining, or the request could not be read
  bool keep_alive_ = true;
  bool head_ = false;
  unsigned version_ = 11;
  std::chrono::steady_clock::time_point began_{};
  std::string peer_;  // access log only
  std::string method_;
  std::string target_;
};

void run_io(asio::io_context& ioc) {
  for (;;) {
    try {
      ioc.run();
      return;
    } catch (const std::exception& e) {
      spdlog::error("sluice serve: unexpected exception on an I/O thread: {}", e.what());
    }
  }
}

// The canned answer to a connection over max_connections.
const std::string& busy_response() {
  static const std::string text = [] {
    const std::string body = R"({"error":"too many connections"})";
    return "HTTP/1.1 503 Service Unavailable\r\nServer: sluice\r\nContent-Type: "
           "application/json\r\nConnection: close\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
  }();
  return text;
}

// Returns the TLS context of the listener, or throws std::runtime_error naming the file and
// the problem (unreadable, not PEM, a key that does not match the certificate).
ssl::context make_tls_context(const tls_files& files) {
  ssl::context ctx(ssl::context::tls_server);
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                  ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                  ssl::context::no_compression | ssl::context::single_dh_use);
  const auto load = [](const std::string& what, const std::string& file, auto&& step) {
    error_code ec;
    step(ec);
    if (ec) {
      throw std::runtime_error("tls." + what + " " + internal::quote(file) + ": " + ec.message());
    }
  };
  load("cert", files.cert, [&](error_code& ec) { ctx.use_certificate_chain_file(files.cert, ec); });
  load("key", files.key,
       [&](error_code& ec) { ctx.use_private_key_file(files.key, ssl::context::pem, ec); });
  if (SSL_CTX_check_private_key(ctx.native_handle()) != 1) {
    throw std::runtime_error("tls.key " + internal::quote(files.key) +
                             ": does not match the certificate in " + internal::quote(files.cert));
  }
  if (!files.client_ca.empty()) {
    load("client_ca", files.client_ca,
         [&](error_code& ec) { ctx.load_verify_file(files.client_ca, ec); });
    ctx.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  }
  return ctx;
}

}  // namespace

http_server_options server_options(const server_config& config) {
  http_server_options o;
  o.listen = config.listen;
  o.io_threads = config.io_threads;
  o.max_connections = config.max_connections;
  o.max_body_bytes = config.max_body_bytes;
  o.header_timeout = config.header_timeout;
  o.body_timeout = config.body_timeout;
  o.idle_timeout = config.idle_timeout;
  o.drain_timeout = config.drain_timeout;
  o.access_log = config.access_log;
  o.tls = config.tls;
  return o;
}

http_server::impl::impl(http_server_options o, const request_handler& h, metrics& m)
    : options(std::move(o)), handler(h), counters(m) {
  if (options.tls.enabled()) tls.emplace(make_tls_context(options.tls));
  std::size_t n = options.io_threads;
  if (n == 0) n = std::max(1u, std::thread::hardware_concurrency());
  for (std::size_t i = 0; i < n; ++i) workers.push_back(std::make_unique<worker>());
  asio::io_context& ioc = workers.front()->ioc;
  acceptor.emplace(ioc.get_executor());
  drain_timer.emplace(ioc.get_executor());
  accept_retry.emplace(ioc.get_executor());

  const auto [host, service] = split_listen(options.listen);
  asio::ip::basic_resolver<tcp, executor> resolver(ioc.get_executor());
  error_code ec;
  const auto endpoints =
      resolver.resolve(host, service, tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec)
    throw std::runtime_error("listen " + internal::quote(options.listen) + ": " + ec.message());
  for (const auto& entry : endpoints) {
    acceptor->close(ec);
    acceptor->open(entry.endpoint().protocol(), ec);
    if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor->bind(entry.endpoint(), ec);
    if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (!ec) break;
  }
  if (ec || !acceptor->is_open()) {
    throw std::runtime_error("listen " + internal::quote(options.listen) + ": " +
                             (ec ? ec.message() : std::string("no address")));
  }
  const tcp::endpoint local = acceptor->local_endpoint(ec);
  address = endpoint_text(local);
  port = local.port();
}

http_server::impl::~impl() {
  // What runs on workers[0] goes before the io_contexts; then the io_contexts, whose queued
  // handlers may hold the last references to sessions, which use the members above.
  signals.reset();
  accept_retry.reset();
  drain_timer.reset();
  acceptor.reset();
  workers.clear();
}

void http_server::impl::accept() {
  worker& w = *workers[next_worker++ % workers.size()];
  acceptor->async_accept(w.ioc, [this, &w](const error_code& ec, socket_type socket) {
    on_accept(ec, std::move(socket), w);
  });
}

void http_server::impl::on_accept(const error_code& ec, socket_type socket, worker& w) {
  if (ec == asio::error::operation_aborted || draining.load()) return;
  if (ec) {
    // Out of descriptors, most likely: wait a little rather than spin.
    const auto now = std::chrono::steady_clock::now();
    if (now - last_accept_warning >= std::chrono::seconds(10)) {
      last_accept_warning = now;
      spdlog::warn("sluice serve: accept failed: {}", ec.message());
    }
    accept_retry->expires_after(std::chrono::milliseconds(50));
    accept_retry->async_wait([this](const error_code& e) {
      if (!e && !draining.load()) accept();
    });
    return;
  }
  if (options.max_connections != 0 && open.load() >= options.max_connections) {
    counters.connection_refused();  // first: once the client hears, the count is there
    if (const std::uint64_t n = refusal_log.due(); n > 0) {
      spdlog::warn(
          "sluice serve: refused {} connection(s) with 503: max_connections ({}) are open "
          "(sluice_connections_refused_total counts them all)",
          n, options.max_connections);
    }
    error_code ignored;
    const std::string& busy = busy_response();
    socket.non_blocking(true, ignored);
    socket.write_some(asio::buffer(busy), ignored);  // fits: a new socket's buffer is empty
    socket.shutdown(tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
    return accept();
  }
  open.fetch_add(1);
  counters.connection_opened();
  asio::post(w.ioc, [this, &w, s = std::move(socket)]() mutable {
    std::make_shared<session>(*this, w, std::move(s))->start();
  });
  accept();
}

void http_server::impl::for_each_session(worker& w, const std::function<void(session&)>& fn) {
  std::vector<std::shared_ptr<session>> live;
  {
    const std::lock_guard lock(w.mu);
    for (session* s = w.sessions; s != nullptr; s = s->next()) {
      // A session whose last owner is letting go right now is skipped: it is closing.
      if (auto p = s->weak_from_this().lock()) live.push_back(std::move(p));
    }
  }
  for (const auto& s : live) fn(*s);
}

void http_server::impl::begin_drain() {
  if (draining.exchange(true)) return;
  if (options.on_shutdown) options.on_shutdown(false);
  error_code ignored;
  acceptor->close(ignored);
  accept_retry->cancel();
  const std::size_t n = open.load();
  spdlog::info("sluice serve: stopping; draining {} connection(s), for up to {} ms", n,
               options.drain_timeout.count());
  for (auto& w : workers) {
    asio::post(w->ioc, [wp = w.get()] { for_each_session(*wp, [](session& s) { s.drain(); }); });
  }
  if (open.load() == 0) return finish();
  drain_timer->expires_after(options.drain_timeout);
  drain_timer->async_wait([this](const error_code& ec) {
    if (!ec) force();
  });
}

void http_server::impl::force() {
  if (finished) return;
  draining.store(true);
  if (options.on_shutdown) options.on_shutdown(true);
  error_code ignored;
  acceptor->close(ignored);
  spdlog::warn("sluice serve: closing {} connection(s) still open", open.load());
  for (auto& w : workers) {
    asio::post(w->ioc,
               [wp = w.get()] { for_each_session(*wp, [](session& s) { s.close_now(); }); });
  }
  finish();
}

void http_server::impl::finish() {
  if (finished) return;
  finished = true;
  error_code ignored;
  drain_timer->cancel();
  accept_retry->cancel();
  acceptor->close(ignored);
  if (signals) signals->cancel(ignored);
  // Each io_context now runs until its last session is gone, then its thread returns.
  for (auto& w : workers) w->work.reset();
}

void http_server::impl::session_closed() noexcept {
  if (open.fetch_sub(1) == 1 && draining.load() && !stopped.load()) {
    asio::post(workers.front()->ioc, [this] {
      if (draining.load() && open.load() == 0) finish();
    });
  }
}

void http_server::impl::wait_signal() {
  signals->async_wait([this](const error_code& ec, int signal) {
    if (ec) return;
    if (signal == SIGHUP) {
      spdlog::info("sluice serve: SIGHUP received: reloading");
      options.on_reload();
      return wait_signal();
    }
    if (!draining.load()) {
      spdlog::info("sluice serve: {} received", signal == SIGTERM ? "SIGTERM" : "SIGINT");
      wait_signal();  // first: a drain that ends at once cancels it
      begin_drain();
    } else {
      spdlog::warn("sluice serve: second signal: not waiting for requests in flight");
      force();
    }
  });
}

http_server::http_server(http_server_options options, const request_handler& handler, metrics& m)
    : impl_(std::make_unique<impl>(std::move(options), handler, m)) {}

http_server::~http_server() {
  if (impl_->started && !impl_->stopped.load()) {
    asio::post(impl_->workers.front()->ioc, [i = impl_.get()] { i->force(); });
    wait();
  }
}

std::string http_server::local_address() const { return impl_->address; }

std::uint16_t http_server::port() const { return impl_->port; }

void http_server::start() {
  impl& s = *impl_;
  if (s.started) return;
  s.started = true;
  for (auto& w : s.workers) w->work.emplace(w->ioc.get_executor());
  if (s.options.handle_signals) {
    s.signals.emplace(s.workers.front()->ioc.get_executor(), SIGINT, SIGTERM);
    if (s.options.on_reload) s.signals->add(SIGHUP);
    s.wait_signal();
  }
  s.accept();
  for (auto& w : s.workers) w->thread = std::thread([wp = w.get()] { run_io(wp->ioc); });
}

void http_server::shutdown() {
  if (!impl_->started) return;
  asio::post(impl_->workers.front()->ioc, [i = impl_.get()] { i->begin_drain(); });
}

void http_server::wait() {
  for (auto& w : impl_->workers) {
    if (w->thread.joinable()) w->thread.join();
  }
  impl_->stopped.store(true);
}

}  // namespace sluice::server
