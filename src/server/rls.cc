// The decision side of Envoy's rate limit service is not written yet: make_rls_handler is the
// one place it plugs in (see rls.h).
#include "server/rls.h"

namespace sluice::server {

std::unique_ptr<rls_handler> make_rls_handler(const server_config& /*config*/,
                                              sluice::limiter& /*lim*/, metrics& /*m*/) {
  return nullptr;
}

}  // namespace sluice::server
