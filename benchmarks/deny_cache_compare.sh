#!/usr/bin/env bash
# The deny cache on a hot key (`make bench-deny-cache`; figures in docs/BENCHMARKS.md, "Deny
# cache"): one local Redis, one key hammered far over its limit, BENCH_INFLIGHT calls in
# flight, `sluice bench --keys 1` through a limiter with the cache off (--limiter) and on
# (--deny-cache), alternating round by round, BENCH_ROUNDS rounds of BENCH_SECONDS each, for
# each limit in BENCH_LIMITS:
#   - 100/1m: an abusive client far over a long window (after the first 100, every wait is
#     seconds long);
#   - RATE/1s: a per-second limit a tenth of what the limiter alone gets through on this
#     Redis (measured first: one round of --limiter on the key with every call admitted;
#     BENCH_RATE_LIMIT sets it instead), so the key is 10x over its limit without the cache
#     too; the waits are about a millisecond, so the cache expires often and Redis decides
#     again.
# Each round runs on a fresh key prefix. redis% and client% are the CPU time of Redis and of
# `sluice bench` over wall time (100 = one core): the rounds show what the cache saves Redis,
# and per_client_cpu_s (decisions per CPU second of the client) what one process would get
# with a core to itself on a machine whose cores are busy with other work. It starts its own redis-server on
# a free loopback port in a temporary directory and stops it (by pid) on exit.
#
# Environment: SLUICE (./build/release/sluice), BENCH_SECONDS (3), BENCH_ROUNDS (5),
# BENCH_INFLIGHT (256), BENCH_RATE_LIMIT (measured), BENCH_ALGORITHM (sliding_log),
# REDIS_SERVER (redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

sluice=${SLUICE:-./build/release/sluice}
run_seconds=${BENCH_SECONDS:-3}
rounds=${BENCH_ROUNDS:-5}
inflight=${BENCH_INFLIGHT:-256}
rate=${BENCH_RATE_LIMIT:-}
algorithm=${BENCH_ALGORITHM:-sliding_log}
redis_server=${REDIS_SERVER:-redis-server}

die() {
  echo "deny_cache_compare: $*" >&2
  exit 1
}
for tool in "$redis_server" redis-cli awk sort /usr/bin/time; do
  command -v "$tool" >/dev/null || die "$tool not found (make deps installs it)"
done
[[ -x $sluice ]] || die "$sluice not found; build it first (make build)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-deny-bench.XXXXXX")
redis_pid=
cleanup() {
  if [[ -n $redis_pid ]]; then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=benchmarks/lib.sh
source benchmarks/lib.sh
start_redis "$redis_server"
[[ -n $redis_pid ]] || die "could not start redis-server"
# A long deadline: on a loaded machine a stall past the default 50 ms would open the
# breaker, and a fallback is no measure of anything (`sluice bench` counts them as errors).
store="redis://127.0.0.1:$port?timeout=1s"
echo "redis-server on 127.0.0.1:$port (pid $redis_pid), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "hot key: --keys 1, --inflight $inflight, $algorithm, $rounds rounds x ${run_seconds}s, alternating"

# One round: prints "per_second redis% client% per_client_cpu_s allowed denied errors p50 p99"
# (errors: failed calls, timeouts and fallbacks).
round() {
  local mode=$1 limit=$2 prefix=$3 before after out=$tmp/out.json
  before=$(cpu_seconds "$redis_pid")
  /usr/bin/time -f '%U %S' -o "$tmp/time" "$sluice" bench --store "$store" "$mode" --keys 1 \
    --limit "$limit" --algorithm "$algorithm" --inflight "$inflight" --seconds "$run_seconds" \
    --prefix "$prefix" >"$out" || true
  after=$(cpu_seconds "$redis_pid")
  awk -v a="$after" -v b="$before" -v s="$(field seconds "$out")" \
    -v ps="$(field per_second "$out")" -v al="$(field allowed "$out")" \
    -v de="$(field denied "$out")" -v p50="$(field p50_us "$out")" -v p99="$(field p99_us "$out")" \
    -v er="$(($(field errors "$out") + $(field timeouts "$out")))" \
    -v cpu="$(awk '{ print $1 + $2 }' "$tmp/time")" -v n="$(field decisions "$out")" \
    'BEGIN { printf "%.0f %.0f %.0f %.0f %s %s %s %s %s\n", ps, 100 * (a - b) / s, 100 * cpu / s,
             n / cpu, al, de, er, p50, p99 }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
range() { sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'; }

if [[ -z $rate ]]; then
  read -r all _ < <(round --limiter 1000000/1s calibrate)
  rate=$((all / 10))
  echo "the limiter alone, every call admitted: $all/s; the rate limit: $rate/1s"
fi

for limit in 100/1m "$rate/1s"; do
  echo
  echo "limit $limit"
  printf '%-6s %-13s %11s %7s %8s %13s %8s %9s %7s %9s %9s\n' round mode per_second redis% \
    client% per_client_cpu_s allowed denied errors p50_us p99_us
  for f in off on off_redis on_redis off_cpu on_cpu; do : >"$tmp/$f"; done
  for r in $(seq "$rounds"); do
    for mode in --limiter --deny-cache; do
      tag=off && [[ $mode == --deny-cache ]] && tag=on
      read -r ps cpu ccpu pcs al de er p50 p99 < <(round "$mode" "$limit" \
        "hot${r}${tag}${limit%%/*}")
      printf '%-6s %-13s %11s %7s %8s %13s %8s %9s %7s %9s %9s\n' "$r" "$mode" "$ps" "$cpu" \
        "$ccpu" "$pcs" "$al" "$de" "$er" "$p50" "$p99"
      echo "$ps" >>"$tmp/$tag"
      echo "$cpu" >>"$tmp/${tag}_redis"
      echo "$pcs" >>"$tmp/${tag}_cpu"
    done
  done
  off=$(median <"$tmp/off") on=$(median <"$tmp/on")
  echo "median: --limiter $off/s ($(range <"$tmp/off")), redis $(median <"$tmp/off_redis")%," \
    "$(median <"$tmp/off_cpu") per client CPU s; --deny-cache $on/s ($(range <"$tmp/on"))," \
    "redis $(median <"$tmp/on_redis")%, $(median <"$tmp/on_cpu") per client CPU s;" \
    "ratio $(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.1f", a / b }')x"
done
