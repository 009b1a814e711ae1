#!/usr/bin/env bash
# Batched scripts against one script per decision, on one local Redis, in one run
# (`make bench-redis OLD_SLUICE=...`; figures and analysis in docs/BENCHMARKS.md, "Batched
# scripts"). OLD is a sluice built from the commit before batching (or any build to
# compare with); NEW is this tree's, run as is (batching on by default). Each round runs
# every case with OLD and NEW back to back, the order swapped every round, so both see the
# same machine; the table gives the median and range of NEW / OLD over the rounds.
#
# Cases (`sluice bench`, BENCH_INFLIGHT calls in flight unless said):
#   <algo>, 10k keys, all allowed (limit 1000000/1s), for each algorithm;
#   hot key: one sliding_log key, limit HOT_LIMIT/1s, far over it (most calls denied);
#   p99: sliding_log, 10k keys, 64 in flight.
# Per run: decisions/s, p50/p99, Redis CPU per decision (µs of redis-server CPU time over
# decisions), and from INFO commandstats (reset before each run) the µs per decision of the
# script calls and of each command the scripts run inside them. The ceiling (redis-benchmark
# calling the single-key sliding_log script by EVALSHA, -P 16 -c 50) is measured once.
#
# Environment: OLD_SLUICE (required), SLUICE (./build/release/sluice), ROUNDS (5),
# BENCH_SECONDS (3), BENCH_KEYS (10000), BENCH_INFLIGHT (256), HOT_LIMIT (100),
# REDIS_SERVER (redis-server), CASES (all: "sliding_log sliding_counter gcra hot p99"),
# NEW_STORE_OPTIONS (more URI options for NEW only, e.g. "&log_layout=packed").
set -euo pipefail
cd "$(dirname "$0")/.."

new=${SLUICE:-./build/release/sluice}
old=${OLD_SLUICE:?set OLD_SLUICE to a sluice built before batching}
rounds=${ROUNDS:-5}
run_seconds=${BENCH_SECONDS:-3}
keys=${BENCH_KEYS:-10000}
inflight=${BENCH_INFLIGHT:-256}
hot_limit=${HOT_LIMIT:-100}
redis_server=${REDIS_SERVER:-redis-server}
cases=${CASES:-sliding_log sliding_counter gcra hot p99}
new_options=${NEW_STORE_OPTIONS:-}

die() {
  echo "batch_compare: $*" >&2
  exit 1
}
for tool in "$redis_server" redis-cli redis-benchmark awk; do
  command -v "$tool" >/dev/null || die "$tool not found (make deps installs it)"
done
[[ -x $new ]] || die "$new not found; build it first (make build)"
[[ -x $old ]] || die "$old not found"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-batch-bench.XXXXXX")
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
now() { date +%s.%N; }

echo "redis-server $(cli INFO server | sed -nE 's/^redis_version:([^\r]*).*/\1/p')" \
  "on 127.0.0.1:$port (pid $redis_pid), $(nproc) CPUs; $(uptime)"
echo "OLD: $old"
echo "NEW: $new (describe: batching on by default)"

# Prints "calls usec" of cmdstat $1 (0 0 when absent).
cmdstat() {
  cli INFO commandstats | tr -d '\r' |
    awk -F'[:=,]' -v c="cmdstat_$1" '$1 == c { print $3, $5; f = 1 } END { if (!f) print 0, 0 }'
}

# The inner commands the scripts run, for the per-part breakdown.
parts=(evalsha eval time zremrangebyscore zcard zrange zadd pexpire get set)

# Runs one case with one build; appends "case build rps p50 p99 redis_us_per_decision
# evalsha_calls <usec per decision of each part...>" to $tmp/results.
run_case() {
  local name=$1 build=$2 bin algo=sliding_log k=$keys limit=1000000/1s n=$inflight out
  bin=$([[ $build == old ]] && echo "$old" || echo "$new")
  case $name in
    hot)
      k=1
      limit=$hot_limit/1s
      ;;
    p99) n=64 ;;
    *) algo=$name ;;
  esac
  out=$tmp/$name.$build.json
  cli FLUSHALL >/dev/null
  cli CONFIG RESETSTAT >/dev/null
  local r0 r1 t0 t1
  r0=$(cpu_seconds "$redis_pid")
  t0=$(now)
  local query="?timeout=1s"
  if [[ $build == new ]]; then query+=$new_options; fi
  "$bin" bench --store "$store$query" --algorithm "$algo" --limit "$limit" --keys "$k" \
    --seconds "$run_seconds" --inflight "$n" >"$out" 2>"$out.err" || true
  t1=$(now)
  r1=$(cpu_seconds "$redis_pid")
  local decisions rps p50 p99 failed
  decisions=$(field decisions "$out")
  [[ -n $decisions ]] || die "sluice bench ($build, $name) failed: $(cat "$out.err")"
  rps=$(field per_second "$out")
  p50=$(field p50_us "$out")
  p99=$(field p99_us "$out")
  failed=$(($(field errors "$out") + $(field timeouts "$out")))
  ((failed == 0)) || echo "warning: $failed calls failed ($build, $name)"
  local line="$name $build $rps $p50 $p99"
  line+=" $(awk -v a="$r0" -v b="$r1" -v d="$decisions" 'BEGIN { printf "%.2f", 1e6 * (b - a) / d }')"
  local calls usec evalsha_calls=0
  for p in "${parts[@]}"; do
    read -r calls usec < <(cmdstat "$p")
    [[ $p == evalsha ]] && evalsha_calls=$calls
    line+=" $(awk -v u="$usec" -v d="$decisions" 'BEGIN { printf "%.2f", u / d }')"
  done
  line+=" $(awk -v c="$evalsha_calls" -v d="$decisions" 'BEGIN { printf "%.1f", d / (c > 0 ? c : 1) }')"
  echo "$line" >>"$tmp/results"
  printf '  %-16s %s %10.0f/s p50 %6s us p99 %6s us, redis %s us/decision, %s decisions/script\n' \
    "$name" "$build" "$rps" "$p50" "$p99" "$(awk '{ print $6 }' <<<"$line")" \
    "$(awk '{ print $NF }' <<<"$line")"
}

# The ceiling: redis-benchmark calling the single-key sliding_log script by EVALSHA.
ceiling() {
  local script=$tmp/sliding_log.lua sha requests=300000
  "$new" bench --print-script sliding_log >"$script"
  sha=$(cli -x SCRIPT LOAD <"$script")
  cli FLUSHALL >/dev/null
  cli CONFIG RESETSTAT >/dev/null
  redis-benchmark -p "$port" -P 16 -c 50 -n "$requests" -r "$keys" --csv \
    EVALSHA "$sha" 1 "bench:__rand_int__" acquire 1000000 1000000 1 "" "t__rand_int__" \
    >"$tmp/ceiling.csv"
  ceiling_rps=$(sed -n '2{s/"//g;p}' "$tmp/ceiling.csv" | cut -d, -f2)
  read -r calls usec < <(cmdstat evalsha)
  echo "ceiling (redis-benchmark -P 16 -c 50, one sliding_log script per call):" \
    "$ceiling_rps/s, evalsha $(awk -v u="$usec" -v c="$calls" 'BEGIN { printf "%.2f", u / c }') us/call"
}

ceiling
for ((round = 1; round <= rounds; round++)); do
  echo "round $round/$rounds (load $(cut -d' ' -f1-3 /proc/loadavg))"
  for c in $cases; do
    if ((round % 2)); then order="old new"; else order="new old"; fi
    for b in $order; do run_case "$c" "$b"; done
  done
done

# --- the tables ----------------------------------------------------------------------------------
echo
echo "after $rounds rounds of ${run_seconds}s; $(uptime)"
echo "ceiling: $ceiling_rps decisions/s (redis-benchmark, one sliding_log script per call)"
printf '%-16s %12s %12s %22s %9s %9s %9s %9s %9s\n' case "OLD/s med" "NEW/s med" \
  "NEW/OLD med [min-max]" "p99 OLD" "p99 NEW" "cpu OLD" "cpu NEW" "per run"
for c in $cases; do
  awk -v c="$c" '
    function median(a, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    $1 == c && $2 == "old" { o++; or[o] = $3; op[o] = $5; oc[o] = $6 }
    $1 == c && $2 == "new" { n++; nr[n] = $3; np[n] = $5; nc[n] = $6; per[n] = $NF }
    END {
      m = (o < n ? o : n); lo = 1e18; hi = 0
      for (i = 1; i <= m; i++) { r[i] = nr[i] / or[i]; if (r[i] < lo) lo = r[i]; if (r[i] > hi) hi = r[i] }
      printf "%-16s %12.0f %12.0f %10.2fx [%.2f-%.2f] %7.0fus %7.0fus %7.2fus %7.2fus %9.1f\n", c,
        median(or, o), median(nr, n), median(r, m), lo, hi, median(op, o), median(np, n),
        median(oc, o), median(nc, n), median(per, n)
    }' "$tmp/results"
done
echo "(cpu: redis-server CPU time per decision; per run: decisions per script run, NEW)"
echo
echo "Redis µs per decision by part (INFO commandstats; medians over rounds; inner commands"
echo "are counted inside the script's own time):"
printf '%-16s %-4s' case build
for p in "${parts[@]}"; do printf ' %9s' "$p"; done
echo
for c in $cases; do
  for b in old new; do
    printf '%-16s %-4s' "$c" "$b"
    for ((i = 0; i < ${#parts[@]}; i++)); do
      awk -v c="$c" -v b="$b" -v col=$((7 + i)) '
        $1 == c && $2 == b { n++; v[n] = $col }
        END {
          for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
          printf " %9.2f", n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        }' "$tmp/results"
    done
    echo
  done
done
cp "$tmp/results" "${RESULTS_OUT:-/dev/null}" 2>/dev/null || true
