"""Deployments through a real server and real replicas: deploy, predict, auth, rollback, scale."""

from __future__ import annotations

import signal
import subprocess
import time

import httpx
import msgspec
import pytest

from tests.conftest import MODELPORT, pack_bytes, upload_build, wait_build, write_project


def typed(b: float) -> str:
    return f"def predict(a: float, b: float = {b}) -> float:\n    return a + b\n"


class Deployed:
    def __init__(self, srv, tmp_path):
        self.srv, self.tmp = srv, tmp_path
        self.c = srv.client()
        self.keys: dict[str, str] = {}

    def model(self, name: str, **extra) -> str:
        self.keys[name] = self.c.post("/api/v1/models", json={"name": name, **extra}).json()[
            "access_key"
        ]
        return self.keys[name]

    def build(self, name: str, files: dict, **fields) -> int:
        folder = write_project(self.tmp / f"{name}-{time.monotonic_ns()}", files)
        fields.setdefault("entrypoint", "predict.py:predict")
        number = upload_build(self.c, name, pack_bytes(folder), **fields).json()["number"]
        built = wait_build(self.c, name, number)
        assert built["status"] in ("built", "failed")
        return number

    def deploy(self, name: str, build: int, wait: bool = True, **settings) -> dict:
        response = self.c.post(
            f"/api/v1/models/{name}/deployments", json={"build": build, **settings}
        )
        assert response.status_code == 202, response.text
        return self.wait(name, response.json()["id"]) if wait else response.json()

    def wait(self, name: str, deployment_id: int, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.c.get(f"/api/v1/models/{name}/deployments/{deployment_id}").json()
            if found["status"] in ("deployed", "failed", "stopped"):
                return found
            time.sleep(0.05)
        raise TimeoutError(found)

    def predict(self, name: str, body, key: str | None = None, **kwargs) -> httpx.Response:
        key = self.keys.get(name) if key is None else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.post(
            f"{self.srv.url}/models/{name}/predict",
            json=body,
            headers=headers,
            timeout=30,
            **kwargs,
        )


@pytest.fixture
def d(offline_server, tmp_path):
    return Deployed(offline_server().start(), tmp_path)


def test_deploy_predict_and_headers(d):
    d.model("add")
    done = d.deploy("add", d.build("add", {"predict.py": typed(1.0)}), replicas=2)
    assert done["status"] == "deployed" and done["replicas"] == 2
    assert [e["kind"] for e in done["events"]][:3] == ["created", "deploying", "deployed"]
    seen = set()
    for _ in range(6):
        r = d.predict("add", {"a": 2})
        assert r.status_code == 200 and r.json() == 3.0
        assert r.headers["x-model-build"] == "1"
        assert r.headers["x-model-digest"].startswith("sha256:")
        assert r.headers["x-request-id"]
        seen.add(r.headers["x-replica-id"])
    assert len(seen) == 2 and all(rid.startswith("add-1-") for rid in seen)
    mine = d.predict("add", {"a": 1}, headers={"X-Request-Id": "my-id-42"})
    assert mine.headers["x-request-id"] == "my-id-42"
    model = d.c.get("/api/v1/models/add").json()
    assert model["deployment"]["build"] == 1 and model["deployment"]["status"] == "deployed"


def test_msgpack_both_ways_and_cloudera_compat(d):
    key = d.model("add")
    d.deploy("add", d.build("add", {"predict.py": typed(1.0)}))
    r = httpx.post(
        f"{d.srv.url}/models/add/predict",
        content=msgspec.msgpack.encode({"a": 4}),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/msgpack",
            "Accept": "application/msgpack",
        },
    )
    assert r.status_code == 200 and msgspec.msgpack.decode(r.content) == 5.0
    cloudera = httpx.post(f"{d.srv.url}/model", json={"accessKey": key, "request": {"a": 1}})
    body = cloudera.json()
    assert body["success"] is True and body["response"] == 2.0
    assert body["ReplicaID"].startswith("add-1-")
    query = httpx.post(f"{d.srv.url}/model", params={"accessKey": key}, json={"request": {"a": 2}})
    assert query.json()["response"] == 3.0


def test_prediction_errors_have_the_specs_codes(d):
    d.model("add")
    d.deploy("add", d.build("add", {"predict.py": typed(1.0)}))
    cases = [
        (d.predict("add", {"a": "x"}), 422, "request.invalid", "a"),
        (d.predict("add", {}), 422, "request.invalid", "a"),
        (d.predict("add", {"a": 1, "zzz": 2}), 422, "request.invalid", "zzz"),
        (
            httpx.post(
                f"{d.srv.url}/models/add/predict",
                content=b"{bad",
                headers={"Authorization": f"Bearer {d.keys['add']}"},
            ),
            400,
            "request.malformed",
            None,
        ),
        (
            httpx.post(
                f"{d.srv.url}/models/add/predict",
                json=[1, 2],
                headers={"Authorization": f"Bearer {d.keys['add']}"},
            ),
            400,
            "request.malformed",
            None,
        ),
        (d.predict("nope", {"a": 1}, key=d.keys["add"]), 404, "model.not_found", None),
        (
            httpx.post(
                f"{d.srv.url}/models/add/predict",
                content=b"{" + b" " * (6 << 20) + b"}",
                headers={"Authorization": f"Bearer {d.keys['add']}"},
            ),
            413,
            "request.too_large",
            None,
        ),
    ]
    for response, status, code, field in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code
        if field:
            assert error["field"] == field
    d.model("idle")
    idle = d.predict("idle", {"a": 1})
    assert idle.status_code == 404 and idle.json()["error"]["code"] == "model.not_deployed"


RECORDS = """\
import dataclasses, math
import msgspec

class Point(msgspec.Struct):
    x: float
    y: float = 0.0

@dataclasses.dataclass
class Row:
    x: float

def by_struct(p: Point) -> float:
    return p.x + p.y

def by_dataclass(r: Row):
    return {"scores": [r.x, math.inf if r.x < 0 else r.x]}
"""


def test_every_form_refuses_unknown_fields_and_json_has_no_infinity(d):
    for name, entry in (("struct", "predict.py:by_struct"), ("dc", "predict.py:by_dataclass")):
        d.model(name)
        d.deploy(name, d.build(name, {"predict.py": RECORDS}, entrypoint=entry))
        extra = d.predict(name, {"x": 1, "extra": 1})
        assert extra.status_code == 422, extra.text
        assert extra.json()["error"]["field"] == "extra"
    assert d.predict("struct", {"x": 1, "y": 2}).json() == 3
    assert d.predict("dc", {"x": 2}).json() == {"scores": [2, 2]}
    inf = d.predict("dc", {"x": -1})
    assert inf.status_code == 500
    error = inf.json()["error"]
    assert error["code"] == "model.error" and "scores[1]" in error["message"]
    packed = httpx.post(
        f"{d.srv.url}/models/dc/predict",
        json={"x": -1},
        timeout=30,
        headers={"Authorization": f"Bearer {d.keys['dc']}", "Accept": "application/msgpack"},
    )
    assert packed.status_code == 200
    assert msgspec.msgpack.decode(packed.content) == {"scores": [-1, float("inf")]}


def test_the_ready_probe_follows_the_replicas(d):
    d.model("add")
    d.deploy("add", d.build("add", {"predict.py": typed(1.0)}), replicas=2)
    ready = httpx.get(f"{d.srv.url}/models/add/ready")  # no token
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "build": 1, "replicas_ready": 2}
    assert d.c.post("/api/v1/models/add/stop").status_code in (200, 202)
    deadline = time.monotonic() + 30
    while (gone := httpx.get(f"{d.srv.url}/models/add/ready")).status_code == 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert gone.status_code == 503 and gone.json()["error"]["code"] == "model.unavailable"


def test_model_errors_500_and_the_replica_keeps_serving(d):
    d.model("boom")
    code = (
        "def predict(x: int) -> int:\n    if x < 0:\n        raise ValueError('negative')\n"
        "    return x\n"
    )
    d.deploy("boom", d.build("boom", {"predict.py": code}))
    r = d.predict("boom", {"x": -1})
    assert r.status_code == 500
    assert r.json()["error"] == {"code": "model.error", "message": "ValueError: negative"}
    assert "Traceback" not in r.text
    assert d.predict("boom", {"x": 5}).json() == 5


def test_auth_rules(d):
    d.model("a")
    d.model("b")
    d.model("open", auth=False)
    for name in ("a", "b", "open"):
        d.deploy(name, d.build(name, {"predict.py": typed(0.0)}))
    tokens = {
        role: d.c.post("/api/v1/tokens", json={"name": role, "role": role}).json()["token"]
        for role in ("predict", "viewer", "deployer")
    }
    scoped = d.c.post(
        "/api/v1/tokens", json={"name": "s", "role": "predict", "models": ["a"]}
    ).json()["token"]
    expect = [
        ("a", d.keys["a"], 200),
        ("a", d.keys["b"], 403),
        ("a", "", 401),
        ("a", "mp_key_garbage", 401),
        ("a", tokens["predict"], 200),
        ("a", tokens["deployer"], 200),
        ("a", d.srv.token, 200),
        ("a", tokens["viewer"], 403),
        ("a", scoped, 200),
        ("b", scoped, 403),
        ("open", "", 200),
    ]
    for name, key, status in expect:
        r = d.predict(name, {"a": 1}, key=key)
        assert r.status_code == status, (name, key[:12], r.text)
        if status == 401:
            assert r.json()["error"]["code"] in ("auth.missing", "auth.invalid")
        if status == 403:
            assert r.json()["error"]["code"] == "auth.denied"
    old = d.keys["a"]
    d.keys["a"] = d.c.post("/api/v1/models/a/access-key/rotate").json()["access_key"]
    assert d.predict("a", {"a": 1}, key=old).status_code == 401
    assert d.predict("a", {"a": 1}).status_code == 200
    d.c.patch("/api/v1/models/a", json={"auth": False})
    assert d.predict("a", {"a": 1}, key="").status_code == 200
    no_key = httpx.post(f"{d.srv.url}/model", json={"request": {"a": 1}})
    assert no_key.status_code in (401, 404)


def test_rollback_scale_stop_restart_and_history(d):
    d.model("m")
    one = d.build("m", {"predict.py": typed(1.0)})
    two = d.build("m", {"predict.py": typed(2.0)})
    d.deploy("m", one)
    d.deploy("m", two)
    assert d.predict("m", {"a": 0}).json() == 2.0
    rolled = d.c.post("/api/v1/models/m/rollback", json={})
    assert rolled.status_code == 202 and rolled.json()["build"] == one
    assert d.wait("m", rolled.json()["id"])["status"] == "deployed"
    assert d.predict("m", {"a": 0}).json() == 1.0
    to_two = d.c.post("/api/v1/models/m/rollback", json={"to_build": two}).json()
    d.wait("m", to_two["id"])
    assert d.predict("m", {"a": 0}).json() == 2.0
    scaled = d.c.patch("/api/v1/models/m/deployments/current", json={"replicas": 3}).json()
    assert scaled["id"] == to_two["id"] and scaled["replicas"] == 3
    assert scaled["events"][-1]["kind"] == "scaled"
    assert len(d.c.get("/api/v1/models/m/replicas").json()["items"]) == 3
    history = d.c.get("/api/v1/models/m/deployments").json()["items"]
    assert [h["build"] for h in history] == [two, one, two, one]
    assert [h["status"] for h in history] == ["deployed", "stopped", "stopped", "stopped"]
    assert all(h["created_by"] == "admin" for h in history)
    restart = d.c.post("/api/v1/models/m/restart")
    assert restart.status_code == 202
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = d.c.get("/api/v1/models/m/deployments/current").json()["events"]
        if events[-1]["kind"] == "restarted":
            break
        time.sleep(0.1)
    assert events[-1]["kind"] == "restarted"
    assert d.predict("m", {"a": 0}).json() == 2.0
    stopped = d.c.post("/api/v1/models/m/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    r = d.predict("m", {"a": 0})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model.not_deployed"
    assert d.c.delete("/api/v1/models/m").status_code == 204


def test_bad_deployments(d):
    d.model("m")
    failed = d.build("m", {"predict.py": "import nope_missing\n"})
    r = d.c.post("/api/v1/models/m/deployments", json={"build": failed})
    assert r.status_code == 409 and r.json()["error"]["code"] == "build.not_ready"
    assert d.c.post("/api/v1/models/m/deployments", json={"build": 99}).status_code == 404
    for body, _field in [
        ({"build": 1, "replicas": 0}, "replicas"),
        ({"build": "x"}, "build"),
        ({"build": 1, "env": {"1BAD": "x"}}, "env"),
        ({}, "build"),
        ({"build": 1, "colour": 1}, "colour"),
    ]:
        r = d.c.post("/api/v1/models/m/deployments", json=body)
        assert r.status_code == 422, (body, r.text)
    for path in ("stop", "restart", "rollback"):
        r = d.c.post(f"/api/v1/models/m/{path}", json={})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model.not_deployed"
    assert d.c.get("/api/v1/models/m/deployments/current").status_code == 404
    viewer = d.c.post("/api/v1/tokens", json={"name": "v", "role": "viewer"}).json()["token"]
    with d.srv.client(token=viewer) as v:
        assert v.post("/api/v1/models/m/deployments", json={"build": 1}).status_code == 403
        assert v.get("/api/v1/models/m/deployments").status_code == 200


def test_a_build_that_cannot_start_leaves_the_old_one_serving(d):
    d.model("m")
    good = d.build("m", {"predict.py": typed(1.0)})
    # builds fine (the import succeeds), but dies at replica start when READY_FAIL is set
    bad = d.build(
        "m",
        {
            "predict.py": "import os\nif os.environ.get('READY_FAIL'):\n"
            "    raise SystemExit('cannot load weights')\n" + typed(5)
        },
    )
    d.deploy("m", good)
    failed = d.deploy("m", bad, env={"READY_FAIL": "1"})
    assert failed["status"] == "failed"
    assert "cannot load weights" in failed["reason"]
    current = d.c.get("/api/v1/models/m/deployments/current").json()
    assert current["build"] == good and current["status"] == "deployed"
    assert d.predict("m", {"a": 0}).json() == 1.0


def test_env_reaches_the_replica_and_secrets_do_not(d):
    d.model("env")
    code = "import os\ndef predict(name: str) -> str | None:\n    return os.environ.get(name)\n"
    done = d.deploy("env", d.build("env", {"predict.py": code}), env={"GREETING": "hello"})
    assert done["env_keys"] == ["GREETING"]
    assert d.predict("env", {"name": "GREETING"}).json() == "hello"
    assert d.predict("env", {"name": "MODELPORT_HOME"}).json() is None


def test_deployments_come_back_after_a_server_kill(offline_server, tmp_path):
    first = offline_server().start()
    d = Deployed(first, tmp_path)
    d.model("m")
    d.deploy("m", d.build("m", {"predict.py": typed(1.0)}), replicas=2)
    pids = [r["pid"] for r in d.c.get("/api/v1/models/m/replicas").json()["items"]]
    first.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "replicas outlived the server"
    second = offline_server(data_dir=first.data_dir).start()
    d2 = Deployed(second, tmp_path)
    d2.keys = d.keys
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = d2.predict("m", {"a": 1})
        if r.status_code == 200:
            break
        time.sleep(0.1)
    assert r.status_code == 200 and r.json() == 2.0
    deadline = time.monotonic() + 10  # serving starts a moment before the event is written
    while time.monotonic() < deadline:
        current = d2.c.get("/api/v1/models/m/deployments/current").json()
        if "restored" in [e["kind"] for e in current["events"]]:
            break
        time.sleep(0.05)
    assert current["status"] == "deployed" and "restored" in [e["kind"] for e in current["events"]]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _cli(srv):
    """The `modelport` command against this server (its data dir's admin token)."""
    env = {**srv.env, "MODELPORT_URL": srv.url}

    def run(*args):
        return subprocess.run(
            [*MODELPORT, *args], capture_output=True, text=True, env=env, timeout=300
        )

    return run


def test_cli_deploy_predict_rollback(offline_server, tmp_path):
    run = _cli(offline_server().start())
    for b in ("1.0", "2.0"):
        folder = write_project(tmp_path / f"v{b}", {"predict.py": typed(float(b))})
        out = run(
            "deploy",
            str(folder),
            "--name",
            "cli",
            "--entry",
            "predict.py:predict",
            "--replicas",
            "2",
            "--example-input",
            '{"a": 1}',
        )
        assert out.returncode == 0, out.stderr
    assert "access key (shown once)" in out.stdout or "curl" in out.stdout
    assert run("predict", "cli", '{"a": 1}').stdout.strip() == "3.0"
    assert run("rollback", "cli").returncode == 0
    assert run("predict", "cli", '{"a": 1}').stdout.strip() == "2.0"
    assert run("scale", "cli", "1").returncode == 0
    listed = msgspec.json.decode(run("replicas", "cli", "--json").stdout)["items"]
    assert len(listed) == 1
    history = msgspec.json.decode(run("deployments", "cli", "--json").stdout)["items"]
    assert [h["build"] for h in history] == [1, 2, 1]
    series = msgspec.json.decode(run("metrics", "cli", "--json").stdout)
    assert series["step_s"] == 10 and sum(p["requests"] for p in series["points"]) >= 2
    assert {p["build"] for p in series["points"]} == {1, 2}
    table = run("metrics", "cli", "--since", "15m", "--step", "60")
    assert table.returncode == 0 and "p99 ms" in table.stdout
    assert "cli: 60 s per row" in table.stdout
    assert run("stop", "cli").returncode == 0
    bad = run("predict", "cli", '{"a": 1}')
    assert bad.returncode == 1 and "model.not_deployed" in bad.stderr


def test_cli_deploy_of_a_new_version_keeps_how_the_model_is_served(offline_server, tmp_path):
    run = _cli(offline_server().start())
    code = (
        "import os\n"
        "def predict(a: float, b: float = {b}) -> dict:\n"
        "    return {{'sum': a + b, 'greeting': os.environ.get('GREETING')}}\n"
    )
    first = write_project(tmp_path / "v1", {"predict.py": code.format(b=1.0)})
    out = run(
        "deploy",
        str(first),
        "--name",
        "keep",
        "--entry",
        "predict.py:predict",
        "--replicas",
        "2",
        "--timeout-s",
        "7",
        "--env",
        "GREETING=hello",
    )
    assert out.returncode == 0, out.stderr
    # No example input: the curl line shows the required fields, on one line, to copy as it is.
    curl = [line for line in out.stdout.splitlines() if line.startswith("curl ")]
    assert len(curl) == 1 and curl[0].endswith("""-d '{"a":0}'""")
    second = write_project(tmp_path / "v2", {"predict.py": code.format(b=2.0)})
    out = run("deploy", str(second), "--name", "keep", "--entry", "predict.py:predict")
    assert out.returncode == 0, out.stderr
    assert "2 replica(s)" in out.stdout
    now = msgspec.json.decode(run("deployments", "keep", "--json").stdout)["items"][0]
    assert (now["build"], now["replicas"], now["timeout_s"], now["env_keys"]) == (
        2,
        2,
        7.0,
        ["GREETING"],
    )
    answer = msgspec.json.decode(run("predict", "keep", '{"a": 1}').stdout)
    assert answer == {"sum": 3.0, "greeting": "hello"}
    out = run(
        "deploy",
        str(first),
        "--name",
        "keep",
        "--entry",
        "predict.py:predict",
        "--replicas",
        "1",
        "--env",
        "GREETING=bye",
    )
    assert out.returncode == 0, out.stderr
    now = msgspec.json.decode(run("deployments", "keep", "--json").stdout)["items"][0]
    assert (now["replicas"], now["timeout_s"]) == (1, 7.0)
    assert msgspec.json.decode(run("predict", "keep", '{"a": 1}').stdout)["greeting"] == "bye"


def test_cli_capture_turned_on_and_read(offline_server, tmp_path):
    run = _cli(offline_server().start())
    folder = write_project(tmp_path / "cap", {"predict.py": typed(1.0)})
    out = run(
        "deploy",
        str(folder),
        "--name",
        "cap",
        "--entry",
        "predict.py:predict",
        "--capture-percent",
        "100",
    )
    assert out.returncode == 0, out.stderr
    assert run("captures", "cap").stdout.startswith("No captured request of cap build #1")
    now = msgspec.json.decode(run("deployments", "cap", "--json").stdout)["items"][0]
    assert now["capture_percent"] == 100
    assert run("predict", "cap", '{"a": 41}').stdout.strip() == "42.0"
    deadline = time.monotonic() + 30  # captures are written with the monitoring flush
    while time.monotonic() < deadline:
        page = msgspec.json.decode(run("captures", "cap", "--json").stdout)
        if page["items"]:
            break
        time.sleep(0.5)
    assert [(c["request"], c["response"], c["status"]) for c in page["items"]] == [
        ({"a": 41}, 42.0, 200)
    ]
    table = run("captures", "cap", "--build", "1")
    assert table.returncode == 0 and '{"a":41}' in table.stdout and "42.0" in table.stdout
    bad = run(
        "deploy",
        str(folder),
        "--name",
        "cap",
        "--entry",
        "predict.py:predict",
        "--capture-percent",
        "101",
    )
    assert bad.returncode == 2 and "101" in bad.stderr


def test_the_prediction_endpoints_openapi(d):
    d.model("shapes")
    code = (
        "import msgspec\n"
        "class Point(msgspec.Struct):\n    x: float\n    y: float\n"
        "class Req(msgspec.Struct):\n    points: list[Point]\n    scale: float = 1.0\n"
        "def predict(req: Req) -> list[float]:\n"
        "    return [p.x * req.scale for p in req.points]\n"
    )
    assert d.c.get("/api/v1/models/shapes/openapi.json").status_code == 404
    d.deploy(
        "shapes",
        d.build("shapes", {"predict.py": code}, example_input={"points": [{"x": 1, "y": 2}]}),
    )
    doc = d.c.get("/api/v1/models/shapes/openapi.json").json()
    post = doc["paths"]["/models/shapes/predict"]["post"]
    body = post["requestBody"]["content"]["application/json"]
    assert body["example"] == {"points": [{"x": 1, "y": 2}]}
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == {
        "type": "array",
        "items": {"type": "number"},
    }
    assert post["responses"]["422"]["description"].startswith("request.invalid")
    refs = []

    def walk(node):
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert refs and all(r.startswith("#/components/schemas/") for r in refs)
    assert all(r.split("/")[-1] in doc["components"]["schemas"] for r in refs)
    assert "Point" in doc["components"]["schemas"]
    assert d.predict("shapes", {"points": [{"x": 2, "y": 0}], "scale": 3}).json() == [6.0]


def test_a_deployments_own_body_limit(d):
    d.model("big")
    code = "def predict(text: str) -> int:\n    return len(text)\n"
    d.deploy("big", d.build("big", {"predict.py": code}), max_body_mb=8)
    six = "x" * (6 << 20)  # over the 5 MiB default, under this deployment's 8
    assert d.predict("big", {"text": six}).json() == len(six)
    nine = d.predict("big", {"text": "x" * (9 << 20)})
    assert nine.status_code == 413 and nine.json()["error"]["code"] == "request.too_large"
