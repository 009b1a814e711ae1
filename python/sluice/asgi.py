"""Rate limiting for Starlette and FastAPI: a pure ASGI middleware over a `sluice.Limiter`.

    import sluice
    from fastapi import FastAPI
    from sluice.asgi import RateLimitMiddleware, Rule, header, path_param

    limiter = sluice.Limiter("memory://", {"per-client": "100/1m", "messages": "5/1m"})
    app = FastAPI()
    app.add_middleware(
        RateLimitMiddleware,
        limiter=limiter,
        rules=[
            Rule("per-client"),  # every request, keyed by the client's address
            Rule("messages", path="/users/{user_id}/messages", methods=["POST"],
                 key=path_param("user_id")),
            Rule("1000/1d", key=header("X-API-Key", fallback=None)),  # keyed clients only
        ],
    )

Each HTTP request is checked against the rules in order; every rule whose path and method
match it spends `cost` from its policy under the request's key (`await limiter.acquire_async`,
so the event loop never blocks). Rules are checked before routing, on scope["path"], so a
request no route serves (a 404) spends from the rules it matches too. The first rule that
denies answers 429 at once: the rules after it are neither evaluated nor charged, but the
rules before it that admitted the request stay charged (sluice has no all-or-nothing acquire
across limits yet). Admitted responses carry the headers too. The header fields are those
`sluice serve` writes (draft-ietf-httpapi-ratelimit-headers-11, structured fields), one List
item per evaluated rule, in rule order, joined with ", ":

    RateLimit-Policy: "per-client";q=100;w=60, "messages";q=5;w=60
    RateLimit: "per-client";r=97;t=60, "messages";r=0;t=12
    Retry-After: 12                     (429 only)

and the 429's JSON body is the server's decision body: `{"allowed":false,"limit":5,
"remaining":0,"retry_after_ms":11250,"reset_after_ms":60000,"policy":"messages"}`.

A policy is a name registered in the limiter or an inline limit ("10/1m", (10, 60.0)); the
header fields name an inline limit by its canonical form ("10/1m"), as the server does. Rules
with the same policy and key share one counter. The limiter leaves an inline limit's keys
unscoped (every inline limit on key k would count on one log); the middleware scopes them by
the canonical form as a name scopes a policy's ("10/1m:client:10.0.0.1"), so that different
inline rules never share a counter. Shadow mode (`shadow=True` on the middleware
or a rule, or a shadow policy) never answers 429; it logs what it would have denied at INFO
through the logger "sluice.asgi" and the headers show the shadow decision (r=0). A decision
made by a policy's failure mode (`decision.fallback`) is followed like any other. Only a
`sluice.StoreError` (no failure mode decided) is the middleware's own choice: `on_store_error`.
Non-HTTP scopes (lifespan, websocket) pass through untouched.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import KW_ONLY, dataclass
from typing import (Any, Awaitable, Callable, Collection, Literal, MutableMapping, Optional,
                    Tuple, Union)

from ._sluice import Decision, Limiter, StoreError

__all__ = ["RateLimitMiddleware", "Rule", "client_address", "header", "path_param"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# A key function: the request's key under a rule, or None when the rule does not apply to it.
KeyFunction = Callable[[Scope], Optional[str]]
Limit = Union[str, Tuple[int, float]]

logger = logging.getLogger("sluice.asgi")


def client_address(scope: Scope) -> str:
    """Returns "client:<host>", the peer's address in scope["client"].

    A request the server names no client for (a Unix socket) gets "client:unknown": all such
    requests share one key. Behind a reverse proxy the peer is the proxy: let the server
    rewrite scope["client"] from the proxy's headers (uvicorn --proxy-headers
    --forwarded-allow-ips=...) rather than trusting a client-sent header here.
    """
    client = scope.get("client")
    return "client:" + (client[0] if client else "unknown")


def header(name: str, fallback: Optional[KeyFunction] = client_address) -> KeyFunction:
    """Returns a key function giving "header:<name in lower case>:<value>" for header `name`.

    A request without the header (or with it empty) is keyed by `fallback(scope)`, by default
    its client address; with `fallback=None` the rule does not apply to it. The first value
    counts when the header is repeated.
    """
    wanted = name.lower().encode("latin-1")
    prefix = "header:" + name.lower() + ":"

    def key(scope: Scope) -> Optional[str]:
        for field, value in scope["headers"]:
            if field == wanted:
                if value:
                    return prefix + value.decode("latin-1")
                break
        return fallback(scope) if fallback is not None else None

    return key


class _PathParameter:
    """A key function reading one parameter of the rule's path (see `path_param`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.prefix = "path:" + name + ":"

    def __call__(self, scope: Scope) -> str:
        """Returns "path:<name>:<value>" from scope["path_params"]."""
        return self.prefix + scope["path_params"][self.name]


def path_param(name: str) -> KeyFunction:
    """Returns a key function giving "path:<name>:<value>" for parameter `name` of the rule's
    path, as in Rule(..., path="/users/{user_id}/messages", key=path_param("user_id")).

    The rule's path must have the parameter (Rule checks it when the middleware is built).
    """
    return _PathParameter(name)


@dataclass(frozen=True)
class Rule:
    """Which requests spend from `policy`, and under which key.

    policy:  a policy name registered in the limiter, or an inline limit ("10/1m", (10, 60.0)).
    path:    None for every path, else a path matched whole against scope["path"]; "{name}"
             matches one non-empty segment and is passed to key functions in
             scope["path_params"] (as Starlette's router later sets it): "/users/{user_id}".
    methods: None for every method, else the methods (any case) the rule applies to.
    key:     a key function, scope -> key or None (None: the rule does not apply).
             Built in: client_address (the default), header(name), path_param(name).
    cost:    what a request spends, an int or a function scope -> int.
    shadow:  never deny by this rule, only log what it would have denied.
    """

    policy: Limit
    _: KW_ONLY
    path: Optional[str] = None
    methods: Optional[Collection[str]] = None
    key: KeyFunction = client_address
    cost: Union[int, Callable[[Scope], int]] = 1
    shadow: bool = False


_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UNITS = (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000),
          ("ms", 1_000), ("us", 1))


def _sf_string(text: str) -> str:
    """Returns `text` as a structured-field String, as the server writes it: in double quotes,
    `"` and `\\` escaped, each UTF-8 byte outside 0x20..0x7E written as `?`."""
    out = []
    for byte in text.encode():
        if byte in (0x22, 0x5C):
            out.append("\\" + chr(byte))
        else:
            out.append(chr(byte) if 0x20 <= byte <= 0x7E else "?")
    return '"' + "".join(out) + '"'


def _micros(seconds: float) -> int:
    """Returns the whole microseconds that the module's `seconds` (micros / 1e6) came from."""
    return round(seconds * 1e6)


def _ceil(micros: int, unit: int) -> int:
    """Returns `micros` in `unit`s rounded up; 0 for zero or less."""
    return -(-micros // unit) if micros > 0 else 0


def _retry_after(d: Decision) -> int:
    """Returns the Retry-After value of a denial: whole seconds, floor + 1."""
    return max(1, _micros(d.retry_after) // 1_000_000 + 1)


class _CompiledRule:
    """A rule ready for requests: its matcher and its policy's header pieces."""

    __slots__ = ("policy", "name", "scope", "sf_name", "policy_field", "methods", "path",
                 "pattern", "key", "cost", "shadow")

    def __init__(self, rule: Rule, limiter: Limiter, shadow: bool) -> None:
        count, window = limiter.limit(rule.policy)  # UnknownPolicyError, ValueError
        policy = rule.policy
        if isinstance(policy, str) and "/" not in policy and " " not in policy:
            self.name = policy
            self.scope = ""  # the limiter scopes a named policy's keys
        else:
            us = _micros(window)
            self.name = next(f"{count}/{us // n}{u}" for u, n in _UNITS if us % n == 0)
            self.scope = self.name + ":"
        self.policy = policy
        self.sf_name = _sf_string(self.name)
        w = max(1, _ceil(_micros(window), 1_000_000))
        self.policy_field = f"{self.sf_name};q={count};w={w}"
        self.methods = None if rule.methods is None else frozenset(m.upper() for m in rule.methods)
        self.path = rule.path
        self.pattern: Optional[re.Pattern[str]] = None
        parameters: list[str] = []
        if rule.path is not None:
            if not rule.path.startswith("/"):
                raise ValueError(f"rule path {rule.path!r} does not start with /")
            parts = _PARAMETER.split(rule.path)  # literal, name, literal, ..., literal
            literals, parameters = parts[0::2], parts[1::2]
            if any("{" in p or "}" in p for p in literals):
                raise ValueError(f"rule path {rule.path!r}: parameters are {{name}}")
            if parameters:
                self.pattern = re.compile("".join(
                    re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts)))
        if isinstance(rule.key, _PathParameter) and rule.key.name not in parameters:
            raise ValueError(f"path_param({rule.key.name!r}) needs a rule path with "
                             f"{{{rule.key.name}}}; the rule's path is {rule.path!r}")
        self.key = rule.key
        self.cost = rule.cost
        self.shadow = shadow or rule.shadow

    def match(self, scope: Scope) -> Optional[Scope]:
        """Returns the scope for the rule's key and cost functions when the rule applies to the
        request (with the path's parameters added to a copy), else None."""
        if self.methods is not None and scope["method"] not in self.methods:
            return None
        if self.pattern is not None:
            m = self.pattern.fullmatch(scope["path"])
            if m is None:
                return None
            return {**scope, "path_params": {**scope.get("path_params", {}), **m.groupdict()}}
        return scope if self.path is None or self.path == scope["path"] else None


def _denial_body(d: Decision, name: str) -> bytes:
    """Returns the JSON body of a 429 for denial `d` by policy `name`, as the server's."""
    body: dict[str, Any] = {
        "allowed": False, "limit": d.limit, "remaining": d.remaining,
        "retry_after_ms": _ceil(_micros(d.retry_after), 1000),
        "reset_after_ms": _ceil(_micros(d.reset_after), 1000), "policy": name}
    if d.fallback is not None:
        body["fallback"] = d.fallback
    return json.dumps(body, separators=(",", ":")).encode()


async def _respond(send: Send, status: int, body: bytes,
                   headers: list[tuple[bytes, bytes]]) -> None:
    """Returns once a JSON response with `status`, `headers` and `body` is sent."""
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": body})


class RateLimitMiddleware:
    """Returns an ASGI app that admits or denies each HTTP request of `app` by `rules`.

    app.add_middleware(RateLimitMiddleware, limiter=..., rules=[...]) in Starlette or FastAPI.
    shadow: every rule in shadow mode (logs, never 429).
    on_store_error: what a `sluice.StoreError` (the store failed and the policy has no
        failure mode) does to the request: "deny" answers 503 with {"error": ...} (the
        default: the policy asked for no fallback), "allow" skips that rule.
    A key the limiter refuses (empty, or longer than the store allows, such as a 2 KB API key
    header) is answered 400 with the limiter's message. Raises UnknownPolicyError or
    ValueError for a rule's unknown policy, bad limit or bad path.
    """

    def __init__(self, app: ASGIApp, *, limiter: Limiter, rules: Collection[Rule],
                 shadow: bool = False, on_store_error: Literal["deny", "allow"] = "deny") -> None:
        if on_store_error not in ("deny", "allow"):
            raise ValueError(f'on_store_error is "deny" or "allow", not {on_store_error!r}')
        self.app = app
        self.limiter = limiter
        self.on_store_error = on_store_error
        self._rules = [_CompiledRule(rule, limiter, shadow) for rule in rules]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Returns when `app` (or the middleware's own 429, 503 or 400) has answered."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        policies: list[str] = []
        items: list[str] = []
        for rule in self._rules:
            rule_scope = rule.match(scope)
            if rule_scope is None:
                continue
            key = rule.key(rule_scope)
            if key is None:
                continue
            cost = rule.cost if isinstance(rule.cost, int) else rule.cost(rule_scope)
            try:
                d = await self.limiter.acquire_async(rule.policy, rule.scope + key, cost)
            except StoreError:
                if self.on_store_error == "allow":
                    continue
                return await _respond(send, 503, b'{"error":"rate limiter unavailable"}', [])
            except ValueError as e:
                if getattr(e, "code", None) != "invalid_key":
                    raise
                return await _respond(send, 400, json.dumps({"error": str(e)}).encode(), [])
            if not d.allowed and rule.shadow:  # as a shadow policy answers
                d = Decision(allowed=True, limit=d.limit, remaining=d.remaining,
                             reset_after=d.reset_after, fallback=d.fallback, shadow=True)
            if d.shadow:
                client = scope.get("client")
                logger.info("shadow: would deny %s %s from %s: policy %s, limit %d",
                            scope["method"], scope["path"], client[0] if client else "unknown",
                            rule.name, d.limit)
            policies.append(rule.policy_field)
            t = _ceil(_micros(d.reset_after), 1_000_000) if d.allowed else _retry_after(d)
            items.append(f"{rule.sf_name};r={max(0, d.remaining)};t={t}")
            if not d.allowed:
                return await _respond(send, 429, _denial_body(d, rule.name), [
                    (b"retry-after", str(_retry_after(d)).encode()),
                    (b"ratelimit-policy", ", ".join(policies).encode()),
                    (b"ratelimit", ", ".join(items).encode())])
        if not items:
            return await self.app(scope, receive, send)
        extra = [(b"ratelimit-policy", ", ".join(policies).encode()),
                 (b"ratelimit", ", ".join(items).encode())]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
