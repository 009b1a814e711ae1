"""Fixtures for the tests of the Python module: a real redis-server on 127.0.0.1."""

import shutil
import socket
import subprocess
import time

import pytest


def free_port() -> int:
    """Returns a port that was free on 127.0.0.1 a moment ago (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_port(tmp_path):
    """Starts a redis-server of its own for one test; yields its port, stops it by pid."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    for _ in range(5):  # the port may be taken between the pick and Redis's bind
        port = free_port()
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            if answers_ping(port):
                break
            time.sleep(0.02)
        if proc.poll() is None and answers_ping(port):
            break
        proc.kill()
        proc.wait(timeout=10)
    else:
        pytest.fail("redis-server did not start")
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
