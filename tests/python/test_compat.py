"""sluice.compat, the reference limiter's interface, on a real redis-server; and the
reference itself (rate_limiter.py from SLUICE_REFERENCE_DIR) as a peer on the same keys."""

import asyncio
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time

import pytest
import redis
import redis.asyncio as aioredis

from sluice import compat
from sluice.compat import RateLimiter, RateLimitResult
from conftest import free_port


def url(port: int) -> str:
    return f"redis://127.0.0.1:{port}"


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def reference():
    """Returns the reference module (rate_limiter.py), or skips when it is not there."""
    directory = os.environ.get("SLUICE_REFERENCE_DIR", "")
    path = os.path.join(directory, "rate_limiter.py")
    if not os.path.isfile(path):
        pytest.skip(f"the reference limiter is not at {path!r}")
    spec = importlib.util.spec_from_file_location("reference_rate_limiter", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_key_is_the_references():
    """Verifies RateLimiter.key builds chrysopedia:ratelimit:{scope}:{identifier}."""
    assert RateLimiter.key("chat", "user:42") == "chrysopedia:ratelimit:chat:user:42"
    assert RateLimitResult(True, 3, 0) == RateLimitResult(allowed=True, remaining=3, retry_after=0)


def test_a_window_case_by_case(redis_port):
    """Verifies the reference's answers: limit-1 left, ..., 0, then a denial with its retry_after,
    on the reference's own sorted set (TTL window + 60 s) under the verbatim key."""
    limiter = RateLimiter(url(redis_port))
    key = RateLimiter.key("chat", "u1")

    async def main():
        return [await limiter.check_rate_limit(key, 3, 60) for _ in range(4)]

    before = time.time()
    results = run(main())
    assert results[:3] == [RateLimitResult(True, 2, 0), RateLimitResult(True, 1, 0),
                           RateLimitResult(True, 0, 0)]
    assert not results[3].allowed and results[3].remaining == 0
    r = redis.Redis(port=redis_port)
    assert r.type(key) == b"zset" and r.zcard(key) == 3  # the denial added nothing
    oldest = r.zrange(key, 0, 0, withscores=True)[0][1]
    assert before - 1 <= oldest <= time.time() + 1  # Unix seconds, as the reference scores
    # The reference's formula, int(oldest + window - now) + 1, at the moment of the denial.
    assert results[3].retry_after in (60, 61)
    assert 59 < r.ttl(key) <= 120
    assert r.keys("*") == [key.encode()]  # nothing else: no prefix, no second key


def test_keys_expire_and_admit_again(redis_port):
    """Verifies that a 1 s window lets requests in again after it slides, and keys expire."""
    limiter = RateLimiter(url(redis_port))

    async def main():
        first = [await limiter.check_rate_limit("k", 2, 1) for _ in range(3)]
        await asyncio.sleep(1.1)
        return first, await limiter.check_rate_limit("k", 2, 1)

    first, later = run(main())
    assert [x.allowed for x in first] == [True, True, False]
    assert first[2].retry_after in (1, 2)
    assert later == RateLimitResult(True, 1, 0)
    assert 0 < redis.Redis(port=redis_port).ttl("k") <= 61


def test_shares_keys_with_the_reference(redis_port, reference):
    """Verifies the reference and sluice.compat on one Redis and key admit exactly the limit
    together, each counting the other's requests."""
    ours = RateLimiter(url(redis_port))
    key = RateLimiter.key("shared", "u")

    async def main():
        client = aioredis.Redis(port=redis_port)
        theirs = reference.RateLimiter(client)
        answers = []
        for i in range(300):  # one at a time: the reference is not atomic under concurrency
            side = theirs if i % 2 else ours
            answers.append((side is ours, await side.check_rate_limit(key, 100, 3600)))
        await client.close()
        return answers

    answers = run(main())
    admitted = [(mine, r.remaining) for mine, r in answers if r.allowed]
    assert len(admitted) == 100
    assert [remaining for _, remaining in admitted] == list(range(99, -1, -1))
    assert {mine for mine, _ in admitted} == {True, False}  # both admitted, each seeing both
    denials = [r.retry_after for _, r in answers if not r.allowed]
    assert len(denials) == 200 and all(3599 <= d <= 3601 for d in denials)


def test_takes_the_redis_object_the_reference_takes(redis_port):
    """Verifies RateLimiter(redis.asyncio.Redis(...)) decides on that Redis and db."""
    client = aioredis.Redis(host="127.0.0.1", port=redis_port, db=2)
    limiter = RateLimiter(client)

    async def main():
        return await limiter.check_rate_limit("db2key", 5, 60)

    assert run(main()) == RateLimitResult(True, 4, 0)
    sync = redis.Redis(port=redis_port, db=2)
    assert sync.zcard("db2key") == 1
    assert redis.Redis(port=redis_port).exists("db2key") == 0
    # Every RateLimiter of one Redis shares one sluice limiter (and its connections).
    assert RateLimiter(client)._limiter is limiter._limiter


def test_store_uri_of_redis_clients():
    """Verifies the store URI read from redis-py clients: address, db, credentials, TLS."""
    assert compat.store_uri(aioredis.Redis(host="10.0.0.1", port=7000, db=3)) == \
        "redis://10.0.0.1:7000?db=3"
    assert compat.store_uri(aioredis.Redis(username="u", password="p@ss:/w")) == \
        "redis://u:p%40ss%3A%2Fw@localhost:6379?db=0"
    assert compat.store_uri(aioredis.Redis(unix_socket_path="/run/redis.sock", db=1)) == \
        "unix:///run/redis.sock?db=1"
    assert compat.store_uri(aioredis.Redis(ssl=True, ssl_ca_certs="/etc/ca.pem",
                                           ssl_cert_reqs="none")) == \
        "rediss://localhost:6379?db=0&tls_ca=/etc/ca.pem&tls_verify=0"
    assert compat.store_uri(aioredis.Redis.from_url("rediss://:pw@h:1/4")) == \
        "rediss://:pw@h:1?db=4"
    with pytest.raises(ValueError, match="ssl_ca_data"):
        compat.store_uri(aioredis.Redis(ssl=True, ssl_ca_data="-----BEGIN"))
    with pytest.raises(TypeError, match="redis-py client"):
        RateLimiter(42)
    # URLs keep their options and lose any prefix: keys are the reference's, verbatim.
    assert compat._with_options("redis://h:1?timeout=20ms&prefix=x", False) == \
        "redis://h:1?timeout=20ms&prefix="
    assert compat._with_options("redis+cluster://a:1,b:2", True) == \
        "redis+cluster://a:1,b:2?prefix=&hash_tag=0"


def test_bad_input_is_an_exception_not_a_call(redis_port):
    """Verifies bad limits, windows and keys raise, and a limit of 0 denies as the reference."""
    limiter = RateLimiter(url(redis_port))

    async def call(*args):
        return await limiter.check_rate_limit(*args)

    with pytest.raises(TypeError, match="limit must be an int"):
        run(call("k", "30", 60))
    with pytest.raises(ValueError, match="window_seconds must be positive"):
        run(call("k", 30, 0))
    with pytest.raises(TypeError, match="key must be str or bytes"):
        run(call(42, 30, 60))
    with pytest.raises(ValueError, match="key"):
        run(call("k" * 100_000, 30, 60))
    assert run(call("k", 0, 60)) == RateLimitResult(False, 0, 60)
    assert redis.Redis(port=redis_port).keys("*") == []


def hung_listener():
    """Returns a socket listening on 127.0.0.1 that never accepts: connects, never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


def test_fails_open_fast_once_the_breaker_opens(caplog):
    """Verifies a Redis that never answers: allowed with remaining = limit, a WARNING through
    logging, and once the circuit breaker is open, answers in microseconds, not a timeout."""
    hung = hung_listener()
    port = hung.getsockname()[1]
    try:
        limiter = RateLimiter(f"redis://127.0.0.1:{port}?timeout=50ms&connect_timeout=100ms")

        async def main():
            answers, times = [], []
            for _ in range(200):
                start = time.perf_counter()
                answers.append(await limiter.check_rate_limit("k", 30, 60))
                times.append(time.perf_counter() - start)
            return answers, times

        with caplog.at_level(logging.WARNING, logger="sluice"):
            answers, times = run(main())
        assert all(a == RateLimitResult(True, 30, 0) for a in answers)
        assert sum(times) < 200 * 0.05 / 2  # far less than a timeout per call
        assert sum(times[-100:]) < 0.5  # the breaker is open: no call waits
        warnings = [r for r in caplog.records if r.name == "sluice"]
        assert 1 <= len(warnings) <= 2  # rate-limited: one per 10 s
        assert "failed open" in warnings[0].getMessage()
    finally:
        hung.close()


RACER = """
import asyncio, sys
from sluice.compat import RateLimiter
async def main():
    limiter = RateLimiter(sys.argv[1])
    answers = await asyncio.gather(*(limiter.check_rate_limit("race", 100, 3600)
                                     for _ in range(125)))
    print(sum(a.allowed for a in answers))
asyncio.run(main())
"""


def test_eight_processes_racing_admit_exactly_the_limit(redis_port):
    """Verifies 8 processes racing 1,000 check_rate_limit on one key, limit 100, admit 100."""
    procs = [subprocess.Popen([sys.executable, "-c", RACER, url(redis_port) + "?timeout=10s"],
                              stdout=subprocess.PIPE, text=True) for _ in range(8)]
    admitted = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        admitted.append(int(out))
    assert sum(admitted) == 100
    assert redis.Redis(port=redis_port).zcard("race") == 100
