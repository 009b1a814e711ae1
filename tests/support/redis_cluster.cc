#include "support/redis_cluster.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <tuple>
#include <utility>

#include "support/redis_server.h"

namespace sluice::test {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

[[noreturn]] void fail(const std::string& message) {
  throw std::runtime_error("redis_cluster: " + message);
}

std::string port_text(std::uint16_t port) { return "127.0.0.1:" + std::to_string(port); }

std::filesystem::path make_temp_dir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/sluice-cluster-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    fail("mkdtemp " + pattern + ": " + std::strerror(errno));
  }
  return pattern;
}

// Returns true when `pid` is a process that has not exited (a zombie has).
bool alive(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return false;
  const std::size_t end_of_name = stat.rfind(") ");
  return end_of_name != std::string::npos && end_of_name + 2 < stat.size() &&
         stat[end_of_name + 2] != 'Z';
}

// Waits up to `timeout` until `pid` is gone, and reaps it when it is our child. Returns
// false when it is still alive at `timeout`.
bool reap(pid_t pid, milliseconds timeout) {
  const auto deadline = steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return true;
    if (r < 0 && errno == ECHILD && !alive(pid)) return true;  // not ours to reap
    if (steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(5));  // bounded by the deadline
  }
}

// Returns the integer in a reply's text; throws when there is none.
long long integer(const redis_reply& reply, const std::string& what) {
  try {
    std::size_t used = 0;
    const long long n = std::stoll(reply.text, &used);
    if (!reply.array && used == reply.text.size()) return n;
  } catch (const std::logic_error&) {
  }
  fail(what + ": not an integer: " + printable(reply));
}

// Returns the CLUSTER NODES lines as <id, flags> pairs.
std::vector<std::pair<std::string, std::string>> node_flags(const std::string& cluster_nodes) {
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream lines(cluster_nodes);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream fields(line);
    std::string id, address, flags;
    if (fields >> id >> address >> flags) out.emplace_back(id, flags);
  }
  return out;
}

// Returns who serves `slot` in `view`; 0 when no one does.
std::uint16_t owner(const std::vector<redis_cluster::slot_range>& view, int slot) {
  for (const auto& r : view) {
    if (r.first <= slot && slot <= r.last) return r.master;
  }
  return 0;
}

bool state_ok(const std::string& cluster_info) {
  return cluster_info.find("cluster_state:ok") != std::string::npos;
}

}  // namespace

redis_cluster::redis_cluster(redis_cluster_options options)
    : options_(std::move(options)), dir_(make_temp_dir()) {
  if (options_.tls) {
    try {
      std::filesystem::create_directory(dir_ / "tls");
      make_test_tls_files(dir_ / "tls");
    } catch (...) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
      throw;
    }
  }
  std::vector<std::string> argv = {
      SLUICE_TEST_CLUSTER_SCRIPT,
      "start",
      dir_.string(),
      "--masters",
      std::to_string(options_.masters),
      "--replicas",
      std::to_string(options_.replicas),
      "--node-timeout",
      std::to_string(options_.node_timeout.count()),
      "--owner-pid",
      std::to_string(::getpid()),
  };
  if (!options_.password.empty()) argv.insert(argv.end(), {"--password", options_.password});
  if (options_.tls) argv.insert(argv.end(), {"--tls", (dir_ / "tls").string()});
  // The servers and the watcher outlive the script: as its orphans they come to this
  // process rather than to init, so that we reap them and their pids are free once stopped.
  int was_subreaper = 0;
  ::prctl(PR_GET_CHILD_SUBREAPER, &was_subreaper);
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  process_result started;
  std::string error;
  try {
    started = run_process(argv, options_.start_timeout);
  } catch (const std::runtime_error& e) {
    error = e.what();
  }
  ::prctl(PR_SET_CHILD_SUBREAPER, was_subreaper);
  try {
    if (!error.empty()) fail(error);
    if (started.timed_out || started.exit_code != 0) {
      fail(std::string(SLUICE_TEST_CLUSTER_SCRIPT) + " start " +
           (started.timed_out
                ? "timed out after " + std::to_string(options_.start_timeout.count()) + " ms"
                : "failed (exit " + std::to_string(started.exit_code) + ")") +
           ":\n" + started.err);
    }
    // The last line of stdout is the seed list, 127.0.0.1:<port>,...
    std::string out = started.out;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    std::istringstream seeds(
        out.substr(out.rfind('\n') == std::string::npos ? 0 : out.rfind('\n') + 1));
    for (std::string seed; std::getline(seeds, seed, ',');) {
      seeds_.push_back(static_cast<std::uint16_t>(std::stoi(seed.substr(seed.find(':') + 1))));
    }
    std::ifstream nodes(dir_ / "nodes");
    for (std::string line; std::getline(nodes, line);) {
      std::istringstream fields(line);
      node n;
      std::string role;
      if (!(fields >> n.port >> n.pid >> role >> n.id)) continue;
      n.master = role == "master";
      nodes_.push_back(n);
    }
    std::ifstream watcher(dir_ / "watcher.pid");
    watcher >> watcher_pid_;
    const std::size_t expected = static_cast<std::size_t>(options_.masters) *
                                 static_cast<std::size_t>(options_.replicas + 1);
    if (nodes_.size() != expected || seeds_.size() != static_cast<std::size_t>(options_.masters)) {
      fail("the start script left " + std::to_string(nodes_.size()) + " nodes and " +
           std::to_string(seeds_.size()) + " seeds, not " + std::to_string(expected) + " and " +
           std::to_string(options_.masters) + "; its output:\n" + started.out + started.err);
    }
  } catch (...) {
    // The script stops its servers when it fails, but not when it was killed at the deadline.
    run_script_stop();
    std::ifstream pids(dir_ / "pids");
    for (pid_t pid = 0; pids >> pid;) reap(pid, std::chrono::seconds(1));
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
    throw;
  }
}

redis_cluster::~redis_cluster() {
  run_script_stop();
  for (const node& n : nodes_) {
    if (killed_.count(n.port) != 0) continue;  // reaped already
    if (!reap(n.pid, std::chrono::seconds(10))) {
      ::kill(n.pid, SIGKILL);  // still our child (unreaped), so still the same process
      reap(n.pid, std::chrono::seconds(10));
    }
  }
  if (watcher_pid_ > 0) reap(watcher_pid_, std::chrono::seconds(5));
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

void redis_cluster::run_script_stop() const {
  // Its outcome does not matter: the destructor then reaps each server, and SIGKILLs any
  // that is still there.
  try {
    run_process({SLUICE_TEST_CLUSTER_SCRIPT, "stop", dir_.string()}, std::chrono::seconds(60));
  } catch (const std::runtime_error&) {
  }
}

std::filesystem::path redis_cluster::script() { return SLUICE_TEST_CLUSTER_SCRIPT; }

std::string redis_cluster::uri() const {
  std::string out = options_.tls ? "rediss+cluster://" : "redis+cluster://";
  for (std::size_t i = 0; i < seeds_.size(); ++i) {
    out += (i > 0 ? "," : "") + port_text(seeds_[i]);
  }
  return out;
}

std::string redis_cluster::full_uri() const {
  std::string out = uri();
  if (!options_.password.empty()) {
    const std::size_t hosts = out.find("://") + 3;
    out.insert(hosts, ":" + percent_encode(options_.password) + "@");
  }
  if (options_.tls) out += "?tls_ca=" + percent_encode(ca_file().string());
  return out;
}

std::filesystem::path redis_cluster::ca_file() const {
  return options_.tls ? dir_ / "tls" / "ca.crt" : std::filesystem::path();
}

std::filesystem::path redis_cluster::other_ca_file() const {
  return options_.tls ? dir_ / "tls" / "other_ca.crt" : std::filesystem::path();
}

std::vector<redis_cluster::node> redis_cluster::nodes() const {
  std::vector<node> out = nodes_;
  std::vector<std::pair<std::string, std::string>> view;  // <id, flags> of a live node
  for (node& n : out) {
    n.running = killed_.count(n.port) == 0;
    if (live(n.port)) {
      const redis_reply role = ask(n.port, {"ROLE"});
      if (!role.array || role.elements.empty()) {
        fail(port_text(n.port) + ": unexpected ROLE reply " + printable(role));
      }
      n.master = role.elements.front().text == "master";
      continue;
    }
    if (view.empty()) view = node_flags(command(any_live_port(), {"CLUSTER", "NODES"}));
    for (const auto& [id, flags] : view) {
      if (id == n.id) n.master = flags.find("master") != std::string::npos;
    }
  }
  return out;
}

std::vector<redis_cluster::node> redis_cluster::masters() const {
  std::vector<node> out;
  for (const node& n : nodes()) {
    if (n.master && n.running) out.push_back(n);
  }
  return out;
}

std::string redis_cluster::log_tail(std::uint16_t port, std::size_t lines) const {
  const std::filesystem::path log = dir_ / std::to_string(port) / "redis.log";
  return run_process({"tail", "-n", std::to_string(lines), log.string()}).out;
}

std::string redis_cluster::command(std::uint16_t port, const std::vector<std::string>& args) const {
  return printable(ask(port, args));
}

std::vector<redis_cluster::slot_range> redis_cluster::slots(std::uint16_t port) const {
  const redis_reply reply = ask(port, {"CLUSTER", "SLOTS"});
  const std::string what = port_text(port) + " CLUSTER SLOTS";
  if (!reply.array) fail(what + ": " + printable(reply));
  std::vector<slot_range> out;
  // Each range: [first, last, [ip, port, id, ...] of the master, [...] of each replica].
  for (const redis_reply& e : reply.elements) {
    if (!e.array || e.elements.size() < 3) fail(what + ": unexpected " + printable(e));
    slot_range r;
    r.first = static_cast<int>(integer(e.elements[0], what));
    r.last = static_cast<int>(integer(e.elements[1], what));
    for (std::size_t i = 2; i < e.elements.size(); ++i) {
      const redis_reply& server = e.elements[i];
      if (!server.array || server.elements.size() < 2) fail(what + ": unexpected " + printable(e));
      const auto p = static_cast<std::uint16_t>(integer(server.elements[1], what));
      if (i == 2) {
        r.master = p;
      } else {
        r.replicas.push_back(p);
      }
    }
    out.push_back(std::move(r));
  }
  std::sort(out.begin(), out.end(),
            [](const slot_range& a, const slot_range& b) { return a.first < b.first; });
  return out;
}

int redis_cluster::keyslot(const std::string& key) const {
  const std::uint16_t port = any_live_port();
  return static_cast<int>(
      integer(ask(port, {"CLUSTER", "KEYSLOT", key}), port_text(port) + " CLUSTER KEYSLOT"));
}

std::uint16_t redis_cluster::master_of_slot(int slot) const {
  const std::uint16_t port = any_live_port();
  const std::uint16_t master = owner(slots(port), slot);
  if (master == 0) fail(port_text(port) + " sees no master for slot " + std::to_string(slot));
  return master;
}

void redis_cluster::kill(std::uint16_t port) {
  const node& n = static_node(port);
  if (killed_.count(port) != 0) return;
  if (served_before_.count(port) == 0) served_before_[port] = ranges_of(port);
  ::kill(n.pid, SIGKILL);
  if (!reap(n.pid, std::chrono::seconds(10)))
    fail("pid " + std::to_string(n.pid) + " survived SIGKILL");
  killed_.insert(port);
  paused_.erase(port);
}

void redis_cluster::pause(std::uint16_t port) {
  const node& n = static_node(port);
  if (killed_.count(port) != 0 || paused_.count(port) != 0) return;
  served_before_[port] = ranges_of(port);
  ::kill(n.pid, SIGSTOP);
  paused_.insert(port);
}

void redis_cluster::resume(std::uint16_t port) {
  const node& n = static_node(port);
  if (paused_.count(port) == 0) return;
  ::kill(n.pid, SIGCONT);
  paused_.erase(port);
}

std::uint16_t redis_cluster::wait_for_failover(std::uint16_t old_master_port,
                                               milliseconds timeout) {
  static_node(old_master_port);
  const auto before = served_before_.find(old_master_port);
  const std::vector<slot_range> watched =
      before != served_before_.end() ? before->second : ranges_of(old_master_port);
  if (watched.empty()) fail(port_text(old_master_port) + " served no slots");
  const auto deadline = steady_clock::now() + timeout;
  std::string last = "nothing yet";
  for (;;) {
    try {
      std::uint16_t promoted = 0;
      bool done = true;
      for (const std::uint16_t p : live_ports()) {
        if (p == old_master_port) continue;
        if (!state_ok(command(p, {"CLUSTER", "INFO"}))) {
          last = port_text(p) + " reports cluster_state:fail";
          done = false;
          break;
        }
        // Every watched slot (the ends of each range will do) on one new master.
        const std::vector<slot_range> view = slots(p);
        for (const slot_range& r : watched) {
          for (const int slot : {r.first, r.last}) {
            const std::uint16_t o = owner(view, slot);
            if (done && (o == 0 || o == old_master_port || (promoted != 0 && o != promoted))) {
              last = port_text(p) + " has slot " + std::to_string(slot) + " on " +
                     (o == 0 ? std::string("no one") : port_text(o));
              done = false;
            }
            promoted = o;
          }
        }
        if (!done) break;
      }
      if (done && promoted != 0 && live(promoted)) {
        const redis_reply role = ask(promoted, {"ROLE"});
        if (role.array && !role.elements.empty() && role.elements.front().text == "master") {
          return promoted;
        }
        last = port_text(promoted) + " serves the slots but its ROLE is " + printable(role);
      }
    } catch (const std::runtime_error& e) {
      last = e.what();
    }
    if (steady_clock::now() >= deadline) {
      fail("no failover of " + port_text(old_master_port) + " within " +
           std::to_string(timeout.count()) + " ms; last seen: " + last);
    }
    std::this_thread::sleep_for(milliseconds(50));  // polling, bounded by the deadline
  }
}

bool redis_cluster::wait_ok(milliseconds timeout) const {
  const auto deadline = steady_clock::now() + timeout;
  for (;;) {
    bool ok = true;
    for (const std::uint16_t p : live_ports()) {
      try {
        ok = state_ok(command(p, {"CLUSTER", "INFO"}));
      } catch (const std::runtime_error&) {
        ok = false;
      }
      if (!ok) break;
    }
    if (ok) return true;
    if (steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(50));  // polling, bounded by the deadline
  }
}

void redis_cluster::reshard(const std::string& from_id, const std::string& to_id, int slots) {
  std::vector<std::string> argv = {"redis-cli"};
  for (std::string& o : cli_options()) argv.push_back(std::move(o));
  argv.insert(argv.end(),
              {"--cluster", "reshard", port_text(any_live_port()), "--cluster-from", from_id,
               "--cluster-to", to_id, "--cluster-slots", std::to_string(slots), "--cluster-yes"});
  const process_result r = run_process(argv, std::chrono::seconds(120));
  if (r.timed_out || r.exit_code != 0) {
    fail("redis-cli --cluster reshard " + from_id + " -> " + to_id + " (" + std::to_string(slots) +
         " slots) " + (r.timed_out ? "timed out" : "failed, exit " + std::to_string(r.exit_code)) +
         ":\n" + r.out + r.err);
  }
  wait_agreed(std::chrono::seconds(10), "resharding " + std::to_string(slots) + " slots");
}

void redis_cluster::move_slot(int slot, std::uint16_t from_port, std::uint16_t to_port,
                              int keys_per_batch) {
  const std::string s = std::to_string(slot);
  const std::string& from_id = static_node(from_port).id;
  const std::string& to_id = static_node(to_port).id;
  auto expect_ok = [&](std::uint16_t port, const std::vector<std::string>& args) {
    const std::string reply = command(port, args);
    if (reply != "OK") {
      std::string shown;
      for (const std::string& a : args) shown += " " + a;
      fail(port_text(port) + shown + ": " + reply);
    }
  };
  expect_ok(to_port, {"CLUSTER", "SETSLOT", s, "IMPORTING", from_id});
  expect_ok(from_port, {"CLUSTER", "SETSLOT", s, "MIGRATING", to_id});
  for (;;) {
    const redis_reply keys =
        ask(from_port, {"CLUSTER", "GETKEYSINSLOT", s, std::to_string(keys_per_batch)});
    if (!keys.array) fail(port_text(from_port) + " CLUSTER GETKEYSINSLOT: " + printable(keys));
    if (keys.elements.empty()) break;
    std::vector<std::string> migrate = {"MIGRATE", "127.0.0.1", std::to_string(to_port),
                                        "",        "0",         "5000"};
    if (!options_.password.empty()) migrate.insert(migrate.end(), {"AUTH", options_.password});
    migrate.push_back("KEYS");
    for (const redis_reply& k : keys.elements) migrate.push_back(k.text);
    // NOKEY: the keys expired or went meanwhile; the loop asks again.
    if (const std::string reply = command(from_port, migrate); reply != "OK" && reply != "NOKEY") {
      fail(port_text(from_port) + " MIGRATE of slot " + s + ": " + reply);
    }
  }
  // The target first, so that it serves the slot before the source stops redirecting ASK.
  expect_ok(to_port, {"CLUSTER", "SETSLOT", s, "NODE", to_id});
  expect_ok(from_port, {"CLUSTER", "SETSLOT", s, "NODE", to_id});
  for (const node& m : masters()) {
    if (m.port != to_port && m.port != from_port && live(m.port)) {
      expect_ok(m.port, {"CLUSTER", "SETSLOT", s, "NODE", to_id});
    }
  }
  wait_agreed(std::chrono::seconds(10), "moving slot " + s);
}

redis_reply redis_cluster::ask(std::uint16_t port, const std::vector<std::string>& args) const {
  redis_endpoint to;
  to.port = port;
  to.ca_file = ca_file();
  if (!options_.password.empty()) to.auth = {"AUTH", options_.password};
  try {
    return send_commands(to, {args}).front();
  } catch (const std::runtime_error& e) {
    fail("node " + port_text(port) + ": " + e.what());
  }
}

std::vector<std::string> redis_cluster::cli_options() const {
  std::vector<std::string> out;
  if (!options_.password.empty()) out = {"-a", options_.password, "--no-auth-warning"};
  if (options_.tls) out.insert(out.end(), {"--tls", "--cacert", ca_file().string()});
  return out;
}

const redis_cluster::node& redis_cluster::static_node(std::uint16_t port) const {
  for (const node& n : nodes_) {
    if (n.port == port) return n;
  }
  fail("no node on port " + std::to_string(port));
}

bool redis_cluster::live(std::uint16_t port) const {
  return killed_.count(port) == 0 && paused_.count(port) == 0;
}

std::vector<std::uint16_t> redis_cluster::live_ports() const {
  std::vector<std::uint16_t> out;
  for (const node& n : nodes_) {
    if (live(n.port)) out.push_back(n.port);
  }
  return out;
}

std::uint16_t redis_cluster::any_live_port() const {
  const std::vector<std::uint16_t> ports = live_ports();
  if (ports.empty()) fail("no live node left");
  return ports.front();
}

std::vector<redis_cluster::slot_range> redis_cluster::ranges_of(std::uint16_t master_port) const {
  std::vector<slot_range> out;
  for (const std::uint16_t p : live_ports()) {
    if (p == master_port) continue;  // ask a node that will still answer after a kill
    for (slot_range& r : slots(p)) {
      if (r.master == master_port) out.push_back(std::move(r));
    }
    return out;
  }
  return out;
}

// Waits until every live node reports cluster_state:ok and the same master for every slot.
void redis_cluster::wait_agreed(milliseconds timeout, const std::string& after) const {
  const auto deadline = steady_clock::now() + timeout;
  std::string last = "nothing yet";
  for (;;) {
    try {
      std::vector<std::tuple<int, int, std::uint16_t>> first_view;
      bool agreed = true;
      for (const std::uint16_t p : live_ports()) {
        if (!state_ok(command(p, {"CLUSTER", "INFO"}))) {
          last = port_text(p) + " reports cluster_state:fail";
          agreed = false;
          break;
        }
        std::vector<std::tuple<int, int, std::uint16_t>> view;
        for (const slot_range& r : slots(p)) view.emplace_back(r.first, r.last, r.master);
        if (first_view.empty()) {
          first_view = view;
        } else if (view != first_view) {
          last = port_text(p) + " sees other masters than " + port_text(live_ports().front());
          agreed = false;
          break;
        }
      }
      if (agreed) return;
    } catch (const std::runtime_error& e) {
      last = e.what();
    }
    if (steady_clock::now() >= deadline) {
      fail("the nodes do not agree on the slots " + std::to_string(timeout.count()) + " ms after " +
           after + "; last seen: " + last);
    }
    std::this_thread::sleep_for(milliseconds(50));  // polling, bounded by the deadline
  }
}

}  // namespace sluice::test
