#!/usr/bin/env bash
# `sluice serve` as Envoy's rate limit service (gRPC ShouldRateLimit), side by side in one run
# with the same server's HTTP API and with the library on the same Redis (`make bench-grpc`;
# figures and analysis in docs/BENCHMARKS.md, "gRPC (Envoy's rate limit service)"). Every
# decision is allowed (gcra, 1000000/1s, BENCH_KEYS keys). ROUNDS rounds; within a round each
# group's sides run one after the other, in the opposite order the next round:
#
#   memory store: one `sluice serve --io-threads 1` (HTTP and gRPC listeners), pinned to CPU 0,
#   its clients on the other CPUs, when taskset is there and there are 2 CPUs or more:
#     grpc1   `sluice bench --grpc`, one descriptor (user=<key>), BENCH_INFLIGHT calls in flight;
#     http    wrk -tBENCH_THREADS -cBENCH_INFLIGHT (keep-alive), POST /v1/acquire
#             {"key","policy"}: the same number of requests in flight;
#     -> (a) server CPU per decision, grpc1 / http; (b) p50 and p99 of grpc1.
#   Redis: a private redis-server and a second `sluice serve` on it (no pinning; FLUSHALL
#   before every run):
#     lib     `sluice bench --store redis://...`: the library alone, BENCH_REDIS_INFLIGHT in flight;
#     rgrpc1  `sluice bench --grpc`, one descriptor, the same in flight;
#     rgrpc2  two descriptors (user, remote_address), decided all or nothing;
#     -> (c) decisions/s, rgrpc1 / lib; (d) rgrpc2 / rgrpc1, server CPU per request and
#        decisions/s.
#
# Server CPU is the server process's utime + stime (/proc/<pid>/stat, all its threads) over the
# run, divided by the decisions the client counted (a request with two descriptors is one
# decision). The Redis rounds are skipped, saying why, when the server on Redis does not decide
# through Redis (the envoy config's on_failure is deny, so a store failure shows as denials;
# and Redis must have run a command per decision of a warm-up). Ratios are taken round by
# round; the summary gives their medians and ranges (min-max). Everything started is stopped
# by pid on exit.
#
# Environment: SLUICE (./build/release/sluice), WRK (wrk), REDIS_SERVER (redis-server),
# ROUNDS (5), BENCH_SECONDS (5), BENCH_KEYS (10000), BENCH_INFLIGHT (64), BENCH_THREADS (2),
# BENCH_REDIS_INFLIGHT (256), BENCH_CHANNELS (1, gRPC connections of the client), REDIS (1; 0
# skips the Redis rounds).
set -euo pipefail
cd "$(dirname "$0")/.."

sluice=${SLUICE:-./build/release/sluice}
wrk=${WRK:-wrk}
redis_server=${REDIS_SERVER:-redis-server}
rounds=${ROUNDS:-5}
seconds=${BENCH_SECONDS:-5}
keys=${BENCH_KEYS:-10000}
inflight=${BENCH_INFLIGHT:-64}
threads=${BENCH_THREADS:-2}
redis_inflight=${BENCH_REDIS_INFLIGHT:-256}
channels=${BENCH_CHANNELS:-1}
with_redis=${REDIS:-1}
limit=1000000/1s # far above what any run asks of one key: every decision is allowed

die() {
  echo "grpc_compare: $*" >&2
  exit 1
}
for tool in "$wrk" awk; do
  command -v "$tool" >/dev/null || die "$tool not found (make deps installs it)"
done
[[ -x $sluice ]] || die "$sluice not found; build it first (make build)"
"$sluice" bench --grpc 127.0.0.1:1 --seconds 0.001 2>&1 | grep -q 'without gRPC' &&
  die "$sluice was built without gRPC (SLUICE_WITH_GRPC)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-grpc-bench.XXXXXX")
pids=()
redis_pid=
cleanup() {
  for pid in "${pids[@]}" $redis_pid; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}" $redis_pid; do
    for _ in {1..50}; do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=benchmarks/lib.sh
source benchmarks/lib.sh

server_cpu=() client_cpu=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
  server_cpu=(taskset -c 0)
  client_cpu=(taskset -c "1-$(($(nproc) - 1))")
fi

# --- configuration: one HTTP policy and one Envoy domain with the same limit -------------------
mkdir -p "$tmp/envoy"
cat >"$tmp/envoy/bench.yaml" <<EOF
domain: bench
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: ${limit%/*}, algorithm: gcra, on_failure: deny}
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: ${limit%/*}, algorithm: gcra, on_failure: deny}
EOF
# serve_config FILE STORE
serve_config() {
  cat >"$1" <<EOF
listen: 127.0.0.1:0
grpc_listen: 127.0.0.1:0
envoy_config: $tmp/envoy
io_threads: 1
store: $2
log: {level: warn, access_log: false}
policies:
  bench: {limit: $limit, algorithm: gcra, on_failure: deny}
EOF
}

# start_serve NAME CONFIG [PREFIX...]: starts `sluice serve`, waits for both addresses; sets
# serve_pid, http_addr and grpc_addr.
start_serve() {
  local name=$1 config=$2
  shift 2
  : >"$tmp/$name.out" # before the child opens it, so the first read cannot miss it
  "$@" "$sluice" serve --config "$config" >"$tmp/$name.out" 2>"$tmp/$name.log" &
  serve_pid=$!
  pids+=("$serve_pid")
  for _ in {1..100}; do
    http_addr=$(sed -nE 's/^sluice listening on (.*)$/\1/p' "$tmp/$name.out")
    grpc_addr=$(sed -nE 's/^sluice grpc listening on (.*)$/\1/p' "$tmp/$name.out")
    [[ -n $http_addr && -n $grpc_addr ]] && return
    kill -0 "$serve_pid" 2>/dev/null || { cat "$tmp/$name.log" >&2; die "$name exited"; }
    sleep 0.1
  done
  die "$name did not print its addresses within 10 s"
}

serve_config "$tmp/memory.yaml" memory://
start_serve memory "$tmp/memory.yaml" "${server_cpu[@]}"
mem_pid=$serve_pid mem_http=$http_addr mem_grpc=$grpc_addr

write_acquire_lua "$tmp/acquire.lua" "$keys"

# --- measuring -------------------------------------------------------------------------------
now() { date +%s.%N; }
# measure PID OUT CMD...: runs CMD with its stdout in OUT; sets server_s (CPU seconds of PID
# during the run; 0 when PID is empty), wall_s, client_s (CPU seconds of CMD) and, with Redis
# up, redis_s.
measure() {
  local pid=$1 out=$2 s0=0 s1=0 r0=0 r1=0 t0 t1 times TIMEFORMAT='%U %S'
  shift 2
  [[ -n $pid ]] && s0=$(cpu_seconds "$pid")
  [[ -n $redis_pid ]] && r0=$(cpu_seconds "$redis_pid")
  t0=$(now)
  times=$({ time "$@" >"$out" 2>"$out.err"; } 2>&1) || true
  t1=$(now)
  [[ -n $pid ]] && s1=$(cpu_seconds "$pid")
  [[ -n $redis_pid ]] && r1=$(cpu_seconds "$redis_pid")
  server_s=$(awk -v a="$s0" -v b="$s1" 'BEGIN { print b - a }')
  redis_s=$(awk -v a="$r0" -v b="$r1" 'BEGIN { print b - a }')
  wall_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  client_s=$(awk -v u="${times% *}" -v s="${times#* }" 'BEGIN { print u + s }')
}

# Per run, by "side,round": decisions/s, server µs of CPU per decision, p50 and p99 (ms), Redis
# µs of CPU per decision, client CPU (% of a core).
declare -A rate cpu_us p50 p99 redis_us client_pct
# per_decision SECONDS DECISIONS: microseconds per decision.
per_decision() { awk -v c="$1" -v n="$2" 'BEGIN { printf "%.2f", (n > 0 ? c * 1e6 / n : 0) }'; }
# record SIDE ROUND DECISIONS PER_SECOND P50_MS P99_MS
# shellcheck disable=SC2034  # the arrays are read through namerefs (column, ratios)
record() {
  local key=$1,$2
  rate[$key]=$4
  cpu_us[$key]=$(per_decision "$server_s" "$3")
  redis_us[$key]=$(per_decision "$redis_s" "$3")
  client_pct[$key]=$(awk -v c="$client_s" -v w="$wall_s" 'BEGIN { printf "%.0f", 100 * c / w }')
  p50[$key]=$5
  p99[$key]=$6
  printf '  %-7s %10.0f/s  server %7s us/decision  redis %6s us  client %4s%%' \
    "$1" "$4" "${cpu_us[$key]}" "${redis_us[$key]}" "${client_pct[$key]}"
  printf '  p50 %7.3f ms  p99 %7.3f ms\n' "$5" "$6"
}
ms() { awk -v v="$1" 'BEGIN { printf "%.3f", v / 1000 }'; }

# bench_run SIDE ROUND PID ARGS...: `sluice bench ARGS` (every call must be an allowed decision).
bench_run() {
  local side=$1 round=$2 pid=$3 out=$tmp/$1.json
  shift 3
  measure "$pid" "$out" "$@" --keys "$keys" --seconds "$seconds"
  [[ -n $(field per_second "$out") ]] || die "$side: $(cat "$out" "$out.err")"
  (($(field errors "$out") + $(field timeouts "$out") + $(field denied "$out") == 0)) ||
    die "$side: calls failed or were denied: $(cat "$out")"
  record "$side" "$round" "$(field decisions "$out")" "$(field per_second "$out")" \
    "$(ms "$(field p50_us "$out")")" "$(ms "$(field p99_us "$out")")"
}
# wrk's latency line for percentile $1 (e.g. 99%), in ms.
wrk_ms() {
  awk -v q="$1" '$1 == q {
    v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
    if (u == "us") v /= 1000; else if (u == "s") v *= 1000; else if (u == "m") v *= 60000;
    printf "%.3f", v }' "$2"
}
http_run() {
  local round=$1 out=$tmp/http.wrk n
  measure "$mem_pid" "$out" "${client_cpu[@]}" "$wrk" -t"$threads" -c"$inflight" \
    -d"${seconds}s" --latency -s "$tmp/acquire.lua" "http://$mem_http/"
  n=$(awk '/ requests in / { print $1 }' "$out")
  [[ -n $n ]] || die "cannot read wrk's output: $(cat "$out" "$out.err")"
  ! grep -qE 'Non-2xx|Socket errors' "$out" || die "http: errors: $(cat "$out")"
  record http "$round" "$n" "$(awk '/^Requests\/sec:/ { print $2 }' "$out")" \
    "$(wrk_ms 50% "$out")" "$(wrk_ms 99% "$out")"
}
grpc_args=(--inflight "$inflight" --channels "$channels")
run_side() { # SIDE ROUND
  case $1 in
    grpc1) bench_run grpc1 "$2" "$mem_pid" "${client_cpu[@]}" "$sluice" bench --grpc "$mem_grpc" \
      "${grpc_args[@]}" ;;
    http) http_run "$2" ;;
    lib)
      redis-cli -p "$port" FLUSHALL >/dev/null
      bench_run lib "$2" "" "$sluice" bench --store "redis://127.0.0.1:$port?timeout=1s" \
        --algorithm gcra --limit "$limit" --inflight "$redis_inflight"
      ;;
    rgrpc1 | rgrpc2)
      redis-cli -p "$port" FLUSHALL >/dev/null
      bench_run "$1" "$2" "$redis_serve_pid" "$sluice" bench --grpc "$redis_grpc" \
        --inflight "$redis_inflight" --channels "$channels" --descriptors "${1#rgrpc}"
      ;;
  esac
}

echo "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); ${server_cpu[*]:-no pinning}" \
  "for the memory server; $keys keys, $seconds s a run, $rounds rounds"
echo "memory: gRPC at $inflight in flight ($channels channel(s)) vs wrk -t$threads -c$inflight"

# Warm-up (not recorded): connections, the memory store's keys, caches.
seconds_saved=$seconds
seconds=1
run_side grpc1 0 >/dev/null
run_side http 0 >/dev/null

# --- Redis: a private redis-server and a sluice serve on it ------------------------------------
redis_note=
if [[ $with_redis == 0 ]]; then
  redis_note="skipped (REDIS=0)"
elif ! command -v "$redis_server" >/dev/null || ! command -v redis-cli >/dev/null; then
  redis_note="skipped ($redis_server or redis-cli not found)"
else
  start_redis "$redis_server"
  [[ -n $redis_pid ]] || die "could not start redis-server"
  serve_config "$tmp/redis.yaml" "redis://127.0.0.1:$port?timeout=1s"
  start_serve redis "$tmp/redis.yaml"
  redis_serve_pid=$serve_pid redis_grpc=$grpc_addr
  echo "redis: redis-server $(redis-cli -p "$port" INFO server |
    sed -nE 's/^redis_version:([^\r]*).*/\1/p') on 127.0.0.1:$port; gRPC and the library at" \
    "$redis_inflight in flight"
  # The server must decide through Redis: with on_failure deny, a failing store is denials,
  # and Redis must have run a command per decision (gcra keys of this limit expire at once, so
  # the key count cannot tell).
  redis-cli -p "$port" FLUSHALL >/dev/null
  commands() {
    redis-cli -p "$port" INFO stats | sed -nE 's/^total_commands_processed:([0-9]+).*/\1/p'
  }
  before=$(commands)
  "$sluice" bench --grpc "$redis_grpc" --inflight 16 --keys 100 --seconds 1 --descriptors 2 \
    >"$tmp/redis-check.json" 2>&1 || true
  ran=$(($(commands) - before))
  decided=$(field decisions "$tmp/redis-check.json")
  if [[ -z $decided || $(field denied "$tmp/redis-check.json") != 0 ||
        $(field errors "$tmp/redis-check.json") != 0 ]] || ((ran < decided)); then
    redis_note="not measured: sluice serve on Redis does not decide through Redis ($(head -c 300 \
      "$tmp/redis-check.json"); Redis ran $ran commands; server log: $({ grep -m1 -iE \
      'warn|error' "$tmp/redis.log" || true; } | head -c 300))"
  else
    run_side lib 0 >/dev/null
    run_side rgrpc1 0 >/dev/null
  fi
fi
seconds=$seconds_saved

# --- the rounds ----------------------------------------------------------------------------------
for ((r = 1; r <= rounds; r++)); do
  echo "round $r (load average $(cut -d' ' -f1 /proc/loadavg))"
  if ((r % 2)); then memory_sides=(grpc1 http) redis_sides=(lib rgrpc1 rgrpc2)
  else memory_sides=(http grpc1) redis_sides=(rgrpc2 rgrpc1 lib); fi
  for side in "${memory_sides[@]}"; do run_side "$side" "$r"; done
  if [[ -z $redis_note ]]; then
    for side in "${redis_sides[@]}"; do run_side "$side" "$r"; done
  fi
done

# --- the summary: medians and ranges -----------------------------------------------------------
# stats and median: benchmarks/lib.sh.
# column ARRAY SIDE: the values of ARRAY for SIDE, one per round.
column() {
  local -n a=$1
  local r
  for ((r = 1; r <= rounds; r++)); do echo "${a[$2,$r]}"; done
}
# summary ARRAY SIDE: stats of ARRAY's values for SIDE.
summary() {
  local -a v
  mapfile -t v < <(column "$1" "$2")
  stats "${v[@]}"
}
# ratios ARRAY_A SIDE_A ARRAY_B SIDE_B: A / B per round.
ratios() {
  local -n x=$1 y=$3
  local r
  for ((r = 1; r <= rounds; r++)); do
    awk -v a="${x[$2,$r]}" -v b="${y[$4,$r]}" 'BEGIN { printf "%.4f\n", (b > 0 ? a / b : 0) }'
  done
}
verdict() { # VALUE OP TARGET
  awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
    ok = (op == "<=" ? v <= t : (op == "<" ? v < t : v >= t)); printf "%s", ok ? "met" : "MISSED" }'
}
row() { printf '  %-58s %s\n' "$1" "$2"; }

echo
echo "medians over $rounds rounds (range min-max);" \
  "load average now $(cut -d' ' -f1-3 /proc/loadavg)"
echo "memory store, $inflight in flight:"
for side in grpc1 http; do
  label="HTTP POST /v1/acquire (wrk)"
  if [[ $side == grpc1 ]]; then label="gRPC ShouldRateLimit, 1 descriptor"; fi
  row "$label: decisions/s" "$(summary rate $side)"
  row "  server CPU, us per decision" "$(summary cpu_us $side)"
  row "  p50 / p99 ms" "$(summary p50 $side) / $(summary p99 $side)"
  row "  client CPU, % of a core" "$(summary client_pct $side)"
done
mapfile -t a_ratio < <(ratios cpu_us grpc1 cpu_us http)
a_med=$(median "${a_ratio[@]}")
b_med=$(median "$(column p99 grpc1)")
row "(a) server CPU per decision, gRPC / HTTP" \
  "$(stats "${a_ratio[@]}")  target <= 2: $(verdict "$a_med" "<=" 2)"
row "(b) gRPC p99 at $inflight in flight, ms" \
  "$(summary p99 grpc1)  target < 2: $(verdict "$b_med" "<" 2)"

if [[ -n $redis_note ]]; then
  echo "Redis: $redis_note"
  exit 0
fi
echo "Redis store, $redis_inflight in flight:"
for side in lib rgrpc1 rgrpc2; do
  case $side in
    lib) label="library (sluice bench --store redis://)" ;;
    rgrpc1) label="gRPC, 1 descriptor" ;;
    rgrpc2) label="gRPC, 2 descriptors (all or nothing)" ;;
  esac
  row "$label: decisions/s" "$(summary rate $side)"
  [[ $side == lib ]] || row "  server CPU, us per request" "$(summary cpu_us $side)"
  row "  Redis CPU, us per request" "$(summary redis_us $side)"
  row "  p50 / p99 ms" "$(summary p50 $side) / $(summary p99 $side)"
  row "  client CPU, % of a core" "$(summary client_pct $side)"
done
mapfile -t c_ratio < <(ratios rate rgrpc1 rate lib)
mapfile -t d_cpu < <(ratios cpu_us rgrpc2 cpu_us rgrpc1)
mapfile -t d_rate < <(ratios rate rgrpc2 rate rgrpc1)
mapfile -t d_redis < <(ratios redis_us rgrpc2 redis_us rgrpc1)
row "(c) decisions/s, gRPC 1 descriptor / library" \
  "$(stats "${c_ratio[@]}")  target >= 0.8: $(verdict "$(median "${c_ratio[@]}")" ">=" 0.8)"
row "(d) server CPU per request, 2 / 1 descriptors" \
  "$(stats "${d_cpu[@]}")  target <= 1.3: $(verdict "$(median "${d_cpu[@]}")" "<=" 1.3)"
row "    decisions/s, 2 / 1 descriptors" "$(stats "${d_rate[@]}")"
row "    Redis CPU per request, 2 / 1 descriptors" "$(stats "${d_redis[@]}")"
