// A real Redis Cluster for tests: by default 3 masters and 3 replicas, each a redis-server
// on a free loopback port, started by scripts/redis-cluster.sh in a temporary directory and
// stopped (by pid) when the object goes. Tests kill, pause and reshard it to see a client
// follow failovers, MOVED and ASK.
//
//   sluice::test::redis_cluster cluster;                     // up, all slots served, ~2.5 s
//   const auto port = cluster.master_of_slot(cluster.keyslot("foo"));   // slot 12182
//   EXPECT_EQ(cluster.command(port, {"SET", "foo", "bar"}), "OK");
//   cluster.kill(port);
//   const auto promoted = cluster.wait_for_failover(port, std::chrono::seconds(20));
//
//   sluice::test::redis_cluster secured({.password = "s3cret", .tls = true});
//   auto o = sluice::parse_redis_cluster_uri(secured.full_uri());  // rediss+cluster://...
//
// Every ctest test that starts a cluster takes RESOURCE_LOCK redis_cluster, so that no two
// clusters run at once; the ports are picked so that two could anyway.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace sluice::test {

struct redis_reply;

// How a redis_cluster is made. The defaults give 3 masters with one replica each.
struct redis_cluster_options {
  // Masters, 3 or more (redis-cli --cluster create refuses fewer).
  int masters = 3;
  // Replicas of each master.
  int replicas = 1;
  // cluster-node-timeout: how long a node may be silent before it is failing; a failover
  // takes about two of these.
  std::chrono::milliseconds node_timeout = std::chrono::milliseconds(1000);
  // How long the start script may take before the constructor gives up.
  std::chrono::milliseconds start_timeout = std::chrono::seconds(90);
  // The password every node requires (requirepass; masterauth for the replicas); empty
  // for none. command() and the other calls authenticate with it.
  std::string password;
  // Serve TLS only, on every link (clients, cluster bus, replication), with a throwaway CA
  // and node certificate (IP:127.0.0.1) made by the `openssl` command. Clients need no
  // certificate.
  bool tls = false;
};

// A Redis Cluster on 127.0.0.1, all of whose servers are stopped by the destructor, or by a
// watcher process within a second of this process dying, so that a crashed test leaves no
// servers behind. The servers are children of this process (it is their subreaper while the
// start script runs), so kill() and the destructor reap them: their pids are free after.
// The servers have no persistence, `cluster-replica-validity-factor 0` (a replica always
// takes over, however stale), and DEBUG enabled.
//
// Note: CLUSTER SLOTS (Redis 7.0) leaves out replicas whose replication offset is still 0,
// i.e. until their master's first write or replication ping (every 10 s); CLUSTER NODES
// always lists them.
//
// Not thread-safe, except command(), slots(), keyslot() and master_of_slot(), which many
// threads may call at once while no node is being killed, paused or resumed.
class redis_cluster {
 public:
  // One server of the cluster.
  struct node {
    std::uint16_t port = 0;
    pid_t pid = 0;
    bool master = false;  // its role now (they change on failover)
    std::string id;       // the cluster node id (CLUSTER MYID); it never changes
    bool running = true;  // false once kill()ed; a paused node is running
  };
  // Slots [first, last] and who serves them, as one node sees it (CLUSTER SLOTS).
  struct slot_range {
    int first = 0;
    int last = 0;
    std::uint16_t master = 0;
    std::vector<std::uint16_t> replicas;
  };

  // Starts the cluster and waits until every node reports cluster_state:ok with all 16384
  // slots served by the same masters and every replica in sync. Throws std::runtime_error,
  // with the script's error and log lines, when it cannot.
  explicit redis_cluster(redis_cluster_options options = {});
  // Stops every server (SIGTERM; SIGKILL after 5 s), reaps them, removes the directory.
  ~redis_cluster();
  redis_cluster(const redis_cluster&) = delete;
  redis_cluster& operator=(const redis_cluster&) = delete;

  // Returns "redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,..." ("rediss+cluster://" with
  // `tls`) with the masters as they were at start, in slot order, without credentials.
  std::string uri() const;
  // uri() with the password (%-encoded) and, with `tls`, `?tls_ca=<ca_file()>`: what a
  // sluice store needs to reach the cluster.
  //   "rediss+cluster://:s%40cret@127.0.0.1:20001,127.0.0.1:20002,...?tls_ca=%2Ftmp%2F..."
  std::string full_uri() const;
  // The CA that signed the nodes' certificate, and an unrelated CA (for "wrong CA" tests).
  // Empty paths unless `tls`.
  std::filesystem::path ca_file() const;
  std::filesystem::path other_ca_file() const;
  const redis_cluster_options& options() const { return options_; }
  // Returns every node, masters at start first (in slot order), then their replicas. The
  // roles are read now: ROLE from each live node, CLUSTER NODES (as a live node sees it)
  // for nodes that are killed or paused.
  std::vector<node> nodes() const;
  // Returns the running nodes that are masters now, in the order of nodes().
  std::vector<node> masters() const;
  // The directory of the cluster: DIR/<port>/redis.log is each node's log.
  const std::filesystem::path& dir() const { return dir_; }
  // The pid of the process that stops the cluster when this process dies.
  pid_t watcher_pid() const { return watcher_pid_; }
  // The last `lines` lines of the log of the node on `port`.
  std::string log_tail(std::uint16_t port, std::size_t lines = 20) const;
  // scripts/redis-cluster.sh, which starts and stops the cluster (see its header).
  static std::filesystem::path script();

  // Returns the reply to one command sent to the node on `port`, as text, exactly like
  // redis_server::command(): "OK", "12182", "(nil)", "(error) MOVED 12182 127.0.0.1:20001",
  // "[a, b]". Authenticates and speaks TLS as the cluster requires. Throws
  // std::runtime_error when the node does not answer in 5 s.
  std::string command(std::uint16_t port, const std::vector<std::string>& args) const;
  // Returns the slot table as the node on `port` sees it, in slot order.
  std::vector<slot_range> slots(std::uint16_t port) const;
  // Returns the slot of `key` (CLUSTER KEYSLOT on a live node): keyslot("foo") == 12182.
  int keyslot(const std::string& key) const;
  // Returns the port of the master serving `slot`, as a live node sees it (CLUSTER SLOTS).
  std::uint16_t master_of_slot(int slot) const;

  // SIGKILL to the node on `port`, and waits until it is gone: a crash. It stays down.
  void kill(std::uint16_t port);
  // SIGSTOP / SIGCONT: a hung node, which the others declare failing after node_timeout.
  void pause(std::uint16_t port);
  void resume(std::uint16_t port);

  // Waits until every live node has another node serving the slots that the master on
  // `old_master_port` served (when it was killed or paused, or now) and reports
  // cluster_state:ok; returns the port of that node, a promoted replica. Throws
  // std::runtime_error at `timeout`, saying what it last saw.
  std::uint16_t wait_for_failover(std::uint16_t old_master_port, std::chrono::milliseconds timeout);
  // Returns true once every live node reports cluster_state:ok; false at `timeout`.
  bool wait_ok(std::chrono::milliseconds timeout) const;

  // Moves `slots` slots, with their keys, from one master to another (node ids):
  // `redis-cli --cluster reshard ... --cluster-slots <slots> --cluster-yes`, then waits until
  // every live node agrees. With one source, redis-cli moves the source's LOWEST-numbered
  // slots: --cluster-slots 1 moves exactly the smallest slot the source serves (seen with
  // Redis 7.0.15 and tested in RedisCluster.ReshardOneSlotMovesTheSourcesLowestSlot).
  // Throws std::runtime_error with redis-cli's output when it fails.
  void reshard(const std::string& from_id, const std::string& to_id, int slots);
  // Moves one `slot`, with its keys, from the master on `from_port` to the master on
  // `to_port` by hand: CLUSTER SETSLOT IMPORTING on the target, MIGRATING on the source,
  // CLUSTER GETKEYSINSLOT + MIGRATE ... KEYS in batches of `keys_per_batch`, then SETSLOT
  // NODE on the target, the source and every other live master; then waits until every
  // live node agrees. Throws std::runtime_error on any error reply.
  void move_slot(int slot, std::uint16_t from_port, std::uint16_t to_port, int keys_per_batch = 10);

 private:
  const node& static_node(std::uint16_t port) const;  // as at start; throws for no such port
  bool live(std::uint16_t port) const;                // not killed, not paused
  std::uint16_t any_live_port() const;
  std::vector<std::uint16_t> live_ports() const;
  std::vector<slot_range> ranges_of(std::uint16_t master_port) const;
  void wait_agreed(std::chrono::milliseconds timeout, const std::string& after) const;
  void run_script_stop() const;
  redis_reply ask(std::uint16_t port, const std::vector<std::string>& args) const;
  std::vector<std::string> cli_options() const;  // redis-cli's -a / --tls options

  redis_cluster_options options_;
  std::filesystem::path dir_;
  std::vector<node> nodes_;  // as at start
  std::vector<std::uint16_t> seeds_;
  pid_t watcher_pid_ = 0;
  std::set<std::uint16_t> killed_;
  std::set<std::uint16_t> paused_;
  // Slots each master served when it was killed or paused, for wait_for_failover().
  std::map<std::uint16_t, std::vector<slot_range>> served_before_;
};

}  // namespace sluice::test
