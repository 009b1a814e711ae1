#!/usr/bin/python3
"""What a WAIT-based option would cost: a decision-sized script alone vs the same script
followed by `WAIT 1 100` (return once one replica has acknowledged the write), on a
loopback master with one replica.

  wait_cost.py [--seconds S] [--connections N...]

Starts redis-server twice (a master and its replica, no persistence) on free loopback ports
in a temporary directory, stops them by pid at the end. Each connection sends one request,
waits for its answer and sends the next (as a sluice connection does with one call in
flight); the script is a GCRA decision like sluice's (GET, TIME, SET with PX). With --batch
K, a connection pipelines K scripts and (with WAIT) one WAIT after them, as sluice's batched
calls would. Prints, per mode, decisions/s and p50/p99 latency (timeouts: WAITs that
returned after 100 ms with no replica's acknowledgement). Standard library only.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topology import _encode, _read_reply, free_port, redis_call  # noqa: E402

SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local tat0 = math.max(tat, now)
local new_tat = tat0 + 1000
if new_tat - now <= 1000000 then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', 2000)
  return 1
end
return 0
"""


def start_redis(workdir, port, extra):
    d = os.path.join(workdir, str(port))
    os.makedirs(d)
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", d, "--protected-mode", "no"] + extra
    p = subprocess.Popen(args, cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis_call(port, "PING") == "PONG":
                return p
        except OSError:
            time.sleep(0.02)
    p.kill()
    raise RuntimeError("redis-server on %d did not start" % port)


def worker(port, sha, wait, seconds, lat, index, batch):
    with socket.create_connection(("127.0.0.1", port)) as s:
        f = s.makefile("rb")
        key = "wait-cost:%d" % index
        # `batch` decisions pipelined (sluice batches calls), then one WAIT for all of them.
        req = _encode(["EVALSHA", sha, 1, key]) * batch
        if wait:
            req += _encode(["WAIT", 1, 100])
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter_ns()
            s.sendall(req)
            for _ in range(batch):
                _read_reply(f)
            if wait:
                acked = _read_reply(f)
                if acked < 1:
                    lat.append(None)  # WAIT timed out: no replica acknowledged in 100 ms
                    continue
            lat.extend([time.perf_counter_ns() - t] * batch)


def measure(port, sha, wait, connections, seconds, batch):
    lats = [[] for _ in range(connections)]
    threads = [threading.Thread(target=worker, args=(port, sha, wait, seconds, lats[i], i, batch))
               for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_lat = sorted(x for per in lats for x in per if x is not None)
    timeouts = sum(1 for per in lats for x in per if x is None)
    n = len(all_lat)
    return (n / seconds, all_lat[n // 2] / 1e3, all_lat[min(n - 1, int(n * 0.99))] / 1e3,
            timeouts)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16],
                   help="decisions pipelined before each WAIT")
    args = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="sluice-wait-")
    procs = []
    try:
        mport, rport = free_port(), free_port()
        procs.append(start_redis(workdir, mport, []))
        procs.append(start_redis(workdir, rport, ["--replicaof", "127.0.0.1", str(mport)]))
        deadline = time.monotonic() + 10
        while "connected_slaves:1" not in redis_call(mport, "INFO", "replication"):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not connect")
            time.sleep(0.05)
        sha = redis_call(mport, "SCRIPT", "LOAD", SCRIPT)
        print("%-34s %12s %10s %10s %8s" % ("mode", "decisions/s", "p50 us", "p99 us",
                                             "timeouts"))
        for c in args.connections:
            for b in args.batch:
                for wait in (False, True):
                    rate, p50, p99, timeouts = measure(mport, sha, wait, c, args.seconds, b)
                    print("%-34s %12.0f %10.0f %10.0f %8d" % (
                        ("EVALSHA x%d + WAIT 1 100" % b if wait else "EVALSHA x%d" % b) +
                        ", %d conn" % c, rate, p50, p99, timeouts))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
