"""Two real `modelport serve` on one PostgreSQL registry and one S3 bucket (radosgw), each on its
own data dir and port: what one server changes, the other learns from the registry (LISTEN/NOTIFY)
without a restart — keys, tokens, models, deployments, rollbacks, stops."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import S3_CREDENTIALS, pack_bytes, upload_build, wait_build, write_project

ADDER = {"predict.py": "def predict(a: float, b: float) -> float:\n    return a + b\n"}
TIMES = {"predict.py": "def predict(a: float, b: float) -> float:\n    return a * b\n"}

pytestmark = pytest.mark.slow


@pytest.fixture
def pair(offline_server, postgres, pg_url, s3_server, tmp_path):
    """Servers a and b: the same registry, bucket and sealing key; a started first."""
    key_file = tmp_path / "sealing.key"
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o600)
    store_url = s3_server.url(s3_server.prefix())
    servers = []
    for node in ("a", "b"):
        srv = offline_server()
        srv.env.update(S3_CREDENTIALS)
        srv.env["MODELPORT_DATABASE_URL"] = pg_url
        srv.env["MODELPORT_STORE_URL"] = store_url
        srv.env["MODELPORT_SECRET_KEY_FILE"] = str(key_file)
        srv.env["MODELPORT_NODE"] = node
        servers.append(srv)
    a, b = servers
    a.start(timeout=90)
    b.start(timeout=90)
    b.token = a.token  # the first start's admin token, in a's data dir: the registry's
    return a, b


def predict(srv, name: str, key: str, body: dict | None = None) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/models/{name}/predict",
        json=body or {"a": 2, "b": 3},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def until(check, timeout: float = 60.0, every: float = 0.02):
    """Poll ``check`` until it returns something true; (that value, seconds it took)."""
    start = time.monotonic()
    while True:
        found = check()
        if found:
            return found, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not within {timeout} s")
        time.sleep(every)


def build(srv, tmp_path: Path, name: str, files: dict[str, str]) -> int:
    c = srv.client()
    folder = write_project(tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}", files)
    made = upload_build(c, name, pack_bytes(folder), entrypoint="predict.py:predict")
    assert made.status_code == 202, made.text
    number = made.json()["number"]
    assert wait_build(c, name, number)["status"] == "built"
    return number


def deploy(srv, name: str, number: int, **settings) -> int:
    made = srv.client().post(
        f"/api/v1/models/{name}/deployments", json={"build": number, **settings}
    )
    assert made.status_code == 202, made.text
    wait_status(srv, name, made.json()["id"], "deployed")
    return made.json()["id"]


def wait_status(srv, name: str, deployment_id: int, status: str, timeout: float = 120) -> dict:
    def check():
        found = srv.client().get(f"/api/v1/models/{name}/deployments/{deployment_id}").json()
        if found["status"] in ("deployed", "failed", "stopped"):
            assert found["status"] == status, found
            return found
        return None

    return until(check, timeout, every=0.1)[0]


def test_a_key_rotated_or_a_token_revoked_on_one_server_is_refused_on_the_other(pair):
    a, b = pair
    made = a.client().post("/api/v1/models", json={"name": "m"})
    assert made.status_code == 201
    old = made.json()["access_key"]
    # b learns of the model a made: its key is known there (no deployment: 404 not_deployed,
    # not 401 or model.not_found)
    answer, _ = until(lambda: (r := predict(b, "m", old)).status_code == 404 and r)
    assert answer.json()["error"]["code"] == "model.not_deployed"

    new = a.client().post("/api/v1/models/m/access-key/rotate").json()["access_key"]
    refused, took = until(lambda: (r := predict(b, "m", old)).status_code == 401 and r)
    assert refused.json()["error"]["code"] == "auth.invalid"
    print(f"key rotated on a, refused on b after {took * 1000:.0f} ms")
    assert predict(b, "m", new).status_code == 404  # the new key is known there

    token = a.client().post("/api/v1/tokens", json={"name": "ci", "role": "viewer"}).json()
    with b.client(token["token"]) as viewer:
        until(lambda: viewer.get("/api/v1/models").status_code == 200)
        assert a.client().delete(f"/api/v1/tokens/{token['id']}").status_code == 200
        gone, took = until(lambda: (r := viewer.get("/api/v1/models")).status_code == 401 and r)
    assert gone.json()["error"]["code"] == "auth.invalid"
    print(f"token revoked on a, refused on b after {took * 1000:.0f} ms")

    assert a.client().delete("/api/v1/models/m").status_code == 204
    lost, _ = until(lambda: (r := predict(b, "m", new)).status_code == 404 and r)
    assert lost.json()["error"]["code"] == "model.not_found"


def test_what_one_server_deploys_rolls_back_and_stops_the_other_serves(pair, tmp_path):
    a, b = pair
    key = a.client().post("/api/v1/models", json={"name": "calc"}).json()["access_key"]
    first = build(a, tmp_path, "calc", ADDER)
    second = build(a, tmp_path, "calc", TIMES)
    deploy(a, "calc", first)
    served, took = until(lambda: (r := predict(b, "calc", key)).status_code == 200 and r)
    assert served.json() == 5.0 and served.headers["x-model-build"] == str(first)
    print(f"deployed on a, served on b {took * 1000:.0f} ms after a's deployment was deployed")

    deploy(a, "calc", second, replicas=2)
    until(lambda: predict(b, "calc", key).json() == 6.0)
    replicas = b.client().get("/api/v1/models/calc/replicas").json()
    assert len(replicas["items"] if isinstance(replicas, dict) else replicas) == 2

    started = time.monotonic()
    rolled = a.client().post("/api/v1/models/calc/rollback", json={})
    assert rolled.status_code == 202, rolled.text
    _, took = until(lambda: predict(a, "calc", key).json() == 5.0, every=0.005)
    print(f"rollback called on a, a serves the old build {time.monotonic() - started:.3f} s later")
    _, took = until(lambda: predict(b, "calc", key).json() == 5.0, every=0.005)
    print(f"rollback called on a, b serves the old build {time.monotonic() - started:.3f} s later")
    wait_status(a, "calc", rolled.json()["id"], "deployed")

    assert a.client().post("/api/v1/models/calc/stop").status_code == 200
    stopped, _ = until(lambda: (r := predict(b, "calc", key)).status_code == 404 and r)
    assert stopped.json()["error"]["code"] == "model.not_deployed"
