#!/usr/bin/python3
"""The Python module's figures (docs/BENCHMARKS.md, "Python"), side by side in one run.

Starts a redis-server of its own on a free loopback port (stopped by its pid), then, for
--rounds rounds, alternating the sides within each round:
  1. sluice.compat vs the reference limiter (rate_limiter.py from --reference-dir): the same
     asyncio loop shape (--concurrency tasks over --keys keys, every decision allowed),
     decisions per second, and their ratio; and `sluice bench` (the C++ client) with as many
     calls in flight, what the Redis allows one client;
  2. sluice.Limiter.acquire on the memory store from one Python thread, decisions/s;
  3. acquire_async on Redis with 64 calls in flight: p50/p99 latency from the call to the
     await's return, next to `sluice bench --inflight 64` on the same Redis (--sluice).
Prints one line per measurement and a summary of medians and ranges.

--compare-memory A B instead compares two builds of the module (two PYTHONPATHs) on step 2
alone, alternating them round by round, and prints the ratio B/A per round, its median and
range:
    /usr/bin/python3 benchmarks/python_bench.py --compare-memory OLD/python NEW/python

    PYTHONPATH=build/release/python /usr/bin/python3 benchmarks/python_bench.py \\
        --sluice build/release/sluice --reference-dir ../shared/reference
"""

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import sluice
from sluice.compat import RateLimiter


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(directory):
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("python_bench: redis-server did not start")


def flushall(port):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"FLUSHALL\r\n")
        s.recv(16)


def load_reference(directory):
    path = os.path.join(directory, "rate_limiter.py")
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("reference_rate_limiter", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def throughput(limiter, args):
    """Returns decisions/s of `limiter.check_rate_limit` with --concurrency tasks."""
    count = 0
    deadline = time.monotonic() + args.seconds

    async def task(first):
        nonlocal count
        i = first
        while time.monotonic() < deadline:
            await limiter.check_rate_limit(f"bench:{i % args.keys}", 1_000_000, 1)
            count += 1
            i += args.concurrency

    start = time.monotonic()
    await asyncio.gather(*(task(n) for n in range(args.concurrency)))
    return count / (time.monotonic() - start)


async def reference_throughput(module, port, args):
    import redis.asyncio as aioredis

    client = aioredis.Redis(host="127.0.0.1", port=port)
    try:
        return await throughput(module.RateLimiter(client), args)
    finally:
        await client.close()


def memory_throughput(n):
    """Returns decisions/s of Limiter.acquire on the memory store, one thread."""
    limiter = sluice.Limiter("memory://", {"p": "1000000000/1h"})
    acquire = limiter.acquire
    keys = [f"k{i}" for i in range(1000)]
    start = time.perf_counter()
    for i in range(n):
        acquire("p", keys[i % 1000])
    return n / (time.perf_counter() - start)


async def async_latency(port, seconds):
    """Returns (decisions/s, p50 ms, p99 ms) of acquire_async on Redis, 64 in flight."""
    limiter = sluice.Limiter(f"redis://127.0.0.1:{port}?timeout=1s", {"p": "1000000/1s"})
    latencies = []
    deadline = time.monotonic() + seconds

    async def task(first):
        i = first
        while time.monotonic() < deadline:
            t = time.perf_counter()
            await limiter.acquire_async("p", f"lat:{i % 10000}")
            latencies.append(time.perf_counter() - t)
            i += 64

    start = time.monotonic()
    await asyncio.gather(*(task(n) for n in range(64)))
    elapsed = time.monotonic() - start
    q = statistics.quantiles(latencies, n=100)
    return len(latencies) / elapsed, q[49] * 1e3, q[98] * 1e3


def sluice_bench(binary, port, seconds, inflight=64):
    out = subprocess.run(
        [binary, "bench", "--store", f"redis://127.0.0.1:{port}?timeout=1s", "--inflight",
         str(inflight),
         "--keys", "10000", "--limit", "1000000/1s", "--seconds", str(seconds)],
        check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    return r["per_second"], r["p50_us"] / 1e3, r["p99_us"] / 1e3


MEMORY_CHILD = """
import sys, time, sluice
n = int(sys.argv[1])
limiter = sluice.Limiter("memory://", {"p": "1000000000/1h"})
acquire = limiter.acquire
keys = [f"k{i}" for i in range(1000)]
start = time.perf_counter()
for i in range(n):
    acquire("p", keys[i % 1000])
print(n / (time.perf_counter() - start))
"""


def compare_memory(paths, rounds, calls):
    """Prints Limiter.acquire's decisions/s of two builds, alternated, and their ratios."""
    rates = {0: [], 1: []}
    ratios = []
    for r in range(rounds):
        for side in ((0, 1) if r % 2 == 0 else (1, 0)):
            env = dict(os.environ, PYTHONPATH=paths[side])
            out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(calls)], env=env,
                                 check=True, capture_output=True, text=True).stdout
            rates[side].append(float(out))
        ratios.append(rates[1][-1] / rates[0][-1])
        print(f"round {r + 1}: A {rates[0][-1]:,.0f}/s, B {rates[1][-1]:,.0f}/s, "
              f"B/A {ratios[-1]:.2f}", flush=True)
    print(summary("A", rates[0], " decisions/s"))
    print(summary("B", rates[1], " decisions/s"))
    print(summary("B/A", ratios, " x"))


def summary(name, values, unit):
    return (f"{name}: median {statistics.median(values):,.2f}{unit} "
            f"(range {min(values):,.2f}-{max(values):,.2f}, {len(values)} rounds)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference-dir", default="../shared/reference")
    p.add_argument("--sluice", help="the sluice binary, for `sluice bench` (skipped if absent)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="per throughput measurement")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--keys", type=int, default=10000)
    p.add_argument("--memory-calls", type=int, default=2_000_000)
    p.add_argument("--compare-memory", nargs=2, metavar=("PYTHONPATH_A", "PYTHONPATH_B"))
    args = p.parse_args()
    if args.compare_memory:
        return compare_memory(args.compare_memory, args.rounds, args.memory_calls)
    reference = load_reference(args.reference_dir)
    if reference is None:
        print(f"python_bench: no rate_limiter.py in {args.reference_dir}: reference skipped")

    results = {k: [] for k in ("compat", "reference", "library", "ratio", "of_library", "memory", "async_rate",
                               "async_p50", "async_p99", "bench_p50", "bench_p99", "p99_ratio")}
    with tempfile.TemporaryDirectory() as directory:
        proc, port = start_redis(directory)
        try:
            compat = RateLimiter(f"redis://127.0.0.1:{port}?timeout=1s")
            for r in range(args.rounds):
                sides = ["compat", "reference", "library"]
                for side in sides if r % 2 == 0 else sides[::-1]:
                    if (side == "reference" and reference is None) or (
                            side == "library" and not args.sluice):
                        continue
                    flushall(port)
                    if side == "compat":
                        rate = asyncio.run(throughput(compat, args))
                    elif side == "reference":
                        rate = asyncio.run(reference_throughput(reference, port, args))
                    else:  # the C++ client at the same concurrency: the Redis ceiling's proxy
                        rate = sluice_bench(args.sluice, port, args.seconds, args.concurrency)[0]
                    results[side].append(rate)
                    print(f"round {r + 1}: {side}: {rate:,.0f} decisions/s", flush=True)
                if reference is not None:
                    results["ratio"].append(results["compat"][-1] / results["reference"][-1])
                if args.sluice:
                    results["of_library"].append(results["compat"][-1] / results["library"][-1])
                results["memory"].append(memory_throughput(args.memory_calls))
                print(f"round {r + 1}: Limiter.acquire, memory: {results['memory'][-1]:,.0f}/s",
                      flush=True)
                flushall(port)
                sides = ["python", "bench"] if r % 2 == 0 else ["bench", "python"]
                for side in sides:
                    if side == "bench" and not args.sluice:
                        continue
                    flushall(port)
                    if side == "python":
                        rate, p50, p99 = asyncio.run(async_latency(port, args.seconds))
                        results["async_rate"].append(rate)
                        results["async_p50"].append(p50)
                        results["async_p99"].append(p99)
                        name = "acquire_async"
                    else:
                        rate, p50, p99 = sluice_bench(args.sluice, port, args.seconds)
                        results["bench_p50"].append(p50)
                        results["bench_p99"].append(p99)
                        name = "sluice bench"
                    print(f"round {r + 1}: {name}, Redis, 64 in flight: {rate:,.0f}/s, "
                          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
                if args.sluice:
                    results["p99_ratio"].append(results["async_p99"][-1] / results["bench_p99"][-1])
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    print()
    for name, unit in (("compat", " decisions/s"), ("reference", " decisions/s"),
                       ("library", " decisions/s (sluice bench, same in flight)"),
                       ("ratio", " x (compat / reference)"),
                       ("of_library", " x (compat / sluice bench)"), ("memory", " decisions/s"),
                       ("async_rate", " decisions/s"), ("async_p50", " ms"),
                       ("async_p99", " ms"), ("bench_p50", " ms"), ("bench_p99", " ms"),
                       ("p99_ratio", " x (acquire_async p99 / sluice bench p99)")):
        if results[name]:
            print(summary(name, results[name], unit))


if __name__ == "__main__":
    main()
