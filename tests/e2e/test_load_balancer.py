"""Two real `modelport serve` on one PostgreSQL registry (tests/e2e/test_cluster.py's pair) behind
a real HAProxy on a loopback port, run with docs/haproxy.cfg — the configuration docs/scale-out.md
gives — its addresses replaced by the test's ports: predictions through it reach both servers,
management through it works, and one server killed -9 under load is taken out by the health check
(GET /api/v1/health) while the other answers everything."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e import test_cluster as cluster

pytestmark = pytest.mark.slow

pair = cluster.pair  # the fixture: servers a and b on one registry and one bucket
CONFIG = Path(__file__).resolve().parents[2] / "docs" / "haproxy.cfg"


def config(port: int, a: str, b: str) -> str:
    """docs/haproxy.cfg with its frontend on 127.0.0.1:``port`` and servers a and b at these
    host:port; each documented address is there exactly once (the docs and this test agree)."""
    text = CONFIG.read_text()
    for documented, here in (
        ("bind :80", f"bind 127.0.0.1:{port}"),
        ("server a 10.0.0.11:8000", f"server a {a}"),
        ("server b 10.0.0.12:8000", f"server b {b}"),
    ):
        assert text.count(documented) == 1, f"docs/haproxy.cfg has no single {documented!r}"
        text = text.replace(documented, here)
    return text


@dataclass
class HAProxy:
    """HAProxy in the foreground (-db), its messages (server UP/DOWN) kept with the time each was
    read; stopped by its pid."""

    proc: subprocess.Popen
    url: str
    lines: list[tuple[float, str]] = field(default_factory=list)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip()))

    def seen(self, text: str, timeout: float) -> float:
        """When a message containing ``text`` was read (waiting for it up to ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if text in line:
                    return at
            time.sleep(0.01)
        raise TimeoutError(f"HAProxy did not say {text!r}: {[line for _, line in self.lines]}")

    def client(self, token: str = "", **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)


@pytest.fixture
def balanced(pair, tmp_path) -> Iterator[tuple]:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        raise RuntimeError("haproxy is not installed (scripts/install-test-deps installs it)")
    a, b = pair
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(config(port, f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"))
    proc = subprocess.Popen(
        [haproxy, "-db", "-f", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lb = HAProxy(proc, f"http://127.0.0.1:{port}")
    threading.Thread(target=lb.read, daemon=True).start()
    try:
        cluster.until(lambda: _up(lb.url), timeout=20, every=0.05)
        yield a, b, lb
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@dataclass
class Through:
    """The balancer as the e2e helpers take a server: ``client()`` with the admin token."""

    lb: HAProxy
    token: str

    def client(self) -> httpx.Client:
        return self.lb.client(self.token)


def test_two_servers_behind_haproxy_serve_manage_and_survive_one_killed(balanced, tmp_path):
    a, b, lb = balanced
    front = Through(lb, a.token)  # every management call below goes through HAProxy

    # Management through the balancer: create, build twice, deploy each, roll back.
    made = front.client().post("/api/v1/models", json={"name": "lb"})
    assert made.status_code == 201, made.text
    key = made.json()["access_key"]
    first = cluster.build(front, tmp_path, "lb", cluster.ADDER)
    second = cluster.build(front, tmp_path, "lb", cluster.TIMES)
    cluster.deploy(front, "lb", first, replicas=2)  # spread: one replica on each server
    cluster.until(lambda: [len(cluster.replicas(s, "lb")) for s in (a, b)] == [1, 1])
    ids = {cluster.replicas(s, "lb")[0]["id"] for s in (a, b)}
    http = lb.client()
    auth = {"Authorization": f"Bearer {key}"}

    def answers(n: int) -> list[httpx.Response]:
        return [
            http.post("/models/lb/predict", json={"a": 2, "b": 3}, headers=auth) for _ in range(n)
        ]

    # Predictions through the balancer reach both servers (each answers with its own replica).
    got = answers(20)
    assert {(r.status_code, r.json()) for r in got} == {(200, 5.0)}
    assert {r.headers["x-replica-id"] for r in got} == ids

    cluster.deploy(front, "lb", second, replicas=2)
    cluster.until(lambda: {r.json() for r in answers(10)} == {6.0})  # both servers switched
    rolled = front.client().post("/api/v1/models/lb/rollback", json={})
    assert rolled.status_code == 202, rolled.text
    cluster.until(lambda: {r.json() for r in answers(10)} == {5.0})
    cluster.wait_status(front, "lb", rolled.json()["id"], "deployed")
    got = answers(20)
    assert {r.headers["x-model-build"] for r in got} == {str(first)}
    assert len({r.headers["x-replica-id"] for r in got}) == 2  # still both servers

    # a killed -9 under a bounded load: HAProxy's health check takes it out, b answers all.
    # (when sent, when answered, status, error code or replica)
    results: list[tuple[float, float, int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with lb.client() as c:
            deadline = time.monotonic() + 30  # bounded even if the test fails meanwhile
            while not stop.is_set() and time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    r = c.post("/models/lb/predict", json={"a": 2, "b": 3}, headers=auth)
                    if r.status_code == 200:
                        code = r.headers["x-replica-id"]
                    elif r.headers.get("content-type") == "application/json":
                        code = r.json()["error"]["code"]
                    else:  # HAProxy's own page: no server answered
                        code = "haproxy"
                    results.append((sent, time.monotonic(), r.status_code, code))
                except (httpx.TransportError, ValueError, KeyError) as exc:
                    results.append((sent, time.monotonic(), 0, type(exc).__name__))

    clients = [threading.Thread(target=load) for _ in range(4)]
    for t in clients:
        t.start()
    time.sleep(2)
    killed = time.monotonic()
    a.stop(signal.SIGKILL)
    try:
        down = lb.seen("Server servers/a is DOWN", timeout=15)
        time.sleep(3)  # the load goes on through b alone
    finally:
        stop.set()
        for t in clients:
            t.join(40)
    before = [r for r in results if r[1] < killed]  # answered before the kill
    after = [r for r in results if r[0] >= down]  # sent once HAProxy had taken a out
    between = [r for r in results if r[1] >= killed and r[0] < down]  # the rest
    failed = Counter((status, code) for _, _, status, code in between if status != 200)
    print(
        f"kill -9 a under 4 clients: HAProxy took it out {down - killed:.2f} s later "
        f"(inter 1s, fall 2); {len(before)} answers before the kill, all 200: "
        f"{all(r[2] == 200 for r in before)}; in flight or sent between the kill and DOWN "
        f"{len(between)}, failed {sum(failed.values())}: {dict(failed)}; after DOWN {len(after)}"
    )
    assert before and all(r[2] == 200 for r in before)
    assert after and [r for r in after if r[2] != 200] == []
    on_b = {replica["id"] for replica in cluster.replicas(b, "lb")}
    assert {r[3] for r in after} <= on_b  # b's own replicas answered them
