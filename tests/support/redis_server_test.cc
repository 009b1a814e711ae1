// Tests of the test support itself: real redis-servers (plain, password, ACL user, TLS,
// Unix socket) that start, stop, restart on their port, pause and clean up; the fake RESP
// server; and the reference limiter driven as a live peer.
#include "support/redis_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using sluice::test::fake_resp_behaviour;
using sluice::test::fake_resp_server;
using sluice::test::process_result;
using sluice::test::redis_server;
using sluice::test::redis_server_options;
using sluice::test::redis_session_options;
using sluice::test::run_process;
using std::chrono::milliseconds;
using std::chrono::seconds;

bool alive(pid_t pid) { return pid > 0 && ::kill(pid, 0) == 0; }

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// A blocking loopback client with a receive timeout, for talking to fake servers.
class raw_client {
 public:
  explicit raw_client(std::uint16_t port, milliseconds timeout = seconds(2))
      : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const timeval tv{static_cast<time_t>(timeout.count() / 1000),
                     static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
      throw std::runtime_error("connect failed");
    }
  }
  ~raw_client() { ::close(fd_); }
  raw_client(const raw_client&) = delete;
  raw_client& operator=(const raw_client&) = delete;

  void send(const std::string& bytes) {
    ASSERT_EQ(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
  }
  // Returns up to `n` bytes: fewer when the server closes or the timeout passes.
  std::string receive(std::size_t n) {
    std::string out;
    char buf[4096];
    while (out.size() < n) {
      const ssize_t r = ::recv(fd_, buf, std::min(sizeof buf, n - out.size()), 0);
      if (r <= 0) break;
      out.append(buf, static_cast<std::size_t>(r));
    }
    return out;
  }
  // Returns true when the server has closed the connection (EOF within the timeout).
  bool closed_by_server() {
    char c;
    return ::recv(fd_, &c, 1, 0) == 0;
  }

 private:
  int fd_;
};

// Verifies that a started server answers PING, SET and GET, and reports where it is.
TEST(RedisServer, StartsAndAnswersPingSetGet) {
  redis_server redis;
  EXPECT_TRUE(redis.running());
  EXPECT_TRUE(alive(redis.pid()));
  EXPECT_GT(redis.port(), 0);
  EXPECT_EQ(redis.uri(), "redis://127.0.0.1:" + std::to_string(redis.port()));
  EXPECT_EQ(redis.command({"PING"}), "PONG");
  EXPECT_EQ(redis.command({"SET", "k", std::string("v\0\r\n", 4)}), "OK");
  EXPECT_EQ(redis.command({"GET", "k"}), std::string("v\0\r\n", 4));
  EXPECT_EQ(redis.command({"GET", "missing"}), "(nil)");
  EXPECT_EQ(redis
                .commands({{"ZADD", "z", "1", "a", "2", "b"},
                           {"ZCARD", "z"},
                           {"ZRANGE", "z", "0", "-1"},
                           {"NOSUCHCOMMAND"}})
                .at(2),
            "[a, b]");
  EXPECT_TRUE(starts_with(redis.command({"NOSUCHCOMMAND"}), "(error) ERR unknown command"));
}

// Verifies that the destructor stops the server and removes its temporary directory.
TEST(RedisServer, DestructorStopsServerAndRemovesDirectory) {
  pid_t pid = 0;
  std::filesystem::path dir;
  {
    redis_server redis;
    pid = redis.pid();
    dir = redis.dir();
    ASSERT_TRUE(std::filesystem::exists(redis.dir() / "redis.conf"));
  }
  EXPECT_FALSE(alive(pid));
  EXPECT_FALSE(std::filesystem::exists(dir));
}

// Verifies that a stopped server refuses connections and comes back on the same port, empty.
TEST(RedisServer, StopThenStartKeepsThePort) {
  redis_server redis;
  const std::uint16_t port = redis.port();
  ASSERT_EQ(redis.command({"SET", "k", "v"}), "OK");
  const pid_t first = redis.pid();

  redis.stop();
  EXPECT_FALSE(redis.running());
  EXPECT_EQ(redis.pid(), 0);
  EXPECT_FALSE(alive(first));
  EXPECT_THROW(redis.command({"PING"}), std::runtime_error);

  redis.start();
  EXPECT_EQ(redis.port(), port);
  EXPECT_NE(redis.pid(), first);
  EXPECT_EQ(redis.command({"PING"}), "PONG");
  EXPECT_EQ(redis.command({"GET", "k"}), "(nil)");  // no persistence
}

// Verifies that kill() ends the server at once and that it can be started again.
TEST(RedisServer, KillThenStartWorks) {
  redis_server redis;
  const pid_t first = redis.pid();
  redis.kill();
  EXPECT_FALSE(alive(first));
  EXPECT_THROW(redis.command({"PING"}), std::runtime_error);
  redis.start();
  EXPECT_EQ(redis.command({"PING"}), "PONG");
}

// Verifies that a paused server answers nothing until it is resumed.
TEST(RedisServer, PauseHangsUntilResume) {
  redis_server redis;
  redis.pause();
  redis_session_options quick;
  quick.timeout = milliseconds(200);
  const auto before = std::chrono::steady_clock::now();
  try {
    redis.commands({{"PING"}}, quick);
    ADD_FAILURE() << "a paused server answered";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("timed out"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - before, seconds(2));
  redis.resume();
  EXPECT_EQ(redis.command({"PING"}), "PONG");
}

// Verifies that a password server refuses unauthenticated commands and accepts AUTH.
TEST(RedisServer, PasswordServerNeedsAuth) {
  redis_server_options options;
  options.password = "s3cr\"et pass";
  redis_server redis(options);
  redis_session_options anonymous;
  anonymous.authenticate = false;

  EXPECT_TRUE(starts_with(redis.commands({{"GET", "k"}}, anonymous).at(0), "(error) NOAUTH"));
  EXPECT_TRUE(
      starts_with(redis.commands({{"AUTH", "wrong"}}, anonymous).at(0), "(error) WRONGPASS"));
  EXPECT_EQ(redis.commands({{"AUTH", options.password}, {"PING"}}, anonymous),
            (std::vector<std::string>{"OK", "PONG"}));
  EXPECT_EQ(redis.command({"PING"}), "PONG");  // command() authenticates by itself
  EXPECT_EQ(redis.full_uri(),
            "redis://:s3cr%22et%20pass@127.0.0.1:" + std::to_string(redis.port()));
}

// Verifies that an ACL user can authenticate with AUTH user password and run commands.
TEST(RedisServer, AclUserAuthenticates) {
  redis_server_options options;
  options.acl_user = "sluice";
  options.acl_password = "pw";
  redis_server redis(options);
  redis_session_options anonymous;
  anonymous.authenticate = false;

  EXPECT_EQ(
      redis.commands({{"AUTH", "sluice", "pw"}, {"ACL", "WHOAMI"}, {"SET", "k", "1"}}, anonymous),
      (std::vector<std::string>{"OK", "sluice", "OK"}));
  EXPECT_TRUE(starts_with(redis.commands({{"AUTH", "sluice", "nope"}}, anonymous).at(0),
                          "(error) WRONGPASS"));
  EXPECT_EQ(redis.command({"ACL", "WHOAMI"}), "sluice");
  EXPECT_EQ(redis.full_uri(), "redis://sluice:pw@127.0.0.1:" + std::to_string(redis.port()));
}

// Verifies that a TLS server answers clients that trust its CA and fails those that don't.
TEST(RedisServer, TlsServerVerifiesAgainstItsCa) {
  redis_server_options options;
  options.tls = true;
  redis_server redis(options);
  ASSERT_TRUE(std::filesystem::exists(redis.ca_file()));
  ASSERT_TRUE(std::filesystem::exists(redis.other_ca_file()));
  EXPECT_TRUE(starts_with(redis.uri(), "rediss://127.0.0.1:"));
  EXPECT_EQ(redis.command({"PING"}), "PONG");  // OpenSSL, verifying IP:127.0.0.1

  const std::string port = std::to_string(redis.port());
  const process_result good =
      run_process({"redis-cli", "--tls", "--cacert", redis.ca_file().string(), "-p", port, "ping"},
                  seconds(10));
  EXPECT_EQ(good.exit_code, 0) << good.err;
  EXPECT_EQ(good.out, "PONG\n");

  const process_result by_name =
      run_process({"redis-cli", "--tls", "--cacert", redis.ca_file().string(), "-h", "localhost",
                   "-p", port, "ping"},
                  seconds(10));
  EXPECT_EQ(by_name.out, "PONG\n") << by_name.err;

  const process_result wrong_ca = run_process(
      {"redis-cli", "--tls", "--cacert", redis.other_ca_file().string(), "-p", port, "ping"},
      seconds(10));
  EXPECT_NE(wrong_ca.exit_code, 0);
  EXPECT_NE(wrong_ca.out + wrong_ca.err, "PONG\n");
  EXPECT_NE((wrong_ca.out + wrong_ca.err).find("certificate verify failed"), std::string::npos)
      << wrong_ca.out << wrong_ca.err;
}

// Verifies that a TLS server restarts on its port with the same certificates.
TEST(RedisServer, TlsServerRestarts) {
  redis_server_options options;
  options.tls = true;
  redis_server redis(options);
  redis.stop();
  redis.start();
  EXPECT_EQ(redis.command({"PING"}), "PONG");
}

// Verifies that the optional Unix socket answers too.
TEST(RedisServer, UnixSocketAnswers) {
  redis_server_options options;
  options.unix_socket = true;
  redis_server redis(options);
  const process_result r =
      run_process({"redis-cli", "-s", redis.unix_socket().string(), "ping"}, seconds(10));
  EXPECT_EQ(r.out, "PONG\n") << r.err;
}

// Verifies that a server that cannot start fails with the reason from its log.
TEST(RedisServer, BadConfigFailsWithTheLog) {
  redis_server_options options;
  options.extra_config = {"no-such-directive yes"};
  try {
    redis_server redis(options);
    ADD_FAILURE() << "a server with a bad config started";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("exited at start-up"), std::string::npos) << what;
    EXPECT_NE(what.find("no-such-directive"), std::string::npos) << what;
  }
}

// Verifies that extra config lines reach the server.
TEST(RedisServer, ExtraConfigApplies) {
  redis_server_options options;
  options.extra_config = {"maxmemory 3mb", "maxmemory-policy noeviction"};
  redis_server redis(options);
  EXPECT_EQ(redis.command({"CONFIG", "GET", "maxmemory"}), "[maxmemory, 3145728]");
  EXPECT_EQ(redis.command({"DEBUG", "SLEEP", "0"}), "OK");
}

// Verifies that the fake server answers every read with its bytes and records what it got.
TEST(FakeRespServer, RepliesToEachRead) {
  const std::string malformed = "*2\r\n$-5\r\nxx\r\n";
  fake_resp_server fake(malformed);
  raw_client client(fake.port());
  client.send("*1\r\n$4\r\nPING\r\n");
  EXPECT_EQ(client.receive(malformed.size()), malformed);
  client.send("*1\r\n$4\r\nPING\r\n");
  EXPECT_EQ(client.receive(malformed.size()), malformed);
  EXPECT_EQ(fake.connections(), 1u);
  EXPECT_EQ(fake.received(), "*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n");
  EXPECT_EQ(fake.uri(), "redis://127.0.0.1:" + std::to_string(fake.port()));
}

// Verifies that the fake server can reply once and close, or close before reading.
TEST(FakeRespServer, ClosesWhenTold) {
  {
    fake_resp_server fake("+OK\r\n", fake_resp_behaviour::reply_once_then_close);
    raw_client client(fake.port());
    client.send("PING\r\n");
    EXPECT_EQ(client.receive(5), "+OK\r\n");
    EXPECT_TRUE(client.closed_by_server());
  }
  {
    fake_resp_server fake("", fake_resp_behaviour::close_on_accept);
    raw_client client(fake.port());
    EXPECT_TRUE(client.closed_by_server());
  }
}

// Verifies that a fake server with an empty reply accepts and never answers, and that its
// destructor returns with the client still connected.
TEST(FakeRespServer, SilentServerNeverAnswers) {
  auto fake = std::make_unique<fake_resp_server>("");
  raw_client client(fake->port(), milliseconds(300));
  client.send("PING\r\n");
  EXPECT_EQ(client.receive(1), "");  // nothing within the receive timeout
  EXPECT_EQ(fake->received(), "PING\r\n");
  fake.reset();
}

// Counts the lines of `out` that contain `needle`.
int count_lines(const std::string& out, const std::string& needle) {
  std::istringstream in(out);
  int n = 0;
  for (std::string line; std::getline(in, line);) n += line.find(needle) != std::string::npos;
  return n;
}

// Verifies that the reference limiter admits up to its limit, then denies with retry_after.
TEST(ReferencePeer, DecidesAgainstRedis) {
  if (auto why = sluice::test::reference_peer_unavailable(); !why.empty()) GTEST_SKIP() << why;
  redis_server redis;
  const process_result r = sluice::test::run_reference_peer(
      {"--port", std::to_string(redis.port()), "--key", "chrysopedia:ratelimit:chat:u1", "--limit",
       "3", "--window", "60", "--requests", "5"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(count_lines(r.out, "\"allowed\": true"), 3) << r.out;
  EXPECT_EQ(count_lines(r.out, "\"allowed\": false"), 2) << r.out;
  EXPECT_EQ(count_lines(r.out, "\"remaining\": 0, \"retry_after\": 60,"), 2) << r.out;
  EXPECT_EQ(redis.command({"ZCARD", "chrysopedia:ratelimit:chat:u1"}), "3");
  const int ttl = std::stoi(redis.command({"TTL", "chrysopedia:ratelimit:chat:u1"}));
  EXPECT_GE(ttl, 110);  // window + 60 s, less the time the test took since
  EXPECT_LE(ttl, 120);
}

// Verifies that concurrent mode prints one decision per request.
TEST(ReferencePeer, ConcurrentModePrintsEveryDecision) {
  if (auto why = sluice::test::reference_peer_unavailable(); !why.empty()) GTEST_SKIP() << why;
  redis_server redis;
  const process_result r = sluice::test::run_reference_peer(
      {"--port", std::to_string(redis.port()), "--key", "k", "--limit", "5", "--window", "60",
       "--requests", "40", "--concurrency", "8"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(count_lines(r.out, "\"allowed\": "), 40) << r.out;
  EXPECT_GE(count_lines(r.out, "\"allowed\": true"), 5) << r.out;
}

// Verifies that bench mode reports a positive decision rate.
TEST(ReferencePeer, BenchReportsRate) {
  if (auto why = sluice::test::reference_peer_unavailable(); !why.empty()) GTEST_SKIP() << why;
  redis_server redis;
  const process_result r =
      sluice::test::run_reference_peer({"--port", std::to_string(redis.port()), "--bench", "0.5",
                                        "--keys", "4", "--concurrency", "16"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("{\"decisions\": ", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("\"per_second\": "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("\"decisions\": 0,"), std::string::npos) << r.out;
}

}  // namespace
