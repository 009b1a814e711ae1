"""What the chaos soak runs against: a loopback Redis Cluster and `sluice serve`.

A topology starts its Redis processes, names the store URI `sluice serve` uses, injects the
faults it supports and stops everything it started, by pid only. `ClusterTopology` is the
3 masters + 3 replicas round; `SentinelTopology` (one Redis behind Sentinel) is the second
round (it needs a sluice with `redis+sentinel://`). Standard library only: a small RESP client talks
to the nodes, `scripts/redis-cluster.sh` starts and stops the cluster, and `redis-cli
--cluster reshard` moves slots.

Not thread-safe: one thread (the fault schedule) drives a topology.
"""

import os
import signal
import socket
import subprocess
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLUSTER_SCRIPT = os.path.join(REPO, "scripts", "redis-cluster.sh")


class ChaosError(Exception):
    """A step of the soak's own machinery failed (not a finding about sluice)."""


# ---- RESP ------------------------------------------------------------------------------------


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class RespError(Exception):
    pass


def redis_call(port, *args, timeout=2.0):
    """Returns the reply to one command sent to 127.0.0.1:`port` (str, int, list or None).

    An error reply raises RespError; a connection problem raises OSError."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(_encode(args))
        f = s.makefile("rb")
        return _read_reply(f)


def _read_reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RespError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ConnectionError("bad RESP reply: %r" % line)


# ---- keys and slots --------------------------------------------------------------------------


def _crc16(data):
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key):
    """Returns Redis Cluster's slot of `key` (bytes), with the hash-tag rule."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return _crc16(key) % 16384


# ---- processes -------------------------------------------------------------------------------


def alive(pid):
    """True when `pid` is a live process (a zombie is not)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] != "Z"


def wait_gone(pid, timeout, child=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.poll() is not None:
            return True
        if child is None and not alive(pid):
            return True
        time.sleep(0.02)
    return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the cluster -----------------------------------------------------------------------------


class Node:
    def __init__(self, port, pid, node_id):
        self.port = port
        self.pid = pid
        self.id = node_id
        self.child = None  # the Popen when this process restarted it
        self.down = False  # killed or stopped by the soak and not back yet


class ClusterTopology:
    """3 masters + 3 replicas on loopback (scripts/redis-cluster.sh), node timeout 1 s."""

    name = "cluster"
    fault_kinds = ("kill_master", "stop_master", "restart_replica", "reshard")
    NODE_TIMEOUT_S = 1.0  # --node-timeout below

    def __init__(self, workdir, log):
        self.dir = os.path.join(workdir, "redis-cluster")
        os.makedirs(self.dir, exist_ok=True)
        self.log = log
        self.nodes = {}

    def start(self):
        r = subprocess.run(["bash", CLUSTER_SCRIPT, "start", self.dir, "--masters", "3",
                            "--replicas", "1", "--node-timeout",
                            str(int(self.NODE_TIMEOUT_S * 1000)),
                            "--owner-pid", str(os.getpid())],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise ChaosError("redis-cluster.sh start failed:\n" + r.stderr[-3000:])
        with open(os.path.join(self.dir, "nodes")) as f:
            for line in f:
                port, pid, _role, node_id = line.split()
                self.nodes[int(port)] = Node(int(port), int(pid), node_id)
        self.log("cluster up: " + r.stdout.strip().splitlines()[-1])

    def store_uri(self):
        seeds = ",".join("127.0.0.1:%d" % p for p in sorted(self.nodes))
        return "redis+cluster://%s?timeout=100ms&connect_timeout=500ms" % seeds

    def stop(self):
        for n in self.nodes.values():
            if n.pid and alive(n.pid):
                try:
                    os.kill(n.pid, signal.SIGCONT)
                except OSError:
                    pass
        subprocess.run(["bash", CLUSTER_SCRIPT, "stop", self.dir], capture_output=True,
                       timeout=60)
        for n in self.nodes.values():
            if n.child is not None:
                try:
                    n.child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    n.child.kill()
                    n.child.wait()

    # ---- what the cluster looks like now ----

    def _live(self):
        return [n for n in self.nodes.values() if not n.down]

    def cluster_nodes(self):
        """Returns {id: (port, flags, master_id, [slot ranges])} from a live node."""
        last = None
        for n in self._live():
            try:
                text = redis_call(n.port, "CLUSTER", "NODES")
            except (OSError, RespError) as e:
                last = e
                continue
            out = {}
            for line in text.splitlines():
                f = line.split()
                if len(f) < 8:
                    continue
                port = int(f[1].split("@")[0].rsplit(":", 1)[1] or 0)
                ranges = []
                for r in f[8:]:
                    if r.startswith("["):
                        continue
                    lo, _, hi = r.partition("-")
                    ranges.append((int(lo), int(hi or lo)))
                out[f[0]] = (port, f[2], f[3], ranges)
            return out
        raise ChaosError("no live node answers CLUSTER NODES: %s" % last)

    def masters(self):
        """Returns [(port, id, ranges)] of the masters that own slots."""
        return [(v[0], k, v[3]) for k, v in self.cluster_nodes().items()
                if "master" in v[1] and "fail" not in v[1] and v[3]]

    def slot_owners(self):
        """Returns a 16384-entry list: the port of each slot's master (0: none)."""
        owners = [0] * 16384
        for port, _id, ranges in self.masters():
            for lo, hi in ranges:
                for s in range(lo, hi + 1):
                    owners[s] = port
        return owners

    def healthy(self):
        """True when every live node sees cluster_state:ok, 3 masters over all slots, each
        with a replica in sync, and no node flagged failing."""
        try:
            for n in self._live():
                if "cluster_state:ok" not in redis_call(n.port, "CLUSTER", "INFO"):
                    return False
            view = self.cluster_nodes()
            if any("fail" in v[1] for v in view.values()):
                return False
            masters = [k for k, v in view.items() if "master" in v[1] and v[3]]
            covered = sum(hi - lo + 1 for k in masters for lo, hi in view[k][3])
            if len(masters) != 3 or covered != 16384:
                return False
            for k, v in view.items():
                if "slave" in v[1]:
                    info = redis_call(v[0], "INFO", "replication")
                    if "master_link_status:up" not in info:
                        return False
            return all(sum(1 for v in view.values() if v[2] == m) >= 1 for m in masters)
        except (OSError, RespError, ChaosError):
            return False

    def wait_healthy(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            time.sleep(0.1)
        raise ChaosError("the cluster did not become healthy within %.0f s" % timeout)

    # ---- faults: each returns a dict describing what it did ----

    def _restart_node(self, node):
        """Starts `node` again from its own redis.conf (it keeps its nodes.conf, so it rejoins
        the cluster under its id)."""
        node_dir = os.path.join(self.dir, str(node.port))
        out = open(os.path.join(node_dir, "stdout.log"), "ab")
        node.child = subprocess.Popen(["redis-server", os.path.join(node_dir, "redis.conf")],
                                      cwd=node_dir, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT)
        out.close()
        node.pid = node.child.pid
        with open(os.path.join(self.dir, "pids"), "a") as f:
            f.write("%d\n" % node.pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                info = redis_call(node.port, "INFO", "server", timeout=0.5)
                if "process_id:%d" % node.pid in info:
                    node.down = False
                    return
            except (OSError, RespError):
                pass
            time.sleep(0.05)
        raise ChaosError("redis-server on port %d did not come back" % node.port)

    def _signal(self, node, sig):
        if node.child is not None:
            if node.child.poll() is None:
                node.child.send_signal(sig)
        elif alive(node.pid):
            os.kill(node.pid, sig)

    def _gone(self, node, timeout):
        return wait_gone(node.pid, timeout, node.child)

    def _wait_promoted(self, old_port, ranges, timeout):
        """Waits until a master other than `old_port` owns the first of `ranges`."""
        slot = ranges[0][0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                owner = self.slot_owners()[slot]
                if owner not in (0, old_port):
                    return True
            except ChaosError:
                pass
            time.sleep(0.05)
        return False

    def fault(self, kind, rng):
        """Injects one fault of `kind`; returns its record, with wall times in ns."""
        masters = self.masters()
        view = self.cluster_nodes()
        rec = {"kind": kind, "start_ns": time.time_ns()}
        if kind == "kill_master":
            port, node_id, ranges = rng.choice(masters)
            node = self.nodes[port]
            rec.update(node=port, slots=ranges)
            rec["start_ns"] = time.time_ns()
            self._signal(node, signal.SIGKILL)
            node.down = True
            self._gone(node, 5)
            if node.child is not None:
                node.child.wait()
            if not self._wait_promoted(port, ranges, 20):
                raise ChaosError("no failover of %d within 20 s" % port)
            rec["failover_ns"] = time.time_ns()
            rec["failover"] = True
            self._restart_node(node)
            self.wait_healthy()
        elif kind == "stop_master":
            port, node_id, ranges = rng.choice(masters)
            node = self.nodes[port]
            pause = rng.choice((0.4, 0.7, 1.5, 2.5))
            rec.update(node=port, slots=ranges, pause_s=pause)
            rec["start_ns"] = time.time_ns()
            self._signal(node, signal.SIGSTOP)
            node.down = True
            time.sleep(pause)
            self._signal(node, signal.SIGCONT)
            node.down = False
            rec["resumed_ns"] = time.time_ns()
            self.wait_healthy()
            # A pause past the node timeout lets the replica take over: then the paused
            # node is a replica now, and what it acknowledged last may be lost. The replica's
            # election may end up to a second or so after the master resumed (which takes
            # writes as a master until then), so a pause that long is watched for 3 s more.
            settle = time.monotonic() + (3.0 if pause >= self.NODE_TIMEOUT_S else 0.0)
            while True:
                after = self.cluster_nodes().get(node_id)
                rec["failover"] = after is not None and "slave" in after[1]
                if rec["failover"] or time.monotonic() >= settle:
                    break
                time.sleep(0.05)
            if rec["failover"]:
                rec["failover_ns"] = rec["resumed_ns"]
                self.wait_healthy()
        elif kind == "restart_replica":
            replicas = [(v[0], k) for k, v in view.items() if "slave" in v[1]]
            port, _id = rng.choice(replicas)
            node = self.nodes[port]
            rec.update(node=port)
            self._signal(node, signal.SIGTERM)
            node.down = True
            if not self._gone(node, 10):
                raise ChaosError("replica %d did not stop on SIGTERM" % port)
            if node.child is not None:
                node.child.wait()
            self._restart_node(node)
            self.wait_healthy()
        elif kind == "reshard":
            (fport, fid, _), (tport, tid, _) = rng.sample(masters, 2)
            count = rng.choice((64, 200, 500))
            rec.update(node=fport, to=tport, slots_moved=count)
            r = subprocess.run(["redis-cli", "--cluster", "reshard", "127.0.0.1:%d" % fport,
                                "--cluster-from", fid, "--cluster-to", tid,
                                "--cluster-slots", str(count), "--cluster-yes"],
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise ChaosError("reshard failed:\n" + (r.stdout + r.stderr)[-2000:])
            self.wait_healthy()
        else:
            raise ChaosError("unknown fault " + kind)
        rec["end_ns"] = time.time_ns()
        rec.setdefault("failover", False)
        return rec


class SentinelTopology:
    """One Redis behind Sentinel: a master, its replica and 3 sentinels (quorum 2,
    down-after 1 s), on free loopback ports; the store is `redis+sentinel://.../chaos`.

    Needs a sluice with the Sentinel store (`redis+sentinel://`, the `sentinel` branch); a
    sluice without it refuses the URI at start-up and the round stops there."""

    name = "sentinel"
    fault_kinds = ("kill_master", "stop_master", "sentinel_failover", "restart_replica")
    MASTER_NAME = "chaos"
    DOWN_AFTER_S = 1.0  # sentinel down-after-milliseconds

    def __init__(self, workdir, log):
        self.dir = os.path.join(workdir, "redis-sentinel")
        os.makedirs(self.dir, exist_ok=True)
        self.log = log
        self.nodes = {}  # port -> Node: the two data nodes
        self.sentinels = {}  # port -> Node

    def _spawn(self, port, lines, sentinel):
        d = os.path.join(self.dir, str(port))
        os.makedirs(d, exist_ok=True)
        conf = os.path.join(d, "sentinel.conf" if sentinel else "redis.conf")
        if not os.path.exists(conf):  # a restart keeps what sentinel rewrote
            with open(conf, "w") as f:
                f.write("\n".join(["bind 127.0.0.1", "port %d" % port, "daemonize no",
                                   "protected-mode no", 'dir "%s"' % d,
                                   'logfile "%s/redis.log"' % d] + lines) + "\n")
        out = open(os.path.join(d, "stdout.log"), "ab")
        args = ["redis-server", conf] + (["--sentinel"] if sentinel else [])
        child = subprocess.Popen(args, cwd=d, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT)
        out.close()
        node = (self.sentinels if sentinel else self.nodes).get(port) or Node(port, 0, "")
        node.child, node.pid, node.down = child, child.pid, False
        (self.sentinels if sentinel else self.nodes)[port] = node
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise ChaosError("redis-server on %d exited at start; see %s" % (port, d))
            try:
                if "process_id:%d" % child.pid in redis_call(port, "INFO", "server",
                                                               timeout=0.5):
                    return node
            except (OSError, RespError):
                pass
            time.sleep(0.05)
        raise ChaosError("redis-server on %d is not answering" % port)

    def _data_lines(self, replica_of=None):
        lines = ['save ""', "appendonly no", "repl-diskless-sync yes",
                 "repl-diskless-sync-delay 0", "shutdown-timeout 0"]
        if replica_of:
            lines.append("replicaof 127.0.0.1 %d" % replica_of)
        return lines

    def start(self):
        master, replica = free_port(), free_port()
        self._spawn(master, self._data_lines(), False)
        self._spawn(replica, self._data_lines(master), False)
        for _ in range(3):
            self._spawn(free_port(), [
                "sentinel monitor %s 127.0.0.1 %d 2" % (self.MASTER_NAME, master),
                "sentinel down-after-milliseconds %s %d" % (self.MASTER_NAME,
                                                            self.DOWN_AFTER_S * 1000),
                "sentinel failover-timeout %s 5000" % self.MASTER_NAME,
                "sentinel parallel-syncs %s 1" % self.MASTER_NAME], True)
        self.wait_healthy(60)
        self.log("sentinel up: master :%d, replica :%d, sentinels %s" %
                 (master, replica, ",".join(":%d" % p for p in sorted(self.sentinels))))

    def store_uri(self):
        return "redis+sentinel://%s/%s?timeout=100ms&connect_timeout=500ms" % (
            ",".join("127.0.0.1:%d" % p for p in sorted(self.sentinels)), self.MASTER_NAME)

    def stop(self):
        for n in list(self.nodes.values()) + list(self.sentinels.values()):
            if n.child is not None and n.child.poll() is None:
                n.child.send_signal(signal.SIGCONT)
                n.child.send_signal(signal.SIGTERM)
        for n in list(self.nodes.values()) + list(self.sentinels.values()):
            if n.child is not None:
                try:
                    n.child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    n.child.kill()
                    n.child.wait()

    def master_port(self):
        """Returns the master's port as a majority of the sentinels name it (0: no majority)."""
        votes = {}
        for s in self.sentinels.values():
            try:
                host_port = redis_call(s.port, "SENTINEL", "get-master-addr-by-name",
                                       self.MASTER_NAME, timeout=0.5)
                if host_port:
                    votes[int(host_port[1])] = votes.get(int(host_port[1]), 0) + 1
            except (OSError, RespError, ValueError):
                pass
        best = max(votes.items(), key=lambda kv: kv[1], default=(0, 0))
        return best[0] if best[1] >= 2 else 0

    def healthy(self):
        """True when the sentinels agree on a live master, which sees its replica in sync,
        and every sentinel sees the other two and the master up."""
        try:
            m = self.master_port()
            if m == 0 or self.nodes[m].down:
                return False
            info = redis_call(m, "INFO", "replication", timeout=0.5)
            if "role:master" not in info or "connected_slaves:1" not in info:
                return False
            for port, n in self.nodes.items():
                if port != m and "master_link_status:up" not in redis_call(
                        port, "INFO", "replication", timeout=0.5):
                    return False
            for s in self.sentinels.values():
                fields = redis_call(s.port, "SENTINEL", "master", self.MASTER_NAME,
                                    timeout=0.5)
                d = dict(zip(fields[::2], fields[1::2]))
                if "down" in d.get("flags", "") or d.get("num-other-sentinels") != "2" or \
                        d.get("num-slaves") != "1":
                    return False
            return True
        except (OSError, RespError, KeyError):
            return False

    def wait_healthy(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            time.sleep(0.1)
        raise ChaosError("the sentinel setup did not become healthy within %.0f s" % timeout)

    def _wait_new_master(self, old, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.master_port()
            if m not in (0, old):
                return True
            time.sleep(0.05)
        return False

    def fault(self, kind, rng):
        master = self.master_port()
        if master == 0:
            raise ChaosError("no master agreed on before a fault")
        replica = next(p for p in self.nodes if p != master)
        rec = {"kind": kind, "node": master, "slots": [(0, 16383)],
               "start_ns": time.time_ns()}
        node = self.nodes[master]
        if kind == "kill_master":
            node.child.send_signal(signal.SIGKILL)
            node.child.wait()
            node.down = True
            if not self._wait_new_master(master, 30):
                raise ChaosError("the sentinels did not fail over from :%d in 30 s" % master)
            rec.update(failover=True, failover_ns=time.time_ns())
            # Back as a replica of the new master (sentinel would reconfigure it anyway; an
            # empty master that the old config names must not come back as one).
            os.remove(os.path.join(self.dir, str(master), "redis.conf"))
            self._spawn(master, self._data_lines(replica), False)
            self.wait_healthy()
        elif kind == "stop_master":
            pause = rng.choice((0.4, 0.7, 1.5, 2.5))
            rec["pause_s"] = pause
            node.child.send_signal(signal.SIGSTOP)
            node.down = True
            time.sleep(pause)
            node.child.send_signal(signal.SIGCONT)
            node.down = False
            rec["resumed_ns"] = time.time_ns()
            self.wait_healthy()
            # As in the cluster: the sentinels' failover may end after the master resumed.
            settle = time.monotonic() + (3.0 if pause >= self.DOWN_AFTER_S else 0.0)
            while True:
                rec["failover"] = self.master_port() not in (0, master)
                if rec["failover"] or time.monotonic() >= settle:
                    break
                time.sleep(0.05)
            if rec["failover"]:
                rec["failover_ns"] = rec["resumed_ns"]
                self.wait_healthy()
        elif kind == "sentinel_failover":
            s = rng.choice(list(self.sentinels))
            redis_call(s, "SENTINEL", "FAILOVER", self.MASTER_NAME)
            if not self._wait_new_master(master, 30):
                raise ChaosError("SENTINEL FAILOVER did not move the master in 30 s")
            rec.update(failover=True, failover_ns=time.time_ns())
            self.wait_healthy()
        elif kind == "restart_replica":
            rec["node"] = replica
            r = self.nodes[replica]
            r.child.send_signal(signal.SIGTERM)
            r.down = True
            r.child.wait(timeout=10)
            self._spawn(replica, [], False)
            self.wait_healthy()
        else:
            raise ChaosError("unknown fault " + kind)
        rec["end_ns"] = time.time_ns()
        rec.setdefault("failover", False)
        return rec


# ---- sluice serve ----------------------------------------------------------------------------


class SluiceServer:
    """`sluice serve` as a child process on a fixed loopback port, restartable; with grpc, its
    config has grpc_listen too, and start() waits for that listener as well."""

    def __init__(self, binary, config_path, port, workdir, log, grpc=False):
        self.binary = binary
        self.grpc = grpc
        self.config = config_path
        self.port = port
        self.stderr_path = os.path.join(workdir, "sluice.stderr")
        self.log = log
        self.proc = None
        self.starts = 0

    def start(self, timeout=15.0):
        err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([self.binary, "serve", "--config", self.config,
                                      "--io-threads", "2"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=err)
        err.close()
        self.starts += 1
        line = self._readline(timeout)
        if not line.startswith("sluice listening on"):
            self.proc.kill()
            self.proc.wait()
            raise ChaosError("sluice serve did not start (%r); see %s" %
                             (line, self.stderr_path))
        if self.grpc:
            line = self._readline(timeout)
            if not line.startswith("sluice grpc listening on"):
                self.proc.kill()
                self.proc.wait()
                raise ChaosError("sluice serve did not start its gRPC listener (%r); see %s" %
                                 (line, self.stderr_path))
        return self.proc.pid

    def _readline(self, timeout):
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf = b""
        deadline = time.monotonic() + timeout
        while not buf.endswith(b"\n") and time.monotonic() < deadline:
            if sel.select(max(0.0, deadline - time.monotonic())):
                chunk = os.read(self.proc.stdout.fileno(), 1)
                if not chunk:
                    break
                buf += chunk
        sel.close()
        return buf.decode(errors="replace").strip()

    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def stop(self, timeout=20.0):
        """SIGTERM (requests in flight drain), then waits; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise ChaosError("sluice serve did not exit within %.0f s of SIGTERM" % timeout)

    def restart(self):
        """SIGTERM, wait for exit, start again on the same port; returns (exit code, new pid)."""
        code = self.stop()
        return code, self.start()
