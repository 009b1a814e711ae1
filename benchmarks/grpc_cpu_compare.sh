#!/usr/bin/env bash
# gRPC CPU per decision, one build of sluice against another: for ROUNDS rounds, alternating
# the order (A B, then B A, ...), starts each build's `sluice serve` on the memory store (one
# I/O thread, an Envoy config with one gcra descriptor far above what a run asks) and drives
# its gRPC listener with the same build's `sluice bench --grpc` (INFLIGHT calls in flight
# over 10 000 keys for BENCH_SECONDS). Prints, per round, each side's decisions and the
# server's and the client's CPU per decision (user + system time over the run), then the
# medians and ranges of B / A. With REDIS=1 the store is a private redis-server instead
# (FLUSHALL before each run), and decisions/s are compared too. See docs/BENCHMARKS.md,
# "gRPC".
#
#   benchmarks/grpc_cpu_compare.sh OLD/sluice NEW/sluice
#   ROUNDS=6 BENCH_SECONDS=3 INFLIGHT=64 REDIS=1 benchmarks/grpc_cpu_compare.sh A B
set -euo pipefail
cd "$(dirname "$0")/.."

if (($# != 2)); then
  echo "usage: $0 SLUICE_A SLUICE_B   (ROUNDS, BENCH_SECONDS, INFLIGHT in the environment)" >&2
  exit 2
fi
a=$1 b=$2
rounds=${ROUNDS:-6}
seconds=${BENCH_SECONDS:-3}
inflight=${INFLIGHT:-64}
use_redis=${REDIS:-0}
for bin in "$a" "$b"; do
  [[ -x $bin ]] || { echo "$0: $bin is not an executable" >&2; exit 2; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-grpc-cpu.XXXXXX")
serve_pid= redis_pid=
cleanup() {
  for pid in $serve_pid $redis_pid; do kill "$pid" 2>/dev/null || true; done
  for pid in $serve_pid $redis_pid; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
source benchmarks/lib.sh
store=memory://
if [[ $use_redis == 1 ]]; then
  start_redis redis-server
  [[ -n $redis_pid ]] || { echo "$0: could not start redis-server" >&2; exit 1; }
  store="redis://127.0.0.1:$port?timeout=1s"
fi

mkdir -p "$tmp/envoy"
printf '%s\n' 'domain: bench' 'descriptors:' '  - key: user' \
  '    rate_limit: {unit: second, requests_per_unit: 1000000, algorithm: gcra}' \
  >"$tmp/envoy/bench.yaml"
printf '%s\n' 'listen: 127.0.0.1:0' 'grpc_listen: 127.0.0.1:0' "envoy_config: $tmp/envoy" \
  'io_threads: 1' "store: \"$store\"" 'log: {level: warn, access_log: false}' >"$tmp/serve.yaml"

# One run of build $1: sets `decisions`, `server_us` and `client_us` (CPU µs per decision).
run() {
  local bin=$1 addr='' s0 s1 times TIMEFORMAT='%U %S'
  : >"$tmp/out"
  if [[ -n $redis_pid ]]; then redis-cli -p "$port" flushall >/dev/null; fi
  "$bin" serve --config "$tmp/serve.yaml" >"$tmp/out" 2>"$tmp/log" &
  serve_pid=$!
  for _ in {1..100}; do
    addr=$(sed -nE 's/^sluice grpc listening on (.*)$/\1/p' "$tmp/out")
    [[ -n $addr ]] && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$tmp/log" >&2; exit 1; }
    sleep 0.1
  done
  [[ -n $addr ]] || { echo "$0: $bin serve printed no gRPC address" >&2; exit 1; }
  s0=$(cpu_seconds "$serve_pid")
  times=$({ time "$bin" bench --grpc "$addr" --inflight "$inflight" --keys 10000 \
    --seconds "$seconds" >"$tmp/bench.json"; } 2>&1)
  s1=$(cpu_seconds "$serve_pid")
  kill "$serve_pid"
  wait "$serve_pid" 2>/dev/null || true
  serve_pid=
  decisions=$(field decisions "$tmp/bench.json")
  per_second=$(field per_second "$tmp/bench.json")
  ((${decisions:-0} > 0)) || { echo "$0: no decisions: $(cat "$tmp/bench.json")" >&2; exit 1; }
  server_us=$(awk -v a="$s0" -v b="$s1" -v n="$decisions" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }')
  client_us=$(awk -v t="$times" -v n="$decisions" \
    'BEGIN { split(t, x, " "); printf "%.1f", (x[1] + x[2]) * 1e6 / n }')
}

server_ratio=() client_ratio=() rate_ratio=()
printf '%-5s %-4s %10s %14s %14s\n' round side decisions "server µs/dec" "client µs/dec"
for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then order=(A B); else order=(B A); fi
  declare -A srv=() cli=() rate=()
  for side in "${order[@]}"; do
    if [[ $side == A ]]; then run "$a"; else run "$b"; fi
    srv[$side]=$server_us cli[$side]=$client_us rate[$side]=$per_second
    printf '%-5s %-4s %10s %14s %14s\n' "$r" "$side" "$decisions" "$server_us" "$client_us"
  done
  server_ratio+=("$(awk -v a="${srv[A]}" -v b="${srv[B]}" 'BEGIN { print b / a }')")
  client_ratio+=("$(awk -v a="${cli[A]}" -v b="${cli[B]}" 'BEGIN { print b / a }')")
  rate_ratio+=("$(awk -v a="${rate[A]}" -v b="${rate[B]}" 'BEGIN { print b / a }')")
  echo "round $r of $rounds done ($(cut -d' ' -f1 /proc/loadavg) load)" >&2
done
echo "server CPU per decision B / A: $(stats "${server_ratio[@]}")"
echo "client CPU per decision B / A: $(stats "${client_ratio[@]}")"
echo "decisions/s B / A:             $(stats "${rate_ratio[@]}")"
