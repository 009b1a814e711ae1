// Opening a store from its URI. Part of sluice::redis, the library that knows every store.
#pragma once

#include <memory>
#include <string_view>

#include "sluice/clock.h"
#include "sluice/error.h"
#include "sluice/store.h"

namespace sluice {

// Returns a store for `uri`:
//   memory://[?shards=64&max_keys=10000000&max_key_length=1024]
//   redis://[user:password@]host[:port][/db][?timeout=50ms&pool=2&prefix=sluice...]
//   rediss://...  (TLS)   unix:///path/to/redis.sock[?db=0...]
//   redis+cluster://host:port[,host:port...][?...]   rediss+cluster://...  (TLS)
// (see parse_redis_uri and parse_redis_cluster_uri for every option). `c` is the memory
// store's clock and must outlive it; Redis stores use the server's clock. Fails with
// `errc::invalid_store_uri` naming the problem (an unknown scheme too).
result<std::shared_ptr<store>> open_store(std::string_view uri, const clock& c = system_clock());

}  // namespace sluice
