// The schemes `open_store` knows beyond memory://. A store library registers its own from a
// static initialiser (sluice::redis: src/store/redis/open_redis.cc), so that linking the
// library is what makes its URIs open. Internal to sluice.
#pragma once

#include <memory>
#include <string_view>

#include "sluice/open_store.h"

namespace sluice::internal {

using store_opener = result<std::shared_ptr<store>> (*)(std::string_view uri,
                                                        const open_options& options);

// Makes `open_store` call `open` for URIs of `scheme` (without "://"). Thread-safe; a
// scheme registered twice keeps the last opener. `scheme` must outlive the program (a
// literal).
void register_store_scheme(std::string_view scheme, store_opener open) noexcept;

}  // namespace sluice::internal
