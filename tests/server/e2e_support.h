// What the end-to-end tests of `sluice serve` share: a blocking HTTP/1.1 client with a
// deadline on every operation, a small config with three policies, and readers for JSON
// bodies and /metrics samples. Included by the test files of tests/server only.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
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

#include "server/config.h"
#include "sluice/limit.h"

namespace sluice::test::e2e {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using json = nlohmann::json;
using sluice::server::served_policy;
using sluice::server::server_config;
using std::chrono::milliseconds;
using std::chrono::seconds;
using steady = std::chrono::steady_clock;

using request = http::request<http::string_body>;
using response = http::response<http::string_body>;
using header_list = std::vector<std::pair<std::string, std::string>>;

// The deadline of every client operation: far above any wait a test expects.
constexpr milliseconds kDeadline{10000};

// One HTTP/1.1 connection to 127.0.0.1:<port>, blocking, every operation bounded by a
// deadline (after which the connection is closed and the operation fails). Not thread-safe.
class client {
 public:
  explicit client(std::uint16_t port) : stream_(ioc_) {
    error_code ec;
    stream_.expires_after(kDeadline);
    stream_.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port),
                          [&](const error_code& e) { ec = e; });
    run();
    if (ec) throw std::runtime_error("connect: " + ec.message());
  }

  // Sends a request and returns its response (status 0 and a failure when there is none).
  response call(http::verb method, const std::string& target, const std::string& body = {},
                const header_list& headers = {}) {
    request req{method, target, 11};
    req.set(http::field::host, "127.0.0.1");
    for (const auto& [name, value] : headers) req.set(name, value);
    req.body() = body;
    req.prepare_payload();
    if (const error_code ec = send(req)) {
      ADD_FAILURE() << "send: " << ec.message();
      return {};
    }
    response res;
    if (const error_code ec = receive(res)) {
      ADD_FAILURE() << "receive: " << ec.message();
      return {};
    }
    return res;
  }

  response acquire(const std::string& body) { return call(http::verb::post, "/v1/acquire", body); }

  error_code send(request& req) {
    error_code ec;
    stream_.expires_after(kDeadline);
    http::async_write(stream_, req, [&](const error_code& e, std::size_t) { ec = e; });
    run();
    return ec;
  }

  error_code receive(response& res) {
    error_code ec;
    stream_.expires_after(kDeadline);
    http::async_read(stream_, buffer_, res, [&](const error_code& e, std::size_t) { ec = e; });
    run();
    return ec;
  }

  error_code write_raw(std::string_view bytes) {
    error_code ec;
    stream_.expires_after(kDeadline);
    asio::async_write(stream_, asio::buffer(bytes.data(), bytes.size()),
                      [&](const error_code& e, std::size_t) { ec = e; });
    run();
    return ec;
  }

  // Reads exactly `n` bytes (what is already buffered first).
  std::string read_exactly(std::size_t n) {
    error_code ec;
    stream_.expires_after(kDeadline);
    while (buffer_.size() < n && !ec) {
      stream_.async_read_some(buffer_.prepare(n - buffer_.size()),
                              [&](const error_code& e, std::size_t got) {
                                ec = e;
                                buffer_.commit(got);
                              });
      run();
    }
    EXPECT_FALSE(ec) << ec.message();
    const std::string out = beast::buffers_to_string(buffer_.data()).substr(0, n);
    buffer_.consume(out.size());
    return out;
  }

  // Closes the connection from this side.
  void close() {
    error_code ignored;
    stream_.socket().close(ignored);
  }

  // Reads until the server closes the connection or `limit` passes. Returns what arrived
  // and how reading ended: eof (or a reset) when the server closed, timeout otherwise.
  std::pair<std::string, error_code> read_until_closed(milliseconds limit = kDeadline) {
    std::string data = beast::buffers_to_string(buffer_.data());
    buffer_.consume(buffer_.size());
    error_code ec;
    stream_.expires_after(limit);
    for (;;) {
      char chunk[4096];
      std::size_t n = 0;
      stream_.async_read_some(asio::buffer(chunk), [&](const error_code& e, std::size_t got) {
        ec = e;
        n = got;
      });
      run();
      data.append(chunk, n);
      if (ec) return {data, ec};
    }
  }

 private:
  void run() {
    ioc_.restart();
    ioc_.run();
  }

  asio::io_context ioc_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
};

inline bool closed_by_peer(const error_code& ec) {
  return ec == asio::error::eof || ec == asio::error::connection_reset;
}

// Returns true when nothing listens on the port any more.
inline bool refuses_connections(std::uint16_t port) {
  try {
    client c(port);
    return false;
  } catch (const std::runtime_error&) {
    return true;
  }
}

inline served_policy make_policy(const std::string& name, const std::string& limit,
                                 bool shadow = false) {
  served_policy p;
  p.policy.name = name;
  p.policy.limit = *sluice::parse_limit(limit);
  p.policy.shadow = shadow;
  return p;
}

inline server_config test_config() {
  server_config c;
  c.listen = "127.0.0.1:0";
  c.io_threads = 2;
  c.store = "memory://";
  c.drain_timeout = seconds(20);
  c.policies.push_back(make_policy("chat", "30/hour"));
  c.policies.push_back(make_policy("exact", "100/hour"));
  c.policies.push_back(make_policy("tiny", "2/1m"));
  c.admin_open = true;  // the tests reset keys without a token
  return c;
}

inline json body_of(const response& r) { return json::parse(r.body(), nullptr, false); }

// Returns the value of one sample line in a /metrics body, or -1.
inline long long sample(const std::string& text, const std::string& series) {
  const std::size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stoll(text.substr(at + series.size() + 2));
}

}  // namespace sluice::test::e2e
