"""sluice.asgi: the rate-limit middleware in process (httpx over ASGI), end to end (uvicorn on a
loopback port, a real httpx client), and the FastAPI example. Memory store only."""

import asyncio
import importlib.util
import json
import logging
import pathlib
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import sluice
from sluice.asgi import RateLimitMiddleware, Rule, _sf_string, header, path_param

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "fastapi" / "app.py"


def make_app(limiter, rules, **options):
    """Returns a Starlette app behind the middleware; app.state.calls counts endpoint calls."""

    async def endpoint(request):
        request.app.state.calls += 1
        return JSONResponse({"path_params": request.path_params})

    app = Starlette(routes=[
        Route("/", endpoint, methods=["GET", "POST"]),
        Route("/users/{user_id}/messages", endpoint, methods=["GET", "POST"]),
    ])
    app.state.calls = 0
    app.add_middleware(RateLimitMiddleware, limiter=limiter, rules=rules, **options)
    return app


def send(app, requests, client=("127.0.0.1", 50000)):
    """Returns the responses to `requests`, (method, path[, headers]) sent one after another."""

    async def main():
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return [await c.request(r[0], r[1], headers=r[2] if len(r) > 2 else None)
                    for r in requests]

    return asyncio.run(main())


def limit_headers(response):
    """Returns (RateLimit-Policy, RateLimit, Retry-After) of `response`, None where absent."""
    h = response.headers
    return h.get("ratelimit-policy"), h.get("ratelimit"), h.get("retry-after")


class FakeLimiter:
    """A limiter whose acquire_async answers `decision` (or raises it, an exception)."""

    def __init__(self, decision):
        self.decision = decision

    def limit(self, policy):
        return (2, 60.0)

    async def acquire_async(self, policy, key, cost=1):
        if isinstance(self.decision, Exception):
            raise self.decision
        return self.decision


def test_global_rule_admits_the_limit_then_answers_429_with_exact_headers():
    """Verifies a global rule admits exactly its limit, then 429s with exact fields and body."""
    app = make_app(sluice.Limiter(policies={"chat": "2/1h"}), [Rule("chat")])
    responses = send(app, [("GET", "/")] * 4)
    assert [r.status_code for r in responses] == [200, 200, 429, 429]
    assert app.state.calls == 2
    assert limit_headers(responses[0]) == ('"chat";q=2;w=3600', '"chat";r=1;t=3600', None)
    assert limit_headers(responses[1]) == ('"chat";q=2;w=3600', '"chat";r=0;t=3600', None)
    for denied in responses[2:]:
        assert limit_headers(denied) == ('"chat";q=2;w=3600', '"chat";r=0;t=3600', "3600")
        assert denied.headers["content-type"] == "application/json"
        body = denied.json()
        assert 3_590_000 < body.pop("retry_after_ms") <= 3_600_000
        assert 3_590_000 < body.pop("reset_after_ms") <= 3_600_000
        assert body == {"allowed": False, "limit": 2, "remaining": 0, "policy": "chat"}


def test_client_addresses_are_separate_keys():
    """Verifies the default key, the client address, gives each client its own limit."""
    app = make_app(sluice.Limiter(policies={"p": "1/1h"}), [Rule("p")])
    a = send(app, [("GET", "/")] * 2, client=("10.0.0.1", 1))
    b = send(app, [("GET", "/")] * 2, client=("10.0.0.2", 1))
    assert [r.status_code for r in a + b] == [200, 429, 200, 429]


def test_header_key_falls_back_to_the_client_address():
    """Verifies header() keys by the value, and a missing or empty header by the client address."""
    key = header("X-API-Key")
    app = make_app(sluice.Limiter(policies={"p": "1/1h"}), [Rule("p", key=key)])
    responses = send(app, [
        ("GET", "/", {"X-API-Key": "alpha"}),
        ("GET", "/", {"x-api-key": "alpha"}),
        ("GET", "/", {"X-API-Key": "beta"}),
        ("GET", "/", {"X-API-Key": "127.0.0.1"}),  # not the address's key
        ("GET", "/"),                               # the address's key
        ("GET", "/", {"X-API-Key": ""}),            # empty: the address again
    ])
    assert [r.status_code for r in responses] == [200, 429, 200, 200, 200, 429]
    assert key({"headers": [(b"x-api-key", b"k1"), (b"x-api-key", b"k2")]}) == "header:x-api-key:k1"
    assert key({"headers": [], "client": None}) == "client:unknown"


def test_header_key_without_fallback_skips_the_rule():
    """Verifies header(name, fallback=None) leaves requests without the header unlimited."""
    app = make_app(sluice.Limiter(policies={"p": "1/1h"}),
                   [Rule("p", key=header("X-API-Key", fallback=None))])
    responses = send(app, [("GET", "/")] * 3 + [("GET", "/", {"X-API-Key": "k"})] * 2)
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 429]
    assert limit_headers(responses[0]) == (None, None, None)
    assert limit_headers(responses[3]) == ('"p";q=1;w=3600', '"p";r=0;t=3600', None)


def test_path_rule_matches_its_pattern_and_methods_only():
    """Verifies a path rule applies to its pattern and methods only, keyed by the path parameter."""
    rule = Rule("1/1h", path="/users/{user_id}/messages", methods=["post"],
                key=path_param("user_id"))
    app = make_app(sluice.Limiter(), [rule])
    responses = send(app, [
        ("POST", "/users/1/messages"),
        ("POST", "/users/1/messages"),
        ("POST", "/users/2/messages"),
        ("GET", "/users/1/messages"),        # another method
        ("POST", "/users/1/messages/x"),     # another path
        ("POST", "/"),
    ])
    assert [r.status_code for r in responses] == [200, 429, 200, 200, 404, 200]
    assert limit_headers(responses[0]) == ('"1/1h";q=1;w=3600', '"1/1h";r=0;t=3600', None)
    assert limit_headers(responses[1]) == ('"1/1h";q=1;w=3600', '"1/1h";r=0;t=3600', "3600")
    assert responses[2].json() == {"path_params": {"user_id": "2"}}
    assert [limit_headers(r) for r in responses[3:]] == [(None, None, None)] * 3


def test_a_denial_keeps_the_earlier_rules_charged():
    """Verifies the fields list the rules in order; a later denial leaves earlier ones charged."""
    limiter = sluice.Limiter(policies={"global": "5/1h", "strict": "1/1h"})
    app = make_app(limiter, [Rule("global"), Rule("strict", path="/users/{user_id}/messages")])
    responses = send(app, [("POST", "/users/7/messages")] * 2 + [("GET", "/")])
    assert [r.status_code for r in responses] == [200, 429, 200]
    both = '"global";q=5;w=3600, "strict";q=1;w=3600'
    assert limit_headers(responses[0]) == (both, '"global";r=4;t=3600, "strict";r=0;t=3600', None)
    assert limit_headers(responses[1]) == (
        both, '"global";r=3;t=3600, "strict";r=0;t=3600', "3600")
    assert responses[1].json()["policy"] == "strict"
    assert limit_headers(responses[2]) == ('"global";q=5;w=3600', '"global";r=2;t=3600', None)


def test_a_denial_skips_the_later_rules():
    """Verifies the rules after a denying one are neither evaluated nor charged."""
    limiter = sluice.Limiter(policies={"global": "1/1h", "strict": "5/1h"})
    app = make_app(limiter, [Rule("global"), Rule("strict", path="/users/{user_id}/messages")])
    responses = send(app, [("POST", "/users/7/messages")] * 3)
    assert [r.status_code for r in responses] == [200, 429, 429]
    assert limit_headers(responses[2]) == ('"global";q=1;w=3600', '"global";r=0;t=3600', "3600")
    assert limiter.peek("strict", "client:127.0.0.1").remaining == 4


def test_inline_limits_are_named_by_their_canonical_form():
    """Verifies inline limits are named by canonical form, w rounded up, each its own counter."""
    rules = [Rule("3/1500ms"), Rule((5, 90)), Rule("30/hour"), Rule((10, 60.0)), Rule("2/1d")]
    [response] = send(make_app(sluice.Limiter(), rules), [("GET", "/")])
    assert response.headers["ratelimit-policy"] == (
        '"3/1500ms";q=3;w=2, "5/90s";q=5;w=90, "30/1h";q=30;w=3600, "10/1m";q=10;w=60, '
        '"2/1d";q=2;w=86400')
    assert response.headers["ratelimit"] == (
        '"3/1500ms";r=2;t=2, "5/90s";r=4;t=90, "30/1h";r=29;t=3600, "10/1m";r=9;t=60, '
        '"2/1d";r=1;t=86400')


def test_sf_string_escapes_as_the_server():
    """Verifies names become structured-field Strings as in headers.cc: escapes, ? per odd byte."""
    assert _sf_string("chat") == '"chat"'
    assert _sf_string('a"b\\c') == '"a\\"b\\\\c"'
    assert _sf_string("é\t~ ") == '"???~ "'


def test_cost_is_an_int_or_a_function_of_the_scope():
    """Verifies a rule's cost, fixed or computed, is what the request spends."""
    def cost(scope):
        return int(dict(scope["headers"]).get(b"x-cost", b"1"))

    app = make_app(sluice.Limiter(policies={"a": "10/1h", "b": "10/1h"}),
                   [Rule("a", cost=4), Rule("b", path="/users/{user_id}/messages", cost=cost)])
    responses = send(app, [
        ("GET", "/"),
        ("POST", "/users/1/messages", {"X-Cost": "7"}),
        ("POST", "/users/1/messages", {"X-Cost": "4"}),
    ])
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[1].headers["ratelimit"] == '"a";r=2;t=3600, "b";r=3;t=3600'
    assert responses[2].headers["ratelimit"] == '"a";r=2;t=3600'  # a denied its 4


def test_shadow_middleware_never_denies_and_logs(caplog):
    """Verifies shadow=True answers 200 with the fields, no Retry-After; logs each would-be 429."""
    app = make_app(sluice.Limiter(policies={"p": "1/1h"}), [Rule("p")], shadow=True)
    with caplog.at_level(logging.INFO, logger="sluice.asgi"):
        responses = send(app, [("GET", "/")] * 3)
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert app.state.calls == 3
    assert [limit_headers(r) for r in responses] == [('"p";q=1;w=3600', '"p";r=0;t=3600', None)] * 3
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("sluice.asgi", logging.INFO, "shadow: would deny GET / from 127.0.0.1: policy p, limit 1")
    ] * 2


def test_shadow_rule_and_shadow_policy_only_log(caplog):
    """Verifies a shadow rule and a shadow policy never deny; a normal rule beside them does."""
    limiter = sluice.Limiter(policies={
        "trial": "1/1h", "quiet": {"limit": "1/1h", "shadow": True}, "real": "3/1h"})
    app = make_app(limiter, [Rule("trial", shadow=True), Rule("quiet"), Rule("real")])
    with caplog.at_level(logging.INFO, logger="sluice.asgi"):
        responses = send(app, [("GET", "/")] * 4)
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert limit_headers(responses[3]) == (
        '"trial";q=1;w=3600, "quiet";q=1;w=3600, "real";q=3;w=3600',
        '"trial";r=0;t=3600, "quiet";r=0;t=3600, "real";r=0;t=3600', "3600")
    policies = [r.getMessage().rsplit("policy ", 1)[1] for r in caplog.records]
    assert policies == ["trial, limit 1", "quiet, limit 1"] * 3


def test_failure_mode_decisions_are_followed():
    """Verifies a decision a failure mode made is served as it is: deny is a 429 saying fallback."""
    denied = sluice.Decision(allowed=False, limit=2, remaining=0, retry_after=1.0,
                             reset_after=1.0, fallback="deny")
    [response] = send(make_app(FakeLimiter(denied), [Rule("p")]), [("GET", "/")])
    assert response.status_code == 429
    assert limit_headers(response) == ('"p";q=2;w=60', '"p";r=0;t=2', "2")
    assert response.json() == {"allowed": False, "limit": 2, "remaining": 0, "retry_after_ms": 1000,
                               "reset_after_ms": 1000, "policy": "p", "fallback": "deny"}
    allowed = sluice.Decision(allowed=True, limit=2, remaining=2, fallback="allow")
    [response] = send(make_app(FakeLimiter(allowed), [Rule("p")]), [("GET", "/")])
    assert response.status_code == 200
    assert limit_headers(response) == ('"p";q=2;w=60', '"p";r=2;t=0', None)


def test_store_error_answers_503_or_skips_the_rule():
    """Verifies a StoreError is a bare 503 by default; on_store_error="allow" skips the rule."""
    app = make_app(FakeLimiter(sluice.StoreError("down")), [Rule("p")])
    [response] = send(app, [("GET", "/")])
    assert (response.status_code, response.json()) == (503, {"error": "rate limiter unavailable"})
    assert limit_headers(response) == (None, None, None)
    assert app.state.calls == 0
    app = make_app(FakeLimiter(sluice.StoreError("down")), [Rule("p")], on_store_error="allow")
    [response] = send(app, [("GET", "/")])
    assert (response.status_code, limit_headers(response)) == (200, (None, None, None))
    assert app.state.calls == 1


def test_a_key_the_store_refuses_is_a_400():
    """Verifies an oversized key (a 2000-byte header) is answered 400 with the limiter's message."""
    app = make_app(sluice.Limiter(policies={"p": "5/1m"}), [Rule("p", key=header("X-API-Key"))])
    [response] = send(app, [("GET", "/", {"X-API-Key": "k" * 2000})])
    assert response.status_code == 400  # the store key: "p:header:x-api-key:" and the value
    assert response.json() == {"error": "key is 2019 bytes; the limit is 1024"}
    assert app.state.calls == 0


def test_non_http_scopes_pass_through_untouched():
    """Verifies lifespan and websocket scopes reach the app as they came, with no decision."""
    seen = []

    async def inner(scope, receive, send):
        seen.append((scope, receive, send))

    middleware = RateLimitMiddleware(inner, limiter=sluice.Limiter(), rules=[Rule("1/1h")])
    scopes = [{"type": "lifespan"}, {"type": "websocket", "path": "/", "client": ("1.2.3.4", 1)}]
    receive, send_ = object(), object()
    for scope in scopes * 2:
        asyncio.run(middleware(scope, receive, send_))
    assert [(s is scope, r is receive, w is send_)
            for (s, r, w), scope in zip(seen, scopes * 2)] == [(True, True, True)] * 4


def test_configuration_errors_are_raised_when_built():
    """Verifies unknown policies, bad paths, a path_param the path lacks and bad options raise."""
    limiter = sluice.Limiter(policies={"p": "1/1h"})

    def build(rules, **options):
        return RateLimitMiddleware(None, limiter=limiter, rules=rules, **options)

    with pytest.raises(sluice.UnknownPolicyError):
        build([Rule("nope")])
    with pytest.raises(ValueError):
        build([Rule("1/fortnight")])
    with pytest.raises(ValueError, match="start with /"):
        build([Rule("p", path="users")])
    with pytest.raises(ValueError, match="parameters are"):
        build([Rule("p", path="/users/{user-id}")])
    with pytest.raises(ValueError, match="needs a rule path with {id}"):
        build([Rule("p", path="/users/{user_id}", key=path_param("id"))])
    with pytest.raises(ValueError, match="on_store_error"):
        build([Rule("p")], on_store_error="maybe")


def test_fastapi_app_with_the_middleware():
    """Verifies add_middleware works in FastAPI and its route sees the path parameter."""
    app = FastAPI()
    app.add_middleware(RateLimitMiddleware, limiter=sluice.Limiter(),
                       rules=[Rule("1/1m", path="/items/{item_id}", key=path_param("item_id"))])

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        return {"item_id": item_id}

    responses = send(app, [("GET", "/items/3"), ("GET", "/items/3"), ("GET", "/items/4")])
    assert [r.status_code for r in responses] == [200, 429, 200]
    assert responses[2].json() == {"item_id": 4}
    assert responses[1].headers["ratelimit"] == '"1/1m";r=0;t=60'


def test_the_example_app_answers_429():
    """Verifies examples/fastapi/app.py admits 3 messages to one user, then 429 with its fields."""
    spec = importlib.util.spec_from_file_location("sluice_fastapi_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    responses = send(example.app, [("POST", "/users/42/messages")] * 4 + [("GET", "/")])
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 200]
    assert responses[0].json() == {"user": "42", "sent": True}
    assert limit_headers(responses[3]) == (
        '"per-client";q=60;w=60, "messages";q=3;w=60',
        '"per-client";r=56;t=60, "messages";r=0;t=60', "60")
    assert responses[4].headers["ratelimit"] == '"per-client";r=55;t=60'


@pytest.fixture
def served():
    """Serves make_app's app (a Limiter with "api": "10/1h", one rule) with uvicorn on a
    loopback socket of its own in a thread; yields the base URL, then stops the server."""
    app = make_app(sluice.Limiter(policies={"api": "10/1h"}),
                   [Rule("api", key=header("X-API-Key"))])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive()


def test_end_to_end_over_uvicorn(served):
    """Verifies over real HTTP: 25 concurrent requests on one key admit exactly 10, 429s exact."""
    async def main():
        async with httpx.AsyncClient(base_url=served, headers={"X-API-Key": "k"}) as c:
            return await asyncio.gather(*(c.get("/") for _ in range(25)))

    responses = asyncio.run(main())
    assert sorted(r.status_code for r in responses) == [200] * 10 + [429] * 15
    admitted = sorted(r.headers["ratelimit"] for r in responses if r.status_code == 200)
    assert admitted == [f'"api";r={n};t=3600' for n in range(10)]
    for r in responses:
        assert r.headers["ratelimit-policy"] == '"api";q=10;w=3600'
        if r.status_code == 429:
            assert limit_headers(r)[1:] == ('"api";r=0;t=3600', "3600")
            assert json.loads(r.content)["policy"] == "api"
    with httpx.Client(base_url=served) as c:  # another key: the client address
        other = [c.get("/") for _ in range(11)]
    assert [r.status_code for r in other] == [200] * 10 + [429]
    assert limit_headers(other[-1]) == ('"api";q=10;w=3600', '"api";r=0;t=3600', "3600")
