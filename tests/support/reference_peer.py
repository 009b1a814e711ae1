#!/usr/bin/python3
"""Drives the reference limiter (rate_limiter.py, imported from --reference-dir; nothing of
it is copied here) against a Redis on 127.0.0.1, as a live peer for sluice's tests.

Decisions: runs --requests checks of one key (--concurrency asyncio tasks at once) and
prints one JSON object a line per decision, in the order they were decided:
    reference_peer.py --reference-dir DIR --port P --key K --limit N --window S --requests M
    {"allowed": true, "remaining": 2, "retry_after": 0, "t": 1767225600.123456}
Bench: as many decisions as it can for --bench seconds over --keys keys, then one line:
    reference_peer.py --reference-dir DIR --port P --bench 5 --keys 100 --concurrency 16
    {"decisions": 51234, "seconds": 5.0, "per_second": 10246.8}

Needs redis-py with redis.asyncio: on Debian, python3-redis and /usr/bin/python3.
"""

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import time

import redis.asyncio as aioredis


def load_reference(directory):
    path = os.path.join(directory, "rate_limiter.py")
    if not os.path.isfile(path):
        sys.exit(f"reference_peer: {path} not found")
    spec = importlib.util.spec_from_file_location("reference_rate_limiter", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


async def decisions(limiter, args):
    todo = iter(range(args.requests))  # shared by the tasks: each request is taken once

    async def task():
        for _ in todo:
            r = await limiter.check_rate_limit(args.key, args.limit, args.window)
            line = {"allowed": r.allowed, "remaining": r.remaining,
                    "retry_after": r.retry_after, "t": time.time()}
            print(json.dumps(line))

    await asyncio.gather(*(task() for _ in range(args.concurrency)))


async def bench(limiter, args):
    count = 0
    start = time.monotonic()
    deadline = start + args.bench

    async def task(first):
        nonlocal count
        i = first
        while time.monotonic() < deadline:
            await limiter.check_rate_limit(f"{args.key}:{i % args.keys}", args.limit, args.window)
            count += 1
            i += args.concurrency

    await asyncio.gather(*(task(n) for n in range(args.concurrency)))
    seconds = time.monotonic() - start
    print(json.dumps({"decisions": count, "seconds": round(seconds, 3),
                      "per_second": round(count / seconds, 1)}))


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference-dir", required=True, help="directory holding rate_limiter.py")
    p.add_argument("--port", type=int, required=True, help="Redis port on 127.0.0.1")
    p.add_argument("--username", help="ACL user")
    p.add_argument("--password")
    p.add_argument("--tls-ca", help="CA file: connect with TLS and verify against it")
    p.add_argument("--key", default="bench", help="the key (bench: the keys' prefix)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--window", type=int, default=60, help="seconds")
    p.add_argument("--requests", type=int, help="decisions mode: how many checks")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--bench", type=float, metavar="SECONDS", help="bench mode: how long")
    p.add_argument("--keys", type=int, default=100, help="bench mode: how many keys")
    args = p.parse_args()
    if (args.requests is None) == (args.bench is None):
        p.error("give exactly one of --requests and --bench")
    if args.concurrency < 1 or args.keys < 1:
        p.error("--concurrency and --keys must be at least 1")

    reference = load_reference(args.reference_dir)
    tls = {"ssl": True, "ssl_ca_certs": args.tls_ca} if args.tls_ca else {}
    client = aioredis.Redis(host="127.0.0.1", port=args.port, username=args.username,
                            password=args.password, **tls)
    try:
        limiter = reference.RateLimiter(client)
        await (bench(limiter, args) if args.bench is not None else decisions(limiter, args))
    finally:
        await (client.aclose() if hasattr(client, "aclose") else client.close())


if __name__ == "__main__":
    asyncio.run(main())
