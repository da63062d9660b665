"""A real worker serving on a TCP port of its node (`--listen-fd`), as a replica placed on another
machine does: only a connection that opens with the replica's secret is served."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from modelport.runtime.protocol import (
    Call,
    Failure,
    Hello,
    Ready,
    Result,
    encode_frame,
    recv_frame,
    send_frame,
)

MODEL = """
import time
print("loading weights", flush=True)

def add(a: float, b: float = 1.0) -> float:
    print(f"adding {a} and {b}", flush=True)
    return a + b

def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
"""


class TcpWorker:
    """A worker process listening on 127.0.0.1:port, its secret given on stdin."""

    def __init__(self, project: Path, entry: str, secret: bytes | None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.secret = secret
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-u",
                "-m",
                "modelport.runtime.worker",
                "--project",
                str(project),
                "--entry",
                entry,
                "--listen-fd",
                str(self.listener.fileno()),
            ],
            pass_fds=[self.listener.fileno()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.listener.close()  # the worker's now
        assert self.proc.stdin is not None
        if secret is not None:
            self.proc.stdin.write(secret + b"\n")
        self.proc.stdin.close()
        self.proc.stdin = None  # (communicate() would flush it)

    def connect(self) -> socket.socket:
        conn = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        return conn

    def open(self, secret: bytes, clock: float | None = None) -> socket.socket:
        conn = self.connect()
        send_frame(conn, Hello(secret, time.monotonic() if clock is None else clock))
        return conn

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(), err.decode()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "model.py").write_text(textwrap.dedent(MODEL))
    return tmp_path


@pytest.fixture
def worker(model_dir):
    made: list[TcpWorker] = []

    def make(entry: str = "model.py:add", secret: bytes | None = None) -> TcpWorker:
        w = TcpWorker(model_dir, entry, secret if secret is not None else _secret())
        made.append(w)
        return w

    yield make
    for w in made:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.communicate(timeout=10)


def _secret() -> bytes:
    return secrets.token_hex(32).encode()


def _closed(conn: socket.socket) -> bool:
    """The worker closed this connection (end of stream, or reset)."""
    conn.settimeout(30)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def test_the_secret_opens_the_connection_and_calls_are_served(worker):
    w = worker()
    with w.open(w.secret) as conn:
        ready = recv_frame(conn)
        assert isinstance(ready, Ready) and ready.pid == w.proc.pid
        send_frame(conn, Call(1, b'{"a": 40, "b": 2}'))
        res = recv_frame(conn)
        assert isinstance(res, Result) and (res.id, res.body) == (1, b"42.0")
    code, out, err = w.finish()
    assert code == 0 and "adding 40.0 and 2.0" in out
    assert w.secret.decode() not in out + err


def test_a_wrong_or_missing_secret_is_refused_and_nothing_runs(worker):
    w = worker()
    wrong = w.open(b"0" * 64)  # wrong secret
    assert _closed(wrong)
    no_hello = w.connect()  # a Call first, no Hello: refused, the call not run
    no_hello.sendall(encode_frame(Call(1, b'{"a": 1}')))
    assert _closed(no_hello)
    garbage = w.connect()
    garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # a huge length prefix: refused from it
    assert _closed(garbage)
    for conn in (wrong, no_hello, garbage):
        conn.close()
    # The worker still waits for the server; nothing was imported or run meanwhile.
    assert w.proc.poll() is None
    with w.open(w.secret) as conn:
        assert isinstance(recv_frame(conn), Ready)
        send_frame(conn, Call(2, b'{"a": 2}'))
        assert recv_frame(conn).body == b"3.0"
        # Once a connection is in, the worker listens no more.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", w.port), timeout=5)
    code, out, err = w.finish()
    assert code == 0
    assert out.count("loading weights") == 1 and "adding 1.0" not in out
    assert err.count("refused a connection") == 3 and "wrong secret" in err
    assert w.secret.decode() not in out + err


def test_the_secret_is_neither_in_argv_nor_in_the_environment(worker):
    w = worker()
    with w.open(w.secret) as conn:
        assert isinstance(recv_frame(conn), Ready)
        cmdline = Path(f"/proc/{w.proc.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{w.proc.pid}/environ").read_bytes()
        assert w.secret not in cmdline and w.secret not in environ
    w.finish()


def test_no_secret_on_stdin_exits_4(model_dir):
    w = TcpWorker(model_dir, "model.py:add", None)
    code, out, err = w.finish()
    assert code == 4 and "no secret" in err and "loading weights" not in out


def test_start_by_is_read_in_the_servers_clock(worker):
    """The server's time.monotonic() need not be the replica's (another machine): the Hello's
    clock moves each Call's start_by into the replica's."""
    w = worker("model.py:slow")
    server_clock = time.monotonic() - 5000.0  # a server whose clock is 5000 s behind
    with w.open(w.secret, clock=server_clock) as conn:
        assert isinstance(recv_frame(conn), Ready)
        elapsed = time.monotonic() - (server_clock + 5000.0)
        now_there = server_clock + elapsed
        # Still in time in the server's clock (long past in the replica's, read raw): it runs.
        send_frame(conn, Call(1, b'{"seconds": 0}', start_by=now_there + 600))
        res = recv_frame(conn)
        assert isinstance(res, Result), res
        # Past in the server's clock: answered 429, not run. A minute past, not a second: the
        # worker takes the Hello's clock as of when it reads it, which on a loaded machine can be
        # seconds after the clock was read here (the worker still starting).
        send_frame(conn, Call(2, b'{"seconds": 0}', start_by=now_there - 60))
        res = recv_frame(conn)
        assert isinstance(res, Failure) and (res.status, res.code) == (429, "model.busy")
    assert w.finish()[0] == 0


def test_the_worker_is_killed_when_its_launcher_goes(model_dir):
    """A replica's launcher (a Ray actor) dying takes the worker with it: PR_SET_PDEATHSIG."""
    secret = _secret()
    listener = socket.create_server(("127.0.0.1", 0))
    script = textwrap.dedent(
        f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-m", "modelport.runtime.worker",
            "--project", {str(model_dir)!r}, "--entry", "model.py:add",
            "--listen-fd", "{listener.fileno()}"], pass_fds=[{listener.fileno()}],
            stdin=subprocess.PIPE)
        p.stdin.write({secret!r} + b"\\n"); p.stdin.close()
        print(p.pid, flush=True)
        time.sleep(600)
        """
    )
    launcher = subprocess.Popen(
        [sys.executable, "-c", script], pass_fds=[listener.fileno()], stdout=subprocess.PIPE
    )
    listener.close()
    assert launcher.stdout is not None
    pid = int(launcher.stdout.readline())
    for _ in range(300):  # it has read its secret and closed stdin (after asking for the signal)
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/0") == os.devnull:
                break
        time.sleep(0.05)
    launcher.kill()
    launcher.wait(10)
    launcher.stdout.close()
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        try:  # a zombie until init reaps it: gone for every purpose here
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                break
        except OSError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        pytest.fail("the worker outlived its launcher")


def _tls_worker(model_dir: Path, entry: str = "model.py:add") -> tuple[subprocess.Popen, int]:
    """A worker with --tls: its secret, then this start's certificate and key, on stdin."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "modelport.runtime.worker", "--project", str(model_dir),
         "--entry", entry, "--tls", "--listen-fd", str(listener.fileno())],
        pass_fds=[listener.fileno()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    listener.close()
    return proc, port


def test_with_tls_the_link_is_tls_1_3_to_the_start_s_own_certificate_only(model_dir):
    """--tls: a plain client with the right secret is refused (nothing run); a TLS client that
    trusts another certificate fails its handshake; the server's context for this start (it
    trusts only the certificate it made) opens, says Hello inside TLS and is served."""
    import ssl

    from modelport.serving.ray_replicas import replica_tls

    pem, ctx = replica_tls("m-1-1-beef")
    _, other = replica_tls("someone-else")
    secret = _secret()
    proc, port = _tls_worker(model_dir)
    assert proc.stdin is not None
    proc.stdin.write(secret + b"\n" + pem)
    proc.stdin.close()
    proc.stdin = None
    # The right secret in plain TCP: not TLS, refused, nothing run.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as plain:
        send_frame(plain, Hello(secret, time.monotonic()))
        assert _closed(plain)
    # TLS to a worker whose certificate this client does not trust: the handshake fails.
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    with raw, pytest.raises(ssl.SSLCertVerificationError):
        other.wrap_socket(raw, server_hostname=None)
    assert proc.poll() is None
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    with raw, ctx.wrap_socket(raw, server_hostname=None) as conn:
        assert conn.version() == "TLSv1.3"
        send_frame(conn, Hello(secret, time.monotonic()))
        assert isinstance(recv_frame(conn), Ready)
        send_frame(conn, Call(1, b'{"a": 41}'))
        answer = recv_frame(conn)
        assert isinstance(answer, Result) and answer.body == b"42.0"
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.decode().count("loading weights") == 1 and out.decode().count("adding") == 1
    assert err.decode().count("refused a connection") == 2
    assert b"PRIVATE KEY" not in out + err


def test_with_tls_a_boot_failure_reaches_the_server_inside_tls(tmp_path):
    (tmp_path / "model.py").write_text("raise ImportError('no weights here')\n")
    from modelport.runtime.protocol import Boot
    from modelport.serving.ray_replicas import replica_tls

    pem, ctx = replica_tls("m-1-1-beef")
    secret = _secret()
    proc, port = _tls_worker(tmp_path)
    assert proc.stdin is not None
    proc.stdin.write(secret + b"\n" + pem)
    proc.stdin.close()
    proc.stdin = None
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    with raw, ctx.wrap_socket(raw, server_hostname=None) as conn:
        send_frame(conn, Hello(secret, time.monotonic()))
        boot = recv_frame(conn)
        assert isinstance(boot, Boot) and "no weights here" in boot.error
    proc.communicate(timeout=30)
    assert proc.returncode == 3
