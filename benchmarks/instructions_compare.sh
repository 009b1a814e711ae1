#!/usr/bin/env bash
# Instructions per memory_store::acquire, old build against new, counted by callgrind: a
# count that does not move when the machine is busy. For each algorithm the driver
# (benchmarks/instructions_driver.cc) runs 100 000 and 300 000 decisions; the difference of
# the two counts over 200 000 is the steady-state cost of one decision, set-up excluded.
#
#   benchmarks/instructions_compare.sh OLD_SOURCE_DIR OLD_BUILD_DIR NEW_SOURCE_DIR NEW_BUILD_DIR
# where each BUILD_DIR holds libsluice.a built from its SOURCE_DIR (release flags).
set -euo pipefail

if (($# != 4)); then
  echo "usage: $0 OLD_SOURCE_DIR OLD_BUILD_DIR NEW_SOURCE_DIR NEW_BUILD_DIR" >&2
  exit 2
fi
command -v valgrind >/dev/null || { echo "$0: needs valgrind" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The memory store uses userspace RCU (liburcu-memb) since its lookups became lock-free; an
# older libsluice.a simply does not use the library.
urcu_libs=$(pkg-config --libs liburcu-memb 2>/dev/null || true)
build() {  # build NAME SOURCE_DIR BUILD_DIR
  g++ -std=c++20 -O2 -DNDEBUG -I"$2/include" "$here/instructions_driver.cc" "$3/libsluice.a" \
    $urcu_libs -lpthread -o "$work/$1"
}
count() {  # count NAME ALGORITHM N -> instructions inside drive()
  valgrind --tool=callgrind --callgrind-out-file="$work/out" --toggle-collect='drive*' \
    "$work/$1" "$2" "$3" >/dev/null 2>&1
  callgrind_annotate "$work/out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}

build old "$1" "$2"
build new "$3" "$4"
names=(sliding_log sliding_counter gcra)
printf '%-16s %12s %12s %8s\n' algorithm "old instr" "new instr" "new-old"
for algo in 0 1 2; do
  per=()
  for side in old new; do
    a=$(count "$side" "$algo" 100000)
    b=$(count "$side" "$algo" 300000)
    per+=($(((b - a) / 200000)))
  done
  printf '%-16s %12s %12s %+8d\n' "${names[$algo]}" "${per[0]}" "${per[1]}" $((per[1] - per[0]))
done
