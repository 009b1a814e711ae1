#!/usr/bin/env bash
# sliding_log's two Redis layouts against each other on one local Redis: the reference's
# sorted set (the default) and log_layout=packed. Each round runs both back to back, the
# order swapped every round, FLUSHALL before each run; prints per run decisions/s, p50/p99
# and redis-server CPU per decision (µs of its user + system time over decisions), then the
# median and range over the rounds.
#
# Environment: SLUICE (./build/release/sluice), ROUNDS (3), BENCH_SECONDS (4), BENCH_KEYS
# (10000), BENCH_INFLIGHT (256), BENCH_LIMIT (1000000/1s), REDIS_SERVER (redis-server),
# STORE_OPTIONS (more URI options for both, e.g. "&batch=0").
set -euo pipefail
cd "$(dirname "$0")/.."

sluice=${SLUICE:-./build/release/sluice}
rounds=${ROUNDS:-3}
run_seconds=${BENCH_SECONDS:-4}
keys=${BENCH_KEYS:-10000}
inflight=${BENCH_INFLIGHT:-256}
limit=${BENCH_LIMIT:-1000000/1s}
redis_server=${REDIS_SERVER:-redis-server}
store_options=${STORE_OPTIONS:-}

die() {
  echo "packed_compare: $*" >&2
  exit 1
}
for tool in "$redis_server" redis-cli awk; do
  command -v "$tool" >/dev/null || die "$tool not found (make deps installs it)"
done
[[ -x $sluice ]] || die "$sluice not found; build it first (make build)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-packed-bench.XXXXXX")
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
echo "redis-server $(cli INFO server | sed -nE 's/^redis_version:([^\r]*).*/\1/p')" \
  "on 127.0.0.1:$port (pid $redis_pid), $(nproc) CPUs; $(uptime)"

# Runs one layout; appends "layout rps p50 p99 redis_us_per_decision" to $tmp/results.
run_layout() {
  local layout=$1 store="redis://127.0.0.1:$port?timeout=1s$store_options" out r0 r1
  [[ $layout == packed ]] && store+="&log_layout=packed"
  out=$tmp/$layout.json
  cli FLUSHALL >/dev/null
  r0=$(cpu_seconds "$redis_pid")
  "$sluice" bench --store "$store" --algorithm sliding_log --limit "$limit" --keys "$keys" \
    --inflight "$inflight" --seconds "$run_seconds" >"$out" 2>"$out.err" || true
  r1=$(cpu_seconds "$redis_pid")
  local decisions rps p50 p99 failed us
  decisions=$(field decisions "$out")
  [[ -n $decisions ]] || die "sluice bench ($layout) failed: $(cat "$out.err")"
  rps=$(field per_second "$out")
  p50=$(field p50_us "$out")
  p99=$(field p99_us "$out")
  failed=$(($(field errors "$out") + $(field timeouts "$out")))
  ((failed == 0)) || echo "warning: $failed calls failed ($layout)"
  us=$(awk -v a="$r0" -v b="$r1" -v d="$decisions" 'BEGIN { printf "%.2f", 1e6 * (b - a) / d }')
  echo "$layout $rps $p50 $p99 $us" >>"$tmp/results"
  printf '  %-9s %10.0f/s p50 %6s us p99 %6s us, redis %s us/decision\n' \
    "$layout" "$rps" "$p50" "$p99" "$us"
}

for ((round = 1; round <= rounds; round++)); do
  echo "round $round"
  if ((round % 2)); then order="reference packed"; else order="packed reference"; fi
  for layout in $order; do run_layout "$layout"; done
done

echo "median (range) over $rounds rounds:"
for layout in reference packed; do
  col() { awk -v l="$layout" -v c="$1" '$1 == l { print $c }' "$tmp/results"; }
  # shellcheck disable=SC2046
  printf '  %-9s decisions/s %s, p50 us %s, p99 us %s, redis us/decision %s\n' "$layout" \
    "$(stats $(col 2))" "$(stats $(col 3))" "$(stats $(col 4))" "$(stats $(col 5))"
done
