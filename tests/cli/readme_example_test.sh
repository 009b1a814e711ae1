#!/usr/bin/env bash
# Verifies that README.md's worked example is exactly what `sluice eval --now 0s` prints.
#
# usage: readme_example_test.sh SLUICE_BINARY README.md [DEMO_FILE]
#
# With DEMO_FILE (what `make run` runs), the example input must be exactly that file.
#
# The README marks the example with HTML comments around fenced blocks:
#   <!-- example:input -->
#   ```text
#   ...eval script...
#   ```
#   <!-- /example:input -->
# and the same with `example:output` for what sluice prints. Each marker must appear
# exactly once. The text inside the fence is used (without a fence, all lines between
# the markers). Fails, showing a diff, when the output differs; also when sluice exits
# with a status other than 0 or a sanitizer reports on stderr.
set -euo pipefail

if (($# != 2 && $# != 3)); then
  echo "usage: $0 SLUICE_BINARY README.md [DEMO_FILE]" >&2
  exit 2
fi
sluice=$1
readme=$2
demo=${3:-}

fail() {
  echo "readme_example_test: $*" >&2
  exit 1
}

[[ -x $sluice ]] || fail "$sluice is not an executable"
sluice=$(readlink -f "$sluice")
[[ -f $readme ]] || fail "$readme not found"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# extract NAME OUT: writes the example block NAME of the README to OUT.
extract() {
  local name=$1 out=$2 status
  status=$(awk -v open_m="<!-- example:$name -->" -v close_m="<!-- /example:$name -->" \
      -v out="$out" '
    function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
    {
      sub(/\r$/, "")
      t = trim($0)
      if (t == open_m) {
        opens++; inside = 1; n = 0; next
      }
      if (t == close_m) {
        closes++
        if (inside) { inside = 0; done = 1 }
        next
      }
      if (inside && !done) lines[++n] = $0
    }
    END {
      if (opens == 0) { print "no \"" open_m "\" marker"; exit }
      if (opens > 1) { print "\"" open_m "\" appears " opens " times"; exit }
      if (closes != 1 || !done) { print "\"" open_m "\" is not closed by \"" close_m "\""; exit }
      # Keep the inside of the first fenced block when there is one.
      first = 0; last = 0
      for (i = 1; i <= n; i++) if (lines[i] ~ /^[ \t]*```/) { first = i; break }
      if (first) {
        for (i = first + 1; i <= n; i++) if (lines[i] ~ /^[ \t]*```[ \t]*$/) { last = i; break }
        if (!last) { print "the fenced block after \"" open_m "\" is not closed"; exit }
        from = first + 1; to = last - 1
      } else {
        from = 1; to = n
      }
      printf "" > out
      for (i = from; i <= to; i++) print lines[i] > out
      print "ok"
    }' "$readme")
  [[ $status == ok ]] || fail "$readme: $status"
}

extract input "$tmp/input.eval"
extract output "$tmp/expected.txt"
[[ -s $tmp/input.eval ]] || fail "$readme: the example input is empty"
if [[ -n $demo ]] && ! diff -u "$demo" "$tmp/input.eval" >"$tmp/demo.diff"; then
  cat "$tmp/demo.diff" >&2
  fail "$readme: the example input differs from $demo"
fi

set +e
(cd "$tmp" && "$sluice" eval --now 0s input.eval) >"$tmp/actual.txt" 2>"$tmp/stderr.txt"
rc=$?
set -e

if ! diff -u --label "README.md (expected)" --label "sluice eval --now 0s (actual)" \
    "$tmp/expected.txt" "$tmp/actual.txt" >"$tmp/diff.txt"; then
  echo "readme_example_test: README.md's example output differs from what sluice prints:" >&2
  cat "$tmp/diff.txt" >&2
  if [[ -s $tmp/stderr.txt ]]; then
    echo "--- stderr of sluice:" >&2
    cat "$tmp/stderr.txt" >&2
  fi
  exit 1
fi
# Bad input lines are reported in the output and do not change the status (no --strict):
# anything but 0 is a crash or a sanitizer abort, and so is a sanitizer report on stderr.
if ((rc != 0)); then
  echo "readme_example_test: sluice eval exited with status $rc" >&2
  cat "$tmp/stderr.txt" >&2
  exit 1
fi
if grep -qE 'ERROR: [A-Za-z]+Sanitizer|WARNING: ThreadSanitizer|runtime error:' "$tmp/stderr.txt"; then
  echo "readme_example_test: sluice eval reported a sanitizer error:" >&2
  cat "$tmp/stderr.txt" >&2
  exit 1
fi
echo "readme_example_test: README example matches ($(wc -l <"$tmp/expected.txt") lines)"
