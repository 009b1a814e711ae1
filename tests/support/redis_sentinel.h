// A real Redis Sentinel set-up for tests: one master, its replicas and three sentinels
// monitoring it, each a redis_server (tests/support/redis_server.h) on a free loopback port
// in its own temporary directory, stopped by its pid (and killed with the thread that
// started it, PR_SET_PDEATHSIG). The sentinels are `redis-server CONF --sentinel`. Failovers
// are quick: `down-after-milliseconds` and `failover-timeout` are small.
//
//   sluice::test::redis_sentinel_group group;            // up, sentinels agreed, ~2 s
//   auto o = sluice::parse_redis_sentinel_uri(group.full_uri());
//   const auto old = group.master_port();
//   group.failover();                                    // SENTINEL FAILOVER
//   const auto promoted = group.wait_for_new_master(old, std::chrono::seconds(10));
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "support/redis_server.h"

namespace sluice::test {

struct redis_sentinel_group_options {
  int replicas = 1;
  int sentinels = 3;  // the quorum is a majority of them
  std::string master_name = "mymaster";
  // The master's and replicas' password (requirepass, masterauth); empty for none.
  std::string password;
  // The sentinels' own password (requirepass; sentinel-pass between them); empty for none.
  std::string sentinel_password;
  // How long a master may be silent before a sentinel thinks it down.
  std::chrono::milliseconds down_after{500};
  std::chrono::milliseconds failover_timeout{3000};
};

// Not thread-safe, except command() and master_port(), which many threads may call at once
// while no server is being started or stopped.
class redis_sentinel_group {
 public:
  // Starts the servers, then the sentinels, and waits until every sentinel knows every
  // replica and the other sentinels (so that a failover can happen at once). Throws
  // std::runtime_error when it cannot, with the logs' tails.
  explicit redis_sentinel_group(redis_sentinel_group_options options = {});
  ~redis_sentinel_group();
  redis_sentinel_group(const redis_sentinel_group&) = delete;
  redis_sentinel_group& operator=(const redis_sentinel_group&) = delete;

  // "redis+sentinel://127.0.0.1:<s1>,127.0.0.1:<s2>,127.0.0.1:<s3>/mymaster", no credentials.
  std::string uri() const;
  // uri() with the master's password and `?sentinel_password=`: what a store needs.
  std::string full_uri() const;
  const redis_sentinel_group_options& options() const { return options_; }

  // The data servers (the master at start first) and the sentinels.
  redis_server& server(std::uint16_t port);
  std::vector<redis_server*> servers();
  std::vector<redis_server*> sentinels();

  // Returns the port of the master that a live sentinel names now.
  std::uint16_t master_port() const;
  // Returns the reply to one command to the data server on `port`, as redis_server prints it.
  std::string command(std::uint16_t port, const std::vector<std::string>& args) const;
  // SENTINEL FAILOVER on the first live sentinel: a failover without agreement, at once.
  void failover();
  // Waits until every live sentinel names a master other than `old_port` and that server
  // says (ROLE) it is a master; returns its port. Throws std::runtime_error at `timeout`.
  std::uint16_t wait_for_new_master(std::uint16_t old_port, std::chrono::milliseconds timeout);

  void stop_sentinels();   // SIGTERM to every sentinel
  void start_sentinels();  // and up again, each with the config it rewrote

 private:
  std::string sentinel_command(redis_server& s, const std::vector<std::string>& args) const;

  redis_sentinel_group_options options_;
  std::vector<std::unique_ptr<redis_server>> servers_;
  std::vector<std::unique_ptr<redis_server>> sentinels_;
};

}  // namespace sluice::test
