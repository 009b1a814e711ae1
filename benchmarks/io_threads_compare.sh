#!/usr/bin/env bash
# `sluice serve` with 1 I/O thread against 2, on the memory store, side by side in one run
# (`make bench-io-threads`; figures in docs/BENCHMARKS.md, "Memory store across cores"):
# server_ab.sh on one build, A with 1 I/O thread and B with 2, both servers up at once under
# the same wrk load of POST /v1/acquire over BENCH_KEYS keys. It prints the server's CPU per
# request and requests/s of each round, and the ratios 2 threads / 1 (B / A), medians and
# ranges, against the issue's target: CPU per request with 2 I/O threads within 1.1x of 1.
#
# Environment: SLUICE (./build/release/sluice), ROUNDS (5), BENCH_SECONDS (5), and what
# server_ab.sh reads: WRK, BENCH_KEYS, BENCH_CONNECTIONS, BENCH_THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."

sluice=${SLUICE:-./build/release/sluice}
ROUNDS=${ROUNDS:-5} BENCH_SECONDS=${BENCH_SECONDS:-5} IO_THREADS_A=1 IO_THREADS_B=2 \
  CPU_TARGET=1.1 exec bash benchmarks/server_ab.sh "$sluice" "$sluice"
