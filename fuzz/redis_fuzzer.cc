// Fuzzes what the Redis stores parse: store URIs (redis://, redis+cluster://,
// redis+sentinel://), MOVED / ASK redirections, key slots, and RESP bytes from a server, read
// as script replies (one key's and multi-key) and as CLUSTER SLOTS replies. Any input gives a value
// or an error, never a crash, and every value keeps its invariants.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/redis_cluster_store.h"
#include "sluice/redis_sentinel_store.h"
#include "sluice/redis_store.h"
#include "store/redis/cluster.h"
#include "store/redis/connection.h"
#include "store/redis/resp.h"

namespace {

// Redis's hash-tag rule, written the plain way, to check key_slot against.
int slot_by_the_rule(std::string_view key) {
  std::string_view hashed = key;
  for (std::size_t open = 0; open < key.size(); ++open) {
    if (key[open] != '{') continue;
    for (std::size_t close = open + 1; close < key.size(); ++close) {
      if (key[close] != '}') continue;
      if (close > open + 1) hashed = key.substr(open + 1, close - open - 1);
      break;
    }
    break;
  }
  return sluice::redis::crc16(hashed) % 16384;
}

void check_uris(std::string_view text) {
  if (auto o = sluice::parse_redis_uri(text)) {
    if (o->unix_socket.empty() && (o->host.empty() || o->port == 0)) std::abort();
    if (o->pool < 1 || o->pool > 64 || o->timeout.count() <= 0) std::abort();
  } else if (o.error().message().empty()) {
    std::abort();
  }
  if (auto o = sluice::parse_redis_cluster_uri(text)) {
    if (o->seeds.empty() || o->seeds.size() > 64 || o->connection.db != 0) std::abort();
    for (const auto& seed : o->seeds) {
      if (seed.host.empty() || seed.port == 0) std::abort();
    }
    if (o->max_redirects < 0 || o->max_redirects > 16) std::abort();
  } else if (o.error().message().empty()) {
    std::abort();
  }
  if (auto o = sluice::parse_redis_sentinel_uri(text)) {
    if (o->sentinels.empty() || o->sentinels.size() > 64 || o->master_name.empty()) std::abort();
    for (const auto& sentinel : o->sentinels) {
      if (sentinel.host.empty() || sentinel.port == 0) std::abort();
    }
    if (o->master_name.find('/') != std::string::npos) std::abort();
    if (!o->sentinel_username.empty() && o->sentinel_password.empty()) std::abort();
    if (o->connection.pool < 1 || o->connection.timeout.count() <= 0) std::abort();
  } else if (o.error().message().empty()) {
    std::abort();
  }
}

void check_replies(std::string_view bytes) {
  sluice::redis::reader reader;
  reader.feed(bytes);
  for (int n = 0; n < 64; ++n) {
    auto next = reader.next();
    if (!next || !next->has_value()) return;
    const sluice::redis::reply& r = **next;
    for (const std::int64_t count : {1, 100}) {
      if (auto d = sluice::redis::to_decision(r, count)) {
        if (d->remaining < 0 || d->remaining > count || d->retry_after.count() < 0 ||
            d->reset_after.count() < 0 || d->limit != count) {
          std::abort();
        }
      }
    }
    for (const std::vector<std::int64_t>& counts :
         {std::vector<std::int64_t>{1}, std::vector<std::int64_t>{3, 100}}) {
      if (auto m = sluice::redis::to_multi_reply(r, counts)) {
        if (m->now_us < 0 || m->decisions.size() != counts.size()) std::abort();
        for (std::size_t i = 0; i < counts.size(); ++i) {
          const sluice::decision& d = m->decisions[i];
          if (d.remaining < 0 || d.remaining > counts[i] || d.retry_after.count() < 0 ||
              d.reset_after.count() < 0 || d.limit != counts[i]) {
            std::abort();
          }
        }
      }
    }
    if (auto ranges = sluice::redis::parse_cluster_slots(r, "asked")) {
      for (const auto& range : *ranges) {
        if (range.first < 0 || range.last > 16383 || range.first > range.last) std::abort();
        if (range.host.empty() || range.port == 0) std::abort();
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check_uris(text);
  if (auto r = sluice::redis::parse_redirect(text)) {
    if (r->slot < 0 || r->slot > 16383 || r->port == 0) std::abort();
  }
  if (sluice::redis::key_slot(text) != slot_by_the_rule(text)) std::abort();
  check_replies(text);
  return 0;
}
