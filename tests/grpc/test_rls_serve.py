"""`sluice serve` as Envoy's rate limit service, asked by a real gRPC client: python3-grpcio
with the stubs generated from proto/ at build time ($PYTHONPATH), against the sluice binary
($SLUICE_CLI) on the memory store and on a real redis-server (conftest.redis_port)."""

import concurrent.futures
import os
import subprocess
import textwrap

import grpc
import pytest

from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

EDGE = textwrap.dedent("""\
    domain: edge
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 100, name: per_user}
      - key: remote_address
        rate_limit: {unit: minute, requests_per_unit: 150, name: per_ip}
    """)


@pytest.fixture
def serve(tmp_path):
    """Returns a function starting `sluice serve` on a store; stops it by pid afterwards."""
    procs = []

    def start(store="memory://"):
        (tmp_path / "envoy").mkdir(exist_ok=True)
        (tmp_path / "envoy" / "edge.yaml").write_text(EDGE)
        proc = subprocess.Popen(
            [os.environ["SLUICE_CLI"], "serve", "--listen", "127.0.0.1:0", "--grpc-listen",
             "127.0.0.1:0", "--envoy-config", str(tmp_path / "envoy"), "--store", store],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        address = None
        for _ in range(2):
            line = proc.stdout.readline()
            if line.startswith("sluice grpc listening on "):
                address = line.split()[-1]
        assert address, "sluice serve did not print its gRPC address"
        channel = grpc.insecure_channel(address)
        return rls_pb2_grpc.RateLimitServiceStub(channel), channel

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)


def ask(stub, descriptors, hits=0):
    request = rls_pb2.RateLimitRequest(domain="edge", hits_addend=hits)
    for entries in descriptors:
        d = request.descriptors.add()
        for key, value in entries:
            d.entries.add(key=key, value=value)
    return stub.ShouldRateLimit(request, timeout=10)


def race(stub):
    """1,000 requests from 16 threads under (per-user 100/min AND per-IP 150/min) over 10
    users sharing 2 addresses: each limit admits exactly what it may, all or nothing."""
    def one(i):
        u = i % 10
        r = ask(stub, [[("user", f"u{u}")], [("remote_address", f"10.0.0.{u % 2}")]])
        return u, r.overall_code == rls_pb2.RateLimitResponse.OK

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(1000)))
    by_user = [sum(ok for u, ok in results if u == n) for n in range(10)]
    by_ip = [sum(by_user[n] for n in range(10) if n % 2 == ip) for ip in (0, 1)]
    assert by_ip == [150, 150]
    for n in range(10):
        check = rls_pb2.RateLimitRequest(domain="edge")
        d = check.descriptors.add()
        d.entries.add(key="user", value=f"u{n}")
        d.hits_addend.value = 0  # only look
        left = stub.ShouldRateLimit(check, timeout=10).statuses[0].limit_remaining
        assert left == 100 - by_user[n]  # denied requests spent nothing


def test_a_window_and_its_statuses(serve):
    """Verifies statuses, current_limit and header fields over a window."""
    stub, _ = serve()
    r = ask(stub, [[("user", "a")]], hits=99)
    assert r.overall_code == rls_pb2.RateLimitResponse.OK
    assert r.statuses[0].current_limit.name == "per_user"
    assert r.statuses[0].current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.MINUTE
    assert r.statuses[0].limit_remaining == 1
    headers = {h.key: h.value for h in r.response_headers_to_add}
    assert headers["RateLimit-Policy"] == '"per_user";q=100;w=60'
    over = ask(stub, [[("user", "a")]], hits=2)
    assert over.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    assert "Retry-After" in {h.key for h in over.response_headers_to_add}
    unknown = ask(stub, [[("colour", "red")]])
    assert unknown.overall_code == rls_pb2.RateLimitResponse.OK
    assert not unknown.statuses[0].HasField("current_limit")


def test_all_or_nothing_on_memory(serve):
    """Verifies the racing requests on the memory store."""
    stub, _ = serve()
    race(stub)


def test_all_or_nothing_on_redis(serve, redis_port):
    """Verifies the racing requests on a real Redis, one script per request."""
    stub, _ = serve(f"redis://127.0.0.1:{redis_port}?timeout=2s")
    race(stub)
