// End-to-end tests of `sluice serve`: the server runs in-process on 127.0.0.1:0 (or as the
// `sluice` binary in a child process, for signals and exit codes) and a real HTTP/1.1 client
// talks to it over loopback. Every wait is bounded: client operations have a deadline, and
// what another thread or process does is polled for, never slept for.
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <nlohmann/json.hpp>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include "server/config.h"
#include "server/metrics.h"
#include "server/serve.h"

#include "server/e2e_support.h"
#include "support/redis_server.h"
#include "support/test_util.h"

extern char** environ;

namespace {

using namespace sluice::test::e2e;
using sluice::server::service;
using sluice::test::eventually;

// Keeps what the server logs, for tests that check a log line. Thread-safe.
class log_capture final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::string text() {
    const std::lock_guard lock(mutex_);
    return text_;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    text_.append(msg.payload.data(), msg.payload.size());
    text_ += '\n';
  }
  void flush_() override {}

 private:
  std::string text_;
};

class Server : public ::testing::Test {
 protected:
  void start(server_config c = test_config()) {
    sluice::server::configure_logging("warn");
    log_ = std::make_shared<log_capture>();
    spdlog::default_logger()->sinks().push_back(log_);
    svc_ = std::make_unique<service>(c);
    svc_->start();
    port_ = svc_->port();
    ASSERT_NE(port_, 0);
  }
  void TearDown() override { svc_.reset(); }

  std::unique_ptr<service> svc_;
  std::uint16_t port_ = 0;
  std::shared_ptr<log_capture> log_;
};

// Verifies every endpoint over a real connection: acquire, peek, gate (204 and 429), reset,
// metrics, healthz, readyz, and 404/405 for the rest.
TEST_F(Server, EveryEndpointOverHttp) {
  start();
  EXPECT_EQ(svc_->local_address(), "127.0.0.1:" + std::to_string(port_));
  client c(port_);

  response r = c.acquire(R"({"key": "u1", "policy": "chat"})");
  EXPECT_EQ(r.result(), http::status::ok);
  EXPECT_EQ(body_of(r)["remaining"], 29);
  EXPECT_EQ(r["RateLimit-Policy"], "\"chat\";q=30;w=3600");
  EXPECT_EQ(r["RateLimit"], "\"chat\";r=29;t=3600");
  EXPECT_TRUE(r.keep_alive());

  r = c.call(http::verb::post, "/v1/peek", R"({"key": "u1", "policy": "chat"})");
  EXPECT_EQ(body_of(r)["remaining"], 29);

  r = c.acquire(R"({"key": "u2", "limit": "5/10s", "algorithm": "gcra", "cost": 2})");
  EXPECT_EQ(body_of(r)["remaining"], 3);
  EXPECT_EQ(r["RateLimit-Policy"], "\"5/10s\";q=5;w=10");

  const header_list xff = {{"X-Forwarded-For", "10.1.1.1, 10.2.2.2"}};
  EXPECT_EQ(c.call(http::verb::get, "/v1/gate/tiny", "", xff).result(), http::status::no_content);
  EXPECT_EQ(c.call(http::verb::get, "/v1/gate/tiny", "", xff).result(), http::status::no_content);
  r = c.call(http::verb::get, "/v1/gate/tiny", "", xff);
  EXPECT_EQ(r.result(), http::status::too_many_requests);
  EXPECT_FALSE(r[http::field::retry_after].empty());
  EXPECT_EQ(r["RateLimit-Policy"], "\"tiny\";q=2;w=60");
  EXPECT_EQ(c.call(http::verb::get, "/v1/gate/tiny").result(), http::status::bad_request);

  EXPECT_EQ(c.call(http::verb::delete_, "/v1/keys/tiny/10.1.1.1").result(),
            http::status::no_content);
  EXPECT_EQ(c.call(http::verb::get, "/v1/gate/tiny", "", xff).result(), http::status::no_content);

  r = c.call(http::verb::get, "/metrics");
  EXPECT_EQ(r.result(), http::status::ok);
  EXPECT_EQ(sample(r.body(), R"(sluice_decisions_total{policy="tiny",outcome="denied"})"), 1);
  EXPECT_EQ(sample(r.body(), R"(sluice_http_requests_total{route="/v1/gate",code="204"})"), 3);
  EXPECT_EQ(sample(r.body(), "sluice_open_connections"), 1);

  EXPECT_EQ(c.call(http::verb::get, "/healthz").result(), http::status::ok);
  r = c.call(http::verb::get, "/readyz");
  EXPECT_EQ(r.result(), http::status::ok);
  EXPECT_EQ(body_of(r)["status"], "ready");
  EXPECT_EQ(c.call(http::verb::get, "/nope").result(), http::status::not_found);
  EXPECT_EQ(c.call(http::verb::get, "/v1/acquire").result(), http::status::method_not_allowed);
  EXPECT_EQ(c.acquire(R"({"key": "u1", "policy": "nope"})").result(), http::status::not_found);
  r = c.acquire(R"({"key": "u1"})");
  EXPECT_EQ(r.result(), http::status::bad_request);
  EXPECT_EQ(body_of(r)["field"], "policy");
}

// Verifies keep-alive: 300 requests on one connection, every one answered and kept alive,
// with a single connection open on the server all along.
TEST_F(Server, KeepAliveServesManyRequestsOnOneConnection) {
  start();
  client c(port_);
  for (int i = 0; i < 300; ++i) {
    const response r = c.acquire(R"({"key": "ka", "limit": "1000/1h"})");
    ASSERT_EQ(r.result(), http::status::ok) << i;
    ASSERT_TRUE(r.keep_alive()) << i;
    ASSERT_EQ(body_of(r)["remaining"], 999 - i);
  }
  const response m = c.call(http::verb::get, "/metrics");
  EXPECT_EQ(sample(m.body(), "sluice_open_connections"), 1);
  EXPECT_EQ(sample(m.body(), R"m(sluice_decisions_total{policy="(inline)",outcome="allowed"})m"),
            300);
}

// Verifies that requests sent back to back in one write are all answered, in order (with
// the access log on).
TEST_F(Server, PipelinedRequestsAreAnsweredInOrder) {
  server_config cfg = test_config();
  cfg.access_log = true;
  start(cfg);
  client c(port_);
  std::string burst;
  for (int i = 0; i < 3; ++i) {
    const std::string body = R"({"key": "pipe", "policy": "chat"})";
    burst +=
        "POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) +
        "\r\n\r\n" + body;
  }
  burst += "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_FALSE(c.write_raw(burst));
  for (int i = 0; i < 3; ++i) {
    response r;
    ASSERT_FALSE(c.receive(r));
    EXPECT_EQ(body_of(r)["remaining"], 29 - i);
  }
  response r;
  ASSERT_FALSE(c.receive(r));
  EXPECT_EQ(body_of(r)["status"], "ok");
}

// Verifies that the server closes after answering a request that says `Connection: close`,
// and answers HTTP/1.0 in HTTP/1.0, closing after it.
TEST_F(Server, ConnectionCloseAndHttp10AreHonoured) {
  start();
  {
    client c(port_);
    const response r = c.call(http::verb::get, "/healthz", "", {{"Connection", "close"}});
    EXPECT_EQ(r.result(), http::status::ok);
    EXPECT_FALSE(r.keep_alive());
    EXPECT_TRUE(closed_by_peer(c.read_until_closed().second));
  }
  {
    client c(port_);
    ASSERT_FALSE(c.write_raw("GET /healthz HTTP/1.0\r\n\r\n"));
    const auto [data, ec] = c.read_until_closed();
    EXPECT_TRUE(closed_by_peer(ec));
    EXPECT_EQ(data.rfind("HTTP/1.0 200 OK\r\n", 0), 0u) << data;
  }
}

// Verifies exactness under concurrency over HTTP: 8 connections x 50 requests on one key
// with a limit of 100 admit exactly 100, on two I/O threads.
TEST_F(Server, ConcurrentClientsAdmitExactlyTheLimit) {
  start();
  std::atomic<int> allowed{0};
  std::atomic<int> denied{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      try {
        client c(port_);
        for (int i = 0; i < 50; ++i) {
          const response r = c.acquire(R"({"key": "race", "policy": "exact"})");
          const json j = body_of(r);
          if (r.result() != http::status::ok || !j.is_object()) {
            ++failed;
          } else {
            ++(j["allowed"].get<bool>() ? allowed : denied);
          }
        }
      } catch (const std::exception&) {
        ++failed;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(allowed.load(), 100);
  EXPECT_EQ(denied.load(), 300);
  const std::size_t slot = svc_->counters().slot("exact");
  EXPECT_EQ(svc_->counters().decisions(slot, sluice::server::outcome::allowed), 100u);
}

// Verifies that the start-up line says who may make admin calls: refused with no admin
// token, open to anyone with admin_open, token holders with tokens.
TEST_F(Server, StartUpLineSaysWhoMayReset) {
  server_config cfg = test_config();
  cfg.admin_open = false;
  start(cfg);
  EXPECT_NE(svc_->summary().find("; admin calls (reset) refused: no admin token configured"),
            std::string::npos)
      << svc_->summary();
  svc_.reset();
  cfg.admin_open = true;
  start(cfg);
  EXPECT_NE(svc_->summary().find("; admin calls (reset) open to anyone (admin_open)"),
            std::string::npos)
      << svc_->summary();
  svc_.reset();
  cfg.admin_tokens = {"root"};
  start(cfg);
  EXPECT_NE(svc_->summary().find("; admin tokens required"), std::string::npos) << svc_->summary();
}

// Verifies the header timeout against a slow client: half a header, then nothing; once
// header_timeout has passed the server answers 408 with a JSON error and closes. A
// connection that sends nothing at all is answered the same way. Both are counted (408 on
// route "other") and logged, rate-limited: one warning line for the two.
TEST_F(Server, SlowClientIsClosedAfterHeaderTimeout) {
  server_config cfg = test_config();
  cfg.header_timeout = milliseconds(300);
  start(cfg);
  client slow(port_);
  client silent(port_);
  const auto began = steady::now();
  ASSERT_FALSE(slow.write_raw("POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Le"));
  const auto [data, ec] = slow.read_until_closed();
  const auto took = steady::now() - began;
  EXPECT_TRUE(closed_by_peer(ec)) << ec.message();
  EXPECT_EQ(data.rfind("HTTP/1.1 408 Request Timeout\r\n", 0), 0u) << data;
  EXPECT_NE(data.find(R"({"error":"request header not received within header_timeout"})"),
            std::string::npos)
      << data;
  EXPECT_GE(took, milliseconds(290));
  EXPECT_LT(took, milliseconds(300) + seconds(5));

  const auto [nothing, ec2] = silent.read_until_closed();
  EXPECT_TRUE(closed_by_peer(ec2)) << ec2.message();
  EXPECT_EQ(nothing.rfind("HTTP/1.1 408 Request Timeout\r\n", 0), 0u) << nothing;
  EXPECT_EQ(svc_->counters().requests(sluice::server::route::other, 408), 2u);

  const std::string log = log_->text();
  const std::string line =
      "sluice serve: closed 1 connection(s) that sent no complete request header within "
      "header_timeout (300 ms), answering 408; the last from 127.0.0.1:";
  EXPECT_NE(log.find(line), std::string::npos) << log;
  // The second within the 10 s is counted for the next warning, not logged on its own.
  EXPECT_EQ(log.find("no complete request header"), log.rfind("no complete request header")) << log;
}

// Verifies that header_timeout counts from each request's first bytes on a kept-alive
// connection (the session's timer stays armed across requests and is re-armed for the
// newest header): a half header sent 200 ms after the first request gets its 408 only
// header_timeout after it began, not when the timer armed at the connection's start
// rings; and requests every 40 ms for longer than header_timeout are all answered.
TEST_F(Server, KeptAliveConnectionGetsHeaderTimeoutFromEachRequest) {
  server_config cfg = test_config();
  cfg.header_timeout = milliseconds(300);
  start(cfg);
  client busy(port_);
  for (int i = 0; i < 12; ++i) {  // about 480 ms, over header_timeout
    ASSERT_EQ(busy.call(http::verb::get, "/healthz").result(), http::status::ok) << i;
    std::this_thread::sleep_for(milliseconds(40));
  }
  client c(port_);
  ASSERT_EQ(c.call(http::verb::get, "/healthz").result(), http::status::ok);
  std::this_thread::sleep_for(milliseconds(200));
  const auto began = steady::now();
  ASSERT_FALSE(c.write_raw("GET /healthz HTTP/1.1\r\nHo"));
  const auto [data, ec] = c.read_until_closed();
  const auto took = steady::now() - began;
  EXPECT_TRUE(closed_by_peer(ec)) << ec.message();
  EXPECT_EQ(data.rfind("HTTP/1.1 408 Request Timeout\r\n", 0), 0u) << data;
  EXPECT_GE(took, milliseconds(290));
  EXPECT_EQ(svc_->counters().requests(sluice::server::route::other, 408), 1u);
}

// Verifies the body timeout: a complete header, then half the body, then nothing.
TEST_F(Server, SlowBodyIsClosedAfterBodyTimeout) {
  server_config cfg = test_config();
  cfg.body_timeout = milliseconds(300);
  start(cfg);
  client c(port_);
  const auto began = steady::now();
  ASSERT_FALSE(
      c.write_raw("POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{\"key\""));
  const auto [data, ec] = c.read_until_closed();
  EXPECT_TRUE(closed_by_peer(ec)) << ec.message();
  EXPECT_EQ(data, "");
  EXPECT_GE(steady::now() - began, milliseconds(290));
}

// Verifies the idle timeout between requests on a kept-alive connection.
TEST_F(Server, IdleKeptAliveConnectionIsClosedAfterIdleTimeout) {
  server_config cfg = test_config();
  cfg.idle_timeout = milliseconds(300);
  start(cfg);
  client c(port_);
  EXPECT_EQ(c.call(http::verb::get, "/healthz").result(), http::status::ok);
  const auto began = steady::now();
  const auto [data, ec] = c.read_until_closed();
  EXPECT_TRUE(closed_by_peer(ec)) << ec.message();
  EXPECT_EQ(data, "");
  EXPECT_GE(steady::now() - began, milliseconds(290));
}

// Verifies max_connections: one connection over the cap is accepted, answered 503 and
// closed at once; when a connection closes there is room again.
TEST_F(Server, ConnectionsOverTheCapAreRefused) {
  server_config cfg = test_config();
  cfg.max_connections = 2;
  start(cfg);
  auto first = std::make_unique<client>(port_);
  client second(port_);
  EXPECT_EQ(first->call(http::verb::get, "/healthz").result(), http::status::ok);
  EXPECT_EQ(second.call(http::verb::get, "/healthz").result(), http::status::ok);

  client third(port_);
  const auto [data, ec] = third.read_until_closed();
  EXPECT_TRUE(closed_by_peer(ec)) << ec.message();
  EXPECT_EQ(data.rfind("HTTP/1.1 503 Service Unavailable\r\n", 0), 0u) << data;
  EXPECT_NE(data.find(R"({"error":"too many connections"})"), std::string::npos);
  EXPECT_EQ(
      sample(second.call(http::verb::get, "/metrics").body(), "sluice_connections_refused_total"),
      1);
  EXPECT_NE(log_->text().find("sluice serve: refused 1 connection(s) with 503: max_connections "
                              "(2) are open"),
            std::string::npos)
      << log_->text();

  first.reset();
  ASSERT_TRUE(eventually([&] { return svc_->counters().open_connections() == 1; }));
  client fourth(port_);
  EXPECT_EQ(fourth.call(http::verb::get, "/healthz").result(), http::status::ok);
}

// Returns the value of one sample line in a /metrics body as a double (the process metrics
// are not all integers), or -1.
double sample_value(const std::string& text, const std::string& series) {
  const std::size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + series.size() + 2));
}

// Verifies the standard process metrics on /metrics (the server runs in this process): each
// has its conventional type, the values are plausible (resident memory below virtual, a start
// time in the last day, open descriptors below their limit), open descriptors rise by at least
// the connections the test opens and fall back when they close, CPU time does not go back,
// and sluice_build_info names the version.
TEST_F(Server, ProcessMetricsAreExportedAndMove) {
  start();
  client c(port_);
  const std::string before = c.call(http::verb::get, "/metrics").body();
  for (const char* type :
       {"# TYPE process_cpu_seconds_total counter", "# TYPE process_open_fds gauge",
        "# TYPE process_max_fds gauge", "# TYPE process_virtual_memory_bytes gauge",
        "# TYPE process_resident_memory_bytes gauge", "# TYPE process_start_time_seconds gauge",
        "# TYPE sluice_build_info gauge"}) {
    EXPECT_NE(before.find(std::string("\n") + type + "\n"), std::string::npos) << type;
  }
  const double rss = sample_value(before, "process_resident_memory_bytes");
  const double vsize = sample_value(before, "process_virtual_memory_bytes");
  EXPECT_GT(rss, 1 << 20);
  EXPECT_GE(vsize, rss);
  const double fds = sample_value(before, "process_open_fds");
  const double max_fds = sample_value(before, "process_max_fds");
  EXPECT_GT(fds, 2);
  EXPECT_GT(max_fds, fds);
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const double started = sample_value(before, "process_start_time_seconds");
  EXPECT_LE(started, now + 1);
  EXPECT_GT(started, now - 86400);
  const double cpu = sample_value(before, "process_cpu_seconds_total");
  EXPECT_GE(cpu, 0);
  EXPECT_NE(before.find("\nsluice_build_info{version=\"" SLUICE_TEST_VERSION "\","),
            std::string::npos);

  // Each connection is two descriptors here: the client's socket and the server's.
  std::vector<std::unique_ptr<client>> more;
  for (int i = 0; i < 20; ++i) {
    more.push_back(std::make_unique<client>(port_));
    EXPECT_EQ(more.back()->call(http::verb::get, "/healthz").result(), http::status::ok);
  }
  const std::string during = c.call(http::verb::get, "/metrics").body();
  EXPECT_GE(sample_value(during, "process_open_fds"), fds + 20);
  EXPECT_GE(sample_value(during, "process_cpu_seconds_total"), cpu);
  EXPECT_EQ(sample_value(during, "process_start_time_seconds"), started);

  more.clear();
  ASSERT_TRUE(eventually([&] {
    return sample_value(c.call(http::verb::get, "/metrics").body(), "process_open_fds") <= fds + 4;
  }));
}

// Verifies the body limit: a declared length over it gets 413 (field "body") without the
// body being read, and so does a chunked body that grows over it; both connections close.
TEST_F(Server, OversizeBodyGets413) {
  server_config cfg = test_config();
  cfg.max_body_bytes = 1024;
  start(cfg);
  {
    client c(port_);
    const std::string body = R"({"key": ")" + std::string(4000, 'k') + R"(", "policy": "chat"})";
    const response r = c.acquire(body);
    EXPECT_EQ(r.result(), http::status::payload_too_large);
    EXPECT_EQ(body_of(r)["field"], "body");
    EXPECT_FALSE(r.keep_alive());
    EXPECT_TRUE(closed_by_peer(c.read_until_closed().second));
  }
  {
    client c(port_);
    ASSERT_FALSE(
        c.write_raw("POST /v1/acquire HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                    "chunked\r\n\r\n800\r\n" +
                    std::string(0x800, 'x') + "\r\n0\r\n\r\n"));
    response r;
    ASSERT_FALSE(c.receive(r));
    EXPECT_EQ(r.result(), http::status::payload_too_large) << r.body();
    EXPECT_EQ(body_of(r)["field"], "body");
  }
  {
    // Just under the limit is fine.
    client c(port_);
    std::string body = R"({"key": "k", "policy": "chat"})";
    body += std::string(1024 - body.size(), ' ');
    EXPECT_EQ(c.acquire(body).result(), http::status::ok);
  }
}

// Verifies that bytes that are not HTTP get 400 and a header over the limit 431, each
// followed by the server closing the connection.
TEST_F(Server, MalformedRequestsGet400Or431AndClose) {
  start();
  {
    client c(port_);
    ASSERT_FALSE(c.write_raw("GET / HTTP/1.1\r\nNo colon here\r\n\r\n"));
    response r;
    ASSERT_FALSE(c.receive(r));
    EXPECT_EQ(r.result(), http::status::bad_request);
    EXPECT_FALSE(r.keep_alive());
    EXPECT_TRUE(closed_by_peer(c.read_until_closed().second));
  }
  {
    client c(port_);
    ASSERT_FALSE(
        c.write_raw("GET /healthz HTTP/1.1\r\nX-Big: " + std::string(20000, 'b') + "\r\n\r\n"));
    response r;
    ASSERT_FALSE(c.receive(r));
    EXPECT_EQ(r.result(), http::status::request_header_fields_too_large);
  }
}

// Verifies `Expect: 100-continue`: the server says 100 Continue after the header, then
// answers once the body has arrived.
TEST_F(Server, ExpectContinueIsHonoured) {
  start();
  client c(port_);
  const std::string body = R"({"key": "k", "policy": "chat"})";
  ASSERT_FALSE(
      c.write_raw("POST /v1/acquire HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  "Content-Length: " +
                  std::to_string(body.size()) + "\r\n\r\n"));
  EXPECT_EQ(c.read_exactly(25), "HTTP/1.1 100 Continue\r\n\r\n");
  ASSERT_FALSE(c.write_raw(body));
  response r;
  ASSERT_FALSE(c.receive(r));
  EXPECT_EQ(r.result(), http::status::ok);
  EXPECT_EQ(body_of(r)["remaining"], 29);
}

// Sends a request header that promises a body and waits for `100 Continue`: once that has
// arrived the server is in the middle of the request.
void start_request_in_flight(client& c, const std::string& body) {
  ASSERT_FALSE(
      c.write_raw("POST /v1/acquire HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  "Content-Length: " +
                  std::to_string(body.size()) + "\r\n\r\n"));
  ASSERT_EQ(c.read_exactly(25), "HTTP/1.1 100 Continue\r\n\r\n");
}

// Verifies the drain in-process: after shutdown() new connections are refused, an idle
// kept-alive connection is closed, and a request in flight is answered (Connection: close)
// before the server stops, well within drain_timeout.
TEST_F(Server, ShutdownLetsRequestsInFlightFinish) {
  start();
  client busy(port_);
  client idle(port_);
  EXPECT_EQ(idle.call(http::verb::get, "/healthz").result(), http::status::ok);
  const std::string body = R"({"key": "drain", "policy": "chat"})";
  start_request_in_flight(busy, body);

  const auto began = steady::now();
  svc_->shutdown();
  ASSERT_TRUE(eventually([&] { return refuses_connections(port_); }));
  EXPECT_TRUE(closed_by_peer(idle.read_until_closed().second));

  ASSERT_FALSE(busy.write_raw(body));
  response r;
  ASSERT_FALSE(busy.receive(r));
  EXPECT_EQ(r.result(), http::status::ok);
  EXPECT_EQ(body_of(r)["allowed"], true);
  EXPECT_FALSE(r.keep_alive());
  EXPECT_TRUE(closed_by_peer(busy.read_until_closed().second));
  busy.close();  // else the server lingers a while for it to
  svc_->wait();
  EXPECT_LT(steady::now() - began, seconds(10));  // drain_timeout is 20 s
}

// Verifies that a request that does not finish within drain_timeout is cut off, and the
// server stops anyway.
TEST_F(Server, DrainTimeoutClosesWhatIsLeft) {
  server_config cfg = test_config();
  cfg.drain_timeout = milliseconds(200);
  start(cfg);
  client stuck(port_);
  start_request_in_flight(stuck, R"({"key": "k", "policy": "chat"})");
  svc_->shutdown();
  EXPECT_TRUE(closed_by_peer(stuck.read_until_closed().second));
  svc_->wait();
}

// Verifies the server on a real Redis: decisions in Redis (the reference's key layout),
// reset, readiness while it runs, and once it stops, /readyz 503 and decisions by the
// failure mode (allow).
TEST(ServerOnRedis, EndToEndOnARealRedis) {
  sluice::test::redis_server redis;
  sluice::server::configure_logging("error");
  server_config cfg = test_config();
  cfg.store = redis.uri() + "?timeout=200ms&reconnect_max=100ms";
  auto svc = std::make_unique<service>(cfg);
  svc->start();
  client c(svc->port());

  const std::string body = R"({"key": "u", "policy": "tiny"})";
  EXPECT_EQ(body_of(c.acquire(body))["allowed"], true);
  EXPECT_EQ(body_of(c.acquire(body))["allowed"], true);
  response r = c.acquire(body);
  EXPECT_EQ(body_of(r)["allowed"], false);
  EXPECT_FALSE(r[http::field::retry_after].empty());
  EXPECT_EQ(redis.command({"ZCARD", "sluice:tiny:u"}), "2");
  EXPECT_EQ(c.call(http::verb::get, "/readyz").result(), http::status::ok);
  const std::string before = c.call(http::verb::get, "/metrics").body();
  EXPECT_EQ(sample(before, "sluice_redis_connections"), 1);
  EXPECT_EQ(sample(before, "sluice_redis_requests_total"), 3);

  EXPECT_EQ(c.call(http::verb::delete_, "/v1/keys/tiny/u").result(), http::status::no_content);
  EXPECT_EQ(redis.command({"EXISTS", "sluice:tiny:u"}), "0");
  EXPECT_EQ(body_of(c.acquire(body))["remaining"], 1);

  redis.stop();
  ASSERT_TRUE(eventually(
      [&] {
        return c.call(http::verb::get, "/readyz").result() == http::status::service_unavailable;
      },
      seconds(10)));
  r = c.acquire(body);
  EXPECT_EQ(r.result(), http::status::ok);
  EXPECT_EQ(body_of(r)["allowed"], true);  // on_failure: allow
  EXPECT_EQ(body_of(r)["remaining"], 2);
  const std::string text = c.call(http::verb::get, "/metrics").body();
  EXPECT_GE(sample(text, R"(sluice_fallbacks_total{mode="allow"})"), 1);
  EXPECT_GE(sample(text, "sluice_store_errors_total"), 1);
  svc.reset();
}

// `sluice serve` as a child process, its stdout on a pipe (stderr passes through).
class serve_process {
 public:
  explicit serve_process(std::vector<std::string> args) {
    args.insert(args.begin(), {SLUICE_CLI_PATH, "serve"});
    int fds[2];
    if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    posix_spawn_file_actions_addclose(&actions, fds[1]);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int rc = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    out_ = fds[0];
    if (rc != 0) throw std::runtime_error("posix_spawn failed");
  }

  ~serve_process() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(out_);
  }

  // Returns the first line of stdout, waiting up to 10 s for it.
  std::string first_line() {
    std::string line;
    const auto end = steady::now() + seconds(10);
    while (line.find('\n') == std::string::npos && steady::now() < end) {
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char c[256];
      const ssize_t n = read(out_, c, sizeof c);
      if (n <= 0) break;
      line.append(c, static_cast<std::size_t>(n));
    }
    return line.substr(0, line.find('\n'));
  }

  void signal(int sig) { kill(pid_, sig); }

  // Returns the exit status, or nothing when the process has not exited within `limit`.
  std::optional<int> wait_exit(milliseconds limit = seconds(10)) {
    int status = 0;
    const bool exited = eventually([&] { return waitpid(pid_, &status, WNOHANG) == pid_; }, limit);
    if (!exited) return std::nullopt;
    pid_ = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = 0;
  int out_ = -1;
};

std::uint16_t port_of(const std::string& line) {
  const std::string prefix = "sluice listening on 127.0.0.1:";
  if (line.rfind(prefix, 0) != 0) return 0;
  return static_cast<std::uint16_t>(std::stoi(line.substr(prefix.size())));
}

// Verifies `sluice serve` under SIGTERM: it prints where it listens first, stops accepting,
// answers the request in flight (Connection: close), and exits 0.
TEST(ServeCommand, SigtermDrainsRequestsInFlightAndExitsZero) {
  serve_process serve({"--listen", "127.0.0.1:0", "--store", "memory://", "--io-threads", "2"});
  const std::uint16_t port = port_of(serve.first_line());
  ASSERT_NE(port, 0);

  client busy(port);
  const std::string body = R"({"key": "k", "limit": "5/1m"})";
  start_request_in_flight(busy, body);
  client idle(port);
  EXPECT_EQ(idle.call(http::verb::get, "/healthz").result(), http::status::ok);

  serve.signal(SIGTERM);
  ASSERT_TRUE(eventually([&] { return refuses_connections(port); }));
  EXPECT_TRUE(closed_by_peer(idle.read_until_closed().second));
  ASSERT_FALSE(busy.write_raw(body));
  response r;
  ASSERT_FALSE(busy.receive(r));
  EXPECT_EQ(r.result(), http::status::ok);
  EXPECT_EQ(body_of(r)["remaining"], 4);
  EXPECT_FALSE(r.keep_alive());
  busy.close();
  EXPECT_EQ(serve.wait_exit(), std::optional<int>(0));
}

// Verifies that SIGINT stops a server with no connections at once, exit status 0.
TEST(ServeCommand, SigintStopsAnIdleServer) {
  serve_process serve({"--listen", "127.0.0.1:0"});
  ASSERT_NE(port_of(serve.first_line()), 0);
  serve.signal(SIGINT);
  EXPECT_EQ(serve.wait_exit(), std::optional<int>(0));
}

// Verifies --admin-open: without it (and with no admin token) `sluice serve` refuses a reset
// with 403 before looking at it; with it the reset goes through to the handler (here a 404:
// the server has no policy of that name).
TEST(ServeCommand, AdminOpenFlagLetsResetsThrough) {
  for (const bool open : {false, true}) {
    std::vector<std::string> args = {"--listen", "127.0.0.1:0"};
    if (open) args.push_back("--admin-open");
    serve_process serve(args);
    const std::uint16_t port = port_of(serve.first_line());
    ASSERT_NE(port, 0);
    client c(port);
    const response r = c.call(http::verb::delete_, "/v1/keys/chat/u");
    EXPECT_EQ(r.result(), open ? http::status::not_found : http::status::forbidden) << r.body();
    c.close();
    serve.signal(SIGTERM);
    EXPECT_EQ(serve.wait_exit(), std::optional<int>(0));
  }
}

// Verifies that a port in use exits 1 and a config file that cannot be read exits 2, each
// with a message on stderr.
TEST(ServeCommand, StartUpFailuresExitNonZero) {
  asio::io_context ioc;
  tcp::acceptor taken(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const std::string in_use = "127.0.0.1:" + std::to_string(taken.local_endpoint().port());
  auto r = sluice::test::run_process({SLUICE_CLI_PATH, "serve", "--listen", in_use});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find(in_use), std::string::npos) << r.err;

  r = sluice::test::run_process({SLUICE_CLI_PATH, "serve", "--config", "/nonexistent/sluice.yaml"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("sluice.yaml"), std::string::npos) << r.err;

  r = sluice::test::run_process({SLUICE_CLI_PATH, "serve", "--store", "bogus://x"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("bogus://x"), std::string::npos) << r.err;
}

}  // namespace

namespace {

// Verifies that `sluice serve` on a memory store with a snapshot keeps a key's spent budget
// across a SIGTERM and a restart, refuses to start on a corrupt snapshot (exit 1, the file
// named), and starts empty on one when told snapshot_on_error=empty.
TEST(ServeCommand, SnapshotKeepsBudgetAcrossRestart) {
  char dir_template[] = "/tmp/sluice-serve-snapshot-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  const std::string path = dir + "/state.snap";
  // An interval far longer than the test: what survives is what SIGTERM wrote.
  const std::string store = "memory://?snapshot=" + path + "&snapshot_interval=1h";
  const std::string body = R"({"key": "k", "limit": "5/1h"})";
  {
    serve_process serve({"--listen", "127.0.0.1:0", "--store", store});
    const std::uint16_t port = port_of(serve.first_line());
    ASSERT_NE(port, 0);
    client c(port);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(body_of(c.acquire(body))["allowed"], true);
    c.close();
    serve.signal(SIGTERM);
    ASSERT_EQ(serve.wait_exit(), std::optional<int>(0));
  }
  ASSERT_EQ(access(path.c_str(), R_OK), 0);
  {
    serve_process serve({"--listen", "127.0.0.1:0", "--store", store});
    const std::uint16_t port = port_of(serve.first_line());
    ASSERT_NE(port, 0);
    client c(port);
    const auto r = body_of(c.acquire(body));
    EXPECT_EQ(r["allowed"], true);
    EXPECT_EQ(r["remaining"], 1);  // 3 spent before the restart, 1 now, of 5
    c.close();
    serve.signal(SIGTERM);
    ASSERT_EQ(serve.wait_exit(), std::optional<int>(0));
  }

  // Cut short: refused, and the server does not start.
  ASSERT_EQ(truncate(path.c_str(), 40), 0);
  auto r = sluice::test::run_process(
      {SLUICE_CLI_PATH, "serve", "--listen", "127.0.0.1:0", "--store", store});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(path), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("truncated"), std::string::npos) << r.err;
  {
    serve_process serve({"--listen", "127.0.0.1:0", "--store", store + "&snapshot_on_error=empty"});
    const std::uint16_t port = port_of(serve.first_line());
    ASSERT_NE(port, 0);
    client c(port);
    EXPECT_EQ(body_of(c.acquire(body))["remaining"], 4);
    c.close();
    serve.signal(SIGTERM);
    EXPECT_EQ(serve.wait_exit(), std::optional<int>(0));
  }
  const std::string cleanup = "rm -rf '" + dir + "'";
  EXPECT_EQ(std::system(cleanup.c_str()), 0);
}

}  // namespace
