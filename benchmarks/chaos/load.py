"""The soak's load: paced keep-alive HTTP/1.1 connections to `sluice serve`, and a share of
gRPC channels asking its rate limit service (ShouldRateLimit), every request recorded.

Each worker thread owns one connection (a raw socket: http.client hides when a connection
was refused versus reset) and sends at rate/workers requests a second on a fixed schedule;
when it falls behind by more than a second it drops the missed slots rather than bursting.
A request's record holds its wall-clock send and receive times (time.time_ns(), the clock
Redis's TIME reads on this machine) and exactly one outcome: an HTTP status and body, or a
transport error. Records are only appended by their worker; read them after join().

A gRPC worker (python3-grpcio and the stubs the build generates in <build>/python_grpc, on
sys.path before GrpcClient is made) sends acquires only: one descriptor `key: <policy>,
value: <key>` per call in domain GRPC_DOMAIN, hits_addend = cost, a 5 s deadline, no wait
for a ready channel. Its record reads like an HTTP acquire's: status 200 for a call that
returned, allowed = overall_code OK, remaining = statuses[0].limit_remaining, and a gRPC
error as the transport error "grpc <CODE>" (deadline exceeded: "timeout"). After an error
the channel is closed and the next call opens a new one, as an HTTP worker reconnects;
channels retry a failed connection after 100-500 ms (GRPC_OPTIONS).
"""

import json
import socket
import threading
import time

# Record fields, in order (records are tuples to keep 100k+ of them cheap).
FIELDS = ("worker", "op", "policy", "key", "cost", "send_ns", "recv_ns", "status",
          "allowed", "remaining", "fallback", "error")

ADMIN_TOKEN = "chaos-admin-token"
GRPC_DOMAIN = "chaos"
# Reconnect after 100-500 ms rather than gRPC's default 1 s and more: a channel that tried
# while `sluice serve` restarted would otherwise hold its next call for about a second.
GRPC_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 500)]
SOCKET_TIMEOUT = 5.0  # an answer later than this is recorded as "timeout" (no answer)


class Workload:
    """The keys and the mix: which key, policy, operation and cost each request has.

    Keys are split evenly over the policies; a few per policy are hot (half the traffic goes
    to them, far over their limits). 2% of requests are peeks, 0.3% resets (mostly of hot
    keys), the rest acquires of cost 1, or 2 to 4 one time in ten."""

    def __init__(self, policies, keys, rng):
        self.policies = policies  # [(name, count)]
        self.keys = []
        self.hot = []
        per = max(1, keys // len(policies))
        for name, count in policies:
            ks = [(name, "k%d" % i, count) for i in range(per)]
            self.keys.extend(ks)
            self.hot.extend(ks[:4])
        self.rng = rng

    def next(self, rng, acquires_only=False):
        r = rng.random()
        if acquires_only and r < 0.023:
            r = 1.0
        k = rng.choice(self.hot) if rng.random() < 0.5 else rng.choice(self.keys)
        if r < 0.003:
            if rng.random() < 0.7:
                k = rng.choice(self.hot)
            return "reset", k[0], k[1], 0
        if r < 0.023:
            return "peek", k[0], k[1], 1
        cost = 1 if rng.random() < 0.9 else rng.randint(2, min(4, k[2]))
        return "acquire", k[0], k[1], cost


class Connection:
    def __init__(self, port):
        self.port = port
        self.sock = None
        self.buf = b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.buf = b""

    def request(self, raw):
        """Sends `raw`; returns (status, headers, body). Raises OSError on a transport
        problem and ProtocolError when the server sent bytes nobody asked for."""
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port),
                                                 timeout=SOCKET_TIMEOUT)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        elif self.buf:
            raise ProtocolError("%d unsolicited bytes before a request" % len(self.buf))
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        while len(rest) < length:
            self.buf = rest
            self._fill()
            rest = self.buf
        body, self.buf = rest[:length], rest[length:]
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, headers, body

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server before an answer")
        self.buf += chunk


class ProtocolError(Exception):
    pass


def _raw(op, policy, key, cost, port):
    host = b"Host: 127.0.0.1:%d\r\n" % port
    if op == "reset":
        return (b"DELETE /v1/keys/%s/%s HTTP/1.1\r\n" % (policy.encode(), key.encode()) + host +
                b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n\r\n")
    body = json.dumps({"key": key, "policy": policy, "cost": cost}).encode()
    return (b"POST /v1/%s HTTP/1.1\r\n" % op.encode() + host +
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def _error_name(e):
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, ProtocolError):
        return "protocol: " + str(e)
    if isinstance(e, ConnectionError) and "before an answer" in str(e):
        return "eof"
    return "error: %s" % e.__class__.__name__


class GrpcClient:
    """One gRPC channel to the rate limit service; ask() returns a record's tail."""

    def __init__(self, port):
        import grpc
        from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
        self.grpc = grpc
        self.rls_pb2 = rls_pb2
        self.stub_class = rls_pb2_grpc.RateLimitServiceStub
        self.target = "127.0.0.1:%d" % port
        self.channel = None
        self.stub = None

    def close(self):
        if self.channel is not None:
            self.channel.close()
        self.channel = self.stub = None

    def ask(self, policy, key, cost):
        """Returns (status, allowed, remaining, fallback, error)."""
        if self.channel is None:
            self.channel = self.grpc.insecure_channel(self.target, options=GRPC_OPTIONS)
            self.stub = self.stub_class(self.channel)
        request = self.rls_pb2.RateLimitRequest(domain=GRPC_DOMAIN, hits_addend=cost)
        request.descriptors.add().entries.add(key=policy, value=key)
        try:
            r = self.stub.ShouldRateLimit(request, timeout=SOCKET_TIMEOUT)
        except self.grpc.RpcError as e:
            self.close()
            code = e.code() if hasattr(e, "code") else None
            if code == self.grpc.StatusCode.DEADLINE_EXCEEDED:
                return 0, None, None, None, "timeout"
            return 0, None, None, None, "grpc %s" % (code.name if code is not None else "?")
        remaining = r.statuses[0].limit_remaining if len(r.statuses) else None
        return (200, r.overall_code == self.rls_pb2.RateLimitResponse.OK, remaining, None,
                None)


class LoadGenerator:
    """`workers` threads: the first workers - grpc_workers speak HTTP, the others gRPC (with
    grpc_workload, on grpc_port)."""

    def __init__(self, port, workload, rate, workers, seed, grpc_workers=0, grpc_port=None,
                 grpc_workload=None):
        self.port = port
        self.workload = workload
        self.interval = workers / float(rate)
        self.workers = workers
        self.grpc_workers = grpc_workers
        self.grpc_port = grpc_port
        self.grpc_workload = grpc_workload
        self.seed = seed
        self.records = [[] for _ in range(workers)]
        self.stop_event = threading.Event()
        self.threads = []

    def start(self):
        import random
        for w in range(self.workers):
            t = threading.Thread(target=self._run, args=(w, random.Random(self.seed * 1000 + w)),
                                 daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join()

    def _paced(self, rng):
        """Yields at each of this worker's send times, until stopped: one every interval from a
        random start; a worker more than a second behind drops the slots it missed."""
        next_at = time.monotonic() + rng.random() * self.interval
        while not self.stop_event.is_set():
            now = time.monotonic()
            if next_at > now:
                time.sleep(next_at - now)
            elif now - next_at > 1.0:
                next_at = now
            next_at += self.interval
            yield

    def _run(self, w, rng):
        if w >= self.workers - self.grpc_workers:
            return self._run_grpc(w, rng)
        out = self.records[w]
        conn = Connection(self.port)
        for _ in self._paced(rng):
            op, policy, key, cost = self.workload.next(rng)
            raw = _raw(op, policy, key, cost, self.port)
            send = time.time_ns()
            try:
                status, _headers, body = conn.request(raw)
            except (OSError, ProtocolError, ValueError, IndexError) as e:
                recv = time.time_ns()
                conn.close()
                out.append((w, op, policy, key, cost, send, recv, 0, None, None, None,
                            _error_name(e)))
                continue
            recv = time.time_ns()
            allowed = remaining = fallback = None
            if body and op != "reset":
                try:
                    d = json.loads(body)
                    allowed = d.get("allowed")
                    remaining = d.get("remaining")
                    fallback = d.get("fallback")
                except ValueError:
                    pass
            out.append((w, op, policy, key, cost, send, recv, status, allowed, remaining,
                        fallback, None))
        conn.close()

    def _run_grpc(self, w, rng):
        out = self.records[w]
        client = GrpcClient(self.grpc_port)
        for _ in self._paced(rng):
            op, policy, key, cost = self.grpc_workload.next(rng, acquires_only=True)
            send = time.time_ns()
            status, allowed, remaining, fallback, error = client.ask(policy, key, cost)
            out.append((w, op, policy, key, cost, send, time.time_ns(), status, allowed,
                        remaining, fallback, error))
        client.close()

    def all_records(self):
        rows = [r for per in self.records for r in per]
        rows.sort(key=lambda r: r[5])
        return rows
