"""A drop-in for the reference limiter (chrysopedia's rate_limiter.py), decided by sluice.

Change the import and keep the code::

    # from chrysopedia.rate_limiter import RateLimiter, RateLimitResult
    from sluice.compat import RateLimiter, RateLimitResult

    limiter = RateLimiter(redis)          # the same redis.asyncio.Redis object, or a URL
    result = await limiter.check_rate_limit(
        RateLimiter.key("chat", user_id), limit=30, window_seconds=3600)
    if not result.allowed:
        return 429, result.retry_after

The answers are the reference's, on the reference's own Redis keys (a sorted set per key,
one member per admitted request, TTL window + 60 s), so the two can share a Redis and a
key during a migration. What changes: the decision is one atomic script (the reference
checks and then adds in separate round trips, so racing callers all pass), it takes one
round trip, and when Redis fails it fails open at once (a deadline of 50 ms, then a
circuit breaker) with a WARNING through `logging` (logger "sluice", at most one per 10 s)
instead of a WARNING with a traceback per request.
"""

from __future__ import annotations

import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any, Dict, Union

from ._sluice import Limiter

__all__ = ["RateLimitResult", "RateLimiter"]

_KEY_PREFIX = "chrysopedia:ratelimit"


@dataclass
class RateLimitResult:
    """Result of a rate limit check, as the reference returns it."""

    allowed: bool
    remaining: int
    retry_after: int  # whole seconds until a request would be admitted; 0 if allowed


# One Limiter (and so one set of connections) per store URI for the process's life: the
# reference is cheap to build, and call sites build a RateLimiter per request.
_limiters: Dict[str, Limiter] = {}
_limiters_lock = threading.Lock()


def _limiter_for(uri: str) -> Limiter:
    with _limiters_lock:
        limiter = _limiters.get(uri)
        if limiter is None:
            limiter = Limiter(uri)
            _limiters[uri] = limiter
        return limiter


def _with_options(uri: str, cluster: bool) -> str:
    """Returns `uri` with the options that keep Redis keys verbatim (no prefix, no tag)."""
    base, _, query = uri.partition("?")
    kept = [p for p in query.split("&") if p and p.split("=", 1)[0] not in ("prefix", "hash_tag")]
    kept.append("prefix=")
    if cluster:
        kept.append("hash_tag=0")
    return base + "?" + "&".join(kept)


def _userinfo(kwargs: Dict[str, Any]) -> str:
    username, password = kwargs.get("username"), kwargs.get("password")
    if not password:
        return ""
    quote = lambda s: urllib.parse.quote(str(s), safe="")  # noqa: E731
    return f"{quote(username) if username else ''}:{quote(password)}@"


def _tls_options(kwargs: Dict[str, Any]) -> list:
    if kwargs.get("ssl_ca_data"):
        raise ValueError("sluice.compat: ssl_ca_data is not supported; use ssl_ca_certs (a file)")
    options = []
    for name, option in (("ssl_ca_certs", "tls_ca"), ("ssl_certfile", "tls_cert"),
                         ("ssl_keyfile", "tls_key")):
        if kwargs.get(name):
            options.append(f"{option}={urllib.parse.quote(str(kwargs[name]), safe='/')}")
    if kwargs.get("ssl_cert_reqs") in ("none", 0):  # ssl.CERT_NONE is 0
        options.append("tls_verify=0")
    return options


def store_uri(redis: Any) -> str:
    """Returns the sluice store URI of a redis-py client (asyncio or not, single or cluster).

    Reads where the client connects (host and port, or a Unix socket), its db, user,
    password and TLS files; sluice opens connections of its own there. A server certificate
    is verified (chain and name) unless the client was built with ssl_cert_reqs="none".
    """
    nodes_manager = getattr(redis, "nodes_manager", None)
    if nodes_manager is not None:  # redis.asyncio.cluster.RedisCluster
        kwargs = dict(getattr(nodes_manager, "connection_kwargs", {}))
        seeds = [f"{n.host}:{n.port}" for n in nodes_manager.startup_nodes.values()]
        scheme = "rediss+cluster" if kwargs.get("ssl") else "redis+cluster"
        options = _tls_options(kwargs) if kwargs.get("ssl") else []
        return f"{scheme}://{_userinfo(kwargs)}{','.join(seeds)}" + (
            "?" + "&".join(options) if options else "")
    pool = getattr(redis, "connection_pool", None)
    if pool is None:
        raise TypeError("RateLimiter needs a redis-py client (redis.asyncio.Redis) or a URL, "
                        f"not {type(redis).__name__}")
    kwargs = pool.connection_kwargs
    options = [f"db={int(kwargs.get('db') or 0)}"]
    if kwargs.get("path"):
        return f"unix://{urllib.parse.quote(kwargs['path'], safe='/')}?" + "&".join(options)
    tls = pool.connection_class.__name__ == "SSLConnection"
    if tls:
        options += _tls_options(kwargs)
    host = kwargs.get("host", "127.0.0.1")
    if ":" in host:
        host = f"[{host}]"
    scheme = "rediss" if tls else "redis"
    return f"{scheme}://{_userinfo(kwargs)}{host}:{int(kwargs.get('port', 6379))}?" + "&".join(
        options)


class RateLimiter:
    """Sliding-window rate limiter on Redis sorted sets: the reference's interface.

    Thread-safe and cheap to build: every RateLimiter of one Redis shares one sluice
    limiter (and its connections) for the life of the process.

    Usage::

        limiter = RateLimiter(redis)
        result = await limiter.check_rate_limit("user:abc123", limit=30, window_seconds=3600)
        if not result.allowed:
            return 429, result.retry_after
    """

    def __init__(self, redis: Union[Any, str]) -> None:
        if isinstance(redis, str):
            uri = redis
        else:
            uri = store_uri(redis)
        cluster = uri.split("://", 1)[0].endswith("+cluster")
        self._limiter = _limiter_for(_with_options(uri, cluster))

    @staticmethod
    def key(scope: str, identifier: str) -> str:
        """Returns the namespaced Redis key of a rate limit bucket (the reference's)."""
        return f"{_KEY_PREFIX}:{scope}:{identifier}"

    async def check_rate_limit(
        self,
        key: str,
        limit: int,
        window_seconds: int = 3600,
    ) -> RateLimitResult:
        """Returns whether a request on `key` is within `limit` per `window_seconds`.

        Admitted: allowed, the requests still left in the window, retry_after 0. Denied:
        remaining 0 and retry_after the whole seconds until the oldest request leaves the
        window, plus one (at least 1). When Redis fails: allowed with remaining = limit.
        A limit of 0 or less denies everything, as the reference does. Raises ValueError for
        a window that is not a positive number of seconds (the reference then admitted
        every request) and TypeError for a key that is not str or bytes.
        """
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int, not {type(limit).__name__}")
        if isinstance(window_seconds, bool) or not isinstance(window_seconds, (int, float)):
            raise TypeError(f"window_seconds must be a number, not {type(window_seconds).__name__}")
        if not window_seconds > 0:
            raise ValueError(f"window_seconds must be positive, not {window_seconds}")
        if limit <= 0:
            return RateLimitResult(allowed=False, remaining=0, retry_after=int(window_seconds))
        decision = await self._limiter.acquire_async((limit, float(window_seconds)), key)
        if decision.fallback is not None:
            return RateLimitResult(allowed=True, remaining=limit, retry_after=0)
        if decision.allowed:
            return RateLimitResult(allowed=True, remaining=decision.remaining, retry_after=0)
        return RateLimitResult(
            allowed=False, remaining=0, retry_after=max(int(decision.retry_after) + 1, 1))
