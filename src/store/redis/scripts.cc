#include "store/redis/scripts.h"

namespace sluice::redis {
namespace {

// Shared by all three scripts: argument parsing, the clock, and TTLs. A TTL runs on the
// server's real clock, so with an explicit `now` (tests, replays, which move time at their
// own pace) keys are kept 60 s longer than their state needs.
#define SLUICE_LUA_PROLOGUE                                   \
  "local key = KEYS[1]\n"                                     \
  "local acquire = ARGV[1] == 'acquire'\n"                    \
  "local count = tonumber(ARGV[2])\n"                         \
  "local w = tonumber(ARGV[3])\n"                             \
  "local cost = tonumber(ARGV[4])\n"                          \
  "local now\n"                                               \
  "if ARGV[5] == '' then\n"                                   \
  "  local t = redis.call('TIME')\n"                          \
  "  now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"       \
  "else\n"                                                    \
  "  now = tonumber(ARGV[5])\n"                               \
  "end\n"                                                     \
  "local function int(x) return string.format('%d', x) end\n" \
  "local slack = 0\n"                                         \
  "if ARGV[5] ~= '' then slack = 60000000 end\n"              \
  "local function ms_ceil(us) return int(math.max(1, math.ceil((us + slack) / 1000))) end\n"

// gcra: the key holds the theoretical arrival time as a decimal string.
constexpr std::string_view kGcra = SLUICE_LUA_PROLOGUE R"lua(
local t = math.floor((w + count - 1) / count)
local burst = t * count
local v = redis.pcall('GET', key)
local tat = 0
if type(v) == 'table' and v.err then
  redis.call('DEL', key)
elseif v then
  tat = tonumber(v) or 0
end
local tat0 = math.max(tat, now)
local new_tat = tat0 + cost * t
if new_tat - now <= burst then
  if acquire then
    redis.call('SET', key, int(new_tat), 'PX', ms_ceil(new_tat - now))
    return {1, math.floor((burst - (new_tat - now)) / t), 0, new_tat - now}
  end
  return {1, math.max(0, math.floor((burst - (tat0 - now)) / t)), 0, tat0 - now}
end
return {0, math.max(0, math.floor((burst - (tat0 - now)) / t)), new_tat - now - burst,
        tat0 - now}
)lua";

// sliding_counter: the key holds "window_start previous current".
constexpr std::string_view kSlidingCounter = SLUICE_LUA_PROLOGUE R"lua(
local function weighted(p, rest)
  if p == 0 or rest <= 0 then return 0 end
  if rest >= w then return p end
  return math.ceil(p * rest / w)
end
local function decay_point(p, room)
  if p <= room then return 0 end
  local e = w - math.floor(room * w / p)
  if e < 1 then e = 1 elseif e > w then e = w end
  while e > 0 and weighted(p, w - (e - 1)) <= room do e = e - 1 end
  while weighted(p, w - e) > room do e = e + 1 end
  return e
end
local ws, prev, cur = 0, 0, 0
local v = redis.pcall('GET', key)
if type(v) == 'table' and v.err then
  redis.call('DEL', key)
elseif v then
  local a, b, c = string.match(v, '^(%-?%d+) (%d+) (%d+)$')
  if a then ws, prev, cur = tonumber(a), tonumber(b), tonumber(c) end
end
local aligned = now - now % w
if ws <= aligned then
  if ws < aligned - w then
    prev, cur = 0, 0
  elseif ws < aligned then
    prev, cur = cur, 0
  end
  ws = aligned
end
local elapsed = math.max(0, now - ws)
local estimate = cur + weighted(prev, w - elapsed)
local allowed = estimate + cost <= count
local remaining, retry = 0, 0
if allowed and acquire then
  cur = cur + cost
  remaining = count - estimate - cost
  redis.call('SET', key, int(ws) .. ' ' .. int(prev) .. ' ' .. int(cur), 'PX',
             ms_ceil(ws + 2 * w - now))
else
  remaining = math.max(0, count - estimate)
  if not allowed then
    if cur + cost <= count then
      retry = decay_point(prev, count - cost - cur) - elapsed
    else
      retry = (w - elapsed) + decay_point(cur, count - cost)
    end
  end
end
local reset = 0
if cur > 0 then reset = (w - elapsed) + w elseif prev > 0 then reset = w - elapsed end
return {allowed and 1 or 0, remaining, retry, reset}
)lua";

// sliding_log: the reference limiter's sorted set. Score = Unix seconds with six decimals,
// one member per unit of cost, named "<score>:<token>:<i>" (unique), TTL window + 60 s.
constexpr std::string_view kSlidingLog = SLUICE_LUA_PROLOGUE R"lua(
local token = ARGV[6]
local function secs(us)
  if us < 0 then return '-' .. string.format('%d.%06d', math.floor(-us / 1000000), -us % 1000000) end
  return string.format('%d.%06d', math.floor(us / 1000000), us % 1000000)
end
local function us_of(score) return math.floor(tonumber(score) * 1000000 + 0.5) end
local pruned = redis.pcall('ZREMRANGEBYSCORE', key, '-inf', secs(now - w))
if type(pruned) == 'table' and pruned.err then redis.call('DEL', key) end
local used = redis.call('ZCARD', key)
local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
local newest_us = newest[2] and us_of(newest[2])
local allowed = used + cost <= count
if allowed and acquire then
  local at = now
  if newest_us and newest_us > at then at = newest_us end
  local score = secs(at)
  local args = {}
  for i = 1, cost do
    args[#args + 1] = score
    args[#args + 1] = score .. ':' .. token .. ':' .. i
    if #args >= 2000 or i == cost then
      redis.call('ZADD', key, unpack(args))
      args = {}
    end
  end
  redis.call('PEXPIRE', key, ms_ceil(at - now + w + 60000000))
  return {1, count - used - cost, 0, at + w - now}
end
local retry = 0
if not allowed then
  local excess = used + cost - count
  local entry = redis.call('ZRANGE', key, excess - 1, excess - 1, 'WITHSCORES')
  retry = math.max(1, us_of(entry[2]) + w - now)
end
local reset = 0
if newest_us then reset = newest_us + w - now end
return {allowed and 1 or 0, math.max(0, count - used), retry, reset}
)lua";

#undef SLUICE_LUA_PROLOGUE

}  // namespace

std::string_view script_source(algorithm a) noexcept {
  switch (a) {
    case algorithm::gcra:
      return kGcra;
    case algorithm::sliding_counter:
      return kSlidingCounter;
    case algorithm::sliding_log:
      break;
  }
  return kSlidingLog;
}

}  // namespace sluice::redis
