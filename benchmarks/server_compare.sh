#!/usr/bin/env bash
# `sluice serve` against nginx, with wrk on the same machine, in one run (`make bench-server`;
# figures and analysis in docs/BENCHMARKS.md):
#   1. nginx, 1 worker, `return 204` to everything, under the same requests as sluice gets
#      (the same wrk Lua scripts, so the client's work is the same), and under plain GETs;
#   2. `sluice serve --io-threads 1` on the memory store: POST /v1/acquire with a JSON body
#      over BENCH_KEYS keys, and GET /v1/gate/bench with the key in X-User-Id.
# Every run is `wrk -t2 -c64 -d${BENCH_SECONDS}s --latency` after a 1 s warm-up; each sluice
# run comes right after the nginx run with the same requests. The server is pinned to CPU 0
# and wrk to the others when taskset is there and there are at least 2 CPUs. Prints
# requests/s, p99, the server's CPU use, and the sluice/nginx ratios against issue 4's
# targets (sluice >= 0.7 x nginx, p99 < 2 ms).
#
# Environment: SLUICE (./build/release/sluice), NGINX (/usr/sbin/nginx), WRK (wrk),
# BENCH_SECONDS (10), BENCH_KEYS (10000), BENCH_CONNECTIONS (64), BENCH_THREADS (2),
# BENCH_LIMIT (the policy's limit, 100/1s gcra: mostly allowed, some denied).
set -euo pipefail
cd "$(dirname "$0")/.."

sluice=${SLUICE:-./build/release/sluice}
nginx=${NGINX:-/usr/sbin/nginx}
wrk=${WRK:-wrk}
seconds=${BENCH_SECONDS:-10}
keys=${BENCH_KEYS:-10000}
connections=${BENCH_CONNECTIONS:-64}
threads=${BENCH_THREADS:-2}
limit=${BENCH_LIMIT:-100/1s}

die() {
  echo "server_compare: $*" >&2
  exit 1
}
for tool in "$nginx" "$wrk" curl awk; do
  command -v "$tool" >/dev/null || die "$tool not found (make deps installs it)"
done
[[ -x $sluice ]] || die "$sluice not found; build it first (make build)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-server-bench.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
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

# --- the wrk scripts: keys rotate over $keys, each wrk thread from its own offset -------------
cat > "$tmp/common.lua" <<EOF
local threads = 0
function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end
local n = 0
local keys = $keys
function next_key()
  n = n + 1
  return "user:" .. ((n + offset) % keys)
end
EOF
cat > "$tmp/acquire.lua" <<'EOF'
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  return wrk.format(nil, "/v1/acquire", nil, '{"key":"' .. next_key() .. '","policy":"bench"}')
end
EOF
cat > "$tmp/gate.lua" <<'EOF'
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
function request()
  return wrk.format("GET", "/v1/gate/bench", {["X-User-Id"] = next_key()})
end
EOF
export BENCH_DIR=$tmp

# --- the servers ------------------------------------------------------------------------------
nginx_port=$(free_port)
mkdir -p "$tmp/nginx/tmp"
cat > "$tmp/nginx/nginx.conf" <<EOF
worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path tmp/body;
  proxy_temp_path tmp/proxy;
  fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi;
  scgi_temp_path tmp/scgi;
  server {
    listen 127.0.0.1:$nginx_port;
    location / { return 204; }
  }
}
EOF
"${server_cpu[@]}" "$nginx" -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf" \
  -g 'daemon off;' > "$tmp/nginx.log" 2>&1 &
nginx_pid=$!
pids+=("$nginx_pid")
wait_for "http://127.0.0.1:$nginx_port/" "$nginx_pid" nginx

sluice_port=$(free_port)
cat > "$tmp/sluice.yaml" <<EOF
listen: 127.0.0.1:$sluice_port
store: memory://
log: {level: warn, access_log: false}
policies:
  bench: {limit: $limit, algorithm: gcra, gate: {key_header: X-User-Id}}
EOF
"${server_cpu[@]}" "$sluice" serve --config "$tmp/sluice.yaml" --io-threads 1 \
  > "$tmp/sluice.log" 2>&1 &
sluice_pid=$!
pids+=("$sluice_pid")
wait_for "http://127.0.0.1:$sluice_port/healthz" "$sluice_pid" sluice

# Both answer what the runs expect before anything is measured.
[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$nginx_port/") == 204 ]] ||
  die "nginx does not answer 204"
answer=$(curl -s --max-time 5 -H 'Content-Type: application/json' \
  -d '{"key":"user:1","policy":"bench"}' "http://127.0.0.1:$sluice_port/v1/acquire")
[[ $answer == *'"allowed"'* ]] || die "sluice's /v1/acquire answered: $answer"
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'X-User-Id: user:1' \
  "http://127.0.0.1:$sluice_port/v1/gate/bench")
[[ $code == 204 || $code == 429 ]] || die "sluice's /v1/gate/bench answered $code"

# --- measuring -------------------------------------------------------------------------------
tick=$(getconf CLK_TCK)
# CPU seconds of process $1 and its children (nginx's worker), so far.
tree_cpu_seconds() {
  local pid
  for pid in "$1" $(pgrep -P "$1" || true); do cat "/proc/$pid/stat"; done |
    awk -v t="$tick" '{ sum += $14 + $15 } END { printf "%.3f", sum / t }'
}

# run NAME PORT PID [SCRIPT]: one wrk run; sets rps[NAME], p99[NAME] (ms), cpu[NAME] (%).
declare -A rps p99 cpu non2xx errors
run() {
  local name=$1 port=$2 pid=$3 script=${4:-} args=() out c0 c1
  [[ -n $script ]] && args=(-s "$tmp/$script.lua")
  "${client_cpu[@]}" "$wrk" -t"$threads" -c"$connections" -d1s "${args[@]}" \
    "http://127.0.0.1:$port/" > /dev/null # warm-up: connections, keys, caches
  c0=$(tree_cpu_seconds "$pid")
  out=$("${client_cpu[@]}" "$wrk" -t"$threads" -c"$connections" -d"${seconds}s" --latency \
    "${args[@]}" "http://127.0.0.1:$port/")
  c1=$(tree_cpu_seconds "$pid")
  echo "$out" > "$tmp/$name.wrk"
  rps[$name]=$(awk '/^Requests\/sec:/ { print $2 }' <<< "$out")
  p99[$name]=$(awk '$1 == "99%" {
      v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
      if (u == "us") v /= 1000; else if (u == "s") v *= 1000; else if (u == "m") v *= 60000;
      printf "%.3f", v }' <<< "$out")
  non2xx[$name]=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<< "$out")
  errors[$name]=$(awk '/Socket errors:/ { sub(/.*Socket errors: /, ""); print }' <<< "$out")
  cpu[$name]=$(awk -v a="$c0" -v b="$c1" -v s="$seconds" 'BEGIN { printf "%.0f", (b - a) / s * 100 }')
  [[ -n ${rps[$name]} && -n ${p99[$name]} ]] || { echo "$out" >&2; die "cannot read wrk's output"; }
}

echo "wrk -t$threads -c$connections -d${seconds}s --latency; $keys keys; $(nproc) CPUs;" \
  "${server_cpu[*]:-no pinning}"
# Each sluice run right after the nginx run it is compared with, so that other load on the
# machine changes as little as possible between the two.
run nginx_acquire "$nginx_port" "$nginx_pid" acquire
run sluice_acquire "$sluice_port" "$sluice_pid" acquire
run nginx_gate "$nginx_port" "$nginx_pid" gate
run sluice_gate "$sluice_port" "$sluice_pid" gate
run nginx_plain "$nginx_port" "$nginx_pid"

# per core: requests/s over the server's CPU use, what one fully busy core would answer.
# When the server is not at 100% (wrk, sharing the machine, was the bottleneck), this is the
# fairer comparison of the two servers' cost per request.
per_core() {
  awk -v r="${rps[$1]}" -v c="${cpu[$1]}" 'BEGIN { printf "%.0f", (c > 0 ? r * 100 / c : 0) }'
}
printf '\n%-40s %11s %8s %8s %10s %s\n' "" "requests/s" "p99 ms" "server%" "per core" "notes"
row() {
  local note=""
  [[ -n ${non2xx[$1]} ]] && note+="non-2xx ${non2xx[$1]} "
  [[ -n ${errors[$1]} ]] && note+="socket errors: ${errors[$1]}"
  printf '%-40s %11.0f %8.3f %8s %10s %s\n' "$2" "${rps[$1]}" "${p99[$1]}" "${cpu[$1]}" \
    "$(per_core "$1")" "$note"
}
row nginx_plain "nginx return 204, GET /"
row nginx_acquire "nginx return 204, acquire requests"
row nginx_gate "nginx return 204, gate requests"
row sluice_acquire "sluice POST /v1/acquire"
row sluice_gate "sluice GET /v1/gate/bench"

verdict() { # verdict NAME BASE
  awk -v s="${rps[$1]}" -v n="${rps[$2]}" -v p="${p99[$1]}" -v name="$1" -v base="$2" \
      -v sc="$(per_core "$1")" -v nc="$(per_core "$2")" 'BEGIN {
    r = s / n
    printf "%-14s / %-13s = %.2f (target >= 0.70: %s); per core %.2f;", name, base, r,
      (r >= 0.7 ? "met" : "NOT met"), (nc > 0 ? sc / nc : 0)
    printf " p99 %.3f ms (target < 2 ms: %s)\n", p, (p < 2 ? "met" : "NOT met") }'
}
echo
verdict sluice_acquire nginx_plain
verdict sluice_acquire nginx_acquire
verdict sluice_gate nginx_plain
verdict sluice_gate nginx_gate
