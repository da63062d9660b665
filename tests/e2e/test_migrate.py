"""`modelport migrate` through the real CLI: a one-machine data dir (SQLite + local store) moved
into a real PostgreSQL and a real S3 bucket (radosgw), then served from there by a new server on
another data dir; resumed after it stopped half-way; refusing a target of another registry and a
corrupt local object."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.conftest import MODELPORT, S3_CREDENTIALS
from tests.e2e.test_postgres_registry import _deploy, _predict, _wait_ready

pytestmark = pytest.mark.slow


def _migrate(srv, *args: str) -> subprocess.CompletedProcess:
    env = {**srv.env, **S3_CREDENTIALS}
    return subprocess.run(
        [*MODELPORT, "migrate", "--data-dir", str(srv.data_dir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def one_machine(offline_server, tmp_path):
    """A data dir as one server leaves it: a model built, deployed and called, a token made."""
    srv = offline_server()
    srv.start(timeout=60)
    key = _deploy(srv, tmp_path)
    assert _predict(srv, "adder", key).json() == 3.0
    token = srv.client().post("/api/v1/tokens", json={"name": "ci", "role": "deployer"}).json()
    srv.stop()
    return srv, key, token["token"]


def test_migrate_moves_a_data_dir_that_a_new_server_then_serves(
    one_machine, offline_server, postgres, pg_url, s3_server
):
    srv, key, token = one_machine
    store_url = s3_server.url(s3_server.prefix())
    done = _migrate(srv, "--to", pg_url, "--store", store_url, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["objects"]["copied"] == report["objects"]["source"] > 0
    assert report["objects"]["problems"] == [] and report["objects"]["missing"] == []
    tables = {t["table"]: t for t in report["tables"]}
    assert tables["builds"]["target"] == tables["builds"]["source"] == 1
    assert tables["deployments"]["target"] == 1 and tables["tokens"]["target"] == 2

    again = _migrate(srv, "--to", pg_url, "--store", store_url, "--json")  # nothing left to do
    second = json.loads(again.stdout)
    assert again.returncode == 0 and second["objects"]["copied"] == 0
    assert all(t["written"] == 0 for t in second["tables"])

    new = offline_server()  # another machine: its own data dir, the same secret key
    new.data_dir.mkdir(parents=True)
    shutil.copy2(srv.data_dir / "secret.key", new.data_dir / "secret.key")
    new.env.update(S3_CREDENTIALS)
    new.env["MODELPORT_DATABASE_URL"] = pg_url
    new.env["MODELPORT_STORE_URL"] = store_url
    new.start(timeout=90)
    _wait_ready(new, "adder", timeout=180)
    assert _predict(new, "adder", key).json() == 3.0
    c = new.client(token)
    assert [b["number"] for b in c.get("/api/v1/models/adder/builds").json()["items"]] == [1]
    second_model = c.post("/api/v1/models", json={"name": "after"})  # ids go on after the copy
    assert second_model.status_code == 201, second_model.text


def test_migrate_resumes_what_a_stopped_run_left_and_refuses_another_registrys_database(
    one_machine, postgres, pg_url, s3_server
):
    srv, _, _ = one_machine
    prefix = s3_server.prefix()
    store_url = s3_server.url(prefix)
    assert _migrate(srv, "--to", pg_url, "--store", store_url).returncode == 0
    database = pg_url.rpartition("/")[2]
    audit = int(postgres.psql("SELECT count(*) FROM audit", database))
    # as a run stopped half-way leaves it: the newest rows of a table and an object not there
    postgres.psql("DELETE FROM audit WHERE id > (SELECT min(id) FROM audit)", database)
    postgres.psql("DELETE FROM deployment_events", database)
    bucket = s3_server.client(prefix)
    import obstore

    first = next(iter(obstore.list(bucket, "objects/")))[0]["path"]
    obstore.delete(bucket, first)

    done = _migrate(srv, "--to", pg_url, "--store", store_url, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["objects"]["copied"] == 1
    tables = {t["table"]: t for t in report["tables"]}
    assert tables["audit"]["written"] == audit - 1 and tables["audit"]["target"] == audit
    assert tables["deployment_events"]["written"] == tables["deployment_events"]["source"]

    other = postgres.fresh_database()  # a database holding another registry's rows
    assert _migrate(srv, "--to", other).returncode == 0
    postgres.psql(
        "INSERT INTO tokens (id, name, role, hash, created_at) VALUES"
        " ('tok_other', 'x', 'admin', 'h-other', 't')",
        other.rpartition("/")[2],
    )
    refused = _migrate(srv, "--to", other)
    assert refused.returncode == 1
    assert "table tokens" in refused.stderr and "another registry" in refused.stderr


def test_migrate_names_a_corrupt_local_object_and_writes_no_rows(
    one_machine, postgres, pg_url, s3_server
):
    srv, _, _ = one_machine
    objects = sorted(p for p in (srv.data_dir / "store" / "objects").rglob("*") if p.is_file())
    victim = objects[0]
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    done = _migrate(srv, "--to", pg_url, "--store", s3_server.url(s3_server.prefix()))
    assert done.returncode == 1
    assert victim.parent.name + victim.name in done.stderr.replace("\n", "")
    assert "corrupt" in done.stderr
    database = pg_url.rpartition("/")[2]
    tables = postgres.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'models'", database)
    assert tables == "0"  # the registry is not copied before the store is
