#!/usr/bin/env bash
# The Redis store against its ceiling and against the reference limiter, on one local Redis,
# in one run (`make bench-redis`; figures and analysis in docs/BENCHMARKS.md):
#   1. the ceiling: redis-benchmark -P 16 -c 50 calling sluice's own sliding_log script by
#      EVALSHA, one round trip per decision, the most this design gets out of this Redis;
#   2. `sluice bench`: one process, sliding_log acquires through the store's async API,
#      BENCH_INFLIGHT calls in flight; then 2 s with one, for the latency of a lone call;
#   3. the reference limiter (Python, 16 asyncio tasks), when its directory is present;
#   4. the ceiling and sluice again for sliding_counter and gcra;
#   5. MEMORY USAGE of one key per algorithm, and of sliding_log keys of 100 and 1000 entries.
# Every decision is allowed (limit 1000000/1s, 10000 keys); FLUSHALL between runs. It starts
# its own redis-server on a free loopback port in a temporary directory and stops it (by pid)
# on exit. redis% and client% are CPU time over wall time (100 = one core).
#
# Environment: SLUICE (./build/release/sluice), BENCH_SECONDS (5), BENCH_KEYS (10000),
# BENCH_INFLIGHT (256), REFERENCE_DIR (../shared/reference), PYTHON (/usr/bin/python3),
# REDIS_SERVER (redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

sluice=${SLUICE:-./build/release/sluice}
run_seconds=${BENCH_SECONDS:-5}
keys=${BENCH_KEYS:-10000}
inflight=${BENCH_INFLIGHT:-256}
reference_dir=${REFERENCE_DIR:-../shared/reference}
python=${PYTHON:-/usr/bin/python3}
redis_server=${REDIS_SERVER:-redis-server}
count=1000000 # the limit, 1000000 per 1 s: far above what any run asks of one key
window_us=1000000

die() {
  echo "redis_compare: $*" >&2
  exit 1
}
for tool in "$redis_server" redis-cli redis-benchmark sha1sum awk; do
  command -v "$tool" >/dev/null || die "$tool not found (make deps installs it)"
done
[[ -x $sluice ]] || die "$sluice not found; build it first (make build)"

# --- a private redis-server ------------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-redis-bench.XXXXXX")
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
cli() { redis-cli -p "$port" "$@"; }
store="redis://127.0.0.1:$port"

# --- measuring -------------------------------------------------------------------------------
redis_cpu() { cpu_seconds "$redis_pid"; }
now() { date +%s.%N; }
# Runs "$@" with its output in $out; sets redis_pct and client_pct for the run.
measure() {
  local out=$1 r0 r1 t0 t1 times TIMEFORMAT='%U %S'
  shift
  r0=$(redis_cpu)
  t0=$(now)
  times=$({ time "$@" >"$out" 2>"$out.err"; } 2>&1) || true
  t1=$(now)
  r1=$(redis_cpu)
  redis_pct=$(awk -v a="$r0" -v b="$r1" -v s="$t0" -v e="$t1" \
    'BEGIN { printf "%.0f", 100 * (b - a) / (e - s) }')
  client_pct=$(awk -v u="${times% *}" -v s="${times#* }" -v a="$t0" -v b="$t1" \
    'BEGIN { printf "%.0f", 100 * (u + s) / (b - a) }')
}
# Prints how many error replies Redis has sent (redis-benchmark counts them as answers).
error_replies() { cli INFO stats | sed -nE 's/^total_error_replies:([0-9]+).*/\1/p'; }
ms() { awk -v v="$1" 'BEGIN { printf "%.3f", v / 1000 }'; }

rows=() # the table: label, decisions/s, p50 ms, p99 ms, in flight, redis%, client%
row() { rows+=("$(printf '%-44s %12.0f %9s %9s %10s %7s %8s' "$@")"); }
declare -A ceiling_rps sluice_rps

# The ceiling for `algo`: redis-benchmark calling the very script sluice runs, by EVALSHA.
ceiling() {
  local algo=$1 script=$tmp/$1.lua sha first requests rps p50 p99 errors
  "$sluice" bench --print-script "$algo" >"$script"
  sha=$(cli -x SCRIPT LOAD <"$script")
  [[ $sha == "$(sha1sum <"$script" | cut -d' ' -f1)" ]] || die "SCRIPT LOAD returned '$sha'"
  local call=(EVALSHA "$sha" 1 "bench:__rand_int__" acquire "$count" "$window_us" 1 ""
    "t__rand_int__")
  # redis-benchmark counts error replies as answers: check that the call decides.
  first=$(cli EVALSHA "$sha" 1 bench:check acquire "$count" "$window_us" 1 "" t0 | head -n 1)
  [[ $first == 1 ]] || die "the $algo script did not allow the first call (reply: $first)"
  # A short first run warms Redis up and sizes the real one to last about BENCH_SECONDS.
  redis-benchmark -p "$port" -P 16 -c 50 -n 20000 -r "$keys" --csv "${call[@]}" >"$tmp/warm.csv"
  requests=$(awk -F'","' -v s="$run_seconds" \
    'NR == 2 { n = int($2 * s); print (n < 50000 ? 50000 : n) }' "$tmp/warm.csv")
  cli FLUSHALL >/dev/null
  errors=$(error_replies)
  echo "redis-benchmark -P 16 -c 50 -n $requests -r $keys EVALSHA <$algo> 1 bench:__rand_int__ ..."
  measure "$tmp/ceiling.csv" redis-benchmark -p "$port" -P 16 -c 50 -n "$requests" \
    -r "$keys" --csv "${call[@]}"
  IFS=, read -r _ rps _ _ p50 _ p99 _ < <(sed -n '2{s/"//g;p}' "$tmp/ceiling.csv")
  [[ -n ${rps:-} ]] || die "redis-benchmark printed no figures: $(cat "$tmp/ceiling.csv.err")"
  (($(error_replies) == errors)) || die "Redis answered errors to redis-benchmark's calls"
  cli FLUSHALL >/dev/null
  ceiling_rps[$algo]=$rps
  row "$algo: redis-benchmark (ceiling)" "$rps" "$p50" "$p99" 800 "$redis_pct" "$client_pct"
}

# `sluice bench` for `algo` with `n` calls in flight for `seconds`.
sluice_bench() {
  local algo=$1 n=$2 seconds=$3 label=$4 out=$tmp/sluice.json failed denied
  echo "sluice bench --algorithm $algo --keys $keys --seconds $seconds --inflight $n"
  measure "$out" "$sluice" bench --store "$store?timeout=1s" --algorithm "$algo" \
    --limit "$count/1s" --keys "$keys" --seconds "$seconds" --inflight "$n"
  cat "$out"
  [[ -n $(field per_second "$out") ]] || die "sluice bench failed: $(cat "$out.err")"
  failed=$(($(field errors "$out") + $(field timeouts "$out")))
  denied=$(field denied "$out")
  ((failed == 0)) || warnings+=("$failed calls of '$label' failed (errors + timeouts)")
  ((denied == 0)) || warnings+=("$denied calls of '$label' were denied")
  cli FLUSHALL >/dev/null
  [[ $n == 1 ]] || sluice_rps[$algo]=$(field per_second "$out")
  row "$label" "$(field per_second "$out")" "$(ms "$(field p50_us "$out")")" \
    "$(ms "$(field p99_us "$out")")" "$n" "$redis_pct" "$client_pct"
}

warnings=()
redis_version=$(cli INFO server | sed -nE 's/^redis_version:([^\r]*).*/\1/p')
echo "redis-server $redis_version on 127.0.0.1:$port (pid $redis_pid), $(nproc) CPUs," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg)"

# --- 1-2. sliding_log: the ceiling, then sluice -------------------------------------------------
ceiling sliding_log
sluice_bench sliding_log "$inflight" "$run_seconds" "sliding_log: sluice (one process)"
sluice_bench sliding_log 1 2 "sliding_log: sluice, one call at a time"

# --- 3. the reference --------------------------------------------------------------------------
reference_rps=
if [[ ! -f $reference_dir/rate_limiter.py ]]; then
  echo "reference: skipped ($reference_dir/rate_limiter.py not found; set REFERENCE_DIR)"
elif ! "$python" -c 'import redis.asyncio' 2>/dev/null; then
  echo "reference: skipped ($python has no redis.asyncio; install python3-redis)"
else
  echo "reference_peer.py --bench $run_seconds --keys $keys --concurrency 16"
  measure "$tmp/reference.json" "$python" tests/support/reference_peer.py \
    --reference-dir "$reference_dir" --port "$port" --bench "$run_seconds" --keys "$keys" \
    --concurrency 16 --limit "$count" --window 1
  cat "$tmp/reference.json"
  reference_rps=$(field per_second "$tmp/reference.json")
  [[ -n $reference_rps ]] || die "the reference failed: $(cat "$tmp/reference.json.err")"
  row "sliding_log: reference (Python)" "$reference_rps" - - 16 "$redis_pct" "$client_pct"
fi
cli FLUSHALL >/dev/null

# --- 4. the O(1) algorithms ----------------------------------------------------------------------
for algo in sliding_counter gcra; do
  ceiling "$algo"
  sluice_bench "$algo" "$inflight" "$run_seconds" "$algo: sluice (one process)"
done

# --- 5. memory per key ---------------------------------------------------------------------------
echo "MEMORY USAGE ... SAMPLES 0"
memory_rows=()
memory_row() { # label key
  memory_rows+=("$(printf '  %-36s %8s bytes  (%s)' "$1" "$(cli MEMORY USAGE "$2" SAMPLES 0)" \
    "$(cli OBJECT ENCODING "$2")")")
}
for algo in sliding_log sliding_counter gcra; do
  "$sluice" check --store "$store" --limit 100/1h --algorithm "$algo" "mem:$algo" >/dev/null
  memory_row "$algo, after 1 acquire" "sluice:mem:$algo"
done
for n in 100 1000; do
  mapfile -t repeated < <(yes "mem:log$n" | head -n "$n")
  "$sluice" check --store "$store" --limit "$((n * 10))/1h" "${repeated[@]}" >/dev/null
  memory_row "sliding_log, $n entries" "sluice:mem:log$n"
done
if [[ -n $reference_rps ]]; then
  "$python" tests/support/reference_peer.py --reference-dir "$reference_dir" --port "$port" \
    --key ref:log100 --limit 1000 --window 3600 --requests 100 >/dev/null
  memory_row "reference sliding_log, 100 entries" "ref:log100"
fi

# --- the table -----------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
verdict() { # ratio target
  awk -v r="$1" -v t="$2" 'BEGIN {
    if (r >= t) printf "met"; else printf "MISSED by %.0f%%", 100 * (t - r) / t }'
}
echo
echo "$keys keys, all allowed; $(nproc) CPUs, load average now $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-44s %12s %9s %9s %10s %7s %8s\n' "" decisions/s "p50 ms" "p99 ms" "in flight" \
  "redis%" "client%"
printf '%s\n' "${rows[@]}"
echo "(the ceiling keeps 800 calls in flight: 50 connections x 16 pipelined)"
r=$(ratio "${sluice_rps[sliding_log]}" "${ceiling_rps[sliding_log]}")
echo "sliding_log: sluice / ceiling   = $r  (target >= 0.8: $(verdict "$r" 0.8))"
if [[ -n $reference_rps ]]; then
  r=$(ratio "${sluice_rps[sliding_log]}" "$reference_rps")
  echo "sliding_log: sluice / reference = $r  (target >= 20: $(verdict "$r" 20))"
  r=$(ratio "${ceiling_rps[sliding_log]}" "$reference_rps")
  echo "sliding_log: ceiling / reference = $r  (what a client that costs nothing would get)"
else
  echo "sliding_log: sluice / reference = n/a (reference skipped)"
fi
for algo in sliding_counter gcra; do
  echo "$algo: sluice / ceiling = $(ratio "${sluice_rps[$algo]}" "${ceiling_rps[$algo]}")"
done
for w in "${warnings[@]}"; do echo "warning: $w"; done
echo "memory per key (MEMORY USAGE key SAMPLES 0):"
printf '%s\n' "${memory_rows[@]}"
