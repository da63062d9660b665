"""The prediction gateway through a real uvicorn on a free port, with real replicas behind it."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import msgspec
import pytest
import uvicorn
import uvloop
from modelport.auth import Auth, Identity, hash_secret
from modelport.gateway.predict import Gateway, Outcome
from modelport.gateway.routes import Routes
from modelport.runtime_home import ensure_runtime
from modelport.serving.config import GroupSpec, Tuning
from modelport.serving.supervisor import ReplicaGroup, Supervisor

MODELS = Path(__file__).resolve().parent.parent / "models"
KEYS = {"add": "mp_key_add", "echo": "mp_key_echo", "raises": "mp_key_raises"}
TOKENS = {
    "admin": Identity("t1", "admin", "admin"),
    "viewer": Identity("t2", "viewer", "viewer"),
    "predict-add": Identity("t3", "p", "predict", ("add",)),
    "predict-any": Identity("t4", "p", "predict"),
}


def spec(name: str, project: str, build: int = 1, **kw) -> GroupSpec:
    return GroupSpec(
        model=name,
        build=build,
        python=sys.executable,
        project=str(MODELS / project),
        entry="model.py:predict",
        digest=f"sha256:{build:064x}",
        **kw,
    )


async def fallback(scope, receive, send):
    assert scope["type"] == "http"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"fallback " + scope["path"].encode()})


class Harness:
    """uvicorn serving the gateway on a uvloop in a thread; the supervisor lives on that loop."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.results: list[Outcome] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._thread, daemon=True)

    def _thread(self) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self.sup = Supervisor(
            runtime_dir=ensure_runtime(self.tmp),
            logs_dir=self.tmp / "logs",
            tuning=Tuning(stop_grace_s=3, backoff_base_s=0.05),
        )
        self.routes = Routes(self.sup)
        self.auth = Auth(None)
        for model, key in KEYS.items():
            self.auth.remember_key(model, hash_secret(key))
        for secret, identity in TOKENS.items():
            self.auth._tokens[hash_secret(secret)] = identity
        gateway = Gateway(fallback, self.routes, self.auth, on_result=self.results.append)
        self.server = uvicorn.Server(
            uvicorn.Config(
                gateway,
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

    def start(self) -> Harness:
        self.thread.start()
        assert self.ready.wait(30)
        return self

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def last_outcome(self) -> Outcome:
        """The last prediction's outcome, read on the server's loop: the lane records it just
        after writing the answer, which the client may have read already."""

        async def last() -> Outcome:
            return self.results[-1]

        return self.run(last())

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def hx(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("gateway")).start()
    h.run(h.sup.deploy(spec("add", "add", replicas=2)))
    h.run(h.sup.deploy(spec("echo", "echo_dict")))
    h.run(h.sup.deploy(spec("raises", "raises")))
    h.routes.set_model("add", auth=True)
    h.routes.set_model("echo", auth=False)
    h.routes.set_model("raises", auth=True)
    h.routes.set_model("idle", auth=False)  # a model with nothing deployed
    yield h
    h.stop()


@pytest.fixture
def client(hx):
    with httpx.Client(base_url=hx.url, timeout=30) as c:
        yield c


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def err(resp: httpx.Response) -> tuple:
    body = resp.json()["error"]
    return resp.status_code, body["code"], body.get("field")


def test_predict_rotates_and_sets_headers(hx, client):
    seen = []
    for i in range(4):
        r = client.post("/models/add/predict", json={"a": i, "b": 1}, headers=bearer(KEYS["add"]))
        assert r.status_code == 200 and r.json() == i + 1
        assert r.headers["content-type"] == "application/json"
        assert r.headers["x-model-build"] == "1"
        assert r.headers["x-model-digest"] == "sha256:" + "0" * 63 + "1"
        assert r.headers["x-request-id"]
        seen.append(r.headers["x-replica-id"])
    assert seen[0] != seen[1] and seen[:2] == seen[2:]
    r = client.post(
        "/models/add/predict",
        json={"a": 1},
        headers={**bearer(KEYS["add"]), "X-Request-Id": "my-request-1"},
    )
    assert r.headers["x-request-id"] == "my-request-1"
    last = hx.last_outcome()
    assert (last.model, last.build, last.status, last.request_id) == ("add", 1, 200, "my-request-1")


def test_json_and_msgpack_both_ways(client):
    auth = bearer(KEYS["add"])
    mp = {"Content-Type": "application/msgpack"}
    r = client.post(
        "/models/add/predict",
        content=msgspec.msgpack.encode({"a": 1, "b": 2}),
        headers={**auth, **mp, "Accept": "application/msgpack"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/msgpack"
    assert msgspec.msgpack.decode(r.content) == 3.0
    r = client.post(
        "/models/add/predict", content=msgspec.msgpack.encode({"a": 1}), headers={**auth, **mp}
    )
    assert r.json() == 1.0
    r = client.post(
        "/models/add/predict", json={"a": 5}, headers={**auth, "Accept": "application/msgpack"}
    )
    assert msgspec.msgpack.decode(r.content) == 5.0
    r = client.post("/models/echo/predict", content=b'{"x": [1, 2.5, "three", null]}')
    assert r.json()["echo"] == {"x": [1, 2.5, "three", None]}


def test_errors(client):
    auth = bearer(KEYS["add"])
    r = client.post("/models/add/predict", json={"a": "one"}, headers=auth)
    assert err(r) == (422, "request.invalid", "a")
    assert r.json()["error"]["message"] == "Expected `float`, got `str` - at `$.a`"
    assert err(client.post("/models/add/predict", json={"b": 1}, headers=auth)) == (
        422,
        "request.invalid",
        "a",
    )
    assert err(client.post("/models/add/predict", content=b"{a", headers=auth))[:2] == (
        400,
        "request.malformed",
    )
    assert err(client.post("/models/add/predict", json=[1, 2], headers=auth))[:2] == (
        400,
        "request.malformed",
    )
    r = client.post("/models/raises/predict", json={"x": 3}, headers=bearer(KEYS["raises"]))
    assert err(r)[:2] == (500, "model.error")
    assert r.json()["error"]["message"] == "ValueError: cannot handle 3"
    assert r.headers["x-replica-id"].startswith("raises-1-1-")
    assert err(client.post("/models/nope/predict", json={})) == (404, "model.not_found", None)
    assert err(client.post("/models/idle/predict", json={})) == (404, "model.not_deployed", None)


def test_auth(client):
    def post(headers):
        return client.post("/models/add/predict", json={"a": 1}, headers=headers)

    assert err(post({})) == (401, "auth.missing", None)
    assert err(post(bearer("mp_key_unknown"))) == (401, "auth.invalid", None)
    assert err(post({"Authorization": "Basic abc"})) == (401, "auth.invalid", None)
    assert err(post(bearer(KEYS["echo"]))) == (403, "auth.denied", None)  # another model's key
    assert err(post(bearer("viewer"))) == (403, "auth.denied", None)
    r = client.post("/models/raises/predict", json={"x": 1}, headers=bearer("predict-add"))
    assert err(r) == (403, "auth.denied", None)  # a predict token scoped to another model
    for ok in (KEYS["add"], "admin", "predict-add", "predict-any"):
        assert post(bearer(ok)).status_code == 200, ok
    assert client.post("/models/echo/predict", json={"open": True}).status_code == 200


def test_cloudera_model_endpoint(client):
    r = client.post("/model", json={"accessKey": KEYS["echo"], "request": {"b": [1, {"c": None}]}})
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True and body["response"]["echo"] == {"b": [1, {"c": None}]}
    assert body["ReplicaID"] == r.headers["x-replica-id"] and body["ReplicaID"].startswith(
        "echo-1-1-"
    )
    r = client.post(f"/model?accessKey={KEYS['add']}", json={"request": {"a": 2, "b": 3}})
    assert r.json()["response"] == 5.0
    r = client.post(
        "/model",
        content=msgspec.msgpack.encode({"accessKey": KEYS["add"], "request": {"a": 1}}),
        headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
    )
    assert msgspec.msgpack.decode(r.content)["response"] == 1.0
    assert err(client.post("/model", json={"request": {}})) == (401, "auth.missing", None)
    assert err(client.post("/model", json={"accessKey": "mp_key_x", "request": {}}))[:2] == (
        401,
        "auth.invalid",
    )
    assert err(client.post("/model", json={"accessKey": KEYS["add"]})) == (
        422,
        "request.invalid",
        "request",
    )
    assert err(client.post("/model", json={"accessKey": KEYS["add"], "request": {"a": "x"}})) == (
        422,
        "request.invalid",
        "a",
    )
    assert err(client.post("/model", content=b"[1]"))[:2] == (400, "request.malformed")


def test_body_limit(client):
    big = b'{"x": "' + b"y" * (5 * 1024 * 1024) + b'"}'
    r = client.post("/models/echo/predict", content=big)
    assert err(r)[:2] == (413, "request.too_large")

    def chunks():  # no Content-Length: counted while reading
        for _ in range(6):
            yield b"z" * (1024 * 1024)

    r = client.post("/models/echo/predict", content=chunks())
    assert err(r)[:2] == (413, "request.too_large")
    assert client.post("/models/echo/predict", json={"ok": 1}).status_code == 200
    r = client.post("/model", content=big.replace(b'{"x"', b'{"accessKey": "mp_key_echo", "x"'))
    assert err(r)[:2] == (413, "request.too_large")


def test_other_requests_pass_through(client):
    assert client.get("/api/v1/health").text == "fallback /api/v1/health"
    assert client.get("/models/add/predict").text == "fallback /models/add/predict"
    assert client.post("/models/a/b/predict").text == "fallback /models/a/b/predict"


def test_starting_group_is_503(hx, client):
    async def route_to_unstarted():
        group = ReplicaGroup(
            spec("starting", "add"), runtime_dir=hx.sup.runtime_dir, logs_dir=hx.sup.logs_dir
        )
        hx.routes.set_model("starting", auth=False)
        hx.routes.set_group("starting", group)

    hx.run(route_to_unstarted())
    assert err(client.post("/models/starting/predict", json={"a": 1}))[:2] == (
        503,
        "model.unavailable",
    )


def test_switching_builds_under_load_fails_nothing(hx):
    hx.run(hx.sup.deploy(spec("sw", "slow", build=1, replicas=2)))
    hx.routes.set_model("sw", auth=False)
    sent: list[tuple[float, str]] = []  # (when the request was sent, the build that answered)
    failures: list[tuple] = []
    stop = threading.Event()

    def client_loop():
        with httpx.Client(base_url=hx.url, timeout=30) as c:
            while not stop.is_set():
                t = time.monotonic()
                r = c.post("/models/sw/predict", json={"seconds": 0.02})
                if r.status_code == 200:
                    sent.append((t, r.headers["x-model-build"]))
                else:
                    failures.append((r.status_code, r.text))

    threads = [threading.Thread(target=client_loop) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(sent) >= 10)
        before = time.monotonic()
        hx.run(hx.sup.deploy(spec("sw", "slow", build=2, replicas=2)))
        after = time.monotonic()  # switched, and the old group drained
        wait_for(lambda: sum(t > after for t, _ in list(sent)) >= 10)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert {b for t, b in sent if t < before} == {"1"}
    assert {b for t, b in sent if t > after} == {"2"}


def test_stopping_is_503_then_not_deployed(hx, client):
    group = hx.run(hx.sup.deploy(spec("st", "slow")))
    hx.routes.set_model("st", auth=False)
    slow = threading.Thread(
        target=lambda: httpx.post(f"{hx.url}/models/st/predict", json={"seconds": 1.0}, timeout=30)
    )
    slow.start()
    wait_for(lambda: group.replicas[0].in_flight == 1)
    stopping = asyncio.run_coroutine_threadsafe(hx.sup.stop("st"), hx.loop)
    wait_for(lambda: group.state == "draining")
    assert err(client.post("/models/st/predict", json={}))[:2] == (503, "model.unavailable")
    stopping.result(30)
    slow.join(30)
    assert err(client.post("/models/st/predict", json={})) == (404, "model.not_deployed", None)


def wait_for(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_metrics_reach_the_on_result_hook(hx, client):
    hx.run(hx.sup.deploy(spec("metrics", "metrics", build=4)))
    hx.routes.set_model("metrics", auth=False)
    r = client.post("/models/metrics/predict", json={"x": 2}, headers={"X-Request-Id": "m-1"})
    assert r.json() == 4.0 and r.headers["x-model-build"] == "4"
    last = hx.last_outcome()
    assert (last.model, last.build, last.status, last.request_id) == ("metrics", 4, 200, "m-1")
    assert last.metrics == {"input": 2.0, "doubled": 4.0} and 0 < last.seconds < 5


def test_a_key_or_token_that_answered_is_refused_at_once_when_rotated_or_revoked(hx, client):
    """The gateway remembers each Authorization header's secret hash (by the header's hash()):
    what it remembers is checked against the live keys and tokens on every request."""

    def call(secret: str) -> int:
        return client.post("/models/add/predict", json={"a": 1}, headers=bearer(secret)).status_code

    assert call(KEYS["add"]) == 200 and call(KEYS["add"]) == 200  # remembered now
    hx.auth.remember_key("add", hash_secret("mp_key_add_rotated"))  # the old key is forgotten
    try:
        r = client.post("/models/add/predict", json={"a": 1}, headers=bearer(KEYS["add"]))
        assert err(r) == (401, "auth.invalid", None)
        assert call("mp_key_add_rotated") == 200
    finally:
        hx.auth.remember_key("add", hash_secret(KEYS["add"]))
    assert call("predict-add") == 200
    digest = hash_secret("predict-add")
    identity = hx.auth._tokens.pop(digest)  # revoked
    try:
        r = client.post("/models/add/predict", json={"a": 1}, headers=bearer("predict-add"))
        assert err(r)[:2] == (401, "auth.invalid")
    finally:
        hx.auth._tokens[digest] = identity
    assert call(KEYS["add"]) == 200
