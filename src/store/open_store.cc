#include "sluice/open_store.h"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include "sluice/limit.h"
#include "sluice/memory_store.h"
#include "store/memory/snapshot.h"
#include "store/query.h"
#include "store/registry.h"

namespace sluice {
namespace {

unexpected<error> bad_uri(std::string_view uri, const std::string& problem) {
  return make_error(errc::invalid_store_uri,
                    "store \"" + std::string(uri.substr(0, 200)) + "\": " + problem);
}

// The schemes of sluice::redis, named in the error of a program linked without it.
constexpr std::string_view kRedisSchemes[] = {"redis",          "rediss",         "unix",
                                              "redis+unix",     "redis+cluster",  "rediss+cluster",
                                              "redis+sentinel", "rediss+sentinel"};

struct registry {
  std::mutex mu;
  std::array<std::pair<std::string_view, internal::store_opener>, 16> openers{};
  std::size_t size = 0;
};

registry& openers() {
  static registry r;
  return r;
}

internal::store_opener find_opener(std::string_view scheme) {
  registry& r = openers();
  const std::lock_guard lock(r.mu);
  for (std::size_t i = 0; i < r.size; ++i) {
    if (r.openers[i].first == scheme) return r.openers[i].second;
  }
  return nullptr;
}

}  // namespace

namespace internal {

void register_store_scheme(std::string_view scheme, store_opener open) noexcept {
  registry& r = openers();
  const std::lock_guard lock(r.mu);
  for (std::size_t i = 0; i < r.size; ++i) {
    if (r.openers[i].first == scheme) {
      r.openers[i].second = open;
      return;
    }
  }
  if (r.size < r.openers.size()) r.openers[r.size++] = {scheme, open};
}

}  // namespace internal

namespace {

// parse_memory_uri, saying also whether the URI set max_key_length.
result<memory_store_options> parse_memory(std::string_view uri, bool& key_length_given) {
  key_length_given = false;
  constexpr std::string_view scheme = "memory://";
  if (!uri.starts_with(scheme)) return bad_uri(uri, "expected memory://");
  const std::string_view rest = uri.substr(scheme.size());
  const std::size_t q = rest.find('?');
  if (!rest.substr(0, q).empty()) return bad_uri(uri, "memory:// takes no host or path");
  memory_store_options options;
  auto params =
      internal::split_query(q == std::string_view::npos ? std::string_view{} : rest.substr(q + 1));
  if (!params) return bad_uri(uri, params.error().detail);
  bool interval_given = false;
  bool on_error_given = false;
  for (const auto& [name, value] : *params) {
    if (name == "snapshot") {
      if (value.empty()) return bad_uri(uri, "snapshot needs a file path");
      options.snapshot_path = std::string(value);
      continue;
    }
    if (name == "snapshot_interval") {
      interval_given = true;
      if (value == "0") {
        options.snapshot_interval = std::chrono::milliseconds{0};
        continue;
      }
      auto d = parse_duration(value);
      if (!d || *d < std::chrono::milliseconds(10) || *d > std::chrono::hours(24) ||
          *d % std::chrono::milliseconds(1) != std::chrono::microseconds{0}) {
        return bad_uri(uri,
                       "snapshot_interval must be 0 (only at shutdown) or a duration "
                       "from 10ms to 24h in whole milliseconds, e.g. 10s");
      }
      options.snapshot_interval = std::chrono::duration_cast<std::chrono::milliseconds>(*d);
      continue;
    }
    if (name == "snapshot_on_error") {
      on_error_given = true;
      if (value != "fail" && value != "empty") {
        return bad_uri(uri, "snapshot_on_error must be fail or empty");
      }
      options.snapshot_empty_on_error = value == "empty";
      continue;
    }
    if (name != "shards" && name != "max_keys" && name != "max_key_length") {
      return bad_uri(uri, "unknown parameter \"" + std::string(name.substr(0, 64)) +
                              "\" (memory:// takes shards, max_keys, max_key_length, snapshot, "
                              "snapshot_interval, snapshot_on_error)");
    }
    std::size_t n = 0;
    if (!internal::parse_number(value, n)) {
      return bad_uri(uri, "parameter \"" + std::string(name) + "\" must be a whole number");
    }
    if (name == "shards") {
      if (n < 1 || n > 4096) return bad_uri(uri, "shards must be between 1 and 4096");
      options.shards = n;
    } else if (name == "max_keys") {
      options.max_keys = n;
    } else {  // max_key_length
      if (n < 1 || n > 65535) return bad_uri(uri, "max_key_length must be between 1 and 65535");
      options.max_key_length = n;
      key_length_given = true;
    }
  }
  if ((interval_given || on_error_given) && options.snapshot_path.empty()) {
    return bad_uri(uri, "snapshot_interval and snapshot_on_error need snapshot=PATH");
  }
  if (!options.snapshot_path.empty()) {
    const std::string dir = internal::parent_directory(options.snapshot_path);
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return bad_uri(uri, "snapshot: directory \"" + dir + "\" does not exist");
    }
  }
  return options;
}

}  // namespace

result<memory_store_options> parse_memory_uri(std::string_view uri) {
  bool key_length_given = false;
  return parse_memory(uri, key_length_given);
}

result<std::shared_ptr<store>> open_store(std::string_view uri, const open_options& o) {
  const std::size_t colon = uri.find("://");
  if (colon == std::string_view::npos) {
    return bad_uri(uri, "expected SCHEME://..., e.g. memory:// or redis://host:6379");
  }
  const std::string_view scheme = uri.substr(0, colon);
  if (scheme == "memory") {
    bool key_length_given = false;
    auto options = parse_memory(uri, key_length_given);
    if (!options) return fail(options.error());
    if (o.max_key_length != 0 && !key_length_given) {
      options->max_key_length = std::min<std::size_t>(o.max_key_length, 65535);
    }
    if (o.time_source != nullptr) options->time_source = o.time_source;
    options->warn = o.warn;
    auto opened = memory_store::open(std::move(*options));
    if (!opened) return fail(opened.error());
    return std::shared_ptr<store>(std::move(*opened));
  }
  if (const internal::store_opener open = find_opener(scheme)) return open(uri, o);
  if (std::find(std::begin(kRedisSchemes), std::end(kRedisSchemes), scheme) !=
      std::end(kRedisSchemes)) {
    return make_error(errc::unsupported_store,
                      "store \"" + std::string(uri.substr(0, colon + 3)) +
                          "...\": this program was built without sluice::redis (link it, or "
                          "configure sluice with SLUICE_WITH_REDIS=ON)");
  }
  return bad_uri(uri, "unknown scheme \"" + std::string(scheme.substr(0, 40)) +
                          "\" (use memory://, redis://, rediss://, unix://, redis+cluster:// or "
                          "redis+sentinel://)");
}

result<std::shared_ptr<store>> open_store(std::string_view uri, const clock& c) {
  open_options o;
  o.time_source = &c;
  return open_store(uri, o);
}

}  // namespace sluice
