#!/usr/bin/env bash
# The Redis Cluster store against the single-server Redis store, side by side in one run
# (`make bench-cluster`; figures and analysis in docs/BENCHMARKS.md). The same `sluice bench`
# (one process, acquires through the store's async API, BENCH_INFLIGHT in flight, the same
# BENCH_KEYS keys, every decision allowed) runs against:
#   single   one redis-server (one connection, the default pool);
#   single3  the same redis-server with pool=3 (as many connections as the cluster client);
#   cluster  a 3-master / 3-replica Redis Cluster on loopback (scripts/redis-cluster.sh),
#            one connection per master;
#   cluster0 a 3-master cluster without replicas, to show what replication costs.
# Each pair of runs is repeated BENCH_ROUNDS times, alternating, for sliding_log and gcra;
# the table gives the medians. redis% is the CPU time of the Redis masters over wall time
# (100 = one core, summed over the masters for the cluster); replicas% the same for the
# cluster's replicas, which apply every write too; client% the same for `sluice bench`.
# "per master-CPU" is decisions/s * 100 / redis%: decisions per second of master CPU, a
# rough bound on what one master would do with a core of its own and a client that keeps
# up. Everything is stopped by pid on exit.
#
# Environment: SLUICE (./build/release/sluice), BENCH_SECONDS (5), BENCH_KEYS (10000),
# BENCH_INFLIGHT (256), BENCH_ROUNDS (3), REDIS_SERVER (redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

sluice=${SLUICE:-./build/release/sluice}
run_seconds=${BENCH_SECONDS:-5}
keys=${BENCH_KEYS:-10000}
inflight=${BENCH_INFLIGHT:-256}
rounds=${BENCH_ROUNDS:-3}
redis_server=${REDIS_SERVER:-redis-server}
count=1000000 # the limit, 1000000 per 1 s: far above what any run asks of one key

die() {
  echo "cluster_compare: $*" >&2
  exit 1
}
for tool in "$redis_server" redis-cli awk; do
  command -v "$tool" >/dev/null || die "$tool not found (make deps installs it)"
done
[[ -x $sluice ]] || die "$sluice not found; build it first (make build)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-cluster-bench.XXXXXX")
redis_pid=
cleanup() {
  if [[ -n $redis_pid ]]; then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  bash scripts/redis-cluster.sh stop "$tmp/cluster" >/dev/null 2>&1 || true
  bash scripts/redis-cluster.sh stop "$tmp/cluster0" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=benchmarks/lib.sh
source benchmarks/lib.sh
start_redis "$redis_server"
[[ -n $redis_pid ]] || die "could not start redis-server"
single_port=$port
mkdir -p "$tmp/cluster" "$tmp/cluster0"
seeds=$(bash scripts/redis-cluster.sh start "$tmp/cluster" --owner-pid $$ | tail -n 1) ||
  die "could not start the cluster"
seeds0=$(bash scripts/redis-cluster.sh start "$tmp/cluster0" --replicas 0 --owner-pid $$ |
  tail -n 1) || die "could not start the cluster without replicas"
master_pids=() replica_pids=() master_ports=() master0_pids=()
while read -r p pid role _; do
  if [[ $role == master ]]; then
    master_pids+=("$pid")
    master_ports+=("$p")
  else
    replica_pids+=("$pid")
  fi
done <"$tmp/cluster/nodes"
while read -r p pid _ _; do
  master0_pids+=("$pid")
  master_ports+=("$p")
done <"$tmp/cluster0/nodes"

cpu_of() { # pids...: their CPU seconds, summed
  local total=0 pid
  for pid in "$@"; do total=$(awk -v a="$total" -v b="$(cpu_seconds "$pid")" 'BEGIN { print a + b }'); done
  echo "$total"
}
now() { date +%s.%N; }
pct() { awk -v a="$1" -v b="$2" -v s="$3" -v e="$4" 'BEGIN { printf "%.0f", 100 * (b - a) / (e - s) }'; }
flush() {
  redis-cli -p "$single_port" FLUSHALL >/dev/null
  for p in "${master_ports[@]}"; do redis-cli -p "$p" FLUSHALL >/dev/null; done
}

declare -A results # "<algo> <target>" -> "rps p50 p99 redis% replicas% client%" lines
warnings=()
# One `sluice bench` of `algo` against `target`; appends a result line.
run() {
  local algo=$1 target=$2 store pids=() out=$tmp/bench.json m0 m1 r0 r1 t0 t1 failed times
  local TIMEFORMAT='%U %S'
  case $target in
    single) store="redis://127.0.0.1:$single_port?timeout=1s" pids=("$redis_pid") ;;
    single3) store="redis://127.0.0.1:$single_port?timeout=1s&pool=3" pids=("$redis_pid") ;;
    cluster) store="redis+cluster://$seeds?timeout=1s" pids=("${master_pids[@]}") ;;
    cluster0) store="redis+cluster://$seeds0?timeout=1s" pids=("${master0_pids[@]}") ;;
  esac
  m0=$(cpu_of "${pids[@]}")
  r0=$(cpu_of "${replica_pids[@]}")
  t0=$(now)
  times=$({ time "$sluice" bench --store "$store" --algorithm "$algo" --limit "$count/1s" \
    --keys "$keys" --seconds "$run_seconds" --inflight "$inflight" >"$out" 2>"$out.err"; } 2>&1) ||
    true
  t1=$(now)
  m1=$(cpu_of "${pids[@]}")
  r1=$(cpu_of "${replica_pids[@]}")
  [[ -n $(field per_second "$out") ]] || die "sluice bench failed: $(cat "$out.err")"
  echo "$algo $target: $(cat "$out")"
  failed=$(($(field errors "$out") + $(field timeouts "$out")))
  ((failed == 0)) || warnings+=("$failed calls of $algo on $target failed (errors + timeouts)")
  results["$algo $target"]+="$(field per_second "$out") $(field p50_us "$out") $(field p99_us "$out") $(pct "$m0" "$m1" "$t0" "$t1") $(pct "$r0" "$r1" "$t0" "$t1") $(pct 0 "$(awk -v u="${times% *}" -v s="${times#* }" 'BEGIN { print u + s }')" "$t0" "$t1")"$'\n'
  flush
}

# The median of column $2 of the lines in $1.
median() { printf '%s' "$1" | awk -v c="$2" 'NF { print $c }' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "redis-server $(redis-cli -p "$single_port" INFO server | sed -nE 's/^redis_version:([^\r]*).*/\1/p')," \
  "single on :$single_port, cluster $seeds, cluster0 $seeds0; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
algos=(sliding_log gcra)
for algo in "${algos[@]}"; do
  for ((i = 1; i <= rounds; i++)); do
    for target in single single3 cluster cluster0; do run "$algo" "$target"; done
  done
done

echo
echo "medians of $rounds runs; $keys keys, $inflight in flight, ${run_seconds}s each; $(nproc) CPUs," \
  "load average now $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-36s %12s %9s %9s %8s %10s %8s %14s\n' "" decisions/s "p50 ms" "p99 ms" "redis%" \
  "replicas%" "client%" "per master-CPU"
for algo in "${algos[@]}"; do
  for target in single single3 cluster cluster0; do
    lines=${results["$algo $target"]}
    printf '%-36s %12.0f %9.3f %9.3f %8s %10s %8s %14.0f\n' "$algo: $target" "$(median "$lines" 1)" \
      "$(awk -v v="$(median "$lines" 2)" 'BEGIN { print v / 1000 }')" \
      "$(awk -v v="$(median "$lines" 3)" 'BEGIN { print v / 1000 }')" \
      "$(median "$lines" 4)" "$([[ $target == cluster ]] && median "$lines" 5 || echo -)" \
      "$(median "$lines" 6)" "$(awk -v r="$(median "$lines" 1)" -v p="$(median "$lines" 4)" \
        'BEGIN { print (p > 0 ? 100 * r / p : 0) }')"
  done
  c=$(median "${results["$algo cluster"]}" 1)
  c0=$(median "${results["$algo cluster0"]}" 1)
  s=$(median "${results["$algo single"]}" 1)
  s3=$(median "${results["$algo single3"]}" 1)
  awk -v c="$c" -v c0="$c0" -v s="$s" -v s3="$s3" -v a="$algo" 'BEGIN {
    printf "%s: cluster / single = %.2f, cluster / single3 = %.2f, per master = %.0f decisions/s;", a, c / s, c / s3, c / 3
    printf " without replicas: / single = %.2f, per master = %.0f\n", c0 / s, c0 / 3 }'
done
for w in "${warnings[@]}"; do echo "warning: $w"; done
