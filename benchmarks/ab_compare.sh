#!/usr/bin/env bash
# Compares two builds of sluice_benchmark side by side: alternates them for ROUNDS rounds
# (A then B, then B then A, ...) over the benchmarks matching FILTER, and prints, per
# benchmark, each side's median decisions/s and the median and range of the ratio B/A
# taken round by round. Alternating and taking ratios per round keeps a shared machine's
# swings out of the comparison. See docs/BENCHMARKS.md, "Before and after a change".
#
#   benchmarks/ab_compare.sh OLD/sluice_benchmark NEW/sluice_benchmark
#   ROUNDS=8 MIN_TIME=0.5 FILTER='keys:10k' benchmarks/ab_compare.sh A B
set -euo pipefail

if (($# != 2)); then
  echo "usage: $0 BENCHMARK_A BENCHMARK_B   (ROUNDS, MIN_TIME, FILTER in the environment)" >&2
  exit 2
fi
a=$1 b=$2
rounds=${ROUNDS:-6}
min_time=${MIN_TIME:-0.5}
filter=${FILTER:-'memory_store/(gcra|sliding_counter|sliding_log)/keys:10k/real_time/threads:1$|memory_store/(gcra|sliding_log)/hot_key/real_time/threads:1$'}
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
      awk -F, -v side="$side" -v r="$r" 'NR > 1 && $7 != "" { gsub(/"/, "", $1); print r, side, $1, $7 }' \
        >>"$out"
  done
  echo "round $r of $rounds done" >&2
done

awk '
  { v[$3, $1, $2] = $4; names[$3] = 1; if ($1 > n) n = $1 }
  function median(x, k,   i, j, t) {
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
    return k % 2 ? x[(k + 1) / 2] : (x[k / 2] + x[k / 2 + 1]) / 2
  }
  END {
    printf "%-58s %10s %10s %8s %15s\n", "benchmark", "A (M/s)", "B (M/s)", "B/A", "B/A range"
    for (name in names) {
      k = 0
      for (r = 1; r <= n; r++) {
        if (!((name, r, "A") in v) || !((name, r, "B") in v)) continue
        k++; ra[k] = v[name, r, "A"]; rb[k] = v[name, r, "B"]; q[k] = rb[k] / ra[k]
      }
      if (k == 0) continue
      lo = q[1]; hi = q[1]; for (i = 2; i <= k; i++) { if (q[i] < lo) lo = q[i]; if (q[i] > hi) hi = q[i] }
      printf "%-58s %10.2f %10.2f %8.3f %7.3f-%-7.3f\n", name, median(ra, k) / 1e6, median(rb, k) / 1e6, median(q, k), lo, hi
    }
  }' "$out" | sort
