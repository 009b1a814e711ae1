#include "support/redis_sentinel.h"

#include <stdexcept>
#include <thread>

namespace sluice::test {
namespace {

using std::chrono::milliseconds;
using steady_clock = std::chrono::steady_clock;

std::string conf_quoted(const std::string& s) { return "\"" + s + "\""; }

}  // namespace

redis_sentinel_group::redis_sentinel_group(redis_sentinel_group_options options)
    : options_(std::move(options)) {
  redis_server_options data;
  data.password = options_.password;
  servers_.push_back(std::make_unique<redis_server>(data));
  const std::string master = std::to_string(servers_.front()->port());
  for (int i = 0; i < options_.replicas; ++i) {
    redis_server_options replica = data;
    replica.extra_config.push_back("replicaof 127.0.0.1 " + master);
    if (!options_.password.empty()) {
      replica.extra_config.push_back("masterauth " + conf_quoted(options_.password));
    }
    servers_.push_back(std::make_unique<redis_server>(replica));
  }
  // Replicas in sync before the sentinels look, so that any of them can be promoted.
  const auto deadline = steady_clock::now() + std::chrono::seconds(15);
  const std::string want = "connected_slaves:" + std::to_string(options_.replicas);
  while (servers_.front()->command({"INFO", "replication"}).find(want) == std::string::npos) {
    if (steady_clock::now() > deadline) {
      throw std::runtime_error("redis_sentinel_group: replicas not in sync after 15 s:\n" +
                               servers_.front()->command({"INFO", "replication"}));
    }
    std::this_thread::sleep_for(milliseconds(20));  // polling, bounded by the deadline
  }

  const int quorum = options_.sentinels / 2 + 1;
  const std::string& name = options_.master_name;
  for (int i = 0; i < options_.sentinels; ++i) {
    redis_server_options s;
    s.sentinel = true;
    s.password = options_.sentinel_password;
    s.extra_config = {
        "sentinel monitor " + name + " 127.0.0.1 " + master + " " + std::to_string(quorum),
        "sentinel down-after-milliseconds " + name + " " +
            std::to_string(options_.down_after.count()),
        "sentinel failover-timeout " + name + " " +
            std::to_string(options_.failover_timeout.count()),
        "sentinel parallel-syncs " + name + " 1",
    };
    if (!options_.password.empty()) {
      s.extra_config.push_back("sentinel auth-pass " + name + " " + conf_quoted(options_.password));
    }
    if (!options_.sentinel_password.empty()) {
      s.extra_config.push_back("sentinel sentinel-pass " + conf_quoted(options_.sentinel_password));
    }
    sentinels_.push_back(std::make_unique<redis_server>(s));
  }
  // Every sentinel must know the others (hello messages, every 2 s) and the replicas.
  const auto agreed_by = steady_clock::now() + std::chrono::seconds(20);
  for (auto& s : sentinels_) {
    for (;;) {
      const std::string others = sentinel_command(*s, {"SENTINEL", "SENTINELS", name});
      const std::string replicas = sentinel_command(*s, {"SENTINEL", "REPLICAS", name});
      int seen_others = 0;
      int seen_replicas = 0;
      for (std::size_t at = 0; (at = others.find("runid", at)) != std::string::npos; ++at) {
        ++seen_others;
      }
      for (std::size_t at = 0; (at = replicas.find("runid", at)) != std::string::npos; ++at) {
        ++seen_replicas;
      }
      if (seen_others >= options_.sentinels - 1 && seen_replicas >= options_.replicas) break;
      if (steady_clock::now() > agreed_by) {
        throw std::runtime_error(
            "redis_sentinel_group: the sentinels did not find each other in 20 s; log:\n" +
            s->log_tail());
      }
      std::this_thread::sleep_for(milliseconds(50));  // polling, bounded by the deadline
    }
  }
}

redis_sentinel_group::~redis_sentinel_group() {
  sentinels_.clear();  // first, so that they start no failover while the servers go
  servers_.clear();
}

std::string redis_sentinel_group::uri() const {
  std::string out = "redis+sentinel://";
  for (std::size_t i = 0; i < sentinels_.size(); ++i) {
    out += (i == 0 ? "127.0.0.1:" : ",127.0.0.1:") + std::to_string(sentinels_[i]->port());
  }
  return out + "/" + options_.master_name;
}

std::string redis_sentinel_group::full_uri() const {
  std::string out = uri();
  if (!options_.password.empty()) {
    out.insert(std::string("redis+sentinel://").size(),
               ":" + percent_encode(options_.password) + "@");
  }
  if (!options_.sentinel_password.empty()) {
    out += "?sentinel_password=" + percent_encode(options_.sentinel_password);
  }
  return out;
}

redis_server& redis_sentinel_group::server(std::uint16_t port) {
  for (auto& s : servers_) {
    if (s->port() == port) return *s;
  }
  throw std::runtime_error("redis_sentinel_group: no server on port " + std::to_string(port));
}

std::vector<redis_server*> redis_sentinel_group::servers() {
  std::vector<redis_server*> out;
  for (auto& s : servers_) out.push_back(s.get());
  return out;
}

std::vector<redis_server*> redis_sentinel_group::sentinels() {
  std::vector<redis_server*> out;
  for (auto& s : sentinels_) out.push_back(s.get());
  return out;
}

std::string redis_sentinel_group::sentinel_command(redis_server& s,
                                                   const std::vector<std::string>& args) const {
  return s.command(args);
}

std::uint16_t redis_sentinel_group::master_port() const {
  for (const auto& s : sentinels_) {
    if (!s->running()) continue;
    const std::string r = s->command({"SENTINEL", "get-master-addr-by-name", options_.master_name});
    // "[127.0.0.1, 6380]"
    const std::size_t comma = r.find(", ");
    if (comma == std::string::npos) continue;
    return static_cast<std::uint16_t>(std::stoi(r.substr(comma + 2)));
  }
  throw std::runtime_error("redis_sentinel_group: no live sentinel names the master");
}

std::string redis_sentinel_group::command(std::uint16_t port,
                                          const std::vector<std::string>& args) const {
  for (const auto& s : servers_) {
    if (s->port() == port) return s->command(args);
  }
  throw std::runtime_error("redis_sentinel_group: no server on port " + std::to_string(port));
}

void redis_sentinel_group::failover() {
  for (auto& s : sentinels_) {
    if (!s->running()) continue;
    const std::string r = s->command({"SENTINEL", "FAILOVER", options_.master_name});
    if (r != "OK") throw std::runtime_error("redis_sentinel_group: SENTINEL FAILOVER: " + r);
    return;
  }
  throw std::runtime_error("redis_sentinel_group: no live sentinel");
}

std::uint16_t redis_sentinel_group::wait_for_new_master(std::uint16_t old_port,
                                                        std::chrono::milliseconds timeout) {
  const auto deadline = steady_clock::now() + timeout;
  std::string last = "nothing yet";
  for (;;) {
    try {
      std::uint16_t agreed = 0;
      bool all = true;
      for (auto& s : sentinels_) {
        if (!s->running()) continue;
        const std::string r =
            s->command({"SENTINEL", "get-master-addr-by-name", options_.master_name});
        last = r;
        const std::size_t comma = r.find(", ");
        const std::uint16_t port = comma == std::string::npos
                                       ? std::uint16_t{0}
                                       : static_cast<std::uint16_t>(std::stoi(r.substr(comma + 2)));
        if (port == 0 || port == old_port || (agreed != 0 && port != agreed)) all = false;
        agreed = port;
      }
      if (all && agreed != 0 && command(agreed, {"ROLE"}).starts_with("[master")) return agreed;
    } catch (const std::runtime_error& e) {
      last = e.what();
    }
    if (steady_clock::now() > deadline) {
      throw std::runtime_error("redis_sentinel_group: no new master after " +
                               std::to_string(timeout.count()) + " ms; last: " + last +
                               "; sentinel log:\n" + sentinels_.front()->log_tail(30));
    }
    std::this_thread::sleep_for(milliseconds(20));  // polling, bounded by the deadline
  }
}

void redis_sentinel_group::stop_sentinels() {
  for (auto& s : sentinels_) s->stop();
}

void redis_sentinel_group::start_sentinels() {
  for (auto& s : sentinels_) s->start();
}

}  // namespace sluice::test
