#include "store/redis/pipeline.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <string>
#include <unordered_map>

namespace sluice::redis {
namespace {

std::string_view decimal(char* buf, std::int64_t v) {
  const auto end = std::to_chars(buf, buf + 24, v).ptr;
  return {buf, static_cast<std::size_t>(end - buf)};
}

std::string_view mode_name(script_op op) {
  switch (op) {
    case script_op::peek:
      return "peek";
    case script_op::refund:
      return "refund";
    default:
      return "acquire";
  }
}

// Appends a multi-key call: its keys, `now token`, then 5 arguments per key (7 to release).
void append_multi_call(std::string& out, const script_call& c, std::string_view sha,
                       std::string_view source) {
  const bool release = c.op == script_op::release;
  const std::size_t n = c.keys.size();
  const std::size_t fields = release ? 7 : 5;
  std::vector<std::array<char, 24>> digits(2 + n * fields);  // the numbers' text, in place
  std::size_t used = 0;
  auto number = [&](std::int64_t v) { return decimal(digits[used++].data(), v); };
  std::vector<std::string_view> args;
  args.reserve(5 + n * (fields + 1));
  args.push_back(source.empty() ? "EVALSHA" : "EVAL");
  args.push_back(source.empty() ? sha : source);
  args.push_back(number(static_cast<std::int64_t>(n)));
  for (const script_key& k : c.keys) args.push_back(k.key);
  args.push_back(c.now_us ? number(*c.now_us) : std::string_view{});
  args.push_back(c.token);
  for (const script_key& k : c.keys) {
    args.push_back(k.packed() ? "sliding_log_packed" : to_string(k.algo));
    args.push_back(number(k.count));
    args.push_back(number(k.window_us));
    args.push_back(number(k.cost));
    args.push_back(k.now_us ? number(*k.now_us) : std::string_view{});
    if (release) {
      args.push_back(number(k.reserved_at_us));
      args.push_back(number(k.reserved_reset_us));
    }
  }
  append_command(out, args);
}

}  // namespace

void append_script_call(std::string& out, const script_call& c, std::string_view sha,
                        std::string_view source) {
  if (c.multi()) return append_multi_call(out, c, sha, source);
  char count[24], window[24], cost[24], now[24];
  append_command(out, {source.empty() ? "EVALSHA" : "EVAL", source.empty() ? sha : source, "1",
                       c.key, mode_name(c.op), decimal(count, c.count),
                       decimal(window, c.window_us), decimal(cost, c.cost),
                       c.now_us ? decimal(now, *c.now_us) : std::string_view{}, c.token});
}

// The batch script's mode of a call: its op's letter, then its algorithm's (scripts.h).
std::string_view batch_mode(const script_call& c) {
  static constexpr std::array<std::array<std::string_view, 3>, 3> kModes{{
      {"al", "ac", "ag"},  // acquire: sliding_log, sliding_counter, gcra
      {"pl", "pc", "pg"},  // peek
      {"rl", "rc", "rg"},  // refund
  }};
  static constexpr std::array<std::string_view, 3> kPacked{"as", "ps", "rs"};
  const std::size_t op = c.op == script_op::peek ? 1 : c.op == script_op::refund ? 2 : 0;
  if (c.packed()) return kPacked[op];
  return kModes[op][static_cast<std::size_t>(c.algo)];
}

void append_batch_call(std::string& out, std::span<const script_call* const> calls,
                       std::string_view sha, std::string_view source) {
  // Each distinct key once in KEYS; calls name theirs by index.
  std::unordered_map<std::string_view, std::size_t> index;
  std::vector<std::size_t> key_of(calls.size());
  std::vector<std::string_view> keys;
  if (calls.size() > 8) index.reserve(calls.size());
  for (std::size_t i = 0; i < calls.size(); ++i) {
    const auto [it, fresh] = index.try_emplace(calls[i]->key, keys.size() + 1);
    if (fresh) keys.push_back(calls[i]->key);
    key_of[i] = it->second;
  }
  append_array_header(out, 3 + keys.size() + 7 * calls.size());
  append_bulk(out, source.empty() ? "EVALSHA" : "EVAL");
  append_bulk(out, source.empty() ? sha : source);
  char buf[24];
  append_bulk(out, decimal(buf, static_cast<std::int64_t>(keys.size())));
  for (const std::string_view k : keys) append_bulk(out, k);
  for (std::size_t i = 0; i < calls.size(); ++i) {
    const script_call& c = *calls[i];
    append_bulk(out, decimal(buf, static_cast<std::int64_t>(key_of[i])));
    append_bulk(out, batch_mode(c));
    append_bulk(out, decimal(buf, c.count));
    append_bulk(out, decimal(buf, c.window_us));
    append_bulk(out, decimal(buf, c.cost));
    append_bulk(out, c.now_us ? decimal(buf, *c.now_us) : std::string_view{});
    append_bulk(out, c.op == script_op::acquire && c.algo == algorithm::sliding_log && !c.packed()
                         ? std::string_view(c.token)
                         : std::string_view{});
  }
}

bool pending::live() const noexcept {
  if (done) return true;
  return std::any_of(batch.begin(), batch.end(), [](const pending& p) { return bool(p.done); });
}

namespace {

// About what a call adds to a batch's arguments.
std::size_t batch_bytes_of(const script_call& c) { return c.key.size() + c.token.size() + 96; }

// Answers each call of `b` still waiting with its slot of `r`, the reply to the batch.
void settle_batch(pending& b, reply& r, std::vector<pending>& resend) {
  if (r.is_error()) {
    if (r.text.starts_with("NOSCRIPT")) {
      if (b.live()) resend.push_back(std::move(b));
      return;
    }
    for (pending& p : b.batch) {
      if (p.done) std::exchange(p.done, nullptr)(r);
    }
    return;
  }
  if (r.type != reply::kind::array || r.elements.size() != b.batch.size()) {
    const error e = make_error(errc::store_error, "redis: unexpected batch script reply").error();
    for (pending& p : b.batch) {
      if (p.done) std::exchange(p.done, nullptr)(fail(e));
    }
    return;
  }
  for (std::size_t i = 0; i < b.batch.size(); ++i) {
    if (b.batch[i].done) std::exchange(b.batch[i].done, nullptr)(std::move(r.elements[i]));
  }
}

}  // namespace

assembled pipeline::assemble(std::string_view bytes, std::vector<pending>& calls,
                             const script_shas& shas, std::size_t max_calls, std::size_t max_bytes,
                             steady::time_point now, std::string& out) {
  assembled did;
  // The batches being filled since the last command that is not batchable, by group.
  struct open_batch {
    int group = 0;
    std::vector<pending> calls;
    std::size_t bytes = 0;
  };
  std::vector<open_batch> open;
  std::vector<const script_call*> scripts;
  auto close = [&](open_batch& b) {
    if (b.calls.empty()) return;
    if (b.calls.size() == 1) {
      const script_call& c = *b.calls.front().script;
      append_script_call(out, c, shas.of(c));
      push(std::move(b.calls.front()));
    } else {
      scripts.clear();
      pending batch;
      batch.deadline = b.calls.front().deadline;
      for (const pending& p : b.calls) {
        scripts.push_back(&*p.script);
        batch.deadline = std::min(batch.deadline, p.deadline);
      }
      append_batch_call(out, scripts, shas.batch);
      ++did.batches;
      did.batched += b.calls.size();
      batch.batch = std::move(b.calls);
      push(std::move(batch));
    }
    b.calls.clear();
    b.bytes = 0;
  };
  auto close_all = [&] {
    for (open_batch& b : open) close(b);
    open.clear();
  };
  std::size_t at = 0;  // in `bytes`
  for (pending& p : calls) {
    if (!p.batchable) {
      close_all();
      out.append(bytes.substr(at, p.wire));
      at += p.wire;
      push(std::move(p));
      continue;
    }
    if (p.deadline <= now) {
      if (p.done)
        std::exchange(p.done,
                      nullptr)(make_error(errc::timeout, "redis: no reply before the deadline"));
      ++did.timed_out;
      continue;
    }
    open_batch* b = nullptr;
    if (!open.empty() && open.back().group == p.group) {
      b = &open.back();
    } else {
      for (open_batch& o : open) {
        if (o.group == p.group) b = &o;
      }
      if (b == nullptr) {
        open.emplace_back().group = p.group;
        b = &open.back();
      }
    }
    b->bytes += batch_bytes_of(*p.script);
    b->calls.push_back(std::move(p));
    if (b->calls.size() >= max_calls || b->bytes >= max_bytes) close(*b);
  }
  close_all();
  calls.clear();
  return did;
}

result<void> pipeline::on_bytes(std::string_view bytes, std::vector<pending>& resend) {
  reader_.feed(bytes);
  for (;;) {
    auto next = reader_.next();
    if (!next) return fail(next.error());
    if (!next->has_value()) return {};
    if (waiting_.empty() && unsolicited_) {
      unsolicited_(**next);
      continue;
    }
    if (waiting_.empty()) {
      return make_error(errc::store_error, "redis: a reply arrived that no call was waiting for");
    }
    pending p = std::move(waiting_.front());
    waiting_.pop_front();
    reply& r = **next;
    if (!p.batch.empty()) {
      settle_batch(p, r, resend);
      continue;
    }
    if (r.is_error() && r.text.starts_with("NOSCRIPT") && p.script && p.done) {
      resend.push_back(std::move(p));
      continue;
    }
    if (p.done) p.done(std::move(r));
  }
}

std::size_t pipeline::expire(steady::time_point now) {
  std::size_t n = 0;
  earliest_.reset();
  auto one = [&](pending& p) {
    if (!p.done) return;
    if (p.deadline <= now) {
      std::exchange(p.done,
                    nullptr)(make_error(errc::timeout, "redis: no reply before the deadline"));
      ++n;
    } else if (!earliest_ || p.deadline < *earliest_) {
      earliest_ = p.deadline;
    }
  };
  for (pending& p : waiting_) {
    one(p);
    for (pending& member : p.batch) one(member);
  }
  return n;
}

void pipeline::fail_all(const error& e) {
  std::deque<pending> gone;
  gone.swap(waiting_);
  earliest_.reset();
  for (pending& p : gone) {
    if (p.done) std::exchange(p.done, nullptr)(fail(e));
    for (pending& member : p.batch) {
      if (member.done) std::exchange(member.done, nullptr)(fail(e));
    }
  }
}

bool pipeline::stalled(steady::time_point now, steady::duration limit) const {
  return !waiting_.empty() && waiting_.front().deadline + limit < now;
}

std::optional<steady::time_point> pipeline::next_deadline() const {
  if (waiting_.empty()) return std::nullopt;
  return earliest_;
}

}  // namespace sluice::redis
