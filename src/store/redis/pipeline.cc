#include "store/redis/pipeline.h"

#include <array>
#include <charconv>
#include <string>

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
    args.push_back(to_string(k.algo));
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

result<void> pipeline::on_bytes(std::string_view bytes, std::vector<pending>& resend) {
  reader_.feed(bytes);
  for (;;) {
    auto next = reader_.next();
    if (!next) return fail(next.error());
    if (!next->has_value()) return {};
    if (waiting_.empty()) {
      return make_error(errc::store_error, "redis: a reply arrived that no call was waiting for");
    }
    pending p = std::move(waiting_.front());
    waiting_.pop_front();
    reply& r = **next;
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
  for (pending& p : waiting_) {
    if (!p.done) continue;
    if (p.deadline <= now) {
      auto done = std::move(p.done);
      p.done = nullptr;
      done(make_error(errc::timeout, "redis: no reply before the deadline"));
      ++n;
    } else if (!earliest_ || p.deadline < *earliest_) {
      earliest_ = p.deadline;
    }
  }
  return n;
}

void pipeline::fail_all(const error& e) {
  std::deque<pending> gone;
  gone.swap(waiting_);
  earliest_.reset();
  for (pending& p : gone) {
    if (p.done) p.done(fail(e));
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
