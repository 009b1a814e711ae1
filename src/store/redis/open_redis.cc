// Registers the Redis schemes with open_store when sluice::redis is linked. The linker keeps
// this file because sluice::redis asks for `sluice_redis_stores` to be defined
// (`-u sluice_redis_stores`, an interface link option of the target): a static library's
// object that nothing references would otherwise be dropped, initialiser and all.
#include <memory>
#include <string_view>
#include <utility>

#include "sluice/open_store.h"
#include "sluice/redis_cluster_store.h"
#include "sluice/redis_sentinel_store.h"
#include "sluice/redis_store.h"
#include "store/registry.h"

namespace sluice {
namespace {

result<std::shared_ptr<store>> open_redis(std::string_view uri, const open_options& /*o*/) {
  auto options = parse_redis_uri(uri);
  if (!options) return fail(std::move(options).error());
  return std::shared_ptr<store>(std::make_shared<redis_store>(std::move(*options)));
}

result<std::shared_ptr<store>> open_cluster(std::string_view uri, const open_options& /*o*/) {
  auto options = parse_redis_cluster_uri(uri);
  if (!options) return fail(std::move(options).error());
  return std::shared_ptr<store>(std::make_shared<redis_cluster_store>(std::move(*options)));
}

result<std::shared_ptr<store>> open_sentinel(std::string_view uri, const open_options& /*o*/) {
  auto options = parse_redis_sentinel_uri(uri);
  if (!options) return fail(std::move(options).error());
  return std::shared_ptr<store>(std::make_shared<redis_sentinel_store>(std::move(*options)));
}

int register_redis_schemes() {
  for (const std::string_view scheme : {"redis", "rediss", "unix", "redis+unix"}) {
    internal::register_store_scheme(scheme, open_redis);
  }
  for (const std::string_view scheme : {"redis+cluster", "rediss+cluster"}) {
    internal::register_store_scheme(scheme, open_cluster);
  }
  for (const std::string_view scheme : {"redis+sentinel", "rediss+sentinel"}) {
    internal::register_store_scheme(scheme, open_sentinel);
  }
  return 1;
}

}  // namespace
}  // namespace sluice

// The anchor the linker is told to keep (see above); its initialiser registers the schemes.
extern "C" {
extern const int sluice_redis_stores;
const int sluice_redis_stores = sluice::register_redis_schemes();
}
