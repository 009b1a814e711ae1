# Shell pieces the benchmark scripts share; sourced, not run. Needs `tmp` (a scratch
# directory) set by the caller.

# True when nothing listens on 127.0.0.1:$1.
port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints a free loopback port. Needs the caller's `die`.
free_port() {
  local p
  for _ in {1..50}; do
    p=$((20000 + RANDOM % 40000))
    port_is_free "$p" && { echo "$p"; return; }
  done
  die "no free port"
}

# Waits up to 10 s for url $1 to give an HTTP answer; fails when the process $2 exits first,
# printing the end of its log, $tmp/$3.log. Needs the caller's `die`.
wait_for() {
  local url=$1 pid=$2 name=$3
  for _ in {1..100}; do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true) != 000 ]] && return
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$tmp/$name.log" >&2; die "$name exited"; }
    sleep 0.1
  done
  die "$name did not answer $url within 10 s"
}

# Starts a private redis-server (binary $1, extra arguments after it) on a free loopback
# port, with no persistence, in $tmp; sets `port` and `redis_pid`, or leaves redis_pid
# empty when it could not. The caller stops it by its pid.
start_redis() {
  local server=$1
  shift
  redis_pid=
  for _ in $(seq 10); do
    port=$((20000 + RANDOM % 40000))
    port_is_free "$port" || continue
    "$server" --port "$port" --bind 127.0.0.1 --dir "$tmp" --save '' --appendonly no \
      --logfile "$tmp/redis-$port.log" --daemonize no "$@" >/dev/null 2>&1 &
    redis_pid=$!
    for _ in $(seq 50); do
      if redis-cli -p "$port" ping >/dev/null 2>&1; then return 0; fi
      kill -0 "$redis_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=
  done
}

# Prints the CPU seconds (user + system) process $1 has used so far.
cpu_seconds() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }

# Prints the number of field $1 of the flat JSON object in file $2.
field() { sed -nE "s/.*\"$1\": ?([0-9.eE+-]+).*/\1/p" "$2" | head -n 1; }

# Prints the median of its arguments (numbers).
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Prints "median (min-max)" of its arguments (numbers), three significant digits.
stats() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.3g (%.3g-%.3g)", m, v[1], v[NR] }'
}

# Writes to file $1 a wrk script of POST /v1/acquire {"key":"user:<i>","policy":"bench"}, the
# keys rotating over $2 keys, each wrk thread from its own offset.
write_acquire_lua() {
  local keys=$2
  cat >"$1" <<LUA
local threads = 0
function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  n = n + 1
  return wrk.format(nil, "/v1/acquire", nil,
    '{"key":"user:' .. ((n + offset) % $keys) .. '","policy":"bench"}')
end
LUA
}
