"""sluice.Limiter on a real redis-server (conftest.redis_port), and on one that is down."""

import asyncio
import threading
import time

import pytest

import sluice
from conftest import free_port


def redis_uri(port: int) -> str:
    return f"redis://127.0.0.1:{port}?timeout=500ms"


def test_acquire_peek_reset_on_redis(redis_port):
    """Verifies the decisions of a window on Redis, peek spending nothing, reset forgetting."""
    lim = sluice.Limiter(redis_uri(redis_port), {
        "chat": "3/1m",
        "g": {"limit": "2/1m", "algorithm": "gcra"},
    })
    assert lim.store.startswith("redis://127.0.0.1")
    assert [lim.acquire("chat", "u").remaining for _ in range(3)] == [2, 1, 0]
    denied = lim.acquire("chat", "u")
    assert not denied and denied.fallback is None and 0 < denied.retry_after <= 60
    assert [lim.peek("chat", "u").allowed for _ in range(3)] == [False] * 3
    lim.reset("chat", "u")
    assert lim.peek("chat", "u").remaining == 3  # all of the limit again
    assert [lim.acquire("g", b"u").allowed for _ in range(3)] == [True, True, False]
    assert lim.acquire("5/1m", "inline").remaining == 4


def test_deny_cache_policy_on_redis(redis_port):
    """Verifies that a deny_cache policy keeps denying a key from this process until the
    store's wait is over: a reset made through another Limiter (another process) is not seen,
    one made through this Limiter clears it; and that racing threads admit exactly the
    limit."""
    cached = sluice.Limiter(redis_uri(redis_port), {"p": {"limit": "1/1h", "deny_cache": True}})
    other = sluice.Limiter(redis_uri(redis_port), {"p": "1/1h"})
    assert cached.acquire("p", "u")
    first = cached.acquire("p", "u")
    assert not first and first.fallback is None and 3500 < first.retry_after <= 3600
    other.reset("p", "u")
    again = cached.acquire("p", "u")
    assert not again and again.retry_after <= first.retry_after and again.remaining == 0
    assert other.peek("p", "u")  # Redis would admit it: the cache has not seen the reset
    cached.reset("p", "u")
    assert cached.acquire("p", "u")

    racing = sluice.Limiter(redis_uri(redis_port),
                            {"r": {"limit": "50/1h", "deny_cache": True, "algorithm": "gcra"}})
    admitted = []

    def run() -> None:
        admitted.append(sum(1 for _ in range(250) if racing.acquire("r", "one")))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 50


def test_acquire_async_on_redis(redis_port):
    """Verifies 1,000 concurrent acquire_async on Redis admit exactly the limit."""
    lim = sluice.Limiter(redis_uri(redis_port), {"p": "100/1h"})

    async def main():
        return await asyncio.gather(*(lim.acquire_async("p", "k") for _ in range(1000)))

    decisions = asyncio.run(main())
    assert sum(1 for d in decisions if d.allowed) == 100
    assert all(d.fallback is None for d in decisions)


def test_cancelled_futures_on_redis(redis_port):
    """Verifies futures cancelled while Redis decides are left alone when the answer comes."""
    lim = sluice.Limiter(redis_uri(redis_port), {"p": "1000/1h"})

    async def main():
        futures = [lim.acquire_async("p", "k") for _ in range(200)]
        for f in futures[::2]:
            f.cancel()
        done = await asyncio.gather(*futures[1::2])
        await asyncio.sleep(0.2)  # let the cancelled ones' answers arrive
        return done, await lim.peek_async("p", "k")

    done, after = asyncio.run(main())
    assert all(d.allowed for d in done)
    assert after.remaining == 800  # the store decided all 200; cancelling does not undo


def test_threads_release_the_gil_on_redis(redis_port):
    """Verifies 8 threads racing 1,000 acquires on Redis, limit 100, admit exactly 100."""
    lim = sluice.Limiter(redis_uri(redis_port), {"p": "100/1h"})
    admitted = []

    def worker():
        admitted.append(sum(1 for _ in range(125) if lim.acquire("p", "k")))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(admitted) == 100 and len(admitted) == 8


def test_store_down_falls_back_by_policy():
    """Verifies a store that is down: each policy's failure mode decides, reset raises."""
    lim = sluice.Limiter(redis_uri(free_port()), {
        "open": {"limit": "5/1m", "on_failure": "allow"},
        "closed": {"limit": "5/1m", "on_failure": "deny"},
        "local": {"limit": "1/1m", "on_failure": "local"},
    })
    start = time.monotonic()
    d = lim.acquire("open", "k")
    assert d.allowed and d.fallback == "allow" and d.remaining == 5
    d = lim.acquire("closed", "k")
    assert not d.allowed and d.fallback == "deny" and d.retry_after > 0
    assert lim.acquire("local", "k").fallback == "local"
    assert not lim.acquire("local", "k").allowed
    assert lim.acquire("5/1m", "k").fallback == "allow"  # inline limits fail open

    async def main():
        return await lim.acquire_async("open", "k")

    assert asyncio.run(main()).fallback == "allow"
    with pytest.raises(sluice.StoreError) as info:
        lim.reset("open", "k")
    assert info.value.code in ("store_unavailable", "timeout", "store_error")
    assert time.monotonic() - start < 30


def test_limiter_dropped_right_after_an_await(redis_port):
    """Verifies a Limiter whose last reference drops as its completion runs is no crash."""
    async def once():
        return (await sluice.Limiter(redis_uri(redis_port)).acquire_async("9/1h", "k")).allowed

    async def main():
        return [await once() for _ in range(100)]

    assert asyncio.run(main()) == [True] * 9 + [False] * 91


def test_loop_keeps_ticking_during_ten_thousand_acquires(redis_port):
    """Verifies 10,000 concurrent acquire_async on Redis complete, admit exactly the limit, and
    never stall the loop: a heartbeat task asking to tick every millisecond keeps ticking."""
    # A deadline far beyond the batch's time even on a slow (sanitized) build: exactness is
    # what is tested, and a call past its deadline would fail open.
    lim = sluice.Limiter(f"redis://127.0.0.1:{redis_port}?timeout=10s", {"p": "100/1h"})

    async def main():
        gaps, running = [], True

        async def heartbeat():
            last = time.perf_counter()
            while running:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        beat = asyncio.ensure_future(heartbeat())
        await asyncio.sleep(0.01)
        futures = []
        for _ in range(100):  # started in slices, so that starting them is no stall either
            futures += [lim.acquire_async("p", "k") for _ in range(100)]
            await asyncio.sleep(0)
        decisions = await asyncio.gather(*futures)
        running = False
        await beat
        return decisions, gaps

    decisions, gaps = asyncio.run(main())
    assert len(decisions) == 10_000 and sum(d.allowed for d in decisions) == 100
    assert all(d.fallback is None for d in decisions)
    # A loop that waited for Redis would stall for the whole batch (seconds); this one
    # yields between slices and completions. The bound is loose for a shared machine.
    assert len(gaps) > 10 and max(gaps) < 0.25, max(gaps)


def test_cancelled_calls_leak_nothing(redis_port):
    """Verifies that rounds of calls, half of them cancelled, hold no reference to the Limiter
    nor any object once their answers are in: every pending call is released."""
    import gc
    import sys

    lim = sluice.Limiter(redis_uri(redis_port), {"p": "1000000/1h"})

    async def round_():
        futures = [lim.acquire_async("p", f"k{i % 10}") for i in range(1000)]
        for f in futures[::2]:
            f.cancel()
        await asyncio.gather(*futures[1::2])
        for _ in range(100):  # until the cancelled ones' answers are in
            if sys.getrefcount(lim) == baseline:
                break
            await asyncio.sleep(0.01)

    baseline = sys.getrefcount(lim)
    counts = []
    for _ in range(4):
        asyncio.run(round_())
        gc.collect()
        assert sys.getrefcount(lim) == baseline
        counts.append(len(gc.get_objects()))
    assert counts[-1] - counts[1] < 100, counts  # no growth from round to round
