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
// (see parse_redis_uri for every Redis option). `c` is the memory store's clock and must
// outlive it; Redis stores use the server's clock. Fails with `errc::invalid_store_uri`
// naming the problem, or `errc::unsupported_store` for another scheme.
result<std::shared_ptr<store>> open_store(std::string_view uri, const clock& c = system_clock());

}  // namespace sluice
