#include "store/redis/scripts.h"

#include <array>
#include <string>

namespace sluice::redis {
namespace {

// The pieces the scripts are put together from (`sources()`). Each algorithm is four Lua
// functions over its state, a table that `<name>_load` reads from the key:
//   <name>_load(key, w, now) -> s
//   <name>_decide(key, s, count, w, cost, now, acquire, token, slack) -> {4 numbers}
//       (with `acquire`, records an admission; the state `s` is then stale)
//   <name>_refund(key, s, count, w, cost, now, slack)       (the core's *_refund; updates s)
//   <name>_release(key, s, count, w, cost, now, slack, token, at, reset)   (updates s)
// `slack` is what TTLs add: 60 s with an explicit `now` (tests, replays, which move time at
// their own pace while TTLs run on the server's real clock), else 0.

constexpr std::string_view kCommon = R"lua(
local function int(x) return string.format('%d', x) end
local function ttl_ms(us, slack) return int(math.max(1, math.ceil((us + slack) / 1000))) end
local function read_now(arg)
  if arg ~= '' then return tonumber(arg), 60000000 end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2]), 0
end
)lua";

// gcra: the key holds the theoretical arrival time as a decimal string.
constexpr std::string_view kGcra = R"lua(
local function gcra_load(key)
  local v = redis.pcall('GET', key)
  return {tat = type(v) == 'string' and tonumber(v) or 0}
end
local function gcra_decide(key, s, count, w, cost, now, acquire, token, slack)
  local t = math.floor((w + count - 1) / count)
  local burst = t * count
  local tat0 = math.max(s.tat, now)
  local new_tat = tat0 + cost * t
  if new_tat - now <= burst then
    if acquire then
      redis.call('SET', key, int(new_tat), 'PX', ttl_ms(new_tat - now, slack))
      return {1, math.floor((burst - (new_tat - now)) / t), 0, new_tat - now}
    end
    return {1, math.max(0, math.floor((burst - (tat0 - now)) / t)), 0, tat0 - now}
  end
  return {0, math.max(0, math.floor((burst - (tat0 - now)) / t)), new_tat - now - burst,
          tat0 - now}
end
local function gcra_refund(key, s, count, w, cost, now, slack)
  local owed = s.tat - now
  if owed <= 0 then return end
  s.tat = s.tat - math.min(owed, cost * math.floor((w + count - 1) / count))
  redis.call('SET', key, int(s.tat), 'PX', ttl_ms(s.tat - now, slack))
end
)lua";

// sliding_counter: the key holds "window_start previous current"; `_load` rolls it forward
// to the window holding `now` (`held`: the key held a counter's state).
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
local function sliding_counter_load(key, w, now)
  local ws, prev, cur, held = 0, 0, 0, false
  local v = redis.pcall('GET', key)
  if type(v) == 'string' then
    local a, b, c = string.match(v, '^(%-?%d+) (%d+) (%d+)$')
    if a then ws, prev, cur, held = tonumber(a), tonumber(b), tonumber(c), true end
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
  return {ws = ws, prev = prev, cur = cur, held = held}
end
local function sliding_counter_save(key, ws, prev, cur, w, now, slack)
  redis.call('SET', key, int(ws) .. ' ' .. int(prev) .. ' ' .. int(cur), 'PX',
             ttl_ms(ws + 2 * w - now, slack))
end
local function sliding_counter_decide(key, s, count, w, cost, now, acquire, token, slack)
  local prev, cur = s.prev, s.cur
  local elapsed = math.max(0, now - s.ws)
  local estimate = cur + weighted(prev, w - elapsed, w)
  local allowed = estimate + cost <= count
  local remaining, retry = 0, 0
  if allowed and acquire then
    cur = cur + cost
    remaining = count - estimate - cost
    sliding_counter_save(key, s.ws, prev, cur, w, now, slack)
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
  local reset = 0
  if cur > 0 then reset = (w - elapsed) + w elseif prev > 0 then reset = w - elapsed end
  return {allowed and 1 or 0, remaining, retry, reset}
end
local function sliding_counter_refund(key, s, count, w, cost, now, slack)
  if not s.held then return end
  local from_cur = math.min(cost, s.cur)
  s.cur = s.cur - from_cur
  s.prev = s.prev - math.min(cost - from_cur, s.prev)
  sliding_counter_save(key, s.ws, s.prev, s.cur, w, now, slack)
end
)lua";

// sliding_log: the reference limiter's sorted set (docs/DESIGN.md, invariant 4). Score =
// Unix seconds with six decimals, one member per unit of cost, named
// "<score>:<token>:<i>" (unique), TTL window + 60 s after the newest. `_load` prunes what
// has left the window; a key holding another algorithm's state reads as empty (`other`),
// and only an acquire replaces it.
constexpr std::string_view kSlidingLog = R"lua(
local function secs(us)
  if us < 0 then return '-' .. string.format('%d.%06d', math.floor(-us / 1000000), -us % 1000000) end
  return string.format('%d.%06d', math.floor(us / 1000000), us % 1000000)
end
local function us_of(score) return math.floor(tonumber(score) * 1000000 + 0.5) end
local function sliding_log_newest(key)
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  return newest[2] and us_of(newest[2])
end
local function sliding_log_load(key, w, now)
  local pruned = redis.pcall('ZREMRANGEBYSCORE', key, '-inf', secs(now - w))
  if type(pruned) == 'table' then return {used = 0, other = true} end
  return {used = redis.call('ZCARD', key), newest = sliding_log_newest(key)}
end
local function sliding_log_decide(key, s, count, w, cost, now, acquire, token, slack)
  local used, newest = s.used, s.newest
  local allowed = used + cost <= count
  if allowed and acquire then
    if s.other then redis.call('DEL', key) end
    local at = now
    if newest and newest > at then at = newest end
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
    redis.call('PEXPIRE', key, ttl_ms(at - now + w + 60000000, slack))
    return {1, count - used - cost, 0, at + w - now}
  end
  local retry = 0
  if not allowed then
    local excess = used + cost - count
    local entry = redis.call('ZRANGE', key, excess - 1, excess - 1, 'WITHSCORES')
    retry = math.max(1, us_of(entry[2]) + w - now)
  end
  local reset = 0
  if newest then reset = newest + w - now end
  return {allowed and 1 or 0, math.max(0, count - used), retry, reset}
end
local function sliding_log_refund(key, s, count, w, cost, now, slack)
  if s.used == 0 then return end
  s.used = s.used - redis.call('ZREMRANGEBYRANK', key, int(-cost), -1)
  s.newest = sliding_log_newest(key)
  if s.newest then redis.call('PEXPIRE', key, ttl_ms(s.newest - now + w + 60000000, slack)) end
end
)lua";

// The single-key script's body, after `load`, `decide` and `refund` are bound to one
// algorithm's functions.
constexpr std::string_view kSingle = R"lua(
local key, count, w, cost = KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now, slack = read_now(ARGV[5])
local s = load(key, w, now)
if ARGV[1] == 'refund' then
  refund(key, s, count, w, cost, now, slack)
  return decide(key, s, count, w, 1, now, false, '', slack)
end
return decide(key, s, count, w, cost, now, ARGV[1] == 'acquire', ARGV[6], slack)
)lua";

// What the multi-key and the release scripts share: the algorithms by name, and each key's
// arguments (`fields` of them per key after ARGV[1..2]) read into a table.
constexpr std::string_view kByName = R"lua(
local algorithms = {
  sliding_log = {sliding_log_load, sliding_log_decide, sliding_log_release},
  sliding_counter = {sliding_counter_load, sliding_counter_decide, sliding_counter_release},
  gcra = {gcra_load, gcra_decide, gcra_release},
}
local function read_keys(fields)
  local n = #KEYS
  if #ARGV ~= 2 + fields * n then
    return nil, 'ERR sluice: ' .. #ARGV .. ' arguments for ' .. n .. ' keys'
  end
  local call_now, call_slack = read_now(ARGV[1])
  local keys = {}
  for i = 1, n do
    local b = 2 + fields * (i - 1)
    local a = algorithms[ARGV[b + 1]]
    if not a then return nil, 'ERR sluice: unknown algorithm ' .. ARGV[b + 1] end
    local k = {key = KEYS[i], a = a, count = tonumber(ARGV[b + 2]), w = tonumber(ARGV[b + 3]),
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
  k.s = k.a[1](k.key, k.w, k.now)
  k.d = k.a[2](k.key, k.s, k.count, k.w, math.max(k.cost, 1), k.now, false, ARGV[2], k.slack)
  if k.d[1] == 0 then all = false end
end
local reply = {now}
for _, k in ipairs(keys) do
  if all and k.cost > 0 then
    k.d = k.a[2](k.key, k.s, k.count, k.w, k.cost, k.now, true, ARGV[2], k.slack)
  end
  for j = 1, 4 do reply[#reply + 1] = k.d[j] end
end
return reply
)lua";

// The give-back of a reservation (an admitted acquire_all on one cluster slot) that another
// slot's denial voided. `at` and `reset` are the reservation's time and reset_after for the
// key. Each algorithm gives back exactly the reservation's units where it can tell them
// apart, and otherwise nothing (units stay spent until they expire: over-counting, never
// under-counting, whatever was decided on the key in between):
//   sliding_log: the reservation's own members (named by its token and time);
//   sliding_counter: from the window it counted in, while that window still counts;
//   gcra: only while the arrival time is still the one the reservation left.
constexpr std::string_view kReleaseFunctions = R"lua(
local function sliding_log_release(key, s, count, w, cost, now, slack, token, at, reset)
  if s.other then return end
  local score = secs(at + reset - w)
  local members = {}
  for i = 1, cost do
    members[#members + 1] = score .. ':' .. token .. ':' .. i
    if #members >= 1000 or i == cost then
      s.used = s.used - redis.call('ZREM', key, unpack(members))
      members = {}
    end
  end
  s.newest = sliding_log_newest(key)
  if s.newest then redis.call('PEXPIRE', key, ttl_ms(s.newest - now + w + 60000000, slack)) end
end
local function sliding_counter_release(key, s, count, w, cost, now, slack, token, at, reset)
  -- An admission counts in window ws with reset_after = 2w - (at - ws); 2w itself is
  -- ambiguous (a window's first microsecond, or a clock that stepped back): nothing then.
  if not s.held or reset >= 2 * w then return end
  local ws = at - (2 * w - reset)
  if s.ws == ws then
    s.cur = s.cur - math.min(cost, s.cur)
  elseif s.ws == ws + w then
    s.prev = s.prev - math.min(cost, s.prev)
  else
    return
  end
  sliding_counter_save(key, s.ws, s.prev, s.cur, w, now, slack)
end
local function gcra_release(key, s, count, w, cost, now, slack, token, at, reset)
  if s.tat ~= at + reset or s.tat <= now then return end
  s.tat = s.tat - cost * math.floor((w + count - 1) / count)
  redis.call('SET', key, int(s.tat), 'PX', ttl_ms(s.tat - now, slack))
end
)lua";

constexpr std::string_view kRelease = R"lua(
local keys, now = read_keys(7)
if not keys then return redis.error_reply(now) end
local reply = {now}
for _, k in ipairs(keys) do
  local s = k.a[1](k.key, k.w, k.now)
  if k.cost > 0 then
    k.a[3](k.key, s, k.count, k.w, k.cost, k.now, k.slack, ARGV[2], tonumber(ARGV[k.b + 6]),
           tonumber(ARGV[k.b + 7]))
  end
  local d = k.a[2](k.key, s, k.count, k.w, math.max(k.cost, 1), k.now, false, ARGV[2], k.slack)
  for j = 1, 4 do reply[#reply + 1] = d[j] end
end
return reply
)lua";

struct built_sources {
  std::array<std::string, 3> single;  // indexed by algorithm
  std::string all;
  std::string release;
};

// Returns `lib` followed by the single-key body bound to the functions named `name`_*.
std::string single_script(std::string_view lib, std::string_view name) {
  std::string out;
  out.append(kCommon).append(lib);
  out.append("local load, decide, refund = ").append(name).append("_load, ");
  out.append(name).append("_decide, ").append(name).append("_refund\n");
  out.append(kSingle);
  return out;
}

// Returns every script, put together once (the first call, at a store's construction).
const built_sources& sources() {
  static const built_sources built = [] {
    built_sources b;
    b.single[static_cast<std::size_t>(algorithm::gcra)] = single_script(kGcra, "gcra");
    b.single[static_cast<std::size_t>(algorithm::sliding_counter)] =
        single_script(kSlidingCounter, "sliding_counter");
    b.single[static_cast<std::size_t>(algorithm::sliding_log)] =
        single_script(kSlidingLog, "sliding_log");
    std::string libraries;
    libraries.append(kCommon).append(kGcra).append(kSlidingCounter).append(kSlidingLog);
    // The multi-key script names the release functions in `algorithms` without using them.
    b.all = libraries + "local sliding_log_release, sliding_counter_release, gcra_release\n";
    b.all.append(kByName).append(kAll);
    b.release = libraries;
    b.release.append(kReleaseFunctions).append(kByName).append(kRelease);
    return b;
  }();
  return built;
}

}  // namespace

std::string_view script_source(algorithm a) noexcept {
  return sources().single[static_cast<std::size_t>(a)];
}

std::string_view acquire_all_script_source() noexcept { return sources().all; }

std::string_view release_script_source() noexcept { return sources().release; }

}  // namespace sluice::redis
