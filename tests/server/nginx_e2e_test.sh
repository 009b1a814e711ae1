#!/usr/bin/env bash
# nginx in front of `sluice serve`, end to end: the shipped examples/nginx/nginx.conf (with
# free loopback ports put in) asks sluice's gate before passing a request to the upstream.
# Shows that requests within the limit reach the upstream, the one past it gets 429 with
# Retry-After, other keys are not affected, a client cannot pick its own key where nginx
# sets it, and nginx answers 503 when sluice is gone.
#
#   nginx_e2e_test.sh SLUICE_BINARY NGINX_CONF
#
# Exits 77 (skipped) when nginx or curl is missing. Everything runs in a temporary
# directory as the current user; every process started is killed by its pid on exit, and
# every wait is bounded.
set -euo pipefail

sluice=$1
conf_src=$2
nginx_bin=${NGINX:-/usr/sbin/nginx}
[[ -x $nginx_bin ]] || nginx_bin=$(command -v nginx || true)
if [[ -z $nginx_bin || ! -x $nginx_bin ]]; then
  echo "SKIP: nginx is not installed (apt-get install nginx-light)"
  exit 77
fi
if ! command -v curl >/dev/null; then
  echo "SKIP: curl is not installed"
  exit 77
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-nginx-e2e.XXXXXX")
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in {1..50}; do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if ((status != 0)); then
    echo "--- sluice.log"; tail -n 30 "$tmp/sluice.log" 2>/dev/null || true
    echo "--- nginx error.log"; tail -n 30 "$tmp/error.log" 2>/dev/null || true
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# Free loopback ports: bound with port 0, then released (good enough for a test).
read -r sluice_port front_port app_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

# The shipped config, with its three addresses moved to the free ports.
for addr in 127.0.0.1:8080 127.0.0.1:8000 127.0.0.1:8081; do
  grep -q "$addr;" "$conf_src" || fail "$conf_src no longer has '$addr;'; update this test"
done
mkdir -p "$tmp/tmp"
sed -e "s/127\.0\.0\.1:8080;/127.0.0.1:$sluice_port;/" \
    -e "s/127\.0\.0\.1:8000;/127.0.0.1:$front_port;/" \
    -e "s/127\.0\.0\.1:8081;/127.0.0.1:$app_port;/" "$conf_src" > "$tmp/nginx.conf"

cat > "$tmp/sluice.yaml" <<EOF
listen: 127.0.0.1:$sluice_port
io_threads: 1
store: memory://
policies:
  chat: {limit: 5/1m, gate: {key_header: X-User-Id}}
  login: {limit: 3/1m}   # keyed by X-Forwarded-For, which nginx sets to the client address
EOF

"$sluice" serve --config "$tmp/sluice.yaml" > "$tmp/sluice.log" 2>&1 &
sluice_pid=$!
pids+=("$sluice_pid")
"$nginx_bin" -p "$tmp" -e "$tmp/error.log" -c "$tmp/nginx.conf" \
  -g 'daemon off; master_process off;' > "$tmp/nginx.out" 2>&1 &
pids+=("$!")

# Waits up to 10 s for `url` to answer with any HTTP status.
wait_for() {
  local url=$1 name=$2
  for _ in {1..100}; do
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
    [[ $code != 000 ]] && return 0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || fail "$name exited early"; done
    sleep 0.1
  done
  fail "$name did not answer $url within 10 s"
}
wait_for "http://127.0.0.1:$sluice_port/healthz" "sluice"
wait_for "http://127.0.0.1:$front_port/" "nginx"

# get PATH [curl args...]: sets code, body, headers.
get() {
  local path=$1
  shift
  code=$(curl -s --max-time 5 -D "$tmp/headers" -o "$tmp/body" -w '%{http_code}' "$@" \
    "http://127.0.0.1:$front_port$path" || true)
  body=$(cat "$tmp/body" 2>/dev/null || true)
  headers=$(tr -d '\r' < "$tmp/headers" 2>/dev/null || true)
}

upstream_body="hello from the upstream"

for i in 1 2 3 4 5; do
  get /chat/ -H 'X-User-Id: alice'
  [[ $code == 200 ]] || fail "request $i of alice: status $code, want 200 (body: $body)"
  [[ $body == "$upstream_body" ]] || fail "request $i of alice: body '$body', not the upstream's"
  grep -qi "^RateLimit: \"chat\";r=$((5 - i));t=" <<< "$headers" ||
    fail "request $i of alice: no RateLimit with r=$((5 - i)); headers:"$'\n'"$headers"
done
echo "ok: alice's first 5 requests reached the upstream, with RateLimit r=4..0"

get /chat/ -H 'X-User-Id: alice'
[[ $code == 429 ]] || fail "request 6 of alice: status $code, want 429 (body: $body)"
retry_after=$(sed -n 's/^Retry-After: *//Ip' <<< "$headers")
[[ $retry_after =~ ^[0-9]+$ ]] && ((retry_after >= 1 && retry_after <= 60)) ||
  fail "request 6 of alice: Retry-After '$retry_after', want 1..60 s; headers:"$'\n'"$headers"
grep -qi '^RateLimit: "chat";r=0;t=' <<< "$headers" ||
  fail "request 6 of alice: no RateLimit header from sluice; headers:"$'\n'"$headers"
[[ $body != *"$upstream_body"* ]] || fail "request 6 of alice reached the upstream"
grep -qi '^Connection: keep-alive' <<< "$headers" ||
  fail "the 429 closed the connection; headers:"$'\n'"$headers"
echo "ok: alice's 6th request got 429 with Retry-After: $retry_after"

get /chat/ -H 'X-User-Id: bob'
[[ $code == 200 && $body == "$upstream_body" ]] || fail "bob: status $code, want 200"
echo "ok: bob still gets 200"

get /chat/
[[ $code == 400 && $body != *"$upstream_body"* ]] ||
  fail "no X-User-Id: status $code, want 400 (body: $body)"
grep -qi '^Connection: keep-alive' <<< "$headers" ||
  fail "the 400 closed the connection; headers:"$'\n'"$headers"
echo "ok: a request without X-User-Id gets 400"

# Denials are answers, not errors: nothing in nginx's error log so far.
if grep -q 'auth request unexpected status' "$tmp/error.log"; then
  fail "nginx logged denials as errors: $(grep 'unexpected status' "$tmp/error.log" | head -3)"
fi

# /login is keyed by the client's address, which nginx sets: a forged X-Forwarded-For
# does not buy a fresh limit.
for i in 1 2 3; do
  get /login -H "X-Forwarded-For: 10.0.0.$i"
  [[ $code == 200 ]] || fail "login $i: status $code, want 200 (body: $body)"
done
get /login -H 'X-Forwarded-For: 10.0.0.99'
[[ $code == 429 ]] || fail "login 4 with a forged X-Forwarded-For: status $code, want 429"
echo "ok: /login counts by client address; a forged X-Forwarded-For gets 429 too"

# sluice gone: nginx fails closed with 503 rather than hanging or letting everyone through.
kill "$sluice_pid"
for _ in {1..100}; do kill -0 "$sluice_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$sluice_pid" 2>/dev/null && fail "sluice did not stop within 10 s of SIGTERM"
get /chat/ -H 'X-User-Id: carol'
[[ $code == 503 ]] || fail "with sluice down: status $code, want 503 (body: $body)"
echo "ok: with sluice down nginx answers 503"
echo "PASS"
