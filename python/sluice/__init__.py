"""sluice: sliding-window rate limiting, in-process or on Redis.

    import sluice

    limiter = sluice.Limiter("memory://", {"chat": "30/hour"})
    decision = limiter.acquire("chat", "user:42")
    if not decision:
        print(f"retry in {decision.retry_after:.1f}s")

`Limiter` opens a store by URI (memory://, redis://, rediss://, unix://,
redis+cluster://, redis+sentinel://) and decides on named policies or inline limits ("10/1m",
(10, 60.0)); `acquire_async` and `peek_async` are awaitables for asyncio.
Store failures are warned about through `logging` (logger "sluice"), at most
one warning per 10 seconds. `sluice.compat` is a drop-in for the reference
limiter; `sluice.asgi` a middleware for Starlette and FastAPI.
See docs/DESIGN.md, "Python".
"""

from ._sluice import Decision, Limiter, StoreError, UnknownPolicyError, parse_limit

__all__ = ["Decision", "Limiter", "StoreError", "UnknownPolicyError", "parse_limit"]
