"""sluice.Limiter's acquire_async and peek_async on one asyncio loop, memory store."""

import asyncio

import pytest

import sluice


def test_ten_thousand_concurrent_acquires_admit_exactly_the_limit():
    """Verifies 10,000 concurrent acquire_async on one key, limit 100, admit exactly 100."""
    lim = sluice.Limiter(policies={"p": "100/1h"})

    async def main():
        return await asyncio.gather(*(lim.acquire_async("p", "k") for _ in range(10_000)))

    decisions = asyncio.run(main())
    assert len(decisions) == 10_000
    assert sum(1 for d in decisions if d.allowed) == 100
    assert all(d.retry_after > 0 for d in decisions if not d.allowed)


def test_peek_async_spends_nothing():
    """Verifies peek_async answers as peek does and spends nothing."""
    lim = sluice.Limiter(policies={"p": "2/1m"})

    async def main():
        await lim.acquire_async("p", "k")
        first = await lim.peek_async("p", "k")
        second = await lim.peek_async("p", "k", cost=1)
        return first, second

    first, second = asyncio.run(main())
    assert first.allowed and second.allowed
    assert first.remaining == second.remaining == 1


def test_errors_are_raised_by_the_await():
    """Verifies bad input and unknown policies raise when awaited, with sluice's message."""
    lim = sluice.Limiter(policies={"p": "2/1m"})

    async def main():
        with pytest.raises(ValueError, match="cost") as info:
            await lim.acquire_async("p", "k", cost=0)
        assert info.value.code == "invalid_cost"
        with pytest.raises(sluice.UnknownPolicyError):
            await lim.acquire_async("nope", "k")
        with pytest.raises(ValueError):
            await lim.peek_async("1/fortnight", "k")
        with pytest.raises(TypeError):
            await lim.acquire_async("p", 1.5)

    asyncio.run(main())


def test_needs_a_running_loop():
    """Verifies that acquire_async outside a running loop is a RuntimeError, not a hang."""
    with pytest.raises(RuntimeError):
        sluice.Limiter().acquire_async("1/1s", "k")


def test_cancelled_task_breaks_nothing():
    """Verifies a cancelled awaiting task raises CancelledError and later calls still work."""
    lim = sluice.Limiter(policies={"p": "3/1m"})

    async def main():
        async def one():
            return await lim.acquire_async("p", "k")

        task = asyncio.ensure_future(one())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        fut = lim.acquire_async("p", "k")
        fut.cancel()
        await asyncio.sleep(0)
        return await lim.acquire_async("p", "k")

    d = asyncio.run(main())
    # The cancelled task never started its call; the cancelled future's call had spent.
    assert d.allowed and d.remaining == 1
