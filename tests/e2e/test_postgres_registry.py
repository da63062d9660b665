"""A real `modelport serve` with its registry in a real PostgreSQL (MODELPORT_DATABASE_URL):
deploy and predict, everything kept in the database across a restart, a schema newer than the
server refused at start (on both backends), the database stopped and back."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    MODELPORT,
    Postgres,
    free_port,
    pack_bytes,
    upload_build,
    wait_build,
    write_project,
)

ADDER = {"predict.py": "def predict(a: float, b: float) -> float:\n    return a + b\n"}


def _deploy(srv, tmp_path: Path, name: str = "adder") -> str:
    c = srv.client()
    key = c.post("/api/v1/models", json={"name": name}).json()["access_key"]
    folder = write_project(tmp_path / f"{name}-project", ADDER)
    number = upload_build(c, name, pack_bytes(folder), entrypoint="predict.py:predict").json()[
        "number"
    ]
    assert wait_build(c, name, number)["status"] == "built"
    made = c.post(f"/api/v1/models/{name}/deployments", json={"build": number})
    assert made.status_code == 202, made.text
    _wait_deployed(srv, name, made.json()["id"])
    return key


def _wait_deployed(srv, name: str, deployment_id: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = srv.client().get(f"/api/v1/models/{name}/deployments/{deployment_id}").json()
        if found["status"] in ("deployed", "failed", "stopped"):
            assert found["status"] == "deployed", found
            return
        time.sleep(0.1)
    raise TimeoutError(found)


def _predict(srv, name: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/models/{name}/predict",
        json={"a": 1, "b": 2},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def _wait_ready(srv, name: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{srv.url}/models/{name}/ready", timeout=5).status_code == 200:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{name} not ready:\n{srv.log()}")


@pytest.mark.slow
def test_a_server_on_postgres_deploys_predicts_and_keeps_it_all_in_the_database(
    offline_server, postgres, pg_url, tmp_path
):
    srv = offline_server()
    srv.env["MODELPORT_DATABASE_URL"] = pg_url
    srv.start(timeout=60)
    key = _deploy(srv, tmp_path)
    answer = _predict(srv, "adder", key)
    assert answer.status_code == 200 and answer.json() == 3.0
    assert not (srv.data_dir / "registry.sqlite3").exists()
    database = pg_url.rpartition("/")[2]
    assert postgres.psql("SELECT count(*) FROM builds", database) == "1"
    assert postgres.psql("SELECT status FROM deployments", database) == "deployed"

    srv.stop()  # the deployment comes back from the database, the token still works
    srv.start(timeout=60)
    _wait_ready(srv, "adder")
    assert _predict(srv, "adder", key).json() == 3.0
    audit = srv.client().get("/api/v1/audit").json()["items"]
    assert {"model.create", "build.create", "deployment.create"} <= {e["action"] for e in audit}


def _age(registry_path: Path | None, pg: tuple[Postgres, str] | None, version: int) -> None:
    if registry_path is not None:
        conn = sqlite3.connect(registry_path)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
        conn.close()
    else:
        assert pg is not None
        postgres, database = pg
        postgres.psql(
            f"INSERT INTO modelport_schema (version, applied_at) VALUES ({version}, 'later')",
            database,
        )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_server_refuses_a_registry_newer_than_it_knows(
    backend, make_server, postgres, tmp_path, request
):
    from modelport.registry.schema import MIGRATIONS

    srv = make_server()
    pg = None
    if backend == "postgresql":
        url = request.getfixturevalue("pg_url")
        srv.env["MODELPORT_DATABASE_URL"] = url
        pg = (postgres, url.rpartition("/")[2])
    srv.start(timeout=60)  # migrated to what this modelport knows
    srv.stop()
    _age(
        srv.data_dir / "registry.sqlite3" if backend == "sqlite" else None, pg, len(MIGRATIONS) + 1
    )
    done = subprocess.run(
        [*MODELPORT, "serve", "--port", str(free_port()), "--data-dir", str(srv.data_dir)],
        env=srv.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"schema version {len(MIGRATIONS) + 1}, newer than this modelport knows" in done.stderr
    assert "Upgrade modelport" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def own_postgres():
    """A PostgreSQL of this test's own (the session's stays up): stopped and started at will."""
    folder = Path(tempfile.mkdtemp(prefix="modelport-pg-own-"))
    pg = Postgres(folder=folder, port=free_port())
    pg.start()
    yield pg
    pg.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_postgres_stopped_management_is_503_predictions_go_on_and_it_recovers(
    offline_server, own_postgres, tmp_path
):
    srv = offline_server()
    srv.env["MODELPORT_DATABASE_URL"] = own_postgres.url()
    srv.start(timeout=60)
    key = _deploy(srv, tmp_path)
    c = srv.client()

    own_postgres.stop()
    try:
        for _ in range(20):  # predictions are served from memory meanwhile
            assert _predict(srv, "adder", key).json() == 3.0
        for call in (
            lambda: c.get("/api/v1/models"),
            lambda: c.post("/api/v1/models", json={"name": "other"}),
            lambda: c.get("/api/v1/models/adder/deployments"),
        ):
            answer = call()
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert error["code"] == "registry.unavailable"
            assert "cannot be reached" in error["message"]
        assert httpx.get(f"{srv.url}/api/v1/health", timeout=10).status_code == 200
    finally:
        own_postgres.start()

    deadline = time.monotonic() + 30  # recovers by itself: no restart
    while c.get("/api/v1/models").status_code != 200:
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.2)
    assert c.post("/api/v1/models", json={"name": "other"}).status_code == 201
    assert _predict(srv, "adder", key).json() == 3.0
    assert srv.proc is not None and srv.proc.poll() is None


def test_servers_sharing_a_registry_must_share_its_key(make_server, pg_url, tmp_path):
    first = make_server()
    first.env["MODELPORT_DATABASE_URL"] = pg_url
    first.start(timeout=60)
    first.stop()
    other = make_server()  # its own data dir: a secret.key of its own
    other.env["MODELPORT_DATABASE_URL"] = pg_url
    done = subprocess.run(
        [*MODELPORT, "serve", "--port", str(free_port()), "--data-dir", str(other.data_dir)],
        env=other.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "sealed with another key" in done.stderr
    assert "MODELPORT_SECRET_KEY_FILE" in done.stderr

    shared = tmp_path / "shared.key"  # as a mounted secret: one file every server reads
    shutil.copy2(first.data_dir / "secret.key", shared)
    other.env["MODELPORT_SECRET_KEY_FILE"] = str(shared)
    other.start(timeout=60)  # up: its health answers
    assert other.proc is not None and other.proc.poll() is None
