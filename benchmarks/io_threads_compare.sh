#!/usr/bin/env bash
# `sluice serve` with 1 I/O thread against 2, on the memory store, side by side in one run
# (`make bench-io-threads`; figures in docs/BENCHMARKS.md, "Memory store across cores"): the
# server's CPU per request (user + system CPU seconds over requests answered) and requests/s,
# under the same wrk load of POST /v1/acquire over BENCH_KEYS keys. Both servers run at once
# on their own ports; each of ROUNDS rounds measures one then the other (the order alternating
# per round) after a 1 s warm-up, and the summary gives per-round ratios 2 threads / 1 thread:
# medians and ranges. The issue's target: CPU per request with 2 I/O threads within 1.1x of 1.
#
# Environment: SLUICE (./build/release/sluice), WRK (wrk), ROUNDS (5), BENCH_SECONDS (5),
# BENCH_KEYS (10000), BENCH_CONNECTIONS (64), BENCH_THREADS (wrk's threads, 2).
set -euo pipefail
cd "$(dirname "$0")/.."

sluice=${SLUICE:-./build/release/sluice}
wrk=${WRK:-wrk}
rounds=${ROUNDS:-5}
seconds=${BENCH_SECONDS:-5}
keys=${BENCH_KEYS:-10000}
connections=${BENCH_CONNECTIONS:-64}
threads=${BENCH_THREADS:-2}

die() {
  echo "io_threads_compare: $*" >&2
  exit 1
}
for tool in "$wrk" curl awk; do
  command -v "$tool" >/dev/null || die "$tool not found (make deps installs it)"
done
[[ -x $sluice ]] || die "$sluice not found; build it first (make build)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-io-threads.XXXXXX")
# shellcheck source=benchmarks/lib.sh
source benchmarks/lib.sh
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Keys rotate over $keys, each wrk thread from its own offset.
cat > "$tmp/acquire.lua" <<LUA
local threads = 0
function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  n = n + 1
  return wrk.format(nil, "/v1/acquire", nil,
    '{"key":"user:' .. ((n + offset) % $keys) .. '","policy":"bench"}')
end
LUA

# start_server IO_THREADS: starts `sluice serve --io-threads N`; sets port_of[N], pid_of[N].
declare -A port_of pid_of
start_server() {
  local n=$1 p
  for _ in {1..50}; do
    p=$((20000 + RANDOM % 40000))
    port_is_free "$p" && break
  done
  cat > "$tmp/sluice$n.yaml" <<YAML
listen: 127.0.0.1:$p
store: memory://
log: {level: warn, access_log: false}
policies:
  bench: {limit: 1000000/1s, algorithm: gcra}
YAML
  "$sluice" serve --config "$tmp/sluice$n.yaml" --io-threads "$n" > "$tmp/sluice$n.log" 2>&1 &
  pid_of[$n]=$!
  port_of[$n]=$p
  pids+=("$!")
  for _ in {1..100}; do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$p/healthz" ||
      true) == 200 ]] && return
    kill -0 "${pid_of[$n]}" 2>/dev/null || { cat "$tmp/sluice$n.log" >&2; die "server exited"; }
    sleep 0.1
  done
  die "sluice serve --io-threads $n did not answer within 10 s"
}
start_server 1
start_server 2

# measure N ROUND: one wrk run on the server with N I/O threads; sets rps[N,R], cpu_us[N,R].
declare -A rps cpu_us
measure() {
  local n=$1 r=$2 url="http://127.0.0.1:${port_of[$1]}/" out c0 c1 total
  "$wrk" -t"$threads" -c"$connections" -d1s -s "$tmp/acquire.lua" "$url" > /dev/null
  c0=$(cpu_seconds "${pid_of[$n]}")
  out=$("$wrk" -t"$threads" -c"$connections" -d"${seconds}s" -s "$tmp/acquire.lua" "$url")
  c1=$(cpu_seconds "${pid_of[$n]}")
  total=$(awk '/requests in/ { print $1 }' <<< "$out")
  [[ -n $total && $total -gt 0 ]] || { echo "$out" >&2; die "cannot read wrk's output"; }
  if grep -q "Non-2xx" <<< "$out"; then echo "$out" >&2; die "non-2xx answers"; fi
  rps[$n,$r]=$(awk '/^Requests\/sec:/ { print $2 }' <<< "$out")
  cpu_us[$n,$r]=$(awk -v a="$c0" -v b="$c1" -v t="$total" 'BEGIN { printf "%.3f", (b - a) / t * 1e6 }')
  printf '  round %d, %d I/O thread(s): %10.0f requests/s, %6.2f us server CPU per request\n' \
    "$r" "$n" "${rps[$n,$r]}" "${cpu_us[$n,$r]}"
}

echo "wrk -t$threads -c$connections -d${seconds}s, POST /v1/acquire over $keys keys;" \
  "$(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
cpu_ratio=() rps_ratio=()
for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then
    measure 1 "$r"
    measure 2 "$r"
  else
    measure 2 "$r"
    measure 1 "$r"
  fi
  cpu_ratio+=("$(awk -v a="${cpu_us[2,$r]}" -v b="${cpu_us[1,$r]}" 'BEGIN { printf "%.4f", a / b }')")
  rps_ratio+=("$(awk -v a="${rps[2,$r]}" -v b="${rps[1,$r]}" 'BEGIN { printf "%.4f", a / b }')")
done

echo
echo "medians over $rounds rounds (range min-max);" \
  "load average now $(cut -d' ' -f1-3 /proc/loadavg)"
verdict=$(awk -v v="$(median "${cpu_ratio[@]}")" 'BEGIN { print v <= 1.1 ? "met" : "MISSED" }')
echo "  server CPU per request, 2 I/O threads / 1:  $(stats "${cpu_ratio[@]}") (target <= 1.1: $verdict)"
echo "  requests/s, 2 I/O threads / 1:              $(stats "${rps_ratio[@]}")"
