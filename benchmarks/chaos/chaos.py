#!/usr/bin/python3
"""sluice's chaos soak: `sluice serve` on a loopback Redis Cluster under load and faults,
every decision recorded, then checked.

  chaos.py [--duration S] [--seed N] [--sluice PATH] [--rate R] [--keys K] [--out DIR]
           [--short] [--workers N] [--slack-ms MS] [--round cluster|sentinel]
           [--grpc-workers N] [--grpc-stubs DIR]

Starts a 3 masters + 3 replicas Redis Cluster (scripts/redis-cluster.sh) and `sluice serve
--io-threads 2` with a config it writes (six policies: every algorithm, every on_failure),
drives it with paced keep-alive HTTP/1.1 connections (acquires with costs, hot keys far over
their limits, peeks, resets with an admin token) and meanwhile injects faults on a schedule
drawn from the seed: SIGKILL a master (the cluster fails over; the node is started again and
rejoins as a replica), SIGSTOP a master for 0.4-2.5 s, restart a replica, reshard slots
between masters, and SIGTERM `sluice serve` (in-flight requests drain) and start it again on
the same port. Then checker.py proves from the record what it can (see its docstring), and
the report goes to stdout and DIR/report.txt; DIR/record.jsonl holds every request and
DIR/faults.json the faults, restarts and resource samples (`--recheck DIR` checks them
again). Exit status: 0 clean, 1 a violation, 2 the soak itself failed.

gRPC: the config also holds `grpc_listen:` (a fixed loopback port) and `envoy_config:` (a
directory this tool writes: domain `chaos`, one descriptor key per gRPC rule, every one
on_failure: deny), and --grpc-workers of the --workers (2 of 8 by default) ask the rate limit
service with ShouldRateLimit instead of HTTP (load.GrpcClient), on keys of their own. That
takes Debian's python3-grpcio and the Python stubs the build generates (target
sluice_grpc_python) in --grpc-stubs DIR, by default python_grpc next to --sluice: when
either is missing the tool says so and runs HTTP only, unless --grpc-stubs was given, which
makes it an error.

--round sentinel runs the same load on one Redis behind Sentinel instead (a master, its
replica, 3 sentinels; `redis+sentinel://`), with the faults: SIGKILL the master (the
sentinels promote the replica), SIGSTOP it, `SENTINEL FAILOVER`, restart the replica, and
restart `sluice serve`.

Standard library only; run by Debian's /usr/bin/python3.
"""

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checker  # noqa: E402
import load  # noqa: E402
import report  # noqa: E402
from topology import (REPO, ChaosError, ClusterTopology, SentinelTopology,  # noqa: E402
                      SluiceServer, free_port)

STORE_TIMEOUT_MS = 100  # the store URI's timeout: the deadline of every decision

# name: (algorithm, count, window seconds, on_failure)
POLICIES = {
    "log_deny": ("sliding_log", 10, 2, "deny"),
    "log_allow": ("sliding_log", 40, 10, "allow"),
    "counter_local": ("sliding_counter", 20, 1, "local"),
    "counter_deny": ("sliding_counter", 50, 5, "deny"),
    "gcra_allow": ("gcra", 10, 1, "allow"),
    "gcra_local": ("gcra", 30, 3, "local"),
}

# The gRPC rules, name: (algorithm, count, window seconds, on_failure); on_failure is deny for
# every one: an RLS response does not say whether a fallback decided, and with deny every
# admission is the store's.
GRPC_POLICIES = {
    "grpc_log": ("sliding_log", 10, 2, "deny"),
    "grpc_counter": ("sliding_counter", 20, 1, "deny"),
    "grpc_gcra": ("gcra", 15, 3, "deny"),
}


def _envoy_len(text):
    return "%d:%s" % (len(text.encode()), text)


def grpc_store_key(policy):
    """The limiter's key of a gRPC rule's value (envoy_store_key: `envoy/` then the domain and
    each entry's key and value, length-prefixed)."""
    return lambda key: "envoy/%s|%s=%s" % (_envoy_len(load.GRPC_DOMAIN), _envoy_len(policy),
                                           _envoy_len(key))


def write_envoy_config(directory):
    os.makedirs(directory, exist_ok=True)
    lines = ["domain: %s" % load.GRPC_DOMAIN, "descriptors:"]
    for name, (algorithm, count, window, on_failure) in GRPC_POLICIES.items():
        lines += ["  - key: %s" % name,
                  "    rate_limit: {requests_per_unit: %d, window: %ds, algorithm: %s, "
                  "on_failure: %s, name: %s}" % (count, window, algorithm, on_failure, name)]
    with open(os.path.join(directory, "chaos.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")


def grpc_missing(stubs):
    """Returns why gRPC load cannot run (python3-grpcio or the stubs in `stubs` missing), or
    None after putting `stubs` on sys.path."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        return "python3-grpcio is not installed (apt-get install python3-grpcio)"
    if not os.path.isdir(os.path.join(stubs, "envoy")):
        return "no gRPC stubs in %s (build the target sluice_grpc_python)" % stubs
    sys.path.insert(0, stubs)
    try:
        from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc  # noqa: F401
    except ImportError as e:
        sys.path.remove(stubs)
        return "the gRPC stubs in %s do not import: %s" % (stubs, e)
    return None


def write_config(path, port, store_uri, grpc_port=None, envoy_dir=None):
    lines = [
        "listen: 127.0.0.1:%d" % port,
        "io_threads: 2",
        "store: %s" % store_uri,
        "breaker: {failures_to_open: 5, open_for: 200ms, max_open_for: 1s}",
        "warn_interval: 5s",
        "limits: {drain_timeout: 5s}",
        "auth:",
        "  admin_tokens: [%s]" % load.ADMIN_TOKEN,
        "log: {level: warn}",
    ]
    if grpc_port is not None:
        lines += ["grpc_listen: 127.0.0.1:%d" % grpc_port, "envoy_config: %s" % envoy_dir]
    lines += ["policies:"]
    for name, (algorithm, count, window, on_failure) in POLICIES.items():
        lines += ["  %s:" % name,
                  "    limit: %d/%ds" % (count, window),
                  "    algorithm: %s" % algorithm,
                  "    on_failure: %s" % on_failure]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def read_metrics(port):
    """Returns (rss, fds) from /metrics' process_* gauges, or None when it has none."""
    conn = load.Connection(port)
    try:
        status, _h, body = conn.request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        conn.close()
    if status != 200:
        return None
    rss = fds = None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("process_resident_memory_bytes "):
            rss = int(float(line.split()[1]))
        elif line.startswith("process_open_fds "):
            fds = int(float(line.split()[1]))
    return None if rss is None or fds is None else (rss, fds)


def read_gauge(port, name):
    """Returns the value of the unlabelled metric `name` on /metrics, or None."""
    conn = load.Connection(port)
    try:
        status, _h, body = conn.request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    except (OSError, load.ProtocolError):
        return None
    finally:
        conn.close()
    for line in body.decode(errors="replace").splitlines():
        if status == 200 and line.startswith(name + " "):
            return float(line.split()[1])
    return None


def read_proc(pid):
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
    return rss, len(os.listdir("/proc/%d/fd" % pid))


class Sampler(threading.Thread):
    """Every 0.5 s: the server's RSS and open fds, from /metrics when it exports them, else
    from /proc/PID (this process started it)."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.samples = []
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.wait(0.5):
            pid = self.server.pid()
            try:
                got = read_metrics(self.server.port)
                source = "/metrics"
                if got is None:
                    got, source = read_proc(pid), "/proc"
            except (OSError, ValueError, load.ProtocolError, StopIteration):
                continue  # down for a restart
            if pid == self.server.pid():
                self.samples.append((time.time_ns(), pid, got[0], got[1], source))


def plan(rng, duration, short, kinds):
    """Returns [(at seconds, kind)]: the first fault after 3 s of warm-up; the short round has
    three (a master killed, one paused, the server restarted, in a seeded order); a long one
    cycles through shuffles of every kind, one every 4-7 s, none in the last 4 s."""
    if short:
        order = ["kill_master", "stop_master", "restart_sluice"]
        rng.shuffle(order)
        return [(2.0 + 5.0 * i, k) for i, k in enumerate(order)]
    out, at, bag = [], 3.0, []
    while at < duration - 4:
        if not bag:
            bag = list(kinds) + ["restart_sluice"]
            rng.shuffle(bag)
        out.append((at, bag.pop()))
        at += rng.uniform(4.0, 7.0)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (60)")
    p.add_argument("--seed", type=int, default=1, help="seeds the faults and the load (1)")
    p.add_argument("--sluice", default=os.path.join(REPO, "build", "release", "sluice"),
                   help="the sluice binary (build/release/sluice)")
    p.add_argument("--rate", type=float, default=2000.0, help="requests/s, all workers (2000)")
    p.add_argument("--keys", type=int, default=3000, help="distinct keys (3000)")
    p.add_argument("--workers", type=int, default=8, help="keep-alive connections (8)")
    p.add_argument("--out", help="directory for record.jsonl, faults.json, report.txt")
    p.add_argument("--short", action="store_true",
                   help="the round make test runs: 18 s, three faults")
    p.add_argument("--slack-ms", type=int, default=1000,
                   help="an answer may take the store deadline (%d ms) plus this (1000)" %
                   STORE_TIMEOUT_MS)
    p.add_argument("--round", choices=("cluster", "sentinel"), default="cluster",
                   help="cluster: 3+3 Redis Cluster (default); sentinel: a master, a replica "
                   "and 3 sentinels, redis+sentinel:// (needs a sluice with it)")
    p.add_argument("--grpc-workers", type=int, default=2,
                   help="of the --workers, how many ask over gRPC (ShouldRateLimit) (2; 0: "
                   "HTTP only)")
    p.add_argument("--grpc-stubs", metavar="DIR",
                   help="the Python gRPC stubs the build generates (default: python_grpc next "
                   "to --sluice); given, they must import")
    p.add_argument("--recheck", metavar="DIR",
                   help="run nothing: check the record a soak left in DIR again")
    args = p.parse_args()
    if args.recheck:
        return recheck(args.recheck, args.slack_ms if args.slack_ms != 1000 else None)
    if args.short and args.duration == 60.0:
        args.duration = 18.0
    for name, value in (("--duration", args.duration), ("--rate", args.rate),
                        ("--keys", args.keys), ("--workers", args.workers)):
        if value <= 0:
            p.error("%s must be positive" % name)
    if args.keys < len(POLICIES) * 4:
        p.error("--keys must be at least %d" % (len(POLICIES) * 4))
    if not os.access(args.sluice, os.X_OK):
        p.error("no sluice binary at %s (make build-cli)" % args.sluice)
    if not 0 <= args.grpc_workers < args.workers:
        p.error("--grpc-workers must be from 0 to --workers - 1 (%d)" % (args.workers - 1))
    if args.grpc_workers > 0:
        stubs = args.grpc_stubs or os.path.join(os.path.dirname(os.path.abspath(args.sluice)),
                                                "python_grpc")
        why = grpc_missing(stubs)
        if why is not None and args.grpc_stubs:
            p.error("--grpc-stubs: %s" % why)
        if why is not None:
            print("chaos: no gRPC load, HTTP only: %s" % why, file=sys.stderr, flush=True)
            args.grpc_workers = 0
    out = args.out or tempfile.mkdtemp(prefix="sluice-chaos-")
    os.makedirs(out, exist_ok=True)
    out = os.path.abspath(out)
    t_start = time.time()

    def log(msg):
        print("[%6.1f s] %s" % (time.time() - t_start, msg), flush=True)

    # SIGTERM (a test runner's timeout) unwinds like Ctrl-C: everything started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rng = random.Random(args.seed)
    topo_class = ClusterTopology if args.round == "cluster" else SentinelTopology
    topo = None
    server = None
    gen = None
    sampler = None
    faults = []
    restarts = []
    tool_errors = []
    breakers_open = None
    server_exits = []
    try:
        topo = topo_class(out, log)
        topo.start()
        port = free_port()
        grpc_port = free_port() if args.grpc_workers else None
        config = os.path.join(out, "sluice.yaml")
        envoy_dir = os.path.join(out, "envoy") if grpc_port else None
        if envoy_dir:
            write_envoy_config(envoy_dir)
        write_config(config, port, topo.store_uri(), grpc_port, envoy_dir)
        server = SluiceServer(args.sluice, config, port, out, log, grpc=grpc_port is not None)
        server.start()
        log("sluice serve pid %d on 127.0.0.1:%d%s, store %s" % (
            server.pid(), port, ", gRPC :%d" % grpc_port if grpc_port else "",
            topo.store_uri()))
        sampler = Sampler(server)
        sampler.start()
        workload = load.Workload([(n, v[1]) for n, v in POLICIES.items()], args.keys, rng)
        grpc_workload = None
        if grpc_port:
            grpc_workload = load.Workload([(n, v[1]) for n, v in GRPC_POLICIES.items()],
                                          max(len(GRPC_POLICIES) * 4, args.keys // 4), rng)
        gen = load.LoadGenerator(port, workload, args.rate, args.workers, args.seed,
                                 args.grpc_workers, grpc_port, grpc_workload)
        schedule = plan(rng, args.duration, args.short, topo.fault_kinds)
        t0 = time.monotonic()
        gen.start()
        log("load: %d req/s over %d connections (%d gRPC), %d keys, %.0f s; %d faults "
            "planned" % (args.rate, args.workers, args.grpc_workers, args.keys, args.duration,
                         len(schedule)))
        for at, kind in schedule:
            wait = t0 + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if time.monotonic() - t0 > args.duration - 2:
                break
            log("fault: %s" % kind)
            if kind == "restart_sluice":
                rec = {"kind": kind, "start_ns": time.time_ns(), "failover": False}
                code, pid = server.restart()
                rec.update(end_ns=time.time_ns(), exit_code=code, node=pid)
                restarts.append((rec["start_ns"], rec["end_ns"]))
                server_exits.append(code)
            else:
                rec = topo.fault(kind, rng)
            faults.append(rec)
            log("  done in %.2f s" % ((rec["end_ns"] - rec["start_ns"]) / 1e9))
        remaining = t0 + args.duration - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        gen.stop()
        sampler.stop_event.set()
        sampler.join()
        breakers_open = read_gauge(port, "sluice_breakers_open")
        code = server.stop()
        server_exits.append(code)
        log("load stopped; sluice serve exited %d" % code)
    except (ChaosError, OSError) as e:
        tool_errors.append(str(e))
        log("soak failed: %s" % e)
    finally:
        if gen is not None and gen.threads and not gen.stop_event.is_set():
            gen.stop()
        if sampler is not None:
            sampler.stop_event.set()
        if server is not None and server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        if topo is not None:
            topo.stop()

    records = gen.all_records() if gen is not None else []
    with open(os.path.join(out, "record.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(dict(zip(load.FIELDS, r))) + "\n")
    run = {"args": vars(args), "faults": faults, "restarts": restarts,
           "samples": sampler.samples if sampler is not None else [],
           "server_exits": server_exits, "breakers_open_at_end": breakers_open}
    with open(os.path.join(out, "faults.json"), "w") as f:
        json.dump(run, f)
    if tool_errors:
        print("chaos: the soak could not run to the end: %s" % "; ".join(tool_errors),
              file=sys.stderr)
        return 2
    return check_and_report(args, records, run, out, time.time() - t_start)


def check_and_report(args, records, run, out, elapsed):
    """Checks the record, writes DIR/report.txt and prints it; returns the exit status."""
    policies = {n: checker.Policy(n, v[0], v[1], v[2] * 1_000_000, v[3])
                for n, v in POLICIES.items()}
    policies.update({n: checker.Policy(n, v[0], v[1], v[2] * 1_000_000, v[3], "grpc",
                                       grpc_store_key(n))
                     for n, v in GRPC_POLICIES.items()})
    found = checker.check(records, policies, run["faults"], run["restarts"],
                          STORE_TIMEOUT_MS, args.slack_ms, run["samples"])
    for i, code in enumerate(run["server_exits"]):
        if code != 0:
            found["violations"].append("sluice serve exited %d after SIGTERM (stop %d)" %
                                       (code, i + 1))
    found["breakers_open_at_end"] = run["breakers_open_at_end"]
    shown = dict(POLICIES)
    if getattr(args, "grpc_workers", 0):
        shown.update(GRPC_POLICIES)
    text = report.render(args, found, run["faults"], shown, out, elapsed)
    with open(os.path.join(out, "report.txt"), "w") as f:
        f.write(text)
    print(text)
    return 1 if found["violations"] else 0


def recheck(directory, slack_ms):
    """Checks a soak's saved record again (DIR/record.jsonl and DIR/faults.json)."""
    with open(os.path.join(directory, "faults.json")) as f:
        run = json.load(f)
    args = argparse.Namespace(**run["args"])
    args.slack_ms = slack_ms if slack_ms is not None else args.slack_ms
    records = []
    with open(os.path.join(directory, "record.jsonl")) as f:
        for line in f:
            d = json.loads(line)
            records.append(tuple(d[k] for k in load.FIELDS))
    return check_and_report(args, records, run, directory, 0.0)


if __name__ == "__main__":
    sys.exit(main())
