#!/usr/bin/env bash
# A throwaway Redis Cluster on 127.0.0.1 for tests: N masters with R replicas each, every
# node a plain `redis-server` child with no persistence, in its own directory under DIR.
#
#   redis-cluster.sh start DIR [--masters N] [--replicas R] [--node-timeout MS] [--owner-pid PID]
#                              [--password P] [--tls CERT_DIR]
#   redis-cluster.sh stop DIR
#
# start  starts N*(R+1) servers (defaults: 3 masters, 1 replica each, cluster-node-timeout
#        1000 ms) on random free loopback ports, joins them with `redis-cli --cluster create`,
#        and waits until every node reports cluster_state:ok, the same masters over all 16384
#        slots, and every replica in sync. It leaves in DIR:
#          pids         one pid a line, written as each server starts (what stop kills)
#          nodes        one line a node: `port pid master|replica node-id`, masters first
#          watcher.pid  with --owner-pid: the watcher that stops the cluster when PID is gone
#          <port>/      each node's redis.conf, redis.log, stdout.log and nodes.conf
#        and prints the seed list `127.0.0.1:p1,127.0.0.1:p2,...` (masters first) as the last
#        line on stdout. On failure it prints why, with the tail of the log that says so, on
#        stderr, stops whatever it started and exits non-zero.
#        --password P    every node requires P (requirepass) and replicas use it to reach
#                        their master (masterauth); the script's redis-cli calls pass it.
#        --tls CERT_DIR  every node serves TLS only: its port is a tls-port (no plain port),
#                        and the cluster bus and replication links are TLS too. CERT_DIR holds
#                        ca.crt, server.crt and server.key (the certificate must be valid for
#                        IP 127.0.0.1 and usable for clientAuth as well as serverAuth: nodes
#                        present it to each other on the cluster bus). Clients are not asked
#                        for a certificate.
# stop   SIGTERM to the pids in DIR/pids and the watcher, SIGKILL to any still there after
#        5 s, and waits until they are gone. Leaves DIR in place; safe to run again.
#
# Ports are picked at random in 20000-59999 (client port and an explicit cluster bus port).
# Nothing reserves a port between the pick and the bind, so a server that finds its port
# taken (by another cluster starting at the same moment, or anything else) is started again
# on other ports; and a server only counts as up once the process answering on its port
# reports our pid, so a port that another server holds is never mistaken for ours.
#
# A pid is only ever signalled while its working directory is inside DIR (servers and the
# watcher run there), so stopping twice, or late, cannot hit an unrelated process that has
# reused the pid.
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")"
readonly SELF
readonly CLI_TIMEOUT=5        # seconds for any one redis-cli call
readonly SERVER_UP_TIMEOUT=10 # seconds for a server to answer PING
readonly READY_TIMEOUT=30     # seconds for the whole cluster to agree after create
readonly STOP_GRACE=5         # seconds between SIGTERM and SIGKILL
readonly PORT_ATTEMPTS=20     # start-ups of one node on fresh ports before giving up

usage() {
  sed -n '2,8p' "$SELF" | sed 's/^# \{0,1\}//' >&2
  echo "(more in the header of $SELF)" >&2
  exit 2
}

# ---- processes -----------------------------------------------------------------------------

# True when `pid` is a live process (a zombie is dead: it only waits for its parent to reap it,
# and this script is not the parent of a server when `stop` runs).
alive() {
  local stat
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat=${stat##*) }  # the state follows the command name, which may hold spaces
  [[ ${stat%% *} != Z ]]
}

# True when `pid` is alive and working in DIR: one of ours (see the header).
ours() {
  local cwd
  alive "$1" || return 1
  cwd=$(readlink "/proc/$1/cwd" 2>/dev/null) || return 1
  [[ $cwd == "$DIR" || $cwd == "$DIR/"* || $cwd == "$DIR (deleted)" ]]
}

# Waits up to `seconds` until none of the given pids is alive; true when none is.
wait_gone() {
  local seconds=$1 pid
  shift
  local deadline=$((SECONDS + seconds))
  for pid in "$@"; do
    while alive "$pid"; do
      ((SECONDS < deadline)) || return 1
      sleep 0.05
    done
  done
}

# Stops the pids in DIR/pids and the watcher in DIR/watcher.pid, as the header says.
stop_all() {
  local pid victims=()
  if [[ -f $DIR/pids ]]; then
    while read -r pid; do
      [[ $pid =~ ^[0-9]+$ ]] && ours "$pid" && victims+=("$pid")
    done <"$DIR/pids"
  fi
  if [[ -f $DIR/watcher.pid ]]; then
    pid=$(cat "$DIR/watcher.pid")
    # The watcher stops the cluster itself when its owner is gone: it must not kill itself.
    [[ $pid =~ ^[0-9]+$ && $pid != "$$" ]] && ours "$pid" && victims+=("$pid")
  fi
  ((${#victims[@]} > 0)) || return 0
  for pid in "${victims[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true  # a paused (SIGSTOPped) server cannot act on SIGTERM
  done
  if ! wait_gone "$STOP_GRACE" "${victims[@]}"; then
    for pid in "${victims[@]}"; do
      if ours "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
    wait_gone 10 "${victims[@]}" || echo "redis-cluster.sh: pids still alive after SIGKILL" >&2
  fi
}

# True when any pid in DIR/pids is still one of ours.
running_in_dir() {
  local pid
  [[ -f $DIR/pids ]] || return 1
  while read -r pid; do
    if [[ $pid =~ ^[0-9]+$ ]] && ours "$pid"; then
      return 0
    fi
  done <"$DIR/pids"
  return 1
}

# ---- talking to the nodes ------------------------------------------------------------------

CLI_OPTIONS=()  # --password and --tls, as redis-cli options (set by cmd_start)

# Runs one redis-cli command against 127.0.0.1:`port`; prints the reply (--raw, no CRs).
cli() {
  local port=$1
  shift
  timeout "$CLI_TIMEOUT" redis-cli -h 127.0.0.1 -p "$port" "${CLI_OPTIONS[@]}" --raw "$@" \
    2>/dev/null | tr -d '\r'
}

# Prints the last lines of a node's logs, for error messages.
node_logs() {
  local node_dir=$1 log
  for log in "$node_dir/redis.log" "$node_dir/stdout.log"; do
    [[ -s $log ]] || continue
    echo "--- last lines of $log:"
    tail -n 20 "$log"
  done
}

# Prints every node's view of the cluster and the tail of its log, for error messages.
describe_nodes() {
  local port
  for port in "${PORTS[@]}"; do
    echo "--- CLUSTER NODES as 127.0.0.1:$port sees it:"
    cli "$port" CLUSTER NODES || true
    node_logs "$DIR/$port"
  done
}

# Prints the error `message`, then `details` when given, on stderr and exits (during start,
# the EXIT trap then stops what was started).
fail() {
  echo "redis-cluster.sh: $1" >&2
  [[ -z ${2:-} ]] || echo "$2" >&2
  exit 1
}

# ---- start ---------------------------------------------------------------------------------

declare -A PID_OF=()  # port -> pid of the server on it
declare -A USED=()    # ports this run has picked, so that one cluster never picks one twice
PORTS=()              # client ports, in start order

# Sets PICKED to a random port in 20000-59999 that this run has not picked yet. (Not printed:
# in a $(...) subshell the record in USED would be lost, and a port could be picked twice.)
pick_port() {
  local tries
  for ((tries = 0; tries < 1000; tries++)); do
    PICKED=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    if [[ -z ${USED[$PICKED]:-} ]]; then
      USED[$PICKED]=1
      return 0
    fi
  done
  fail "no unused port left to pick in 20000-59999"
}

# Prints `value` as a redis.conf argument: in double quotes, with \ and " escaped.
conf_quote() {
  local value=${1//\\/\\\\}
  printf '"%s"' "${value//\"/\\\"}"
}

# Writes the config of a node on `port` with cluster bus `bus` into `node_dir`.
write_config() {
  local port=$1 bus=$2 node_dir=$3
  local listen="port $port"
  if [[ -n $TLS_DIR ]]; then
    listen="port 0
tls-port $port
tls-cluster yes
tls-replication yes
tls-cert-file $(conf_quote "$TLS_DIR/server.crt")
tls-key-file $(conf_quote "$TLS_DIR/server.key")
tls-ca-cert-file $(conf_quote "$TLS_DIR/ca.crt")
tls-auth-clients no"
  fi
  local auth=""
  if [[ -n $PASSWORD ]]; then
    auth="requirepass $(conf_quote "$PASSWORD")
masterauth $(conf_quote "$PASSWORD")"
  fi
  cat >"$node_dir/redis.conf" <<EOF
bind 127.0.0.1
$listen
$auth
protected-mode no
daemonize no
dir "$node_dir"
logfile "$node_dir/redis.log"
cluster-enabled yes
cluster-port $bus
cluster-config-file "$node_dir/nodes.conf"
cluster-node-timeout $NODE_TIMEOUT
# Tests kill masters at any moment: let a replica take over however stale its data is.
cluster-replica-validity-factor 0
# Keep serving the slots that are covered while a master is down (the default refuses every
# command with CLUSTERDOWN until its replica takes over): the setting of deployments that
# want the other masters' keys decided meanwhile, and what the tests check clients against.
cluster-require-full-coverage no
# No persistence; replicas sync straight from memory, at once (the default waits 5 s).
save ""
appendonly no
repl-diskless-sync yes
repl-diskless-sync-delay 0
# A master's SIGTERM would wait up to 10 s for lagging replicas; stop at once instead.
shutdown-timeout 0
# DEBUG (e.g. DEBUG SLEEP) is refused by default since Redis 7 (start requires 7).
enable-debug-command yes
EOF
}

# Starts one node on fresh random ports, again on other ports while the ones picked turn out
# to be taken, and waits until it answers; records it in PORTS, PID_OF and DIR/pids.
start_node() {
  local attempt port bus node_dir pid reply
  for ((attempt = 1; attempt <= PORT_ATTEMPTS; attempt++)); do
    pick_port
    port=$PICKED
    pick_port
    bus=$PICKED
    node_dir="$DIR/$port"
    mkdir -p "$node_dir"
    write_config "$port" "$bus" "$node_dir"
    # Started from its own directory (see ours()), with every inherited output going to a
    # file: the caller's pipes must close when this script exits, not when the servers do.
    (cd "$node_dir" &&
      exec redis-server "$node_dir/redis.conf" </dev/null >>"$node_dir/stdout.log" 2>&1) &
    pid=$!
    echo "$pid" >>"$DIR/pids"
    local deadline=$((SECONDS + SERVER_UP_TIMEOUT))
    while :; do
      if ! alive "$pid"; then
        wait "$pid" || true
        if grep -qs "Address already in use" "$node_dir/redis.log" "$node_dir/stdout.log"; then
          # Taken: forget this pid and directory, and try other ports.
          sed -i "/^$pid\$/d" "$DIR/pids"
          rm -rf "$node_dir"
          break
        fi
        fail "redis-server on port $port exited at start-up" "$(node_logs "$node_dir")"
      fi
      # Whoever answers on the port must be our process, not a server of another cluster.
      reply=$(cli "$port" INFO server | grep '^process_id:' || true)
      if [[ $reply == "process_id:$pid" ]]; then
        PORTS+=("$port")
        PID_OF[$port]=$pid
        return 0
      fi
      if ((SECONDS >= deadline)); then
        fail "redis-server on port $port is not answering after ${SERVER_UP_TIMEOUT} s" \
          "$(node_logs "$node_dir")"
      fi
      sleep 0.02
    done
  done
  fail "no free ports for a node after $PORT_ATTEMPTS attempts"
}

# Prints, from one node's CLUSTER NODES, a line a master `<first slot> <id> <slot ranges>`
# (sorted by first slot) when that node sees a cluster that is whole: MASTERS masters, none
# failing, covering all 16384 slots, each with REPLICAS replicas. Prints nothing otherwise.
# (CLUSTER NODES is the table CLUSTER SLOTS is made from, in a form that awk can read.)
masters_seen_by() {
  cli "$1" CLUSTER NODES | awk -v masters="$MASTERS" -v replicas="$REPLICAS" '
    NF < 8 { next }
    $3 ~ /fail|handshake|noaddr/ { broken = 1 }
    $3 ~ /master/ {
      n_masters++
      first[$1] = 16384
      ranges[$1] = ""
      for (i = 9; i <= NF; i++) {
        if ($i ~ /^\[/) { broken = 1; continue }  # a slot being migrated or imported
        split($i, r, "-")
        lo = r[1] + 0
        hi = ($i ~ /-/) ? r[2] + 0 : lo
        covered += hi - lo + 1
        if (lo < first[$1]) first[$1] = lo
        ranges[$1] = ranges[$1] " " $i
      }
    }
    $3 ~ /slave/ { replica_count[$4]++ }
    END {
      if (broken || n_masters != masters || covered != 16384) exit
      for (id in first) if (replica_count[id] + 0 != replicas) exit
      for (id in first) print first[id], id ranges[id]
    }' | sort -n
}

# True when the cluster is whole and every node agrees on it (see the header).
cluster_ready() {
  local port want="" seen reply
  for port in "${PORTS[@]}"; do
    # (Replies are matched in variables, not with `| grep -q`: an early grep exit would fail
    # the pipeline under pipefail.)
    reply=$(cli "$port" CLUSTER INFO) || return 1
    [[ $'\n'$reply$'\n' == *$'\n'cluster_state:ok$'\n'* ]] || return 1
    seen=$(masters_seen_by "$port") || return 1
    [[ -n $seen ]] || return 1
    [[ -n $want ]] || want=$seen
    [[ $seen == "$want" ]] || return 1
    reply=$(cli "$port" ROLE) || return 1
    if [[ $reply == slave$'\n'* ]]; then
      reply=$(cli "$port" INFO replication) || return 1
      [[ $reply == *$'\n'master_link_status:up$'\n'* ]] || return 1
    fi
  done
}

# Writes DIR/nodes and prints the seed list: masters by their first slot, then each master's
# replicas in the same order.
write_nodes() {
  local port id line masters=() replicas=() seeds=()
  declare -A port_of_id=() master_of=()
  for port in "${PORTS[@]}"; do
    id=$(cli "$port" CLUSTER MYID) || true
    [[ -n $id ]] || fail "no answer to CLUSTER MYID from port $port"
    port_of_id[$id]=$port
  done
  # <first slot> <master id> ... from any one node: all agree by now.
  while read -r _ id _; do
    masters+=("$id")
  done < <(masters_seen_by "${PORTS[0]}")
  # Each replica's master, from CLUSTER NODES: `<id> <addr> <flags> <master id> ...`.
  while read -r id _ flags master _; do
    [[ $flags == *slave* ]] && master_of[$id]=$master
  done < <(cli "${PORTS[0]}" CLUSTER NODES)
  : >"$DIR/nodes.tmp"
  for id in "${masters[@]}"; do
    port=${port_of_id[$id]}
    echo "$port ${PID_OF[$port]} master $id" >>"$DIR/nodes.tmp"
    seeds+=("127.0.0.1:$port")
  done
  for id in "${masters[@]}"; do
    for line in "${!master_of[@]}"; do
      [[ ${master_of[$line]} == "$id" ]] || continue
      port=${port_of_id[$line]}
      replicas+=("$port ${PID_OF[$port]} replica $line")
    done
  done
  if ((${#replicas[@]} > 0)); then
    printf '%s\n' "${replicas[@]}" >>"$DIR/nodes.tmp"
  fi
  mv "$DIR/nodes.tmp" "$DIR/nodes"
  (IFS=,; echo "${seeds[*]}")
}

# Starts `redis-cluster.sh watch DIR OWNER` detached (own session, no inherited outputs) and
# waits until it has written DIR/watcher.pid.
start_watcher() {
  setsid "$SELF" watch "$DIR" "$OWNER_PID" </dev/null >/dev/null 2>&1 &
  local deadline=$((SECONDS + 5))
  until [[ -s $DIR/watcher.pid ]]; do
    ((SECONDS < deadline)) || fail "the owner watcher did not start"
    sleep 0.02
  done
}

# When start fails (or is interrupted) half-way: stop what it started.
on_start_exit() {
  local status=$?
  if ((status != 0)); then
    echo "redis-cluster.sh: start failed; stopping the servers it started" >&2
    stop_all
    rm -f "$DIR/nodes" "$DIR/nodes.tmp" "$DIR/watcher.pid"
  fi
}

cmd_start() {
  MASTERS=3
  REPLICAS=1
  NODE_TIMEOUT=1000
  OWNER_PID=""
  PASSWORD=""
  TLS_DIR=""
  while (($# > 0)); do
    case $1 in
      --masters) MASTERS=${2:?}; shift 2 ;;
      --replicas) REPLICAS=${2:?}; shift 2 ;;
      --node-timeout) NODE_TIMEOUT=${2:?}; shift 2 ;;
      --owner-pid) OWNER_PID=${2:?}; shift 2 ;;
      --password) PASSWORD=${2:?}; shift 2 ;;
      --tls) TLS_DIR=${2:?}; shift 2 ;;
      *) usage ;;
    esac
  done
  [[ $MASTERS =~ ^[0-9]+$ && $MASTERS -ge 3 ]] ||
    fail "--masters must be 3 or more (redis-cli --cluster create needs 3)"
  [[ $REPLICAS =~ ^[0-9]+$ ]] || fail "--replicas must be a number"
  [[ $NODE_TIMEOUT =~ ^[0-9]+$ ]] || fail "--node-timeout must be a number of ms"
  [[ -z $OWNER_PID || $OWNER_PID =~ ^[0-9]+$ ]] || fail "--owner-pid must be a pid"
  [[ $PASSWORD != *$'\n'* ]] || fail "--password must be one line"
  if [[ -n $PASSWORD ]]; then
    CLI_OPTIONS+=(-a "$PASSWORD" --no-auth-warning)
  fi
  if [[ -n $TLS_DIR ]]; then
    [[ -d $TLS_DIR ]] || fail "--tls: no directory $TLS_DIR"
    TLS_DIR=$(cd "$TLS_DIR" && pwd -P)
    local file
    for file in ca.crt server.crt server.key; do
      [[ -r $TLS_DIR/$file ]] || fail "--tls: $TLS_DIR/$file is missing"
    done
    CLI_OPTIONS+=(--tls --cacert "$TLS_DIR/ca.crt")
  fi
  command -v redis-server >/dev/null || fail "redis-server is needed (scripts/install-deps.sh)"
  command -v redis-cli >/dev/null ||
    fail "redis-cli is needed (scripts/install-deps.sh)"
  # cluster-port and enable-debug-command came with Redis 7.
  local version
  version=$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')
  ((${version:-0} >= 7)) || fail "needs Redis 7 or later, found: $(redis-server --version)"
  if running_in_dir; then
    fail "$DIR already holds a running cluster; stop it first"
  fi

  trap on_start_exit EXIT
  trap 'exit 143' TERM INT HUP
  : >"$DIR/pids"
  rm -f "$DIR/nodes" "$DIR/watcher.pid"
  if [[ -n $OWNER_PID ]]; then
    start_watcher
  fi

  local i addresses=()
  for ((i = 0; i < MASTERS * (REPLICAS + 1); i++)); do
    start_node
  done
  for i in "${PORTS[@]}"; do
    addresses+=("127.0.0.1:$i")
  done

  if ! timeout 60 redis-cli "${CLI_OPTIONS[@]}" --cluster create "${addresses[@]}" \
    --cluster-replicas "$REPLICAS" --cluster-yes </dev/null >"$DIR/create.log" 2>&1; then
    fail "redis-cli --cluster create failed; last lines of $DIR/create.log:" \
      "$(tail -n 30 "$DIR/create.log")"
  fi

  local deadline=$((SECONDS + READY_TIMEOUT))
  until cluster_ready; do
    if ((SECONDS >= deadline)); then
      fail "the cluster did not become ready (cluster_state:ok, the same masters over all 16384
slots on every node, replicas in sync) within $READY_TIMEOUT s" "$(describe_nodes)"
    fi
    sleep 0.1
  done
  write_nodes
  trap - EXIT TERM INT HUP
}

# ---- the owner watcher ---------------------------------------------------------------------

# Internal: `watch DIR OWNER` polls OWNER every second and stops the cluster once it is gone.
cmd_watch() {
  OWNER_PID=$1
  cd "$DIR"  # so that ours() recognises the watcher too
  echo "$$" >"$DIR/watcher.pid"
  local sleeper=""
  # `stop` sends SIGTERM: end the current sleep too, so that nothing is left behind.
  trap '[[ -n $sleeper ]] && kill "$sleeper" 2>/dev/null; wait; exit 0' TERM
  while alive "$OWNER_PID"; do
    sleep 1 &
    sleeper=$!
    wait "$sleeper" || true
    sleeper=""
  done
  stop_all
  rm -f "$DIR/watcher.pid"
}

# ---- main ----------------------------------------------------------------------------------

(($# >= 2)) || usage
command=$1
DIR=$2
shift 2
case $command in
  start)
    [[ $DIR != *'"'* && $DIR != *\\* ]] || fail "DIR must not hold quotes or backslashes"
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd -P)
    cmd_start "$@"
    ;;
  stop)
    (($# == 0)) || usage
    [[ -d $DIR ]] || exit 0
    DIR=$(cd "$DIR" && pwd -P)
    stop_all
    rm -f "$DIR/watcher.pid"
    ;;
  watch)
    (($# == 1)) || usage
    DIR=$(cd "$DIR" && pwd -P)
    cmd_watch "$1"
    ;;
  *) usage ;;
esac
