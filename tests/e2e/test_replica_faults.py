"""Replica faults through a real server: a boot past boot_timeout_s, a stop or a newer deployment
while replicas boot, and a replica that stops answering (SIGSTOP)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.test_deployments import Deployed

# Builds fine (the build's inspect step imports it at once); a replica whose deployment sets
# IMPORT_S sleeps that long while importing.
SLOW_IMPORT = (
    "import os, time\n"
    "time.sleep(float(os.environ.get('IMPORT_S', '0')))\n"
    "def predict(a: float) -> dict:\n"
    "    return {'a': a, 'pid': os.getpid()}\n"
)


@pytest.fixture
def d(offline_server, tmp_path):
    return Deployed(offline_server().start(), tmp_path)


def _workers(data_dir: Path) -> list[int]:
    """Replica processes of this server (their command line names its data dir); not zombies."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"modelport.runtime.worker" in cmdline and str(data_dir).encode() in cmdline:
                found.append(int(entry.name))
    return found


def _until(pred, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout:g} s")


def test_boot_timeout_and_a_stop_while_replicas_boot(d):
    d.model("slow")
    build = d.build("slow", {"predict.py": SLOW_IMPORT})
    failed = d.deploy("slow", build, boot_timeout_s=2, env={"IMPORT_S": "60"})
    assert failed["status"] == "failed" and failed["boot_timeout_s"] == 2
    assert "not ready within boot_timeout_s=2s" in failed["reason"]
    _until(lambda: not _workers(d.srv.data_dir), 10, "the timed-out replica gone")

    booting = d.deploy("slow", build, wait=False, env={"IMPORT_S": "60"})
    _until(lambda: _workers(d.srv.data_dir), what="a replica booting")
    started = time.monotonic()
    stopped = d.c.post("/api/v1/models/slow/stop")
    assert stopped.status_code == 200
    assert time.monotonic() - started < 20  # not the 60 s of the import
    shown = stopped.json()
    assert shown["id"] == booting["id"] and shown["status"] == "stopped"
    assert "stopped by admin before it served" in shown["reason"]
    assert shown["events"][-1]["kind"] == "interrupted"
    assert not _workers(d.srv.data_dir), "a booting replica outlived the stop"
    assert d.predict("slow", {"a": 1}).json()["error"]["code"] == "model.not_deployed"
    assert "start interrupted: stopped by admin before it served" in d.srv.log()


def test_a_new_deployment_supersedes_one_still_booting(d):
    d.model("m")
    build = d.build("m", {"predict.py": SLOW_IMPORT})
    first = d.deploy("m", build)
    assert first["status"] == "deployed"
    serving = _workers(d.srv.data_dir)
    booting = d.deploy("m", build, wait=False, env={"IMPORT_S": "60"})
    _until(lambda: len(_workers(d.srv.data_dir)) == 2, what="the second replica booting")
    newest = d.deploy("m", build, wait=False)
    done = d.wait("m", newest["id"], timeout=30)  # not after the 60 s of the one booting
    assert done["status"] == "deployed"
    given_up = d.c.get(f"/api/v1/models/m/deployments/{booting['id']}").json()
    assert given_up["status"] == "stopped"
    assert given_up["reason"] == f"replaced by deployment {newest['id']} before it served"
    assert d.c.get(f"/api/v1/models/m/deployments/{first['id']}").json()["status"] == "stopped"
    assert d.predict("m", {"a": 2}).json()["a"] == 2.0
    _until(lambda: len(_workers(d.srv.data_dir)) == 1, 20, "only the newest replica left")
    assert not set(_workers(d.srv.data_dir)) & set(serving)


def _replicas(d: Deployed, name: str) -> dict[int, dict]:
    return {r["pid"]: r for r in d.c.get(f"/api/v1/models/{name}/replicas").json()["items"]}


def test_a_sigstopped_replica_is_late_and_passed_over_until_it_answers(d):
    d.model("m")
    d.deploy("m", d.build("m", {"predict.py": SLOW_IMPORT}), replicas=2)
    stopped, other = sorted(_replicas(d, "m"))
    assert not any(r["late"] for r in _replicas(d, "m").values())
    os.kill(stopped, signal.SIGSTOP)
    try:
        _until(lambda: _replicas(d, "m")[stopped]["late"], what="the stopped replica late")
        for i in range(20):
            r = d.predict("m", {"a": i})
            assert r.status_code == 200 and r.json() == {"a": i, "pid": other}
        shown = _replicas(d, "m")
        assert shown[stopped]["late"] and shown[stopped]["state"] == "ready"
        assert not shown[other]["late"]
    finally:
        os.kill(stopped, signal.SIGCONT)
    _until(lambda: not _replicas(d, "m")[stopped]["late"], what="the replica chosen again")
    served = {d.predict("m", {"a": 0}).json()["pid"] for _ in range(6)}
    assert served == {stopped, other}
    assert _replicas(d, "m")[stopped]["restarts"] == 0
    assert "late: silent for" in d.srv.log() and "answers again" in d.srv.log()
