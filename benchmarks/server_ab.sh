#!/usr/bin/env bash
# Two builds of `sluice serve` side by side in one run, on the memory store: the server's
# CPU per request (user + system CPU seconds over requests answered) and requests/s under
# the same wrk load of POST /v1/acquire over BENCH_KEYS keys. Both servers run at once on
# their own ports, A with IO_THREADS_A I/O threads and B with IO_THREADS_B; each of ROUNDS
# rounds measures one then the other (the order alternating per round) after a 1 s warm-up,
# and the summary gives the per-round ratios B / A: medians and ranges. With CPU_TARGET, it
# also says whether the median CPU ratio is at most that. Figures in docs/BENCHMARKS.md,
# "HTTP server"; io_threads_compare.sh runs it on one build, 1 I/O thread against 2.
#
#   benchmarks/server_ab.sh OLD/sluice NEW/sluice
#
# Environment: WRK (wrk), ROUNDS (6), BENCH_SECONDS (4), BENCH_KEYS (10000),
# BENCH_CONNECTIONS (64), BENCH_THREADS (wrk's threads, 2), IO_THREADS (1),
# IO_THREADS_A and IO_THREADS_B (IO_THREADS), CPU_TARGET (none).
set -euo pipefail
cd "$(dirname "$0")/.."

if (($# != 2)); then
  echo "usage: $0 SLUICE_A SLUICE_B   (ROUNDS, BENCH_SECONDS, ... in the environment)" >&2
  exit 2
fi
declare -A bin=([a]=$1 [b]=$2)
wrk=${WRK:-wrk}
rounds=${ROUNDS:-6}
seconds=${BENCH_SECONDS:-4}
keys=${BENCH_KEYS:-10000}
connections=${BENCH_CONNECTIONS:-64}
threads=${BENCH_THREADS:-2}
declare -A io_threads=([a]=${IO_THREADS_A:-${IO_THREADS:-1}} [b]=${IO_THREADS_B:-${IO_THREADS:-1}})
cpu_target=${CPU_TARGET:-}

die() {
  echo "server_ab: $*" >&2
  exit 1
}
for tool in "$wrk" curl awk; do
  command -v "$tool" >/dev/null || die "$tool not found (make deps installs it)"
done
for side in a b; do [[ -x ${bin[$side]} ]] || die "${bin[$side]} not found"; done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-server-ab.XXXXXX")
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

write_acquire_lua "$tmp/acquire.lua" "$keys"

declare -A port_of pid_of
start_server() {
  local side=$1 p
  p=$(free_port)
  cat >"$tmp/$side.yaml" <<YAML
listen: 127.0.0.1:$p
store: memory://
log: {level: warn, access_log: false}
policies:
  bench: {limit: 1000000/1s, algorithm: gcra}
YAML
  "${bin[$side]}" serve --config "$tmp/$side.yaml" --io-threads "${io_threads[$side]}" \
    >"$tmp/$side.log" 2>&1 &
  pid_of[$side]=$!
  port_of[$side]=$p
  pids+=("$!")
  wait_for "http://127.0.0.1:$p/healthz" "${pid_of[$side]}" "$side"
}
start_server a
start_server b

declare -A rps cpu_us
measure() {
  local side=$1 r=$2 url="http://127.0.0.1:${port_of[$1]}/" out c0 c1 total
  "$wrk" -t"$threads" -c"$connections" -d1s -s "$tmp/acquire.lua" "$url" >/dev/null
  c0=$(cpu_seconds "${pid_of[$side]}")
  out=$("$wrk" -t"$threads" -c"$connections" -d"${seconds}s" -s "$tmp/acquire.lua" "$url")
  c1=$(cpu_seconds "${pid_of[$side]}")
  total=$(awk '/requests in/ { print $1 }' <<<"$out")
  [[ -n $total && $total -gt 0 ]] || { echo "$out" >&2; die "cannot read wrk's output"; }
  if grep -q "Non-2xx" <<<"$out"; then echo "$out" >&2; die "non-2xx answers"; fi
  rps[$side,$r]=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
  cpu_us[$side,$r]=$(awk -v a="$c0" -v b="$c1" -v t="$total" 'BEGIN { printf "%.3f", (b - a) / t * 1e6 }')
  printf '  round %d, %s: %10.0f requests/s, %6.2f us server CPU per request\n' \
    "$r" "$side" "${rps[$side,$r]}" "${cpu_us[$side,$r]}"
}

echo "A = ${bin[a]} (${io_threads[a]} I/O thread(s)), B = ${bin[b]} (${io_threads[b]});" \
  "wrk -t$threads -c$connections -d${seconds}s, POST /v1/acquire over $keys keys;" \
  "$(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
cpu_ratio=() rps_ratio=() cpu_a=() cpu_b=()
for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then
    measure a "$r"
    measure b "$r"
  else
    measure b "$r"
    measure a "$r"
  fi
  cpu_a+=("${cpu_us[a,$r]}")
  cpu_b+=("${cpu_us[b,$r]}")
  cpu_ratio+=("$(awk -v a="${cpu_us[b,$r]}" -v b="${cpu_us[a,$r]}" 'BEGIN { printf "%.4f", a / b }')")
  rps_ratio+=("$(awk -v a="${rps[b,$r]}" -v b="${rps[a,$r]}" 'BEGIN { printf "%.4f", a / b }')")
done

echo
echo "medians over $rounds rounds (range min-max); load average now $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  server CPU us per request, A:  $(stats "${cpu_a[@]}")"
echo "  server CPU us per request, B:  $(stats "${cpu_b[@]}")"
echo "  server CPU per request, B / A: $(stats "${cpu_ratio[@]}")"
echo "  requests/s, B / A:             $(stats "${rps_ratio[@]}")"
if [[ -n $cpu_target ]]; then
  verdict=$(awk -v v="$(median "${cpu_ratio[@]}")" -v t="$cpu_target" \
    'BEGIN { print (v <= t ? "met" : "MISSED") }')
  echo "  target: server CPU per request, B / A <= $cpu_target: $verdict"
fi
