"""TLS on `sluice serve`'s listeners, asked by real TLS clients: curl and Python's ssl
module (OpenSSL) over HTTPS, python3-grpcio over gRPC with TLS, against the sluice binary
($SLUICE_CLI). Certificates are made per test run by the openssl command: a CA, a server
certificate for 127.0.0.1 and a client certificate, both signed by the CA."""

import http.client
import json
import os
import ssl
import subprocess
import textwrap

import grpc
import pytest

from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

POLICIES = textwrap.dedent("""\
    log: {level: warn}
    policies:
      chat: {limit: 3/1m}
    """)
EDGE = textwrap.dedent("""\
    domain: edge
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 2}
    """)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=sluice test CA", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extra in (("server", ["-extfile", "san.ext"]), ("client", []), ("stranger", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        if name == "stranger":  # self-signed: no CA the server trusts
            openssl("x509", "-req", "-in", "stranger.csr", "-signkey", "stranger.key", "-out",
                    "stranger.crt", "-days", "2", cwd=d)
        else:
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                    "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", *extra, cwd=d)
    return d


@pytest.fixture
def serve(tmp_path, certs):
    """Returns a function starting `sluice serve` with TLS (extra flags after); returns the
    HTTP and gRPC ports. Stops every server by its pid afterwards."""
    procs = []

    def start(*flags):
        (tmp_path / "envoy").mkdir(exist_ok=True)
        (tmp_path / "envoy" / "edge.yaml").write_text(EDGE)
        (tmp_path / "sluice.yaml").write_text(POLICIES)
        proc = subprocess.Popen(
            [os.environ["SLUICE_CLI"], "serve", "--config", str(tmp_path / "sluice.yaml"),
             "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--envoy-config",
             str(tmp_path / "envoy"), "--tls-cert", str(certs / "server.crt"), "--tls-key",
             str(certs / "server.key"), *flags],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        ports = {}
        for _ in range(2):
            line = proc.stdout.readline()
            kind = "grpc" if line.startswith("sluice grpc listening on ") else "http"
            ports[kind] = int(line.rsplit(":", 1)[-1])
        assert set(ports) == {"http", "grpc"}, "sluice serve did not print both addresses"
        return ports["http"], ports["grpc"]

    yield start
    for proc in procs:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def curl(port, *args):
    """POSTs an acquire of chat/u over HTTPS with curl; returns (exit status, body)."""
    done = subprocess.run(
        ["curl", "-s", "--max-time", "10", *args, "-H", "Content-Type: application/json",
         "-d", '{"key":"u","policy":"chat"}', f"https://127.0.0.1:{port}/v1/acquire"],
        capture_output=True, text=True)
    return done.returncode, done.stdout


def test_https_decides_and_keeps_connections_alive(serve, certs):
    http_port, _ = serve()
    code, body = curl(http_port, "--cacert", str(certs / "ca.crt"))
    assert code == 0 and json.loads(body)["remaining"] == 2
    # Python's own TLS client, two requests on one connection.
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    conn = http.client.HTTPSConnection("127.0.0.1", http_port, context=context, timeout=10)
    for remaining in (1, 0):
        conn.request("POST", "/v1/acquire", body='{"key":"u","policy":"chat"}',
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["remaining"] == remaining
    assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    conn.request("POST", "/v1/acquire", body='{"key":"u","policy":"chat"}',
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Retry-After")
    assert json.loads(response.read())["allowed"] is False
    conn.close()


def test_https_refuses_what_is_not_tls_or_not_trusted(serve, certs):
    http_port, _ = serve()
    code, _ = curl(http_port)  # the CA is not in curl's store: the server is not trusted
    assert code == 60
    plain = subprocess.run(["curl", "-s", "--max-time", "10", f"http://127.0.0.1:{http_port}/healthz"],
                           capture_output=True, text=True)
    assert plain.returncode != 0 and plain.stdout == ""  # plain HTTP gets no answer
    code, body = curl(http_port, "--cacert", str(certs / "ca.crt"), "--tls-max", "1.1")
    assert code != 0 and body == ""  # TLS 1.2 at least
    # Still serving after all that, and nothing was spent by the refused requests.
    code, body = curl(http_port, "--cacert", str(certs / "ca.crt"))
    assert code == 0 and json.loads(body)["remaining"] == 2


def test_client_certificates(serve, certs):
    http_port, grpc_port = serve("--tls-client-ca", str(certs / "ca.crt"))
    ca = ["--cacert", str(certs / "ca.crt")]
    assert curl(http_port, *ca)[0] != 0  # no certificate
    stranger = ["--cert", str(certs / "stranger.crt"), "--key", str(certs / "stranger.key")]
    assert curl(http_port, *ca, *stranger)[0] != 0  # one the CA did not sign
    client = ["--cert", str(certs / "client.crt"), "--key", str(certs / "client.key")]
    code, body = curl(http_port, *ca, *client)
    assert code == 0 and json.loads(body)["remaining"] == 2

    root = (certs / "ca.crt").read_bytes()
    anonymous = grpc.secure_channel(f"127.0.0.1:{grpc_port}", grpc.ssl_channel_credentials(root))
    with pytest.raises(grpc.RpcError) as refused:
        ask(anonymous)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    creds = grpc.ssl_channel_credentials(root, (certs / "client.key").read_bytes(),
                                         (certs / "client.crt").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{grpc_port}", creds) as channel:
        assert ask(channel).overall_code == rls_pb2.RateLimitResponse.OK


def ask(channel):
    request = rls_pb2.RateLimitRequest(domain="edge")
    request.descriptors.add().entries.add(key="user", value="u")
    return rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request, timeout=10)


def bench(grpc_port, *tls):
    """Runs `sluice bench --grpc` (the project's own gRPC client) briefly; returns its JSON."""
    done = subprocess.run(
        [os.environ["SLUICE_CLI"], "bench", "--grpc", f"127.0.0.1:{grpc_port}", "--domain", "edge",
         "--seconds", "0.3", "--inflight", "4", "--keys", "5", *tls],
        capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout)


def test_the_bench_client_over_tls(serve, certs):
    _, grpc_port = serve("--tls-client-ca", str(certs / "ca.crt"))
    code, report = bench(grpc_port, "--tls-ca", str(certs / "ca.crt"), "--tls-cert",
                         str(certs / "client.crt"), "--tls-key", str(certs / "client.key"))
    assert code == 0 and report["tls"] is True
    assert report["allowed"] == 5 * 2  # the edge domain's 2 per minute on each of 5 users
    assert report["decisions"] > report["allowed"]
    code, report = bench(grpc_port, "--tls-ca", str(certs / "ca.crt"))  # no certificate
    assert code == 2 and "error" in report


def test_grpc_over_tls(serve, certs):
    _, grpc_port = serve()
    creds = grpc.ssl_channel_credentials((certs / "ca.crt").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{grpc_port}", creds) as channel:
        codes = [ask(channel).overall_code for _ in range(3)]
    assert codes == [rls_pb2.RateLimitResponse.OK] * 2 + [rls_pb2.RateLimitResponse.OVER_LIMIT]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as plain:
        with pytest.raises(grpc.RpcError) as refused:
            ask(plain)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("flags, problem", [
    (["--tls-key", "server.crt"], "tls.key"),            # a certificate where the key belongs
    (["--tls-key", "client.key"], "mismatch"),           # another certificate's key
])
def test_bad_tls_files_are_refused_at_start(tmp_path, certs, flags, problem):
    (tmp_path / "sluice.yaml").write_text(POLICIES)
    args = [os.environ["SLUICE_CLI"], "serve", "--config", str(tmp_path / "sluice.yaml"),
            "--listen", "127.0.0.1:0", "--tls-cert", str(certs / "server.crt")]
    args += [flags[0], str(certs / flags[1])]
    done = subprocess.run(args, capture_output=True, text=True, timeout=20)
    assert done.returncode != 0
    assert problem in done.stderr, done.stderr
