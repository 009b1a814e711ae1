// The calls of a store that sends every key to one Redis server (redis://, and
// redis+sentinel:// whose server is the master the sentinels name): one script run per
// decision (or a share of a batch run), one multi-key run per acquire_all, one DEL per
// reset. Internal to sluice::redis.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "sluice/store.h"
#include "store/redis/connection.h"

namespace sluice::redis {

// Sees every error reply a server sends to a call (e.g. READONLY from a demoted master),
// on the I/O thread, before the caller is answered. May be empty.
using error_watch = std::function<void(const reply&)>;

// Returns `key` with the store's prefix: `<prefix>:<key>`, or `key` when the prefix is
// empty.
std::string full_key(const redis_store_options& o, std::string_view key);

// Each checks the call, then queues it on `to`: the caller is answered exactly once, at
// once when the call is bad or `to` is down, else on the I/O thread by its deadline.
void submit_decide(const std::shared_ptr<shared_state>& shared, connection& to, const request& r,
                   script_op op, store::completion done, const error_watch& watch = {});
void submit_decide_all(const std::shared_ptr<shared_state>& shared, connection& to,
                       std::span<const request> rs, store::all_completion done,
                       const error_watch& watch = {});
void submit_reset(const std::shared_ptr<shared_state>& shared, connection& to, std::string_view key,
                  store::reset_completion done, const error_watch& watch = {});

}  // namespace sluice::redis
