"""The prediction lane inside the HTTP protocol, on raw sockets: pipelining, 100-continue, chunked
bodies, oversized bodies, and management requests on the same connection."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from tests.e2e.test_deployments import Deployed, typed

LIMIT_S = 3  # the slow-client limits of this module's server (20 s and 30 s by default)


@pytest.fixture(scope="module")
def live(offline_server_module, tmp_path_factory):
    d = Deployed(offline_server_module.start(), tmp_path_factory.mktemp("lane"))
    d.model("m")
    d.deploy("m", d.build("m", {"predict.py": typed(1.0)}), replicas=2)
    return d


@pytest.fixture(scope="module")
def offline_server_module(tmp_path_factory, wheel_links):
    from tests.conftest import Server, free_port, server_env

    data = tmp_path_factory.mktemp("lane-data") / "data"
    srv = Server(data_dir=data, port=free_port(), env=server_env(data))
    srv.env.update(
        {
            "MODELPORT_FIND_LINKS": str(wheel_links),
            "MODELPORT_NO_INDEX": "1",
            "MODELPORT_HEADER_TIMEOUT_S": str(LIMIT_S),
            "MODELPORT_BODY_IDLE_S": str(LIMIT_S),
        }
    )
    yield srv
    srv.stop()


def request(live, body: bytes, *, extra: str = "", path: str = "/models/m/predict") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {live.keys['m']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    data, out = b"", []
    sock.settimeout(10)
    while len(out) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        while True:
            head, sep, rest = data.partition(b"\r\n\r\n")
            if not sep:
                break
            status = int(head.split(b" ", 2)[1])
            if status == 100:
                data = rest
                out.append((100, b""))
                continue
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            if len(rest) < length:
                break
            out.append((status, rest[:length]))
            data = rest[length:]
    return out


def connect(live) -> socket.socket:
    return socket.create_connection(("127.0.0.1", live.srv.port))


def test_pipelined_predictions_answer_in_order(live):
    with connect(live) as s:
        s.sendall(b"".join(request(live, f'{{"a": {i}}}'.encode()) for i in range(5)))
        answers = read_responses(s, 5)
    assert answers == [(200, f"{i + 1.0}".encode()) for i in range(5)]


def test_prediction_then_management_on_one_connection(live):
    get = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(live) as s:
        s.sendall(request(live, b'{"a": 1}') + get + request(live, b'{"a": 2}'))
        answers = read_responses(s, 3)
    assert [a[0] for a in answers] == [200, 200, 200]
    assert answers[0][1] == b"2.0" and b'"status":"ok"' in answers[1][1] and answers[2][1] == b"3.0"


def test_expect_100_continue(live):
    body = b'{"a": 4}'
    with connect(live) as s:
        s.sendall(
            request(live, b"", extra="Expect: 100-continue\r\n").replace(
                b"Content-Length: 0", f"Content-Length: {len(body)}".encode()
            )
        )
        assert read_responses(s, 1) == [(100, b"")]
        s.sendall(body)
        assert read_responses(s, 1) == [(200, b"5.0")]


def test_chunked_body(live):
    head = (
        f"POST /models/m/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        f"{live.keys['m']}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    with connect(live) as s:
        s.sendall(head + b'4\r\n{"a"\r\n4\r\n: 6}\r\n0\r\n\r\n')
        assert read_responses(s, 1) == [(200, b"7.0")]


def test_too_large_by_content_length_closes(live):
    with connect(live) as s:
        s.sendall(
            f"POST /models/m/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{live.keys['m']}\r\nContent-Length: {6 << 20}\r\n\r\n".encode()
            + b" " * (6 << 20)
        )
        ((status, body),) = read_responses(s, 1)
    assert status == 413 and b"request.too_large" in body


def test_http_1_0_closes_after_the_answer(live):
    with connect(live) as s:
        s.sendall(request(live, b'{"a": 1}').replace(b"HTTP/1.1", b"HTTP/1.0"))
        assert read_responses(s, 1) == [(200, b"2.0")]
        s.settimeout(5)
        assert s.recv(10) == b""


def _trickle_until_closed(sock: socket.socket, first: bytes) -> bool:
    """Send `first`, then a byte a second; True when the server closed the connection."""
    import time

    sock.sendall(first)
    deadline = time.monotonic() + LIMIT_S + 10
    try:
        while time.monotonic() < deadline:
            time.sleep(1.0)
            sock.sendall(b"X")
    except (BrokenPipeError, ConnectionResetError):
        return True
    return False


def test_slow_headers_are_cut_off(live):
    """A client that trickles its headers (slowloris) is disconnected; others are served."""
    with connect(live) as slow:
        slow.sendall(b"POST /models/m/predict HTTP/1.1\r\nHost: x\r\n")
        with connect(live) as other:  # the server keeps serving everyone else meanwhile
            other.sendall(request(live, b'{"a": 1}'))
            assert read_responses(other, 1) == [(200, b"2.0")]
        assert _trickle_until_closed(slow, b"X-Slow: ")


def test_a_stalled_body_is_cut_off(live):
    with connect(live) as slow:
        head = request(live, b"", extra="").replace(b"Content-Length: 0", b"Content-Length: 100")
        slow.sendall(head + b'{"a": ')
        slow.settimeout(LIMIT_S + 10)
        assert slow.recv(100) == b""  # closed, nothing answered


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_busy_polling_stops_when_the_traffic_does(live):
    """Back-to-back predictions make the server and the replicas poll between messages; once the
    traffic stops, neither keeps a CPU busy."""
    replicas = live.c.get("/api/v1/models/m/replicas").json()["items"]
    pids = [live.srv.proc.pid] + [r["pid"] for r in replicas]
    with socket.create_connection(("127.0.0.1", live.srv.port)) as sock:
        for _ in range(300):
            sock.sendall(request(live, b'{"a": 1, "b": 2}'))
            assert read_responses(sock, 1)[0][0] == 200
    time.sleep(0.2)
    before = sum(cpu_seconds(p) for p in pids)
    time.sleep(1.0)
    used = sum(cpu_seconds(p) for p in pids) - before
    assert used < 0.15, f"{used:.2f} CPU seconds in one idle second"


def test_an_idle_keep_alive_connection_is_closed_after_a_prediction(live):
    """No timer per request: the once-a-second sweep closes a connection left idle for the
    keep-alive timeout (5 s) after its last answer."""
    with socket.create_connection(("127.0.0.1", live.srv.port)) as sock:
        sock.sendall(request(live, b'{"a": 1, "b": 2}'))
        assert read_responses(sock, 1)[0][0] == 200
        started = time.monotonic()
        sock.settimeout(15)
        assert sock.recv(1) == b""  # closed by the server
        assert 4 < time.monotonic() - started < 12
