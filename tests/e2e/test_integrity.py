"""Secrets and integrity at rest, through a real server and real replicas: the data dir's modes,
deployment env values sealed in the registry, and served project folders checked and restored."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from modelport.registry import schema

from tests.conftest import MODELPORT
from tests.e2e.test_deployments import Deployed

pytestmark = pytest.mark.slow

ECHO_ENV = "import os\ndef predict(name: str) -> str | None:\n    return os.environ.get(name)\n"


def _registry_bytes(data_dir: Path) -> bytes:
    """Every byte of the registry's files as they are on disk (the file, its -wal and -shm)."""
    return b"".join(p.read_bytes() for p in data_dir.glob("registry.sqlite3*"))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_env_values_are_sealed_in_the_registry_and_still_reach_the_replica(
    offline_server, tmp_path
):
    srv = offline_server().start()
    d = Deployed(srv, tmp_path)
    d.model("env")
    secret = "s3cr3t-value-" + os.urandom(8).hex()
    done = d.deploy("env", d.build("env", {"predict.py": ECHO_ENV}), env={"API_TOKEN": secret})
    assert done["status"] == "deployed" and done["env_keys"] == ["API_TOKEN"]
    assert d.predict("env", {"name": "API_TOKEN"}).json() == secret
    assert secret.encode() not in _registry_bytes(srv.data_dir)
    key = srv.data_dir / "secret.key"
    assert _mode(key) == 0o600 and len(key.read_bytes()) == 32

    # keep_current carries the value over (the API still never shows it)
    again = d.deploy("env", done["build"], keep_current=True, timeout_s=9)
    assert again["status"] == "deployed" and again["env_keys"] == ["API_TOKEN"]
    assert secret not in d.c.get("/api/v1/models/env/deployments/current").text
    assert d.predict("env", {"name": "API_TOKEN"}).json() == secret

    srv.stop()
    assert secret.encode() not in _registry_bytes(srv.data_dir)


def test_clear_env_rows_of_an_older_registry_are_sealed_at_start(offline_server, tmp_path):
    srv = offline_server().start()
    d = Deployed(srv, tmp_path)
    d.model("env")
    d.deploy("env", d.build("env", {"predict.py": ECHO_ENV}), env={"API_TOKEN": "placeholder"})
    srv.stop()
    # The registry as modelport wrote it before sealing (version 4): env in clear, no flag. What
    # migrations 5 to 13 made is undone by hand: a migration more needs its undo here too.
    assert len(schema.MIGRATIONS) == 13, "undo the newer migrations below, then count them here"
    secret = "old-clear-" + os.urandom(8).hex()
    conn = sqlite3.connect(srv.data_dir / "registry.sqlite3")
    conn.execute("UPDATE deployments SET env = ?", (f'{{"API_TOKEN":"{secret}"}}',))
    conn.execute("ALTER TABLE deployments DROP COLUMN env_sealed")
    conn.execute("ALTER TABLE builds ADD COLUMN env_python TEXT")  # dropped by migration 6
    conn.execute("CREATE TABLE replicas (id TEXT PRIMARY KEY)")  # likewise
    conn.execute("DROP INDEX deployments_one_deployed")  # made by migration 7
    for column in ("cpus", "gpus", "resources", "placement"):  # added by migration 8
        conn.execute(f"ALTER TABLE deployments DROP COLUMN {column}")
    conn.execute("DROP TABLE seal_check")  # made by migration 9
    conn.execute("DROP TABLE replay_reports")  # made by migration 10 (its indexes with it)
    conn.execute("ALTER TABLE deployments DROP COLUMN require_replay")  # likewise
    conn.execute("DROP TABLE servers")  # made by migration 11
    conn.execute("DROP TABLE leadership")  # likewise
    conn.execute("ALTER TABLE deployments DROP COLUMN node")  # likewise
    for column in ("candidate_of", "traffic_mode", "candidate_percent", "sticky_header", "guard"):
        conn.execute(f"ALTER TABLE deployments DROP COLUMN {column}")  # added by migration 12
    conn.execute("ALTER TABLE captures DROP COLUMN source")  # likewise
    # (migration 13 only added a column to replay_reports, gone with the table)
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    assert secret.encode() in _registry_bytes(srv.data_dir)

    srv.start()
    assert secret.encode() not in _registry_bytes(srv.data_dir)
    current = d.c.get("/api/v1/models/env/deployments/current").json()
    d.wait("env", current["id"])
    _until(lambda: d.predict("env", {"name": "API_TOKEN"}).status_code == 200)
    assert d.predict("env", {"name": "API_TOKEN"}).json() == secret


def _until(check, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_data_dir_modes_are_fixed_at_start_whatever_they_were(offline_server, tmp_path):
    srv = offline_server().start()
    d = Deployed(srv, tmp_path)
    d.model("env")
    d.deploy("env", d.build("env", {"predict.py": ECHO_ENV}), env={"A": "1"})
    srv.stop()
    for dirpath, _dirnames, filenames in os.walk(srv.data_dir):  # as a careless copy leaves it
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                os.chmod(path, 0o644)

    srv.start()
    data = srv.data_dir
    assert _mode(data) == 0o700
    for name in (
        "registry.sqlite3",
        "registry.sqlite3-wal",
        "registry.sqlite3-shm",
        "admin.token",
        "secret.key",
        "server.lock",
    ):
        assert _mode(data / name) == 0o600, name
    for top in data.iterdir():
        if top.is_dir():
            assert _mode(top) == 0o700, top.name
    logs = [p for p in (data / "logs").rglob("*")]
    assert any(p.suffix == ".stderr" for p in logs)
    for path in logs:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path
    # the restored deployment's replica found its project folder writable: read-only again
    _until(lambda: d.predict("env", {"name": "A"}).status_code == 200)
    assert d.predict("env", {"name": "A"}).json() == "1"
    (project,) = (data / "projects").iterdir()
    assert _mode(project) == 0o555 and _mode(project / "predict.py") == 0o444
    # what the server makes from now on is private too (umask): a new build's log
    d.build("env", {"predict.py": ECHO_ENV + "\n"})
    for path in (data / "logs").rglob("*"):
        assert _mode(path) & 0o077 == 0, path


ORIGINAL = 'def predict(x: int) -> str:\n    return "original"\n'
EVIL = 'def predict(x: int) -> str:\n    return "tampered"\n'


def _tamper(path: Path, text: str) -> None:
    """What a hostile model running as the server's user could do to a served file."""
    os.chmod(path, 0o644)
    path.write_text(text)


def _events(d: Deployed, name: str) -> list[dict]:
    return d.c.get(f"/api/v1/models/{name}/deployments/current").json()["events"]


def _restart(d: Deployed, name: str) -> str:
    seen = len(_events(d, name))
    assert d.c.post(f"/api/v1/models/{name}/restart").status_code == 202
    _until(
        lambda: any(e["kind"] in ("restarted", "restart_failed") for e in _events(d, name)[seen:])
    )
    return [e for e in _events(d, name)[seen:] if e["kind"].startswith("restart")][-1]


def _replica_log(d: Deployed, name: str) -> str:
    replica = d.c.get(f"/api/v1/models/{name}/replicas").json()["items"][0]
    return d.c.get(
        f"/api/v1/models/{name}/replicas/{replica['id']}/logs", params={"stream": "stderr"}
    ).text


def test_a_tampered_served_file_is_restored_at_restart_rebuild_and_verify(offline_server, tmp_path):
    srv = offline_server().start()
    d = Deployed(srv, tmp_path)
    d.model("m")
    files = {"predict.py": ORIGINAL, "notes.txt": "data\n"}
    first = d.build("m", files)
    d.deploy("m", first)
    assert d.predict("m", {"x": 1}).json() == "original"
    digest = d.c.get(f"/api/v1/models/m/builds/{first}").json()["digest"]
    folder = srv.data_dir / "projects" / digest.removeprefix("sha256:")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o555
    assert stat.S_IMODE((folder / "predict.py").stat().st_mode) == 0o444

    # 1. restart: the replica's start finds the change and runs from a restored folder
    _tamper(folder / "predict.py", EVIL)
    assert _restart(d, "m")["kind"] == "restarted"
    assert d.predict("m", {"x": 1}).json() == "original"
    assert (
        "project folder tampered with (predict.py changed): restored from the store"
        in _replica_log(d, "m")
    )
    assert "predict.py changed" in srv.log() and str(folder) in srv.log()

    # 2. the same folder built again (same digest) does not take the tampered folder as it is
    _tamper(folder / "predict.py", EVIL)
    os.chmod(folder, 0o755)
    (folder / "extra.py").write_text("import os\n")
    second = d.build("m", files)
    built = d.c.get(f"/api/v1/models/m/builds/{second}").json()
    assert built["digest"] == digest
    log = d.c.get(f"/api/v1/models/m/builds/{second}/log").text
    assert "extra.py added, predict.py changed" in log and "restored from the store" in log
    assert (folder / "predict.py").read_text() == ORIGINAL and not (folder / "extra.py").exists()
    d.deploy("m", second)
    assert d.predict("m", {"x": 1}).json() == "original"

    # 3. store verify reports a tampered folder, and repair restores it (API, then CLI)
    ok = d.c.post("/api/v1/store/verify").json()
    assert ok["projects"] >= 1 and ok["tampered"] == []
    _tamper(folder / "notes.txt", "changed\n")
    found = d.c.post("/api/v1/store/verify").json()["tampered"]
    assert [(f["digest"], f["repaired"]) for f in found] == [(digest, False)]
    assert {"path": "notes.txt", "problem": "changed"} in found[0]["files"]
    repaired = d.c.post("/api/v1/store/verify", params={"repair": "true"}).json()["tampered"]
    assert repaired[0]["repaired"] is True
    assert (folder / "notes.txt").read_text() == "data\n"
    assert d.c.post("/api/v1/store/verify").json()["tampered"] == []
    assert d.predict("m", {"x": 1}).json() == "original"

    _tamper(folder / "predict.py", EVIL)
    cli = [*MODELPORT, "verify", "--data-dir", str(srv.data_dir)]
    report = subprocess.run([*cli, "--json"], capture_output=True, text=True, env=srv.env)
    assert report.returncode == 1
    assert json.loads(report.stdout)["tampered"][0]["files"] == [
        {"path": "predict.py", "problem": "changed"}
    ]
    fixed = subprocess.run([*cli, "--repair"], capture_output=True, text=True, env=srv.env)
    assert fixed.returncode == 0, fixed.stderr
    assert "predict.py changed" in fixed.stderr and "repaired" in fixed.stderr
    assert subprocess.run(cli, capture_output=True, env=srv.env).returncode == 0
    assert (folder / "predict.py").read_text() == ORIGINAL


def test_a_replica_does_not_start_from_a_folder_the_store_cannot_restore(offline_server, tmp_path):
    srv = offline_server().start()
    d = Deployed(srv, tmp_path)
    d.model("m")
    build = d.build("m", {"predict.py": ORIGINAL})
    d.deploy("m", build)
    manifest = d.c.get(f"/api/v1/models/m/builds/{build}").json()
    folder = srv.data_dir / "projects" / manifest["digest"].removeprefix("sha256:")
    _tamper(folder / "predict.py", EVIL)
    code = hashlib.sha256(ORIGINAL.encode()).hexdigest()
    obj = srv.data_dir / "store" / "objects" / code[:2] / code[2:]  # predict.py's stored copy
    os.chmod(obj, 0o644)
    obj.write_bytes(obj.read_bytes()[:-2])
    event = _restart(d, "m")
    assert event["kind"] == "restart_failed"
    assert "tampered with (predict.py changed)" in event["detail"]["error"]
    assert "the store cannot restore it" in event["detail"]["error"]
    assert "tampered with (predict.py changed) and cannot be restored" in srv.log()
