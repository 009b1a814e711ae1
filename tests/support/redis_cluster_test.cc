// Tests of the Redis Cluster fixture (scripts/redis-cluster.sh and redis_cluster): a real
// 3-master / 3-replica cluster comes up whole, routes keys, stops exactly its own servers,
// fails over, moves slots by hand and with redis-cli, and can require a password and TLS.
#include "support/redis_cluster.h"

#include <errno.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/redis_server.h"

namespace {

using sluice::test::process_result;
using sluice::test::redis_cluster;
using sluice::test::redis_cluster_options;
using sluice::test::run_process;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Returns true when `pid` has exited, zombie or reaped (for processes that are not ours).
bool exited(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return true;
  const std::size_t end_of_name = stat.rfind(") ");
  return end_of_name != std::string::npos && stat.substr(end_of_name + 2, 1) == "Z";
}

std::set<std::uint16_t> ports(const std::vector<redis_cluster::node>& nodes) {
  std::set<std::uint16_t> out;
  for (const auto& n : nodes) out.insert(n.port);
  return out;
}

// Returns the port of the replica that follows the master on `master_port`; 0 for none.
std::uint16_t replica_of(const redis_cluster& cluster, std::uint16_t master_port) {
  for (const auto& n : cluster.nodes()) {
    if (!n.master &&
        cluster.command(n.port, {"INFO", "replication"})
                .find("master_port:" + std::to_string(master_port) + "\r\n") != std::string::npos) {
      return n.port;
    }
  }
  return 0;
}

// Verifies that the cluster comes up whole: 3 masters with a replica each, and every node
// sees the same 3 masters over all 16384 slots.
TEST(RedisCluster, StartsThreeMastersAndThreeReplicasOverAllSlots) {
  const auto started = std::chrono::steady_clock::now();
  redis_cluster cluster;
  RecordProperty("start_ms", static_cast<int>(std::chrono::duration_cast<milliseconds>(
                                                  std::chrono::steady_clock::now() - started)
                                                  .count()));
  const auto nodes = cluster.nodes();
  ASSERT_EQ(nodes.size(), 6u);
  const auto masters = cluster.masters();
  ASSERT_EQ(masters.size(), 3u);
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    EXPECT_EQ(nodes[i].master, i < 3) << "masters first, then replicas";
    EXPECT_TRUE(nodes[i].running);
    EXPECT_EQ(::kill(nodes[i].pid, 0), 0);
    EXPECT_EQ(nodes[i].id.size(), 40u);
    EXPECT_EQ(cluster.command(nodes[i].port, {"CLUSTER", "MYID"}), nodes[i].id);
    EXPECT_EQ(replica_of(cluster, nodes[i].port) != 0, nodes[i].master);
  }
  EXPECT_EQ(cluster.uri(), "redis+cluster://127.0.0.1:" + std::to_string(masters[0].port) +
                               ",127.0.0.1:" + std::to_string(masters[1].port) +
                               ",127.0.0.1:" + std::to_string(masters[2].port));
  for (const auto& n : nodes) {
    const auto view = cluster.slots(n.port);
    int next = 0;
    std::set<std::uint16_t> serving;
    for (const auto& r : view) {
      EXPECT_EQ(r.first, next) << "seen from " << n.port;
      next = r.last + 1;
      serving.insert(r.master);
    }
    EXPECT_EQ(next, 16384) << "seen from " << n.port;
    EXPECT_EQ(serving, ports(masters)) << "seen from " << n.port;
    EXPECT_NE(cluster.command(n.port, {"CLUSTER", "INFO"}).find("cluster_state:ok"),
              std::string::npos);
  }
  EXPECT_TRUE(cluster.wait_ok(seconds(1)));
}

// Verifies that keys hash as Redis says and can be written and read on the master that
// owns their slot, while the other masters redirect with MOVED.
TEST(RedisCluster, KeyslotRoutesSetGetToTheOwningMaster) {
  redis_cluster cluster;
  ASSERT_EQ(cluster.keyslot("foo"), 12182);
  ASSERT_EQ(cluster.keyslot("{foo}:bar"), 12182);
  const std::uint16_t owner = cluster.master_of_slot(12182);
  EXPECT_EQ(cluster.command(owner, {"SET", "foo", "bar"}), "OK");
  EXPECT_EQ(cluster.command(owner, {"GET", "foo"}), "bar");
  for (const auto& m : cluster.masters()) {
    if (m.port == owner) continue;
    EXPECT_EQ(cluster.command(m.port, {"GET", "foo"}),
              "(error) MOVED 12182 127.0.0.1:" + std::to_string(owner));
  }
}

// Verifies that the destructor stops exactly the servers (and the watcher) it started, reaps
// them, and removes the directory.
TEST(RedisCluster, DestructorStopsExactlyItsServers) {
  std::vector<pid_t> pids;
  std::filesystem::path dir;
  {
    redis_cluster cluster;
    dir = cluster.dir();
    for (const auto& n : cluster.nodes()) pids.push_back(n.pid);
    pids.push_back(cluster.watcher_pid());
    std::ifstream listed(dir / "pids");
    std::vector<pid_t> in_file;
    for (pid_t p = 0; listed >> p;) in_file.push_back(p);
    std::vector<pid_t> servers(pids.begin(), pids.end() - 1);
    std::sort(in_file.begin(), in_file.end());
    std::sort(servers.begin(), servers.end());
    EXPECT_EQ(in_file, servers);
    for (const pid_t p : pids) ASSERT_EQ(::kill(p, 0), 0) << p;
  }
  for (const pid_t p : pids) {
    EXPECT_EQ(::kill(p, 0), -1) << "pid " << p << " is still there";
    EXPECT_EQ(errno, ESRCH);
  }
  EXPECT_FALSE(std::filesystem::exists(dir));
}

// Verifies that a killed master's replica takes over its slots, with the data it had, and
// that the cluster is whole again.
TEST(RedisCluster, KilledMasterFailsOverToItsReplica) {
  redis_cluster cluster;
  const std::uint16_t victim = cluster.master_of_slot(cluster.keyslot("foo"));
  const std::uint16_t replica = replica_of(cluster, victim);
  ASSERT_NE(replica, 0);
  ASSERT_EQ(cluster.command(victim, {"SET", "foo", "bar"}), "OK");
  ASSERT_EQ(cluster.command(victim, {"WAIT", "1", "5000"}), "1");  // replicated

  const auto killed_at = std::chrono::steady_clock::now();
  cluster.kill(victim);
  const std::uint16_t promoted = cluster.wait_for_failover(victim, seconds(20));
  RecordProperty("failover_ms", static_cast<int>(std::chrono::duration_cast<milliseconds>(
                                                     std::chrono::steady_clock::now() - killed_at)
                                                     .count()));
  EXPECT_EQ(promoted, replica);
  EXPECT_TRUE(cluster.wait_ok(seconds(10)));
  EXPECT_EQ(cluster.master_of_slot(12182), promoted);
  EXPECT_EQ(cluster.command(promoted, {"GET", "foo"}), "bar");
  EXPECT_EQ(cluster.command(promoted, {"SET", "foo", "baz"}), "OK");

  const auto masters = ports(cluster.masters());
  EXPECT_EQ(masters.size(), 3u);
  EXPECT_EQ(masters.count(promoted), 1u);
  EXPECT_EQ(masters.count(victim), 0u);
  for (const auto& n : cluster.nodes()) {
    EXPECT_EQ(n.running, n.port != victim) << n.port;
  }
}

// Verifies that a paused (hung) master is failed over too, and rejoins as a replica of the
// node that took its place once resumed.
TEST(RedisCluster, PausedMasterFailsOverAndRejoinsAsReplica) {
  redis_cluster cluster;
  const std::uint16_t victim = cluster.masters().front().port;
  const std::uint16_t replica = replica_of(cluster, victim);
  cluster.pause(victim);
  EXPECT_EQ(cluster.wait_for_failover(victim, seconds(20)), replica);
  cluster.resume(victim);
  const auto deadline = std::chrono::steady_clock::now() + seconds(15);
  std::string role;
  while (std::chrono::steady_clock::now() < deadline) {
    role = cluster.command(victim, {"ROLE"});
    if (role.rfind("[slave, 127.0.0.1, " + std::to_string(replica) + ",", 0) == 0) break;
    std::this_thread::sleep_for(milliseconds(50));  // polling, bounded by the deadline
  }
  EXPECT_EQ(role.rfind("[slave, 127.0.0.1, " + std::to_string(replica) + ",", 0), 0u) << role;
  EXPECT_TRUE(cluster.wait_ok(seconds(10)));
  EXPECT_EQ(cluster.masters().size(), 3u);
}

// Verifies that move_slot moves one slot with all its keys (in several MIGRATE batches) and
// that every node then routes the slot to the new master.
TEST(RedisCluster, MoveSlotMovesTheSlotWithItsKeys) {
  redis_cluster cluster;
  const int slot = cluster.keyslot("{foo}:0");
  const std::uint16_t from = cluster.master_of_slot(slot);
  std::uint16_t to = 0;
  for (const auto& m : cluster.masters()) {
    if (m.port != from) to = m.port;
  }
  constexpr int keys = 25;
  for (int i = 0; i < keys; ++i) {
    const std::string key = "{foo}:" + std::to_string(i);
    ASSERT_EQ(cluster.command(from, {"SET", key, "v" + std::to_string(i)}), "OK");
  }
  cluster.move_slot(slot, from, to, 10);

  EXPECT_EQ(cluster.master_of_slot(slot), to);
  for (const auto& n : cluster.nodes()) {
    EXPECT_EQ(cluster.slots(n.port).size(), 5u) << "one range split in three, seen from " << n.port;
  }
  EXPECT_EQ(cluster.command(to, {"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)}),
            std::to_string(keys));
  EXPECT_EQ(cluster.command(from, {"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)}), "0");
  for (int i = 0; i < keys; ++i) {
    EXPECT_EQ(cluster.command(to, {"GET", "{foo}:" + std::to_string(i)}), "v" + std::to_string(i));
  }
  EXPECT_EQ(cluster.command(from, {"GET", "{foo}:0"}),
            "(error) MOVED " + std::to_string(slot) + " 127.0.0.1:" + std::to_string(to));
  EXPECT_TRUE(cluster.wait_ok(seconds(5)));
}

// Verifies what tests may rely on: `redis-cli --cluster reshard --cluster-slots 1` from one
// source moves the source's lowest-numbered slot, each time.
TEST(RedisCluster, ReshardOneSlotMovesTheSourcesLowestSlot) {
  redis_cluster cluster;
  const auto masters = cluster.masters();
  const auto& from = masters[1];  // serves 5461-10922
  const auto& to = masters[2];
  const auto lowest = [&] {
    int out = 16384;
    for (const auto& r : cluster.slots(from.port)) {
      if (r.master == from.port) out = std::min(out, r.first);
    }
    return out;
  };
  const int first = lowest();
  ASSERT_EQ(first, 5461);
  cluster.reshard(from.id, to.id, 1);
  EXPECT_EQ(cluster.master_of_slot(first), to.port);
  EXPECT_EQ(cluster.master_of_slot(first + 1), from.port);
  EXPECT_EQ(lowest(), first + 1);
  cluster.reshard(from.id, to.id, 1);
  EXPECT_EQ(cluster.master_of_slot(first + 1), to.port);
  EXPECT_EQ(lowest(), first + 2);
  // Back again: the lowest slot of the target is 5461 now, below its 10923-16383.
  cluster.reshard(to.id, from.id, 1);
  EXPECT_EQ(cluster.master_of_slot(first), from.port);
  EXPECT_TRUE(cluster.wait_ok(seconds(5)));
}

// Verifies that a cluster whose owner process dies is stopped by the script's watcher.
TEST(RedisCluster, ScriptWatcherStopsTheClusterWhenItsOwnerDies) {
  const process_result owner = run_process({"bash", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"});
  const pid_t owner_pid = std::stoi(owner.out);
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    ("sluice-cluster-owner-" + std::to_string(::getpid()));
  const process_result started =
      run_process({redis_cluster::script().string(), "start", dir.string(), "--replicas", "0",
                   "--owner-pid", std::to_string(owner_pid)},
                  seconds(90));
  ASSERT_EQ(started.exit_code, 0) << started.err;
  std::vector<pid_t> pids;
  std::ifstream listed(dir / "pids");
  for (pid_t p = 0; listed >> p;) pids.push_back(p);
  ASSERT_EQ(pids.size(), 3u);
  for (const pid_t p : pids) EXPECT_FALSE(exited(p));

  ::kill(owner_pid, SIGKILL);
  const auto deadline = std::chrono::steady_clock::now() + seconds(15);
  bool all_gone = false;
  while (!all_gone && std::chrono::steady_clock::now() < deadline) {
    all_gone = std::all_of(pids.begin(), pids.end(), exited);
    std::this_thread::sleep_for(milliseconds(50));  // polling, bounded by the deadline
  }
  EXPECT_TRUE(all_gone);
  run_process({redis_cluster::script().string(), "stop", dir.string()});
  std::filesystem::remove_all(dir);
}

// Verifies that a cluster that cannot be made fails at once with the script's reason.
TEST(RedisCluster, BadOptionsFailWithTheReason) {
  redis_cluster_options options;
  options.masters = 2;
  try {
    redis_cluster cluster(options);
    FAIL() << "a 2-master cluster started";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("--masters must be 3 or more"), std::string::npos)
        << e.what();
  }
}

// Verifies that a cluster with a password refuses clients that do not give it, while
// command(), move_slot() (MIGRATE ... AUTH) and reshard() (redis-cli -a) authenticate, and
// that full_uri() carries the password %-encoded.
TEST(RedisCluster, PasswordIsRequiredOnEveryNode) {
  redis_cluster_options options;
  options.password = "s3cret:@/% \"x";
  redis_cluster cluster(options);
  EXPECT_EQ(cluster.uri().rfind("redis+cluster://127.0.0.1:", 0), 0u) << cluster.uri();
  EXPECT_EQ(cluster.full_uri(), "redis+cluster://:s3cret%3A%40%2F%25%20%22x@" +
                                    cluster.uri().substr(std::string("redis+cluster://").size()));
  EXPECT_TRUE(cluster.ca_file().empty());
  for (const auto& n : cluster.nodes()) {
    EXPECT_EQ(cluster.command(n.port, {"PING"}), "PONG") << n.port;
    sluice::test::redis_endpoint anonymous;
    anonymous.port = n.port;
    EXPECT_EQ(sluice::test::printable(send_commands(anonymous, {{"PING"}}).front()),
              "(error) NOAUTH Authentication required.")
        << n.port;
  }
  // The replicas reached their masters with masterauth: the script waits for them in sync.
  const std::uint16_t from = cluster.master_of_slot(cluster.keyslot("{foo}:0"));
  std::uint16_t to = 0;
  for (const auto& m : cluster.masters()) {
    if (m.port != from) to = m.port;
  }
  ASSERT_EQ(cluster.command(from, {"SET", "{foo}:0", "v"}), "OK");
  cluster.move_slot(cluster.keyslot("{foo}:0"), from, to);
  EXPECT_EQ(cluster.command(to, {"GET", "{foo}:0"}), "v");
  const auto masters = cluster.masters();
  cluster.reshard(masters[1].id, masters[2].id, 1);
  EXPECT_EQ(cluster.master_of_slot(5461), masters[2].port);
  EXPECT_TRUE(cluster.wait_ok(seconds(5)));
}

// Verifies that a TLS cluster serves TLS only, on every node (replicas included, replicating
// over TLS), that CLUSTER SLOTS gives the TLS ports, and that command(), move_slot() and
// reshard() speak TLS; with a password on top.
TEST(RedisCluster, TlsOnEveryNode) {
  redis_cluster_options options;
  options.tls = true;
  options.password = "s3cret";
  redis_cluster cluster(options);
  ASSERT_TRUE(std::filesystem::exists(cluster.ca_file()));
  ASSERT_TRUE(std::filesystem::exists(cluster.other_ca_file()));
  const std::string hosts = cluster.uri().substr(std::string("rediss+cluster://").size());
  EXPECT_EQ(cluster.uri(), "rediss+cluster://" + hosts);
  EXPECT_EQ(cluster.full_uri(), "rediss+cluster://:s3cret@" + hosts + "?tls_ca=" +
                                    sluice::test::percent_encode(cluster.ca_file().string()));
  const auto nodes = cluster.nodes();
  ASSERT_EQ(nodes.size(), 6u);
  for (const auto& n : nodes) {
    EXPECT_EQ(cluster.command(n.port, {"CONFIG", "GET", "port"}), "[port, 0]") << n.port;
    EXPECT_EQ(cluster.command(n.port, {"CONFIG", "GET", "tls-cluster"}), "[tls-cluster, yes]");
    sluice::test::redis_endpoint plain;
    plain.port = n.port;
    plain.auth = {"AUTH", "s3cret"};
    plain.timeout = seconds(2);
    EXPECT_THROW(send_commands(plain, {{"PING"}}), std::runtime_error) << n.port;
    sluice::test::redis_endpoint wrong_ca = plain;
    wrong_ca.ca_file = cluster.other_ca_file();
    EXPECT_THROW(send_commands(wrong_ca, {{"PING"}}), std::runtime_error) << n.port;
    if (!n.master) {
      EXPECT_NE(cluster.command(n.port, {"INFO", "replication"}).find("master_link_status:up"),
                std::string::npos)
          << n.port;
    }
  }
  std::set<std::uint16_t> serving;
  for (const auto& r : cluster.slots(nodes[0].port)) serving.insert(r.master);
  EXPECT_EQ(serving, ports(cluster.masters()));
  const std::uint16_t from = cluster.master_of_slot(cluster.keyslot("{foo}:0"));
  std::uint16_t to = 0;
  for (const auto& m : cluster.masters()) {
    if (m.port != from) to = m.port;
  }
  ASSERT_EQ(cluster.command(from, {"SET", "{foo}:0", "v"}), "OK");
  cluster.move_slot(cluster.keyslot("{foo}:0"), from, to);
  EXPECT_EQ(cluster.command(to, {"GET", "{foo}:0"}), "v");
  const auto masters = cluster.masters();
  cluster.reshard(masters[1].id, masters[2].id, 1);
  EXPECT_EQ(cluster.master_of_slot(5461), masters[2].port);
  EXPECT_TRUE(cluster.wait_ok(seconds(5)));
}

}  // namespace
