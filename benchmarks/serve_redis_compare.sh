#!/usr/bin/env bash
# `sluice serve` on the Redis store against the library alone (`sluice bench`) on the same
# Redis, side by side in one run (`make bench-serve-redis`; figures in docs/BENCHMARKS.md, "HTTP
# server", "With the Redis store"). Issue 12's target: the server at >= 0.8 x the library.
#
# One private redis-server; one `sluice serve --io-threads IO_THREADS` on it (policy `bench`,
# ALGORITHM, limit 1000000/1s: every decision allowed). Each of ROUNDS rounds runs, in an
# order that alternates per round, after a FLUSHALL each:
#   library: sluice bench --store redis://... --keys BENCH_KEYS --inflight BENCH_INFLIGHT
#   server:  wrk -tWRK_THREADS -cBENCH_INFLIGHT, POST /v1/acquire over BENCH_KEYS keys
# and prints decisions/s of each, the server's and Redis's CPU per decision, and the
# per-round ratio server / library (median and range).
#
# Environment: SLUICE (./build/release/sluice), WRK (wrk), REDIS_SERVER (redis-server),
# ROUNDS (5), BENCH_SECONDS (5), BENCH_KEYS (10000), BENCH_INFLIGHT (256), WRK_THREADS (2),
# IO_THREADS (1), ALGORITHM (gcra), STORE_QUERY (timeout=1s: the store URI's query).
set -euo pipefail
cd "$(dirname "$0")/.."

sluice=${SLUICE:-./build/release/sluice}
wrk=${WRK:-wrk}
redis_server=${REDIS_SERVER:-redis-server}
rounds=${ROUNDS:-5}
seconds=${BENCH_SECONDS:-5}
keys=${BENCH_KEYS:-10000}
inflight=${BENCH_INFLIGHT:-256}
wrk_threads=${WRK_THREADS:-2}
io_threads=${IO_THREADS:-1}
algorithm=${ALGORITHM:-gcra}
query=${STORE_QUERY:-timeout=1s}

die() {
  echo "serve_redis_compare: $*" >&2
  exit 1
}
for tool in "$wrk" "$redis_server" redis-cli curl awk; do
  command -v "$tool" >/dev/null || die "$tool not found (make deps installs it)"
done
[[ -x $sluice ]] || die "$sluice not found; build it first (make build)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-serve-redis.XXXXXX")
# shellcheck source=benchmarks/lib.sh
source benchmarks/lib.sh
redis_pid= server_pid=
cleanup() {
  for pid in $server_pid $redis_pid; do kill "$pid" 2>/dev/null || true; done
  for pid in $server_pid $redis_pid; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_redis "$redis_server"
[[ -n $redis_pid ]] || die "could not start redis-server"
store="redis://127.0.0.1:$port?$query"

write_acquire_lua "$tmp/acquire.lua" "$keys"

http_port=$(free_port)
cat >"$tmp/sluice.yaml" <<YAML
listen: 127.0.0.1:$http_port
store: "$store"
log: {level: warn, access_log: false}
policies:
  bench: {limit: 1000000/1s, algorithm: $algorithm}
YAML
"$sluice" serve --config "$tmp/sluice.yaml" --io-threads "$io_threads" >"$tmp/sluice.log" 2>&1 &
server_pid=$!
wait_for "http://127.0.0.1:$http_port/healthz" "$server_pid" sluice

declare -A rate redis_us server_us
# library ROUND: one `sluice bench` run on the store.
library() {
  local r=$1 c0 c1 n
  redis-cli -p "$port" flushall >/dev/null
  c0=$(cpu_seconds "$redis_pid")
  "$sluice" bench --store "$store" --algorithm "$algorithm" --limit 1000000/1s --keys "$keys" \
    --inflight "$inflight" --seconds "$seconds" >"$tmp/bench.json" 2>"$tmp/bench.err" ||
    { cat "$tmp/bench.err" >&2; die "sluice bench failed"; }
  c1=$(cpu_seconds "$redis_pid")
  n=$(field decisions "$tmp/bench.json")
  [[ $(field errors "$tmp/bench.json") == 0 ]] || die "sluice bench saw errors: $(cat "$tmp/bench.json")"
  rate[lib,$r]=$(field per_second "$tmp/bench.json")
  redis_us[lib,$r]=$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN { printf "%.2f", (b - a) / n * 1e6 }')
  printf '  round %d, library: %9.0f decisions/s, Redis %6.2f us/decision\n' "$r" \
    "${rate[lib,$r]}" "${redis_us[lib,$r]}"
}
# server ROUND: one wrk run on `sluice serve`, after a 1 s warm-up.
server() {
  local r=$1 url="http://127.0.0.1:$http_port/" out c0 c1 s0 s1 total
  redis-cli -p "$port" flushall >/dev/null
  "$wrk" -t"$wrk_threads" -c"$inflight" -d1s -s "$tmp/acquire.lua" "$url" >/dev/null
  c0=$(cpu_seconds "$redis_pid")
  s0=$(cpu_seconds "$server_pid")
  out=$("$wrk" -t"$wrk_threads" -c"$inflight" -d"${seconds}s" -s "$tmp/acquire.lua" "$url")
  c1=$(cpu_seconds "$redis_pid")
  s1=$(cpu_seconds "$server_pid")
  total=$(awk '/requests in/ { print $1 }' <<<"$out")
  [[ -n $total && $total -gt 0 ]] || { echo "$out" >&2; die "cannot read wrk's output"; }
  if grep -q "Non-2xx" <<<"$out"; then echo "$out" >&2; die "non-2xx answers"; fi
  rate[srv,$r]=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
  redis_us[srv,$r]=$(awk -v a="$c0" -v b="$c1" -v n="$total" 'BEGIN { printf "%.2f", (b - a) / n * 1e6 }')
  server_us[$r]=$(awk -v a="$s0" -v b="$s1" -v n="$total" 'BEGIN { printf "%.2f", (b - a) / n * 1e6 }')
  printf '  round %d, server:  %9.0f decisions/s, Redis %6.2f us/decision, server %6.2f us/request\n' \
    "$r" "${rate[srv,$r]}" "${redis_us[srv,$r]}" "${server_us[$r]}"
}

echo "$algorithm, $keys keys, $inflight in flight, ${seconds}s runs, $io_threads I/O thread(s);" \
  "$(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
ratio=()
for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then
    library "$r"
    server "$r"
  else
    server "$r"
    library "$r"
  fi
  ratio+=("$(awk -v a="${rate[srv,$r]}" -v b="${rate[lib,$r]}" 'BEGIN { printf "%.4f", a / b }')")
done

lib_rates=() srv_rates=() srv_cpu=()
for ((r = 1; r <= rounds; r++)); do
  lib_rates+=("${rate[lib,$r]}")
  srv_rates+=("${rate[srv,$r]}")
  srv_cpu+=("${server_us[$r]}")
done
echo
echo "medians over $rounds rounds (range min-max); load average now $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  library decisions/s:        $(stats "${lib_rates[@]}")"
echo "  server decisions/s:         $(stats "${srv_rates[@]}")"
echo "  server CPU us per request:  $(stats "${srv_cpu[@]}")"
verdict=$(awk -v v="$(median "${ratio[@]}")" 'BEGIN { print (v >= 0.8 ? "met" : "MISSED") }')
echo "  server / library:           $(stats "${ratio[@]}") (target >= 0.8: $verdict)"
