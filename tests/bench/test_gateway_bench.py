"""Per-request overhead of the hot path: gateway → balancer → replica → back, for `a + b`.

Run with: .venv/bin/python -m pytest tests/bench/test_gateway_bench.py --benchmark-enable
Batches of sequential requests run on the server's loop (uvloop); the reported times are per
batch, `per_request_us` in extra_info is per request.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from pathlib import Path

import pytest
import uvicorn
import uvloop
from modelport.auth import Auth, hash_secret
from modelport.gateway.predict import Gateway
from modelport.gateway.routes import Routes
from modelport.runtime_home import ensure_runtime
from modelport.serving.config import GroupSpec
from modelport.serving.supervisor import Supervisor

MODELS = Path(__file__).resolve().parent.parent / "models"
BODY = b'{"a": 1.5, "b": 2}'
KEY = "mp_key_bench"
BATCH = 200


async def fallback(scope, receive, send):  # pragma: no cover - never reached here
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class Bench:
    def __init__(self, tmp: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.tmp = tmp
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._thread, daemon=True)

    def _thread(self) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self.sup = Supervisor(runtime_dir=ensure_runtime(self.tmp), logs_dir=self.tmp / "logs")
        self.group = await self.sup.deploy(
            GroupSpec(
                model="add",
                build=1,
                python=sys.executable,
                project=str(MODELS / "add"),
                entry="model.py:predict",
                digest="sha256:" + "ab" * 32,
            )
        )
        routes = Routes(self.sup)
        routes.set_model("add", auth=True)
        auth = Auth(None)
        auth.remember_key("add", hash_secret(KEY))
        self.gateway = Gateway(fallback, routes, auth)
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.gateway,
                host="127.0.0.1",
                port=self.port,
                loop="none",
                lifespan="off",
                log_level="warning",
                access_log=False,
            )
        )
        serving = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.01)
        self.ready.set()
        await serving
        await self.sup.shutdown(5)

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    b = Bench(tmp_path_factory.mktemp("bench"))
    b.thread.start()
    assert b.ready.wait(30)
    yield b
    b.server.should_exit = True
    b.thread.join(30)


def per_request(benchmark, fn) -> None:
    benchmark.pedantic(fn, rounds=30, iterations=1, warmup_rounds=2)
    if benchmark.stats is not None:  # None when untimed (--benchmark-disable)
        benchmark.extra_info["per_request_us"] = round(benchmark.stats.stats.mean / BATCH * 1e6, 1)


def test_balancer_replica_round_trip(benchmark, bench):
    """The floor: balancer + pipe client + the worker, no HTTP and no gateway."""

    async def batch():
        for _ in range(BATCH):
            _, msg = await bench.group.call(BODY, "json", "json", "bench")
        assert msg.body == b"3.5"

    per_request(benchmark, lambda: bench.run(batch()))


def test_gateway_in_process(benchmark, bench):
    """The gateway as ASGI (auth by access key, headers, response) on top of the round trip."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/models/add/predict",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", b"18"),
            (b"authorization", f"Bearer {KEY}".encode()),
        ],
    }
    message = {"type": "http.request", "body": BODY, "more_body": False}
    out: list = []

    async def receive():
        return message

    async def send(msg):
        out.append(msg)

    async def batch():
        for _ in range(BATCH):
            await bench.gateway(scope, receive, send)
        assert out[-2]["status"] == 200 and out[-1]["body"] == b"3.5"
        out.clear()

    per_request(benchmark, lambda: bench.run(batch()))


def test_http_round_trip(benchmark, bench):
    """uvicorn's HTTP/1.1 (keep-alive) + gateway + replica, from a minimal client that writes
    prebuilt request bytes (httpx alone would cost more than the server)."""
    request = (
        b"POST /models/add/predict HTTP/1.1\r\nHost: bench\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\nContent-Length: %d\r\n\r\n" % len(BODY)
        + BODY
    )

    async def batch():
        reader, writer = await asyncio.open_connection("127.0.0.1", bench.port)
        try:
            for _ in range(BATCH):
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
            assert head.startswith(b"HTTP/1.1 200") and body == b"3.5"
        finally:
            writer.close()

    def run_batch():
        asyncio.run(batch())  # the client on its own loop, in this thread

    per_request(benchmark, run_batch)


def test_gateway_alone(benchmark):
    """The gateway's own work (headers, access-key check, routing, response), with a stand-in
    for the group that answers at once: what the gateway adds to the round trip above."""
    from modelport.runtime.protocol import Result

    class Answer:
        id_bytes = b"add-1-1-abcd"

    class Group:
        def __init__(self) -> None:
            self.headers = [(b"x-model-build", b"1"), (b"x-model-digest", b"sha256:" + b"ab" * 32)]
            self.max_body = 5 * 1024 * 1024

        async def call(self, body, content_type, accept, request_id):
            return Answer, Result(1, b"3.5", {})

    routes = Routes()
    routes.set_model("add", auth=True)
    routes.set_group("add", Group())
    auth = Auth(None)
    auth.remember_key("add", hash_secret(KEY))
    gateway = Gateway(fallback, routes, auth)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/models/add/predict",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", b"18"),
            (b"authorization", f"Bearer {KEY}".encode()),
        ],
    }
    message = {"type": "http.request", "body": BODY, "more_body": False}

    async def receive():
        return message

    async def send(msg):
        pass

    async def batch():
        for _ in range(BATCH):
            await gateway(scope, receive, send)

    loop = uvloop.new_event_loop()
    try:
        per_request(benchmark, lambda: loop.run_until_complete(batch()))
    finally:
        loop.close()
