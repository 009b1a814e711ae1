// Opening a store from its URI: the stores a program is linked with, by scheme.
// sluice::core opens `memory://`; linking sluice::redis adds `redis://`, `rediss://`,
// `unix://`, `redis+cluster://` and `redis+sentinel://` (docs/DESIGN.md, "Packaging").
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string_view>

#include "sluice/clock.h"
#include "sluice/error.h"
#include "sluice/store.h"

namespace sluice {

// What the program asks of any store it opens, beside what the URI says.
struct open_options {
  // The memory store's clock; must outlive it. Redis stores use the server's clock.
  const clock* time_source = &system_clock();
  // The longest key the program will pass, in bytes, for stores whose limit is an option
  // (memory://'s max_key_length); 0 keeps the store's default. A limit in the URI wins.
  std::size_t max_key_length = 0;
  // Receives the memory store's warnings (memory_store_options::warn); may be empty.
  std::function<void(std::string_view)> warn{};
};

// Returns a store for `uri`:
//   memory://[?shards=64&max_keys=10000000&max_key_length=1024]       (sluice::core)
//     [&snapshot=PATH&snapshot_interval=10s&snapshot_on_error=fail]
//   redis://[user:password@]host[:port][/db][?timeout=50ms&pool=2...]  (sluice::redis)
//   rediss://...  (TLS)   unix:///path/to/redis.sock[?db=0...]
//   redis+cluster://host:port[,host:port...][?...]   rediss+cluster://...  (TLS)
//   redis+sentinel://host:port[,host:port...]/MASTER_NAME[?...]   rediss+sentinel://...
// (see parse_memory_uri, parse_redis_uri, parse_redis_cluster_uri and
// parse_redis_sentinel_uri for every option).
// Fails with `errc::invalid_store_uri` naming the problem (an unknown scheme too), or
// `errc::unsupported_store` for a Redis scheme in a program linked without sluice::redis,
// or a memory store's snapshot error (memory_store::open).
result<std::shared_ptr<store>> open_store(std::string_view uri, const open_options& options = {});
// The same with the memory store's clock `c`.
result<std::shared_ptr<store>> open_store(std::string_view uri, const clock& c);

}  // namespace sluice
