#!/usr/bin/env bash
# Redis CPU per decision as instructions, counted by callgrind on redis-server: a figure
# that does not move when the machine is busy (docs/BENCHMARKS.md, "Batched scripts"; the
# method of "The scripts' layout"). redis-benchmark drives the scripts directly:
#   single: EVALSHA <algorithm's script> 1 bench:__rand_int__ acquire ... (-P 16 -c 4),
#           one decision per call, as with batch=0;
#   batch:  EVALSHA <batch script> with 100 calls per run (-P 1 -c 4).
# Each runs for SHORT and LONG decisions; (instructions at LONG - at SHORT) / (LONG -
# SHORT) is the steady-state cost of one decision, all of Redis's user-space work
# (commands, Lua, parsing, replies). Cases: each algorithm on 10 000 random keys, every
# decision allowed (limit 1000000/1s), and `hot`: one sliding_log key with limit 100/1h,
# so all but the first 100 decisions are denials.
#
# Environment: SLUICE (./build/release/sluice), SHORT (1000), LONG (4000), CASES
# ("sliding_log sliding_counter gcra hot").
set -euo pipefail
cd "$(dirname "$0")/.."
sluice=${SLUICE:-./build/release/sluice}
short=${SHORT:-1000}
long=${LONG:-4000}
cases=${CASES:-sliding_log sliding_counter gcra hot}
for tool in valgrind callgrind_control redis-server redis-cli redis-benchmark; do
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
load() { # file
  redis-cli -p "$port" -x SCRIPT LOAD <"$1"
}
"$sluice" bench --print-script batch >"$tmp/batch.lua"
batch_sha=$(load "$tmp/batch.lua")

# Prints the instructions Redis ran for "$@" (a redis-benchmark command line).
count() {
  redis-cli -p "$port" FLUSHALL >/dev/null
  rm -f "$tmp"/cg.out.*
  callgrind_control -i on "$pid" >/dev/null 2>&1
  redis-benchmark -p "$port" -q "$@" >/dev/null
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  for _ in $(seq 100); do
    compgen -G "$tmp/cg.out.*" >/dev/null && break
    sleep 0.1
  done
  sed -n 's/^totals: //p' "$tmp"/cg.out.* | head -n 1
}

printf '%-16s %12s %12s %8s\n' case "single" "batch" "batch/single"
for c in $cases; do
  algo=$c key=bench:__rand_int__ count_=1000000 window=1000000 letter=
  if [[ $c == hot ]]; then
    algo=sliding_log key=bench:hot count_=100 window=3600000000
  fi
  case $algo in
    sliding_log) letter=l ;;
    sliding_counter) letter=c ;;
    gcra) letter=g ;;
  esac
  "$sluice" bench --print-script "$algo" >"$tmp/$algo.lua"
  sha=$(load "$tmp/$algo.lua")
  single=(EVALSHA "$sha" 1 "$key" acquire "$count_" "$window" 1 "" t__rand_int__)
  if [[ $c == hot ]]; then # one key, named once, as the store sends it
    args=(EVALSHA "$batch_sha" 1 "$key")
    for i in $(seq 100); do args+=(1 "a$letter" "$count_" "$window" 1 "" "t__rand_int__"); done
  else
    args=(EVALSHA "$batch_sha" 100)
    for i in $(seq 100); do args+=("$key"); done
    for i in $(seq 100); do args+=("$i" "a$letter" "$count_" "$window" 1 "" "t__rand_int__"); done
  fi
  s1=$(count -P 16 -c 4 -r 10000 -n "$short" "${single[@]}")
  s2=$(count -P 16 -c 4 -r 10000 -n "$long" "${single[@]}")
  b1=$(count -P 1 -c 4 -r 10000 -n $((short / 100)) "${args[@]}")
  b2=$(count -P 1 -c 4 -r 10000 -n $((long / 100)) "${args[@]}")
  awk -v c="$c" -v s1="$s1" -v s2="$s2" -v b1="$b1" -v b2="$b2" -v n=$((long - short)) 'BEGIN {
    s = (s2 - s1) / n; b = (b2 - b1) / n
    printf "%-16s %12.0f %12.0f %8.2f\n", c, s, b, b / s }'
done
