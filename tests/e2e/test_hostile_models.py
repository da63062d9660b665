"""Hostile models are contained: limits, children, floods of output, a closed pipe, a secret hunt.
Other models keep serving throughout."""

from __future__ import annotations

import time

import pytest

from tests.e2e.test_deployments import Deployed, _alive, typed

HOSTILE = """
import os, resource, socket, subprocess, sys, time

def predict(action: str) -> dict:
    if action == "limits":
        return {"nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
                "core": resource.getrlimit(resource.RLIMIT_CORE)[1]}
    if action == "fork":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        return {"child": child.pid}
    if action == "flood":
        chunk = "x" * 1023 + "\\n"
        for _ in range(30 * 1024):  # 30 MiB to stdout
            sys.stdout.write(chunk)
        return {"flooded": True}
    if action == "close_pipe":
        for fd in range(3, 256):
            try:
                os.close(fd)
            except OSError:
                pass
        time.sleep(1)
        return {"closed": True}
    if action == "huge_frame":  # on its pipe itself: a 512 MiB length, then 256 MiB of it
        fd = int(sys.argv[sys.argv.index("--fd") + 1])
        os.write(fd, (512 << 20).to_bytes(4, "big"))
        try:
            for _ in range(256):
                os.write(fd, b"x" * (1 << 20))
        except OSError:
            pass
        time.sleep(60)
    if action == "secrets":
        home = os.environ.get("HOME", "")
        return {"env": sorted(k for k in os.environ if "MODELPORT" in k or "TOKEN" in k),
                "cwd": os.getcwd()}
    return {"ok": True}
"""


@pytest.fixture
def d(offline_server, tmp_path):
    d = Deployed(offline_server().start(), tmp_path)
    d.model("bad")
    d.model("good")
    d.deploy("bad", d.build("bad", {"predict.py": HOSTILE}))
    d.deploy("good", d.build("good", {"predict.py": typed(1.0)}))
    return d


def test_resource_limits_and_scrubbed_environment(d):
    limits = d.predict("bad", {"action": "limits"}).json()
    assert limits == {"nofile": 4096, "core": 0}
    found = d.predict("bad", {"action": "secrets"}).json()
    assert found["env"] == [] and "/projects/" in found["cwd"]
    assert d.predict("good", {"a": 1}).json() == 2.0


def test_a_child_process_dies_with_its_replica(d):
    child = d.predict("bad", {"action": "fork"}).json()["child"]
    assert _alive(child)
    assert d.c.post("/api/v1/models/bad/stop").json()["status"] == "stopped"
    deadline = time.monotonic() + 15
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "a model's child outlived its replica"
    assert d.predict("good", {"a": 1}).json() == 2.0


def test_a_flood_of_output_is_bounded(d):
    for _ in range(2):
        assert d.predict("bad", {"action": "flood"}).json() == {"flooded": True}
    replica = d.c.get("/api/v1/models/bad/replicas").json()["items"][0]["id"]
    log = d.srv.data_dir / "logs" / "replicas" / f"{replica}.stdout"
    deadline = time.monotonic() + 30
    while log.stat().st_size > 12 * 1024 * 1024 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert log.stat().st_size <= 12 * 1024 * 1024
    tail = d.c.get(f"/api/v1/models/bad/replicas/{replica}/logs", params={"tail": 2048})
    assert tail.status_code == 200 and tail.text.endswith("x\n")
    assert d.predict("good", {"a": 1}).json() == 2.0


def test_a_model_that_closes_its_pipe_is_recycled(d):
    r = d.predict("bad", {"action": "close_pipe"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "model.crashed"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        replicas = d.c.get("/api/v1/models/bad/replicas").json()["items"]
        if replicas and replicas[0]["state"] == "ready" and replicas[0]["restarts"] >= 1:
            break
        time.sleep(0.1)
    assert replicas[0]["restarts"] >= 1
    assert d.predict("bad", {"action": "ok"}).json() == {"ok": True}
    assert d.predict("good", {"a": 1}).json() == 2.0


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_a_huge_frame_is_refused_from_its_length_and_the_replica_recycled(d):
    before = _rss_mb(d.srv.proc.pid)
    r = d.predict("bad", {"action": "huge_frame"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "model.error"
    assert "response cap of 64 MiB (MODELPORT_MAX_RESPONSE_MB)" in r.json()["error"]["message"]
    assert _rss_mb(d.srv.proc.pid) < before + 32  # none of the frame was held by the server
    assert d.predict("good", {"a": 1}).json() == 2.0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        replicas = d.c.get("/api/v1/models/bad/replicas").json()["items"]
        if replicas and replicas[0]["state"] == "ready" and replicas[0]["restarts"] >= 1:
            break
        time.sleep(0.1)
    assert replicas[0]["restarts"] >= 1
    assert d.predict("bad", {"action": "ok"}).json() == {"ok": True}
    assert "over the response cap of 64 MiB (MODELPORT_MAX_RESPONSE_MB)" in d.srv.log()
