#!/usr/bin/env bash
# Redis CPU per decision as instructions, counted by callgrind on redis-server: a figure
# that does not move when the machine is busy (docs/BENCHMARKS.md, "Batched scripts").
# For each case and batch setting, `sluice bench` runs twice against a redis-server under
# callgrind, for SHORT and LONG seconds; the difference of the two instruction counts over
# the difference of the decisions is the steady-state cost of one decision (connecting
# and loading the scripts cancel out). batch=0 runs the single-key scripts, byte for byte
# those of one script per decision; batch=128 the batch script.
#
# Environment: SLUICE (./build/release/sluice), SHORT (3), LONG (9), CASES ("sliding_log
# sliding_counter gcra hot"), BATCHES ("0 128"), HOT_LIMIT (5000).
set -euo pipefail
cd "$(dirname "$0")/.."
sluice=${SLUICE:-./build/release/sluice}
short=${SHORT:-3}
long=${LONG:-9}
cases=${CASES:-sliding_log sliding_counter gcra hot}
batches=${BATCHES:-0 128}
hot_limit=${HOT_LIMIT:-5000}
for tool in valgrind callgrind_control redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "$0: needs $tool" >&2; exit 2; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-batch-instr.XXXXXX")
pid=
cleanup() {
  if [[ -n $pid ]]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
# shellcheck source=benchmarks/lib.sh
source benchmarks/lib.sh
port=
for _ in $(seq 10); do
  port=$((20000 + RANDOM % 40000))
  port_is_free "$port" && break
done
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$tmp/cg.out" \
  redis-server --port "$port" --bind 127.0.0.1 --dir "$tmp" --save '' --appendonly no \
  --daemonize no >"$tmp/vg.log" 2>&1 &
pid=$!
for _ in $(seq 300); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.2
done

# Prints "instructions decisions" of one run.
run() { # case batch seconds
  local algo=sliding_log keys=10000 limit=1000000/1s out
  case $1 in
    hot)
      keys=1
      limit=$hot_limit/1s
      ;;
    *) algo=$1 ;;
  esac
  redis-cli -p "$port" FLUSHALL >/dev/null
  rm -f "$tmp"/cg.out.*
  callgrind_control -i on "$pid" >/dev/null
  out=$("$sluice" bench --store "redis://127.0.0.1:$port?timeout=60s&connect_timeout=30s&batch=$2" \
    --algorithm "$algo" --limit "$limit" --keys "$keys" --seconds "$3" --inflight 256)
  callgrind_control -i off "$pid" >/dev/null
  callgrind_control -d "$pid" >/dev/null
  for _ in $(seq 50); do
    compgen -G "$tmp/cg.out.*" >/dev/null && break
    sleep 0.1
  done
  echo "$(sed -n 's/^totals: //p' "$tmp"/cg.out.* | head -n 1) $(field decisions <(echo "$out"))"
}

printf '%-16s %6s %14s %12s\n' case batch "instr/decision" decisions
for c in $cases; do
  for b in $batches; do
    read -r i1 d1 < <(run "$c" "$b" "$short")
    read -r i2 d2 < <(run "$c" "$b" "$long")
    printf '%-16s %6s %14.0f %12s\n' "$c" "$b" \
      "$(awk -v a="$i1" -v b="$i2" -v c="$d1" -v d="$d2" 'BEGIN { print (b - a) / (d - c) }')" \
      "$d1+$d2"
  done
done
