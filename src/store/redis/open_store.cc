#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "sluice/memory_store.h"
#include "sluice/open_store.h"
#include "sluice/redis_cluster_store.h"
#include "sluice/redis_store.h"
#include "store/redis/query.h"

namespace sluice {
namespace {

error bad_uri(std::string_view uri, const std::string& problem) {
  return make_error(errc::invalid_store_uri,
                    "store \"" + std::string(uri.substr(0, 200)) + "\": " + problem);
}

result<std::shared_ptr<store>> open_memory(std::string_view uri, std::string_view query,
                                           const clock& c) {
  memory_store_options options;
  options.time_source = &c;
  auto params = internal::split_query(query);
  if (!params) return bad_uri(uri, params.error().detail);
  for (const auto& [name, value] : *params) {
    std::size_t n = 0;
    if (!internal::parse_number(value, n)) {
      return bad_uri(uri, "parameter \"" + std::string(name) + "\" must be a whole number");
    }
    if (name == "shards") {
      if (n < 1 || n > 4096) return bad_uri(uri, "shards must be between 1 and 4096");
      options.shards = n;
    } else if (name == "max_keys") {
      options.max_keys = n;
    } else if (name == "max_key_length") {
      if (n < 1 || n > 65535) return bad_uri(uri, "max_key_length must be between 1 and 65535");
      options.max_key_length = n;
    } else {
      return bad_uri(uri, "unknown parameter \"" + std::string(name) +
                              "\" (memory:// takes shards, max_keys, max_key_length)");
    }
  }
  return std::shared_ptr<store>(std::make_shared<memory_store>(options));
}

}  // namespace

result<std::shared_ptr<store>> open_store(std::string_view uri, const clock& c) {
  const std::size_t colon = uri.find("://");
  if (colon == std::string_view::npos) {
    return bad_uri(uri, "expected SCHEME://..., e.g. memory:// or redis://host:6379");
  }
  const std::string_view scheme = uri.substr(0, colon);
  std::string_view rest = uri.substr(colon + 3);
  if (scheme == "memory") {
    const std::size_t q = rest.find('?');
    if (rest.substr(0, q) != "") return bad_uri(uri, "memory:// takes no host or path");
    return open_memory(uri, q == std::string_view::npos ? std::string_view{} : rest.substr(q + 1),
                       c);
  }
  if (scheme == "redis" || scheme == "rediss" || scheme == "unix" || scheme == "redis+unix") {
    auto options = parse_redis_uri(uri);
    if (!options) return options.error();
    return std::shared_ptr<store>(std::make_shared<redis_store>(std::move(*options)));
  }
  if (scheme == "redis+cluster" || scheme == "rediss+cluster") {
    auto options = parse_redis_cluster_uri(uri);
    if (!options) return options.error();
    return std::shared_ptr<store>(std::make_shared<redis_cluster_store>(std::move(*options)));
  }
  return bad_uri(uri, "unknown scheme \"" + std::string(scheme.substr(0, 40)) +
                          "\" (use memory://, redis://, rediss://, unix:// or redis+cluster://)");
}

}  // namespace sluice
