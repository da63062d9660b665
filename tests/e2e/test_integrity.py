"""Secrets and integrity at rest, through a real server and real replicas: the data dir's modes,
deployment env values sealed in the registry, and served project folders checked and restored."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.e2e.test_deployments import Deployed

pytestmark = pytest.mark.slow

ECHO_ENV = ("import os\ndef predict(name: str) -> str | None:\n"
            "    return os.environ.get(name)\n")


def _registry_bytes(data_dir: Path) -> bytes:
    """Every byte of the registry's files as they are on disk (the file, its -wal and -shm)."""
    return b"".join(p.read_bytes() for p in data_dir.glob("registry.sqlite3*"))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_env_values_are_sealed_in_the_registry_and_still_reach_the_replica(offline_server,
                                                                          tmp_path):
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
    # The registry as modelport wrote it before sealing (version 4): env in clear, no flag.
    secret = "old-clear-" + os.urandom(8).hex()
    conn = sqlite3.connect(srv.data_dir / "registry.sqlite3")
    conn.execute("UPDATE deployments SET env = ?", (f'{{"API_TOKEN":"{secret}"}}',))
    conn.execute("ALTER TABLE deployments DROP COLUMN env_sealed")
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
    for dirpath, dirnames, filenames in os.walk(srv.data_dir):  # as a careless copy leaves it
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                os.chmod(path, 0o644)

    srv.start()
    data = srv.data_dir
    assert _mode(data) == 0o700
    for name in ("registry.sqlite3", "registry.sqlite3-wal", "registry.sqlite3-shm",
                 "admin.token", "secret.key", "server.lock"):
        assert _mode(data / name) == 0o600, name
    for top in data.iterdir():
        if top.is_dir():
            assert _mode(top) == 0o700, top.name
    logs = [p for p in (data / "logs").rglob("*")]
    assert any(p.suffix == ".stderr" for p in logs)
    for path in logs:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path
    # what the server makes from now on is private too (umask): a new build's log
    d = Deployed(srv, tmp_path)
    d.build("env", {"predict.py": ECHO_ENV + "\n"})
    for path in (data / "logs").rglob("*"):
        assert _mode(path) & 0o077 == 0, path
