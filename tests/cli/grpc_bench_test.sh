#!/usr/bin/env bash
# Verifies that `sluice bench --grpc` drives Envoy's rate limit service end to end, so the load
# generator does not rot: `sluice serve` (memory store, an Envoy config with a high limit on
# each descriptor key) started here on free ports, then about 1 s of one-descriptor calls and
# 0.5 s of two-descriptor calls; each JSON line must count decisions and no error, timeout or
# denial. No timing is asserted.
#
# usage: grpc_bench_test.sh SLUICE_BINARY
set -euo pipefail

sluice=$1
fail() {
  echo "grpc_bench_test: $*" >&2
  exit 1
}
[[ -x $sluice ]] || fail "$sluice is not an executable"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-grpc-bench-test.XXXXXX")
serve_pid=
cleanup() {
  local status=$?
  if [[ -n $serve_pid ]]; then
    kill "$serve_pid" 2>/dev/null || true
    for _ in {1..100}; do kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$serve_pid" 2>/dev/null || true
  fi
  if ((status != 0)); then
    echo "--- sluice serve's stderr"
    tail -n 30 "$tmp/serve.log" 2>/dev/null || true
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT

mkdir -p "$tmp/envoy"
cat >"$tmp/envoy/bench.yaml" <<'YAML'
domain: bench
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 1000000, algorithm: gcra}
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 1000000, algorithm: gcra}
YAML
: >"$tmp/serve.out" # before the child opens it, so the first read cannot miss it
"$sluice" serve --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 --envoy-config "$tmp/envoy" \
  --store memory:// --io-threads 1 >"$tmp/serve.out" 2>"$tmp/serve.log" &
serve_pid=$!
address=
for _ in {1..300}; do
  address=$(sed -nE 's/^sluice grpc listening on (.*)$/\1/p' "$tmp/serve.out")
  [[ -n $address ]] && break
  kill -0 "$serve_pid" 2>/dev/null || fail "sluice serve exited"
  sleep 0.1
done
[[ -n $address ]] || fail "sluice serve printed no gRPC address within 30 s"

# check DESCRIPTORS SECONDS: one run, its JSON line checked.
check() {
  local out
  out=$("$sluice" bench --grpc "$address" --descriptors "$1" --seconds "$2" --inflight 16 \
    --keys 100 2>"$tmp/bench.err") ||
    fail "sluice bench --grpc exited with $?: $out $(cat "$tmp/bench.err")"
  echo "$out"
  python3 - "$out" "$1" <<'PY' || fail "unexpected figures: $out"
import json, sys
j = json.loads(sys.argv[1])
assert j["decisions"] > 0, "no decisions"
assert j["errors"] == 0 and j["timeouts"] == 0, "errors or timeouts"
assert j["allowed"] == j["decisions"], "denials under a limit of 1000000/s"
assert j["descriptors"] == int(sys.argv[2])
assert 0 < j["p50_us"] <= j["p99_us"]
PY
  if grep -qE 'ERROR: [A-Za-z]+Sanitizer|WARNING: ThreadSanitizer|runtime error:' \
      "$tmp/bench.err"; then
    cat "$tmp/bench.err" >&2
    fail "sluice bench reported a sanitizer error"
  fi
}
check 1 1
check 2 0.5
