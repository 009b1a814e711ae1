#include "store/redis/scripts.h"

#include <array>
#include <string>

namespace sluice::redis {
namespace {

// The pieces the scripts are put together from (`sources()`). Each algorithm is one Lua
// function, which reads the key's state and then does what `op` asks:
//   <name>(key, op, count, w, cost, now, token, slack, at, reset) -> {4 numbers}
//   op "acquire" | "peek": the decision of `cost`, an admission recorded on "acquire";
//   op "refund": gives back up to `cost` units (the core's *_refund), then peeks one unit;
//   op "release": gives back a reservation's `cost` units (the release script; `at` and
//      `reset` are the reservation's time and reset_after), then peeks max(cost, 1).
// `slack` is what TTLs add: 60 s with an explicit `now` (tests, replays, which move time
// at their own pace while TTLs run on the server's real clock), else 0. A state belongs to
// one algorithm: a key holding another's reads as fresh, and only an acquire replaces it.
//
// One function per algorithm, not one per step, because the single-key scripts are the
// hot path and every Lua closure a run creates costs: this layout costs 1.6% more
// instructions per sliding_log call than the scripts had before refunds, a layout with
// load/decide/refund functions ~7% (docs/BENCHMARKS.md, "Redis store").

// Every script: the TTL of state that is fresh again `us` from now.
constexpr std::string_view kTtl = R"lua(
local function ttl_ms(us, slack)
  return string.format('%d', math.max(1, math.ceil((us + slack) / 1000)))
end
)lua";

// gcra's and sliding_counter's: a number as Redis reads an integer.
constexpr std::string_view kInt = R"lua(
local function int(x) return string.format('%d', x) end
)lua";

// gcra: the key holds the theoretical arrival time as a decimal string.
constexpr std::string_view kGcra = R"lua(
local function gcra(key, op, count, w, cost, now, token, slack, at, reset)
  local t = math.floor((w + count - 1) / count)
  local burst = t * count
  local v = redis.pcall('GET', key)
  local tat = type(v) == 'string' and tonumber(v) or 0
  if op == 'refund' then
    if tat > now then
      tat = tat - math.min(tat - now, cost * t)
      redis.call('SET', key, int(tat), 'PX', ttl_ms(tat - now, slack))
    end
    op, cost = 'peek', 1
  elseif op == 'release' then
    -- The reservation moved tat on by cost * t. While tat is still what it left, all of
    -- that comes back. Admissions since then each moved tat from max(tat, their now): one
    -- after `at` may have absorbed part of the reservation, but all of them together at
    -- most now - at (the latest arrival's time less the reservation's), so that much is
    -- kept: never less than the state would be had the reservation not been made.
    if cost > 0 and tat > now then
      local back = cost * t
      if tat ~= at + reset then back = math.max(0, back - math.max(0, now - at)) end
      if back > 0 then
        tat = tat - back
        if tat <= now then  -- fresh again: as if never reserved
          redis.call('DEL', key)
        else
          redis.call('SET', key, int(tat), 'PX', ttl_ms(tat - now, slack))
        end
      end
    end
    op, cost = 'peek', math.max(cost, 1)
  end
  local tat0 = math.max(tat, now)
  local new_tat = tat0 + cost * t
  if new_tat - now <= burst then
    if op == 'acquire' then
      redis.call('SET', key, int(new_tat), 'PX', ttl_ms(new_tat - now, slack))
      return {1, math.floor((burst - (new_tat - now)) / t), 0, new_tat - now}
    end
    return {1, math.max(0, math.floor((burst - (tat0 - now)) / t)), 0, tat0 - now}
  end
  return {0, math.max(0, math.floor((burst - (tat0 - now)) / t)), new_tat - now - burst,
          tat0 - now}
end
)lua";

// sliding_counter: the key holds "window_start previous current", rolled forward to the
// window holding `now` as it is read.
constexpr std::string_view kSlidingCounter = R"lua(
local function weighted(p, rest, w)
  if p == 0 or rest <= 0 then return 0 end
  if rest >= w then return p end
  return math.ceil(p * rest / w)
end
local function decay_point(p, room, w)
  if p <= room then return 0 end
  local e = w - math.floor(room * w / p)
  if e < 1 then e = 1 elseif e > w then e = w end
  while e > 0 and weighted(p, w - (e - 1), w) <= room do e = e - 1 end
  while weighted(p, w - e, w) > room do e = e + 1 end
  return e
end
local function sliding_counter(key, op, count, w, cost, now, token, slack, at, reset)
  local ws, prev, cur, held = 0, 0, 0, false
  local v = redis.pcall('GET', key)
  if type(v) == 'string' then
    local a, b, c = string.match(v, '^(%-?%d+) (%d+) (%d+)$')
    if a then ws, prev, cur, held = tonumber(a), tonumber(b), tonumber(c), true end
  end
  local given, released = false, false
  if op == 'release' then
    -- The reservation counted in the window starting at `start`, with reset_after =
    -- 2w - (at - start): its units are in `cur` while the stored window is that one, in
    -- `prev` once rolled one window on. reset_after = 2w is a window's first microsecond
    -- (start = at), or a clock that stepped back (start > at, unknown): then only `cur` of
    -- a window starting at `at` is taken.
    local start, rolled = at - (2 * w - reset), true
    if reset >= 2 * w then start, rolled = at, false end
    if held and cost > 0 and start % w == 0 then
      if ws == start then
        cur, given, released = cur - math.min(cost, cur), true, true
      elseif rolled and ws == start + w then
        prev, given, released = prev - math.min(cost, prev), true, true
      end
    end
    op, cost = 'peek', math.max(cost, 1)
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
  if op == 'refund' then
    if held then
      local from_cur = math.min(cost, cur)
      cur, prev, given = cur - from_cur, prev - math.min(cost - from_cur, prev), true
    end
    op, cost = 'peek', 1
  end
  if released and prev == 0 and cur == 0 then
    redis.call('DEL', key)  -- nothing counted: as if never reserved
  elseif given then
    redis.call('SET', key, int(ws) .. ' ' .. int(prev) .. ' ' .. int(cur), 'PX',
               ttl_ms(ws + 2 * w - now, slack))
  end
  local elapsed = math.max(0, now - ws)
  local estimate = cur + weighted(prev, w - elapsed, w)
  local allowed = estimate + cost <= count
  local remaining, retry = 0, 0
  if allowed and op == 'acquire' then
    cur = cur + cost
    remaining = count - estimate - cost
    redis.call('SET', key, int(ws) .. ' ' .. int(prev) .. ' ' .. int(cur), 'PX',
               ttl_ms(ws + 2 * w - now, slack))
  else
    remaining = math.max(0, count - estimate)
    if not allowed then
      if cur + cost <= count then
        retry = decay_point(prev, count - cost - cur, w) - elapsed
      else
        retry = (w - elapsed) + decay_point(cur, count - cost, w)
      end
    end
  end
  local reset_after = 0
  if cur > 0 then reset_after = (w - elapsed) + w elseif prev > 0 then reset_after = w - elapsed end
  return {allowed and 1 or 0, remaining, retry, reset_after}
end
)lua";

// sliding_log: the reference limiter's sorted set (docs/DESIGN.md, invariant 4). Score =
// Unix seconds with six decimals, one member per unit of cost, named
// "<score>:<token>:<i>" (unique), TTL window + 60 s after the newest. Members at or before
// now - window are pruned first; a key holding another algorithm's state reads as empty.
constexpr std::string_view kSlidingLog = R"lua(
local function secs(us)
  if us < 0 then return '-' .. string.format('%d.%06d', math.floor(-us / 1000000), -us % 1000000) end
  return string.format('%d.%06d', math.floor(us / 1000000), us % 1000000)
end
local function us_of(score) return math.floor(tonumber(score) * 1000000 + 0.5) end
local function sliding_log(key, op, count, w, cost, now, token, slack, at, reset)
  local used, newest = 0, nil
  local other = type(redis.pcall('ZREMRANGEBYSCORE', key, '-inf', secs(now - w))) == 'table'
  if not other then
    used = redis.call('ZCARD', key)
    local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    newest = top[2] and us_of(top[2])
  end
  if op == 'refund' or op == 'release' then
    local removed = 0
    if used > 0 and cost > 0 then
      if op == 'refund' then  -- the newest members, as the core's take_back
        removed = redis.call('ZREMRANGEBYRANK', key, string.format('%d', -cost), -1)
      else  -- the reservation's own members
        local score = secs(at + reset - w)
        local members = {}
        for i = 1, cost do
          members[#members + 1] = score .. ':' .. token .. ':' .. i
          if #members >= 1000 or i == cost then
            removed = removed + redis.call('ZREM', key, unpack(members))
            members = {}
          end
        end
      end
    end
    if removed > 0 then
      used = used - removed
      local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      newest = top[2] and us_of(top[2])
      if newest then redis.call('PEXPIRE', key, ttl_ms(newest - now + w + 60000000, slack)) end
    end
    if op == 'refund' then cost = 1 else cost = math.max(cost, 1) end
    op = 'peek'
  end
  local allowed = used + cost <= count
  if allowed and op == 'acquire' then
    if other then redis.call('DEL', key) end
    local first = now
    if newest and newest > first then first = newest end
    local score = secs(first)
    local args = {}
    for i = 1, cost do
      args[#args + 1] = score
      args[#args + 1] = score .. ':' .. token .. ':' .. i
      if #args >= 2000 or i == cost then
        redis.call('ZADD', key, unpack(args))
        args = {}
      end
    end
    redis.call('PEXPIRE', key, ttl_ms(first - now + w + 60000000, slack))
    return {1, count - used - cost, 0, first + w - now}
  end
  local retry = 0
  if not allowed then
    local excess = used + cost - count
    local entry = redis.call('ZRANGE', key, excess - 1, excess - 1, 'WITHSCORES')
    retry = math.max(1, us_of(entry[2]) + w - now)
  end
  local reset_after = 0
  if newest then reset_after = newest + w - now end
  return {allowed and 1 or 0, math.max(0, count - used), retry, reset_after}
end
)lua";

// sliding_log_packed, the `log_layout=packed` layout: the key is one string, a 16-byte
// header ("sluice:L", then `base` as a little-endian double) and then one 16-byte entry per
// admission time, oldest first: struct '<dd' (time in µs, units admitted up to and with this
// entry, counted from `base`). Admissions at one time share an entry, as in the core's log.
// An entry's units are its cum less the one before it (`base` for the first), so pruning
// drops whole entries and moves `base` on without rewriting the rest. A decision is one GET,
// binary searches, and at most one SET (or DEL) of the whole value. A value without the
// header (another algorithm's, the reference layout's set, garbage) reads as empty, and
// only an acquire replaces it. TTL: the newest entry's time plus the window (plus slack).
constexpr std::string_view kSlidingLogPacked = R"lua(
-- The index (1..n+1) of the first entry whose time is past h.
local function packed_after(v, n, h)
  local lo, hi = 1, n + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if struct.unpack('<d', v, 16 * mid + 1) > h then hi = mid else lo = mid + 1 end
  end
  return lo
end
-- The index (lo..n+1) of the first entry whose cum is at least x.
local function packed_reach(v, lo, n, x)
  local hi = n + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if struct.unpack('<d', v, 16 * mid + 9) >= x then hi = mid else lo = mid + 1 end
  end
  return lo
end
local function packed_cum(v, i, base)
  if i == 0 then return base end
  return (struct.unpack('<d', v, 16 * i + 9))
end
-- Returns the value of entries k..j of v after `before` (their new base), then `tail` (an
-- entry's bytes, or ''); entries are rebased to 0 once the base grows large, so that every
-- cum stays an exact double.
local function packed_value(v, k, j, before, tail)
  if before < 1099511627776 then
    return 'sluice:L' .. struct.pack('<d', before) .. string.sub(v, 16 * k + 1, 16 * j + 16) .. tail
  end
  local parts = {'sluice:L' .. struct.pack('<d', 0)}
  for i = k, j do
    local t, c = struct.unpack('<dd', v, 16 * i + 1)
    parts[#parts + 1] = struct.pack('<dd', t, c - before)
  end
  if tail ~= '' then
    local t, c = struct.unpack('<dd', tail)
    parts[#parts + 1] = struct.pack('<dd', t, c - before)
  end
  return table.concat(parts)
end
-- Stores `value` (nil or no entries: the key goes) and returns it as read back.
local function packed_store(key, value, now, w, slack)
  if not value or #value < 32 then
    redis.call('DEL', key)
    return '', 0, 0
  end
  local n = #value / 16 - 1
  local newest = struct.unpack('<d', value, 16 * n + 1)
  redis.call('SET', key, value, 'PX', ttl_ms(newest + w - now, slack))
  return value, n, (struct.unpack('<d', value, 9))
end
local function sliding_log_packed(key, op, count, w, cost, now, token, slack, at, reset)
  local v = redis.pcall('GET', key)
  local n, base = 0, 0
  if type(v) == 'string' and #v >= 16 and #v % 16 == 0 and string.sub(v, 1, 8) == 'sluice:L' then
    n, base = #v / 16 - 1, struct.unpack('<d', v, 9)
  else
    v = ''
  end
  -- Entries k..n are in the window; those before it are pruned (written back below, as the
  -- reference's ZREMRANGEBYSCORE does, so that a clock that steps back does not see them).
  local k = packed_after(v, n, now - w)
  local before = packed_cum(v, k - 1, base)
  local pruned = k > 1
  if op == 'refund' or op == 'release' then
    local last = packed_cum(v, n, base)
    local value, changed = nil, pruned
    if op == 'refund' then  -- the newest units, as the core's take_back
      changed = changed or last > before
      local target = last - math.min(cost, last - before)
      if target > before then
        local j = packed_reach(v, k, n, target)
        value = packed_value(v, k, j - 1, before,
                             struct.pack('<dd', struct.unpack('<d', v, 16 * j + 1), target))
      end
    else  -- the reservation's units, at its time (units at one time are interchangeable)
      local t = at + reset - w
      local j = packed_after(v, n, t - 1)
      local back = 0
      if j >= k and j <= n and struct.unpack('<d', v, 16 * j + 1) == t and cost > 0 then
        back = math.min(cost, packed_cum(v, j, base) - packed_cum(v, j - 1, base))
      end
      if back > 0 then
        changed = true
        local parts = {'sluice:L' .. struct.pack('<d', 0)}
        for i = k, n do
          local ti, c = struct.unpack('<dd', v, 16 * i + 1)
          c = c - before
          if i >= j then c = c - back end
          if i ~= j or c > packed_cum(v, j - 1, base) - before then
            parts[#parts + 1] = struct.pack('<dd', ti, c)
          end
        end
        value = table.concat(parts)
      elseif pruned then
        value = packed_value(v, k, n, before, '')
      end
    end
    if changed then
      v, n, base = packed_store(key, value, now, w, slack)
      k, before, pruned = 1, base, false
    end
    if op == 'refund' then cost = 1 else cost = math.max(cost, 1) end
    op = 'peek'
  end
  local last = packed_cum(v, n, base)
  local used = last - before
  local newest = nil
  if k <= n then newest = struct.unpack('<d', v, 16 * n + 1) end
  local allowed = used + cost <= count
  if allowed and op == 'acquire' then
    local first = now
    if newest and newest > first then first = newest end
    local value
    if newest == first then  -- the newest entry takes the units too
      value = packed_value(v, k, n - 1, before, struct.pack('<dd', first, last + cost))
    else
      value = packed_value(v, k, n, before, struct.pack('<dd', first, last + cost))
    end
    redis.call('SET', key, value, 'PX', ttl_ms(first + w - now, slack))
    return {1, count - used - cost, 0, first + w - now}
  end
  if pruned then packed_store(key, packed_value(v, k, n, before, ''), now, w, slack) end
  local retry = 0
  if not allowed then  -- when the oldest entries holding `excess` units have expired
    local j = packed_reach(v, k, n, before + used + cost - count)
    retry = math.max(1, struct.unpack('<d', v, 16 * j + 1) + w - now)
  end
  local reset_after = 0
  if newest then reset_after = newest + w - now end
  return {allowed and 1 or 0, math.max(0, count - used), retry, reset_after}
end
)lua";

// The single-key script's body, around the name of its algorithm's function.
constexpr std::string_view kSingleBefore = R"lua(
local now, slack = tonumber(ARGV[5]), 60000000
if ARGV[5] == '' then
  local t = redis.call('TIME')
  now, slack = tonumber(t[1]) * 1000000 + tonumber(t[2]), 0
end
return )lua";
constexpr std::string_view kSingleAfter =
    "(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), now, ARGV[6], "
    "slack)\n";

// What the multi-key and the release scripts share: the algorithms by name, and each key's
// arguments (`fields` of them per key after ARGV[1..2]) read into a table.
constexpr std::string_view kKeys = R"lua(
local algorithms = {sliding_log = sliding_log, sliding_counter = sliding_counter, gcra = gcra,
                    sliding_log_packed = sliding_log_packed}
local function read_keys(fields)
  local n = #KEYS
  if #ARGV ~= 2 + fields * n then
    return nil, 'ERR sluice: ' .. #ARGV .. ' arguments for ' .. n .. ' keys'
  end
  local call_now, call_slack = tonumber(ARGV[1]), 60000000
  if ARGV[1] == '' then
    local t = redis.call('TIME')
    call_now, call_slack = tonumber(t[1]) * 1000000 + tonumber(t[2]), 0
  end
  local keys = {}
  for i = 1, n do
    local b = 2 + fields * (i - 1)
    local f = algorithms[ARGV[b + 1]]
    if not f then return nil, 'ERR sluice: unknown algorithm ' .. ARGV[b + 1] end
    local k = {key = KEYS[i], f = f, count = tonumber(ARGV[b + 2]), w = tonumber(ARGV[b + 3]),
               cost = tonumber(ARGV[b + 4]), now = call_now, slack = call_slack, b = b}
    if ARGV[b + 5] ~= '' then k.now, k.slack = tonumber(ARGV[b + 5]), 60000000 end
    keys[i] = k
  end
  return keys, call_now
end
)lua";

// acquire_all: peek every key (a check as one unit), then, only when all are allowed,
// acquire those of cost > 0, in this one atomic run.
constexpr std::string_view kAll = R"lua(
local keys, now = read_keys(5)
if not keys then return redis.error_reply(now) end
local all = true
for _, k in ipairs(keys) do
  k.d = k.f(k.key, 'peek', k.count, k.w, math.max(k.cost, 1), k.now, ARGV[2], k.slack)
  if k.d[1] == 0 then all = false end
end
local reply = {now}
for _, k in ipairs(keys) do
  if all and k.cost > 0 then
    k.d = k.f(k.key, 'acquire', k.count, k.w, k.cost, k.now, ARGV[2], k.slack)
  end
  for j = 1, 4 do reply[#reply + 1] = k.d[j] end
end
return reply
)lua";

// The give-back of a reservation that another slot's denial voided (scripts.h).
constexpr std::string_view kRelease = R"lua(
local keys, now = read_keys(7)
if not keys then return redis.error_reply(now) end
local reply = {now}
for _, k in ipairs(keys) do
  local d = k.f(k.key, 'release', k.count, k.w, k.cost, k.now, ARGV[2], k.slack,
                tonumber(ARGV[k.b + 6]), tonumber(ARGV[k.b + 7]))
  for j = 1, 4 do reply[#reply + 1] = d[j] end
end
return reply
)lua";

// The batch script: several single-key calls decided in one run, in order, with one TIME.
// The calls on one key are decided together: its state is read once, each call decided
// on the copy in Lua (the same maths as the single-key functions above), and the result
// written once. A change of algorithm on the key (and for sliding_log a change of `now` or
// window, which prune differently) writes what is held and reads the key again, so the
// answers are those of the calls run one by one. An error stops the run (what was written
// stays written) and answers every call of the batch with it. A sliding_log_packed call
// (algorithm letter s) is decided alone by its function, with no same-key coalescing: one GET
// and one SET each, after what is held for the key is written.
constexpr std::string_view kBatch = R"lua(
local fields = 7
local n = #ARGV / fields
if n < 1 or n ~= math.floor(n) then
  return redis.error_reply('ERR sluice: a batch of ' .. #ARGV .. ' arguments')
end
local clock
local function server_now()
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return clock
end

local function gcra_load(key)
  local v = redis.pcall('GET', key)
  return {tat = type(v) == 'string' and tonumber(v) or 0}
end
local function gcra_step(s, op, count, w, cost, now, slack)
  local t = math.floor((w + count - 1) / count)
  local burst = t * count
  local tat = s.tat
  if op == 'r' then
    if tat > now then
      tat = tat - math.min(tat - now, cost * t)
      s.tat, s.ttl, s.slack = tat, tat - now, slack
    end
    op, cost = 'p', 1
  end
  local tat0 = math.max(tat, now)
  local new_tat = tat0 + cost * t
  if new_tat - now <= burst then
    if op == 'a' then
      s.tat, s.ttl, s.slack = new_tat, new_tat - now, slack
      return {1, math.floor((burst - (new_tat - now)) / t), 0, new_tat - now}
    end
    return {1, math.max(0, math.floor((burst - (tat0 - now)) / t)), 0, tat0 - now}
  end
  return {0, math.max(0, math.floor((burst - (tat0 - now)) / t)), new_tat - now - burst,
          tat0 - now}
end
local function gcra_store(key, s)
  if s.ttl then redis.call('SET', key, int(s.tat), 'PX', ttl_ms(s.ttl, s.slack)) end
end

local function counter_load(key)
  local s = {ws = 0, prev = 0, cur = 0, held = false}
  local v = redis.pcall('GET', key)
  if type(v) == 'string' then
    local a, b, c = string.match(v, '^(%-?%d+) (%d+) (%d+)$')
    if a then s.ws, s.prev, s.cur, s.held = tonumber(a), tonumber(b), tonumber(c), true end
  end
  return s
end
local function counter_step(s, op, count, w, cost, now, slack)
  local ws, prev, cur = s.ws, s.prev, s.cur
  local aligned = now - now % w
  if ws <= aligned then
    if ws < aligned - w then
      prev, cur = 0, 0
    elseif ws < aligned then
      prev, cur = cur, 0
    end
    ws = aligned
  end
  if op == 'r' then
    if s.held then
      local from_cur = math.min(cost, cur)
      cur, prev = cur - from_cur, prev - math.min(cost - from_cur, prev)
      s.ws, s.prev, s.cur, s.ttl, s.slack = ws, prev, cur, ws + 2 * w - now, slack
    end
    op, cost = 'p', 1
  end
  local elapsed = math.max(0, now - ws)
  local estimate = cur + weighted(prev, w - elapsed, w)
  local allowed = estimate + cost <= count
  local remaining, retry = 0, 0
  if allowed and op == 'a' then
    cur = cur + cost
    remaining = count - estimate - cost
    s.ws, s.prev, s.cur, s.ttl, s.slack, s.held = ws, prev, cur, ws + 2 * w - now, slack, true
  else
    remaining = math.max(0, count - estimate)
    if not allowed then
      if cur + cost <= count then
        retry = decay_point(prev, count - cost - cur, w) - elapsed
      else
        retry = (w - elapsed) + decay_point(cur, count - cost, w)
      end
    end
  end
  local reset_after = 0
  if cur > 0 then reset_after = (w - elapsed) + w elseif prev > 0 then reset_after = w - elapsed end
  return {allowed and 1 or 0, remaining, retry, reset_after}
end
local function counter_store(key, s)
  if s.ttl then
    redis.call('SET', key, int(s.ws) .. ' ' .. int(s.prev) .. ' ' .. int(s.cur), 'PX',
               ttl_ms(s.ttl, s.slack))
  end
end

-- sliding_log: the set as pruned at one (now, window), then the members admitted since
-- (`adds`, oldest first, each {at, cost, token}) kept here until the store.
local function log_load(key, now, w)
  local s = {now = now, w = w, old = 0, used = 0}
  s.other = type(redis.pcall('ZREMRANGEBYSCORE', key, '-inf', secs(now - w))) == 'table'
  if not s.other then
    s.old = redis.call('ZCARD', key)
    s.used = s.old
    if s.old > 0 then
      local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      s.newest = top[2] and us_of(top[2])
    end
  end
  return s
end
-- The time (µs) of the entry of rank r (from 0, oldest first) among the set's and the adds.
local function log_rank(key, s, r)
  if r < s.old then
    if not s.ranks then s.ranks = {} end
    local v = s.ranks[r]
    if not v then
      v = us_of(redis.call('ZRANGE', key, r, r, 'WITHSCORES')[2])
      s.ranks[r] = v
    end
    return v
  end
  r = r - s.old
  for _, a in ipairs(s.adds) do
    if r < a.cost then return a.at end
    r = r - a.cost
  end
end
local function log_step(key, s, op, count, cost, token, slack)
  local now, w = s.now, s.w
  if op == 'r' then
    local removed = 0
    if s.used > 0 and cost > 0 then  -- the newest: the adds, then the set's
      local left = cost
      if not s.adds then s.adds = {} end
      while left > 0 and #s.adds > 0 do
        local a = s.adds[#s.adds]
        local k = math.min(left, a.cost)
        a.cost, left, removed = a.cost - k, left - k, removed + k
        if a.cost == 0 then s.adds[#s.adds] = nil end
      end
      if left > 0 and s.old > 0 then
        local r = redis.call('ZREMRANGEBYRANK', key, string.format('%d', -left), -1)
        s.old, removed, s.ranks = s.old - r, removed + r, nil
      end
    end
    if removed > 0 then
      s.used = s.used - removed
      if #s.adds > 0 then
        s.newest = s.adds[#s.adds].at
      elseif s.old > 0 then
        s.newest = us_of(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2])
      else
        s.newest = nil
      end
      if s.newest then s.ttl, s.slack = s.newest - now + w + 60000000, slack end
    end
    op, cost = 'p', 1
  end
  local used = s.used
  local allowed = used + cost <= count
  if allowed and op == 'a' then
    if s.other then s.del, s.other = true, false end
    local first = now
    if s.newest and s.newest > first then first = s.newest end
    if not s.adds then s.adds = {} end
    s.adds[#s.adds + 1] = {at = first, cost = cost, token = token}
    s.used, s.newest = used + cost, first
    s.ttl, s.slack = first - now + w + 60000000, slack
    return {1, count - used - cost, 0, first + w - now}
  end
  local retry = 0
  if not allowed then retry = math.max(1, log_rank(key, s, used + cost - count - 1) + w - now) end
  local reset_after = 0
  if s.newest then reset_after = s.newest + w - now end
  return {allowed and 1 or 0, math.max(0, count - used), retry, reset_after}
end
local function log_store(key, s)
  if s.del then redis.call('DEL', key) end
  local adds = s.adds
  if adds and #adds == 1 and adds[1].cost == 1 then  -- the usual case, without unpack
    local score = secs(adds[1].at)
    redis.call('ZADD', key, score, score .. ':' .. adds[1].token .. ':1')
  elseif adds then
    local args = {}
    for _, a in ipairs(adds) do
      local score = secs(a.at)
      for i = 1, a.cost do
        args[#args + 1] = score
        args[#args + 1] = score .. ':' .. a.token .. ':' .. i
        if #args >= 2000 then
          redis.call('ZADD', key, unpack(args))
          args = {}
        end
      end
    end
    if #args > 0 then redis.call('ZADD', key, unpack(args)) end
  end
  if s.ttl then redis.call('PEXPIRE', key, ttl_ms(s.ttl, s.slack)) end
end

local stores = {l = log_store, c = counter_store, g = gcra_store}
local modes = {}
for _, o in ipairs({'a', 'p', 'r'}) do
  for _, a in ipairs({'l', 'c', 'g', 's'}) do modes[o .. a] = {o, a} end
end
local op_names = {a = 'acquire', p = 'peek', r = 'refund'}
-- Each key's state, read at its first call and written after its last (or when a call on
-- the key needs it read afresh); keys are independent, so the order of the writes does
-- not matter.
local held, reply = {}, {}
for i = 1, n do
  local b = (i - 1) * fields
  local k = tonumber(ARGV[b + 1])
  local key = KEYS[k]
  local mode = modes[ARGV[b + 2]]
  if not key or not mode then
    return redis.error_reply('ERR sluice: bad call ' .. i .. ' in a batch')
  end
  local op, a = mode[1], mode[2]
  local count, w, cost = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local now, slack = tonumber(ARGV[b + 6]), 60000000
  if not now then now, slack = server_now(), 0 end
  local h = held[k]
  if a == 's' then
    -- sliding_log_packed: each call decided alone on the key, after what is held is written.
    if h then stores[h.a](key, h.s) end
    held[k] = nil
    reply[i] = sliding_log_packed(key, op_names[op], count, w, cost, now, '', slack)
  else
    if not h or h.a ~= a or (a == 'l' and (now ~= h.now or w ~= h.w)) then
      if h then stores[h.a](key, h.s) end
      h = {a = a, now = now, w = w}
      if a == 'l' then
        h.s = log_load(key, now, w)
      elseif a == 'c' then
        h.s = counter_load(key)
      else
        h.s = gcra_load(key)
      end
      held[k] = h
    end
    if a == 'l' then
      reply[i] = log_step(key, h.s, op, count, cost, ARGV[b + 7], slack)
    elseif a == 'c' then
      reply[i] = counter_step(h.s, op, count, w, cost, now, slack)
    else
      reply[i] = gcra_step(h.s, op, count, w, cost, now, slack)
    end
  end
end
for k, h in pairs(held) do stores[h.a](KEYS[k], h.s) end
return reply
)lua";

struct built_sources {
  std::array<std::string, 3> single;  // indexed by algorithm
  std::string packed_log;             // sliding_log, log_layout=packed
  std::string all;
  std::string release;
  std::string batch;
};

// Returns the single-key script of the algorithm `name`, defined by `pieces`.
std::string single_script(std::initializer_list<std::string_view> pieces, std::string_view name) {
  std::string out;
  for (const std::string_view p : pieces) out.append(p);
  out.append(kSingleBefore).append(name).append(kSingleAfter);
  return out;
}

// Returns every script, put together once (the first call, at a store's construction).
const built_sources& sources() {
  static const built_sources built = [] {
    built_sources b;
    b.single[static_cast<std::size_t>(algorithm::gcra)] =
        single_script({kTtl, kInt, kGcra}, "gcra");
    b.single[static_cast<std::size_t>(algorithm::sliding_counter)] =
        single_script({kTtl, kInt, kSlidingCounter}, "sliding_counter");
    b.single[static_cast<std::size_t>(algorithm::sliding_log)] =
        single_script({kTtl, kSlidingLog}, "sliding_log");
    b.packed_log = single_script({kTtl, kSlidingLogPacked}, "sliding_log_packed");
    std::string all_algorithms;
    all_algorithms.append(kTtl).append(kInt).append(kGcra).append(kSlidingCounter);
    all_algorithms.append(kSlidingLog).append(kSlidingLogPacked).append(kKeys);
    b.all = all_algorithms + std::string(kAll);
    b.release = all_algorithms + std::string(kRelease);
    b.batch.append(kTtl).append(kInt).append(kSlidingCounter).append(kSlidingLog);
    b.batch.append(kSlidingLogPacked).append(kBatch);
    return b;
  }();
  return built;
}

}  // namespace

std::string_view script_source(algorithm a) noexcept {
  return sources().single[static_cast<std::size_t>(a)];
}

std::string_view packed_log_script_source() noexcept { return sources().packed_log; }

std::string_view acquire_all_script_source() noexcept { return sources().all; }

std::string_view release_script_source() noexcept { return sources().release; }

std::string_view batch_script_source() noexcept { return sources().batch; }

}  // namespace sluice::redis
