// Test support for everything that talks to Redis: a real `redis-server` per test, started
// on a free loopback port in its own temporary directory and stopped by its pid; a fake
// RESP server that answers with whatever bytes a test gives it; a bounded subprocess runner;
// and the way to the reference limiter (`reference_peer.py`) as a live peer.
//
// Start-up problems throw std::runtime_error with the reason and the tail of the server's
// log, so a test that cannot get its server fails with a message that says why.
//
//   sluice::test::redis_server redis;                    // plain, on 127.0.0.1:<free port>
//   EXPECT_EQ(redis.command({"SET", "k", "v"}), "OK");
//   redis.stop();                                        // down; same port, same directory
//   redis.start();                                       // up again on the same port
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace sluice::test {

// How a redis_server is configured. The defaults give a plain server with no password.
struct redis_server_options {
  // The default user's password (`requirepass`); empty for none.
  std::string password;
  // An extra ACL user with every permission (`user <acl_user> on >acl_password ~* &* +@all`);
  // empty for none.
  std::string acl_user;
  std::string acl_password;
  // Serve TLS only (`tls-port`; the plain port is off), with a throwaway CA and server
  // certificate (SAN IP:127.0.0.1 and DNS:localhost) made by the `openssl` command.
  bool tls = false;
  // Also listen on a Unix socket, `unix_socket()`.
  bool unix_socket = false;
  // More redis.conf lines, e.g. "maxmemory 1mb".
  std::vector<std::string> extra_config;
  // Run as a sentinel (`redis-server redis.conf --sentinel`, which Debian's redis-server
  // supports): `extra_config` holds its `sentinel ...` lines. The sentinel rewrites its
  // config, which start() keeps (only the constructor writes it).
  bool sentinel = false;
  // How long start() waits for the server to answer PING.
  std::chrono::milliseconds start_timeout = std::chrono::seconds(10);
};

// One session of commands on a fresh connection.
struct redis_session_options {
  // AUTH first with the server's credentials: the ACL user when there is one, else the
  // password; nothing when the server has neither.
  bool authenticate = true;
  // Deadline of the whole session: connect, TLS handshake, every command.
  std::chrono::milliseconds timeout = std::chrono::seconds(5);
};

// A redis-server child process on 127.0.0.1 (loopback only), with no persistence, in a
// temporary directory that holds its config, log and TLS files. `DEBUG` is enabled (e.g.
// `DEBUG SLEEP 1` for a slow server). The server is killed if the thread that started it
// dies (PR_SET_PDEATHSIG), so a crashed or timed-out test leaves nothing behind: start
// servers from the test's main thread.
//
// Not thread-safe, except command() and commands(), which many threads may call at once
// while the server is neither being started nor stopped.
class redis_server {
 public:
  // Picks a free port and starts the server; throws std::runtime_error when it cannot.
  explicit redis_server(redis_server_options options = {});
  // Stops the server (SIGTERM; SIGKILL after 5 s) and removes the temporary directory.
  ~redis_server();
  redis_server(const redis_server&) = delete;
  redis_server& operator=(const redis_server&) = delete;

  // Starts the server again, on the same port and directory (the data is gone: no
  // persistence). Throws std::runtime_error when it does not come up. No-op when running.
  void start();
  // SIGTERM, and waits for the exit (SIGKILL after 5 s). Keeps the port and directory.
  void stop();
  // SIGKILL, and waits for the exit: a crash, with no shutdown at all.
  void kill();
  // SIGSTOP / SIGCONT: a hung server. Connections are accepted by the kernel but nothing
  // is answered until resume().
  void pause();
  void resume();
  bool running() const { return pid_ > 0; }

  // The port (the TLS port when `tls`); stays the same across stop() and start().
  std::uint16_t port() const { return port_; }
  // The server's pid; 0 when stopped.
  pid_t pid() const { return pid_; }
  // "redis://127.0.0.1:<port>" or "rediss://127.0.0.1:<port>", without credentials.
  std::string uri() const;
  // uri() with the credentials (%-encoded) and, for TLS, `?tls_ca=<ca_file()>`: what a
  // sluice store needs to reach this server.
  std::string full_uri() const;
  // The CA that signed the server's certificate, and an unrelated CA (for "wrong CA"
  // tests). Empty paths unless `tls`.
  std::filesystem::path ca_file() const;
  std::filesystem::path other_ca_file() const;
  // The Unix socket; empty path unless `unix_socket`.
  std::filesystem::path unix_socket() const;
  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path log_file() const { return dir_ / "redis.log"; }
  // The last `lines` lines of the server's log (stdout and stderr).
  std::string log_tail(std::size_t lines = 20) const;
  const redis_server_options& options() const { return options_; }

  // Returns the reply to one command, as text: a status or bulk string as it is, an
  // integer in decimal, "(nil)", "(error) <message>", an array as "[a, b, [c]]".
  // Authenticates first (see redis_session_options). Works over TLS too. Throws
  // std::runtime_error when the server cannot be reached or does not answer in 5 s.
  //   redis.command({"ZCARD", "chrysopedia:ratelimit:chat:u1"})  // "3"
  std::string command(const std::vector<std::string>& args) const;
  // Returns the replies to `list`, sent pipelined on one connection, in order.
  std::vector<std::string> commands(const std::vector<std::vector<std::string>>& list,
                                    const redis_session_options& session = {}) const;

 private:
  void write_config() const;
  bool launch(std::string& failure);  // false + failure text when the server did not come up
  void terminate(int signal);

  redis_server_options options_;
  std::filesystem::path dir_;
  std::uint16_t port_ = 0;
  pid_t pid_ = 0;
};

// One reply, as a tree. Arrays have `array` and their `elements`; any other reply is `text`,
// as redis_server::command() prints it: a status or bulk string as it is, an integer in
// decimal, "(nil)", "(error) <message>".
struct redis_reply {
  bool array = false;
  std::string text;
  std::vector<redis_reply> elements;
};

// Returns `reply` as redis_server::command() prints it: arrays as "[a, b, [c]]".
std::string printable(const redis_reply& reply);

// Where send_commands() goes, and how.
struct redis_endpoint {
  // The server's port on 127.0.0.1.
  std::uint16_t port = 0;
  // Speak TLS and verify the server (as 127.0.0.1) against this CA; plain when empty.
  std::filesystem::path ca_file;
  // A command sent first, e.g. {"AUTH", "user", "password"}, that has to answer OK; none
  // when empty.
  std::vector<std::string> auth;
  // Deadline of the whole session: connect, TLS handshake, every command.
  std::chrono::milliseconds timeout = std::chrono::seconds(5);
};

// Returns the replies to `list`, sent pipelined on one fresh connection, in order. Throws
// std::runtime_error when the server cannot be reached, refuses `auth` ("AUTH failed: ..."),
// or has not answered by the deadline. Thread-safe.
//   send_commands(redis_endpoint{.port = 6379, .ca_file = {}, .auth = {}},
//                 {{"CLUSTER", "SLOTS"}}).front().elements  // one element a slot range
std::vector<redis_reply> send_commands(const redis_endpoint& to,
                                       const std::vector<std::vector<std::string>>& list);

// Returns `s` with every byte but A-Z a-z 0-9 - . _ ~ as %XX, for URIs: "s@t" -> "s%40t".
std::string percent_encode(const std::string& s);

// Makes throwaway TLS files in `dir` with the `openssl` command: ca.crt and ca.key, a test
// CA; server.crt and server.key, signed by it for IP:127.0.0.1 and DNS:localhost, usable
// for serverAuth and clientAuth (cluster nodes present it to each other); other_ca.crt, an
// unrelated CA for "wrong CA" tests. Throws std::runtime_error when openssl fails.
void make_test_tls_files(const std::filesystem::path& dir);

// What a fake_resp_server does with a connection.
enum class fake_resp_behaviour {
  reply_to_each_read,     // sends the reply after every read, until the client closes
  reply_once_then_close,  // sends the reply after the first read, then closes
  close_on_accept,        // closes at once, before reading anything
};

// A TCP server on 127.0.0.1:<free port> that answers with fixed bytes, e.g. malformed RESP
// ("*2\r\n$-5\r\nxx\r\n"), "+OK\r\n" to everything, or nothing at all (an empty reply: a
// server that accepts and never answers). One background thread serves every connection;
// the destructor stops and joins it. Replies are sent without blocking: bytes that do not
// fit the socket's buffer are dropped. Thread-safe.
class fake_resp_server {
 public:
  // Listens and starts serving; throws std::runtime_error when it cannot listen.
  explicit fake_resp_server(
      std::string reply, fake_resp_behaviour behaviour = fake_resp_behaviour::reply_to_each_read);
  ~fake_resp_server();
  fake_resp_server(const fake_resp_server&) = delete;
  fake_resp_server& operator=(const fake_resp_server&) = delete;

  std::uint16_t port() const { return port_; }
  // "redis://127.0.0.1:<port>".
  std::string uri() const;
  // Returns how many connections have been accepted so far.
  std::size_t connections() const { return connections_.load(); }
  // Returns every byte read from every client so far, in arrival order.
  std::string received() const;

 private:
  void serve();

  const std::string reply_;
  const fake_resp_behaviour behaviour_;
  int listen_fd_ = -1;
  int wake_read_fd_ = -1;
  int wake_write_fd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<std::size_t> connections_{0};
  mutable std::mutex mutex_;
  std::string received_;  // guarded by mutex_
  std::thread thread_;
};

// The result of run_process().
struct process_result {
  int exit_code = -1;      // the exit status; 128 + the signal when killed by one
  bool timed_out = false;  // killed (SIGKILL) at the deadline
  std::string out;         // stdout
  std::string err;         // stderr
};

// Runs `argv` (argv[0] is searched in PATH when it has no '/') with stdin from /dev/null,
// and returns its exit and output; kills it at `timeout`. Throws std::runtime_error when
// the program cannot be found or started.
//   run_process({"redis-cli", "-p", std::to_string(redis.port()), "ping"}).out  // "PONG\n"
process_result run_process(const std::vector<std::string>& argv,
                           std::chrono::milliseconds timeout = std::chrono::seconds(30));

// Returns why the reference limiter cannot be driven here, or "" when it can. It needs
// the reference directory (`$SLUICE_REFERENCE_DIR`, else the CMake cache variable
// SLUICE_REFERENCE_DIR, default <repo>/../shared/reference) with rate_limiter.py in it, and
// a Python with redis-py (`$SLUICE_REFERENCE_PYTHON`, default /usr/bin/python3).
//   if (auto why = sluice::test::reference_peer_unavailable(); !why.empty()) GTEST_SKIP() << why;
std::string reference_peer_unavailable();
// Runs tests/support/reference_peer.py with `--reference-dir <dir>` and `args`; see the
// script for its modes and output (one JSON object a line).
process_result run_reference_peer(const std::vector<std::string>& args,
                                  std::chrono::milliseconds timeout = std::chrono::seconds(60));

}  // namespace sluice::test
