#!/usr/bin/env bash
# Scaling across cores, old build against new: alternates the two sluice_benchmark binaries
# for ROUNDS rounds (A then B, then B then A, ...) over the memory store's 1- and 2-thread
# runs matching FILTER, and prints, per case, for each side the median and range of
# threads:2 / threads:1 taken round by round (both measured in the same run of the binary),
# and the median and range of B / A at one thread. On a busy machine two threads seldom get
# two cores at once, so it also prints the 2-thread speed-up that CPU time implies:
# 2 × (CPU per decision at 1 thread) / (CPU per decision at 2 threads), which is 2 when a
# second thread costs nothing per decision. See docs/BENCHMARKS.md, "Memory store across
# cores".
#
#   benchmarks/cores_compare.sh OLD/sluice_benchmark NEW/sluice_benchmark
#   ROUNDS=5 MIN_TIME=0.5 FILTER='keys:10k' benchmarks/cores_compare.sh A B
set -euo pipefail

if (($# != 2)); then
  echo "usage: $0 BENCHMARK_A BENCHMARK_B   (ROUNDS, MIN_TIME, FILTER in the environment)" >&2
  exit 2
fi
a=$1 b=$2
rounds=${ROUNDS:-5}
min_time=${MIN_TIME:-0.5}
filter=${FILTER:-'memory_store/(gcra|sliding_counter|sliding_log)/(hot_key|keys:10k)/real_time'}
for bin in "$a" "$b"; do
  [[ -x $bin ]] || { echo "$0: $bin is not an executable" >&2; exit 2; }
done

out=$(mktemp)
trap 'rm -f "$out"' EXIT
for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then order=(A B); else order=(B A); fi
  for side in "${order[@]}"; do
    if [[ $side == A ]]; then bin=$a; else bin=$b; fi
    "$bin" --benchmark_filter="$filter" --benchmark_min_time="$min_time" \
      --benchmark_format=csv 2>/dev/null |
      awk -F, -v side="$side" -v r="$r" 'NR > 1 && $7 != "" {
        gsub(/"/, "", $1); n = $1; t = n; sub(/.*threads:/, "", t); sub(/\/real_time\/threads:.*/, "", n)
        print r, side, n, t, $7, $4 }' >>"$out"
  done
  echo "round $r of $rounds done ($(cut -d, -f1 /proc/loadavg | cut -d' ' -f1) load)" >&2
done

awk '
  { v[$3, $1, $2, $4] = $5; c[$3, $1, $2, $4] = $6; names[$3] = 1; if ($1 > n) n = $1 }
  function median(x, k,   i, j, t) {
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
    return k % 2 ? x[(k + 1) / 2] : (x[k / 2] + x[k / 2 + 1]) / 2
  }
  function stats(x, k,   i, lo, hi) {
    lo = x[1]; hi = x[1]
    for (i = 2; i <= k; i++) { if (x[i] < lo) lo = x[i]; if (x[i] > hi) hi = x[i] }
    return sprintf("%6.2f (%4.2f-%4.2f)", median(x, k), lo, hi)
  }
  END {
    printf "%-36s %8s %8s %8s %8s %-19s %-19s %-19s %-19s %-19s\n", "case", "A 1T M/s", "A 2T M/s", "B 1T M/s", "B 2T M/s", "A 2T/1T", "B 2T/1T", "B/A 1T", "A 2T/1T by CPU", "B 2T/1T by CPU"
    for (name in names) {
      k = 0
      for (r = 1; r <= n; r++) {
        if (!((name, r, "A", 1) in v) || !((name, r, "A", 2) in v)) continue
        if (!((name, r, "B", 1) in v) || !((name, r, "B", 2) in v)) continue
        k++
        a1[k] = v[name, r, "A", 1]; a2[k] = v[name, r, "A", 2]
        b1[k] = v[name, r, "B", 1]; b2[k] = v[name, r, "B", 2]
        sa[k] = a2[k] / a1[k]; sb[k] = b2[k] / b1[k]; q[k] = b1[k] / a1[k]
        ca[k] = 2 * c[name, r, "A", 1] / c[name, r, "A", 2]; cb[k] = 2 * c[name, r, "B", 1] / c[name, r, "B", 2]
      }
      if (k == 0) continue
      line = sprintf("%-36s %8.2f %8.2f %8.2f %8.2f", name, median(a1, k) / 1e6, median(a2, k) / 1e6, median(b1, k) / 1e6, median(b2, k) / 1e6)
      line = line " " stats(sa, k) " " stats(sb, k) " " stats(q, k) " " stats(ca, k) " " stats(cb, k)
      print line
    }
  }' "$out" | sort
