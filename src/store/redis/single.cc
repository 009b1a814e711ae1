#include "store/redis/single.h"

#include <utility>
#include <vector>

namespace sluice::redis {

std::string full_key(const redis_store_options& o, std::string_view key) {
  const std::string& prefix = o.key_prefix;
  if (prefix.empty()) return std::string(key);  // verbatim: the reference's own keys
  std::string out;
  out.reserve(prefix.size() + 1 + key.size());
  out.append(prefix).append(":").append(key);
  return out;
}

namespace {

void show(const error_watch& watch, const result<reply>& rep) {
  if (watch && rep && rep->is_error()) watch(*rep);
}

}  // namespace

void submit_decide(const std::shared_ptr<shared_state>& shared, connection& to, const request& r,
                   script_op op, store::completion done, const error_watch& watch) {
  if (auto ok = check_redis_request(r); !ok) return done(fail(ok.error()));
  ++shared->requests;
  script_call call = make_script_call(*shared, r, full_key(shared->options, r.key), op);
  std::string command;
  pending p;
  if (shared->batching()) {
    p.batchable = true;  // the connection encodes it, alone or in a batch
  } else {
    append_script_call(command, call, shared->script_of(call).sha);
  }
  p.deadline = steady::now() + shared->options.timeout;
  p.script = std::move(call);
  p.done = [count = r.limit.count, done = std::move(done), s = shared, watch](result<reply> rep) {
    show(watch, rep);
    auto d = to_decision(rep, count);
    if (!d) ++s->errors;
    done(std::move(d));
  };
  to.submit(std::move(command), std::move(p));
}

// One run of the multi-key script over every key: atomic on one server.
void submit_decide_all(const std::shared_ptr<shared_state>& shared, connection& to,
                       std::span<const request> rs, store::all_completion done,
                       const error_watch& watch) {
  std::vector<std::size_t> group;
  auto merged = prepare_all(rs, group);
  if (!merged) return done(fail(merged.error()));
  if (merged->empty()) return done(std::vector<decision>{});
  if (merged->size() == 1) {
    auto [one, op] = lone_call(merged->front());
    return submit_decide(shared, to, one, op, spread_lone(std::move(group), std::move(done)),
                         watch);
  }
  ++shared->requests;
  std::vector<script_key> keys;
  std::vector<std::int64_t> counts;
  keys.reserve(merged->size());
  counts.reserve(merged->size());
  for (const request& r : *merged) {
    keys.push_back(to_script_key(r, full_key(shared->options, r.key), shared->packed_log()));
    counts.push_back(r.limit.count);
  }
  script_call call = make_multi_call(script_op::acquire_all, std::move(keys), shared->next_token());
  std::string command;
  append_script_call(command, call, shared->script_of(call).sha);
  pending p;
  p.deadline = steady::now() + shared->options.timeout;
  p.script = std::move(call);
  p.done = [counts = std::move(counts), group = std::move(group), done = std::move(done),
            s = shared, watch](result<reply> rep) {
    show(watch, rep);
    auto per_key = to_multi_reply(rep, counts);
    if (!per_key) {
      ++s->errors;
      return done(fail(per_key.error()));
    }
    std::vector<decision> out;
    out.reserve(group.size());
    for (const std::size_t g : group) out.push_back(per_key->decisions[g]);
    done(std::move(out));
  };
  to.submit(std::move(command), std::move(p));
}

void submit_reset(const std::shared_ptr<shared_state>& shared, connection& to, std::string_view key,
                  store::reset_completion done, const error_watch& watch) {
  if (auto ok = check_key(key); !ok) return done(fail(ok.error()));
  ++shared->requests;
  std::string command;
  append_command(command, {"DEL", full_key(shared->options, key)});
  pending p;
  p.deadline = steady::now() + shared->options.timeout;
  p.done = [done = std::move(done), s = shared, watch](result<reply> rep) {
    show(watch, rep);
    auto r = to_reset_result(rep);
    if (!r) ++s->errors;
    done(std::move(r));
  };
  to.submit(std::move(command), std::move(p));
}

}  // namespace sluice::redis
