"""A server SIGKILLed mid-way leaves nothing half-made: no partial upload or build folder survives
a restart or `modelport gc`, and a build it was making is built again, or failed with the reason."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODELPORT, pack_bytes, upload_build, wait_build, write_project
from tests.e2e.test_deployments import Deployed

TYPED = "def predict(a: float, b: float = 1.0) -> float:\n    return a + b\n"
SCRATCH_GLOBS = (
    "uploads/*",
    ".build-*",
    ".wheels-*",
    "projects/.tmp-*",
    "envs/.tmp-*",
    "store/tmp/*",
)


def leftovers(data_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(data_dir)) for g in SCRATCH_GLOBS for p in data_dir.glob(g))


def until(check, timeout: float = 60.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.05)
    raise TimeoutError(what)


def start_upload(srv, model: str, size: int) -> socket.socket:
    """A multipart upload whose archive part is `size` bytes long, of which only the first half is
    sent: the connection stays open, as a slow client's does."""
    boundary = "modelportboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="entrypoint"\r\n\r\n'
        f"predict.py:predict\r\n--{boundary}\r\nContent-Disposition: form-data; "
        f'name="archive"; filename="p.tar"\r\nContent-Type: application/octet-stream'
        f"\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(
        (
            f"POST /api/v1/models/{model}/builds HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {srv.token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(head) + size + len(tail)}\r\n\r\n"
        ).encode()
        + head
    )
    chunk = b"\x00" * (1 << 20)
    for _ in range(size // 2 // len(chunk)):
        sock.sendall(chunk)
    return sock


def test_sigkill_mid_upload_leaves_no_partial_file(offline_server, tmp_path):
    srv = offline_server().start()
    with srv.client() as c:
        assert c.post("/api/v1/models", json={"name": "m"}).status_code == 201
    sock = start_upload(srv, "m", 64 << 20)
    partial = until(
        lambda: [
            p for p in (srv.data_dir / "uploads").glob("upload-*") if p.stat().st_size >= 16 << 20
        ],
        what="the upload's temp file",
    )
    srv.stop(signal.SIGKILL)
    sock.close()
    assert partial[0].exists()  # what a killed server leaves
    gc = subprocess.run(
        [*MODELPORT, "gc", "--data-dir", str(srv.data_dir), "--json"],
        capture_output=True,
        text=True,
        env=srv.env,
        timeout=120,
    )
    assert gc.returncode == 0, gc.stderr
    assert json.loads(gc.stdout)["temp_removed"] >= 1
    assert leftovers(srv.data_dir) == []

    sock = start_upload(srv.start(), "m", 64 << 20)  # again, and this time a restart cleans up
    until(
        lambda: [
            p for p in (srv.data_dir / "uploads").glob("upload-*") if p.stat().st_size >= 16 << 20
        ],
        what="the second upload's temp file",
    )
    srv.stop(signal.SIGKILL)
    sock.close()
    assert leftovers(srv.data_dir) != []
    srv.start()
    assert leftovers(srv.data_dir) == []
    with srv.client() as c:  # no build was recorded for either, and the next upload is #1
        assert c.get("/api/v1/models/m/builds").json()["items"] == []
        folder = write_project(tmp_path / "p", {"predict.py": TYPED})
        queued = upload_build(c, "m", pack_bytes(folder), entrypoint="predict.py:predict")
        assert queued.status_code == 202 and queued.json()["number"] == 1
        assert wait_build(c, "m", 1)["status"] == "built"
        assert c.post("/api/v1/store/verify").json()["corrupt"] == []


SLOW_BACKEND = """\
import pathlib
import time

def get_requires_for_build_wheel(config_settings=None):
    pathlib.Path(__file__).with_name("started").touch()  # its folder is one a build may write
    time.sleep(120)  # dies with the server (the sandbox's supervision), or ends by itself
    return []
"""


def kill_mid_build(srv) -> list[str]:
    """Wait for the build's dependency step, check what it has made, SIGKILL the server."""
    until(
        lambda: list(srv.data_dir.glob("projects/.tmp-*/slowpkg/started")),
        120,
        "the build's dependency step",
    )
    with srv.client() as c:
        assert c.get("/api/v1/models/m/builds/1").json()["status"] == "building"
    made = leftovers(srv.data_dir)
    assert any(p.startswith(".build-") for p in made), made
    assert any(p.startswith("projects/.tmp-") for p in made), made
    srv.stop(signal.SIGKILL)
    # a kill removes nothing (the build may have made one more temp between the look and the kill)
    assert set(made) <= set(leftovers(srv.data_dir))
    return leftovers(srv.data_dir)


@pytest.mark.slow
def test_sigkill_mid_build_leaves_no_folder_and_a_true_status(offline_server, tmp_path):
    """A build resolving a local package whose build backend waits: its work folder and staged
    project exist when the server is killed. After a restart they are gone and the build runs
    again; killed during that second try too, it is failed with the reason."""
    folder = write_project(
        tmp_path / "slow",
        {
            "predict.py": TYPED,
            "requirements.txt": "./slowpkg\n",
            "slowpkg/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
            'backend-path = ["."]\n[project]\nname = "slowpkg"\n'
            'dynamic = ["version"]\n',
            "slowpkg/backend.py": SLOW_BACKEND,
        },
    )
    srv = offline_server().start()
    with srv.client() as c:
        assert c.post("/api/v1/models", json={"name": "m"}).status_code == 201
        assert (
            upload_build(c, "m", pack_bytes(folder), entrypoint="predict.py:predict").status_code
            == 202
        )
    first = kill_mid_build(srv)
    srv.start()
    assert not set(first) & set(leftovers(srv.data_dir))
    second = kill_mid_build(srv)  # the build runs again, and is killed again
    srv.start()
    assert not set(second) & set(leftovers(srv.data_dir))
    assert leftovers(srv.data_dir) == []
    with srv.client() as c:
        build = c.get("/api/v1/models/m/builds/1").json()
        assert build["status"] == "failed" and build["finished_at"]
        assert "server stopped during the build" in build["error"]
        log = c.get("/api/v1/models/m/builds/1/log").text
        assert "building again" in log and "server stopped during the build" in log
        later = write_project(tmp_path / "p", {"predict.py": TYPED})  # builds go on
        queued = upload_build(c, "m", pack_bytes(later), entrypoint="predict.py:predict")
        assert wait_build(c, "m", queued.json()["number"])["status"] == "built"


SLOW_ON_MINUS_ONE = (
    "import time\n\ndef predict(a: float) -> float:\n"
    "    if a == -1:\n        time.sleep(25)\n    return a + 1\n"
)
SLOW_BOOT = (
    "import os\nimport time\n\nif os.environ.get('SLOW_BOOT'):\n    time.sleep(120)\n\n"
    "def predict(a: float) -> float:\n    return a + 2\n"
)


def serving_build(d, model: str) -> str | None:
    r = d.predict(model, {"a": 1})
    return r.headers.get("x-model-build") if r.status_code == 200 else None


def long_call(d) -> None:
    with contextlib.suppress(httpx.TransportError):  # the server is killed during it
        d.predict("m", {"a": -1})


def test_sigkill_after_a_rollout_switched_brings_back_the_new_build(offline_server, tmp_path):
    """Build 1 still drains a long call when build 2 takes the traffic: the server is killed
    then. After the restart build 2 serves, and the history says it has since the switch."""
    srv = offline_server().start()
    d = Deployed(srv, tmp_path)
    d.model("m")
    one = d.build("m", {"predict.py": SLOW_ON_MINUS_ONE})
    two = d.build("m", {"predict.py": SLOW_BOOT})
    first = d.deploy("m", one, replicas=2)  # one busy with the long call, one answering
    slow = threading.Thread(target=long_call, args=(d,), daemon=True)
    slow.start()  # build 1 is busy with it when the rollout drains build 1
    until(
        lambda: (
            sum(r["in_flight"] for r in d.c.get("/api/v1/models/m/replicas").json()["items"]) == 1
        ),
        what="the long call",
    )
    second = d.deploy("m", two, wait=False)
    until(lambda: serving_build(d, "m") == "2", what="build 2 taking the traffic")
    switched = d.c.get(f"/api/v1/models/m/deployments/{second['id']}").json()
    srv.stop(signal.SIGKILL)

    srv.start()
    until(lambda: serving_build(d, "m") == "2", what="build 2 serving after the restart")
    assert d.predict("m", {"a": 1}).json() == 3.0
    history = {x["id"]: x for x in d.c.get("/api/v1/models/m/deployments").json()["items"]}
    new, old = history[second["id"]], history[first["id"]]
    assert new["status"] == "deployed"
    kinds = [e["kind"] for e in new["events"]]
    assert kinds.index("deployed") < kinds.index("restoring")  # it served before the kill
    deployed_at = next(e["at"] for e in new["events"] if e["kind"] == "deployed")
    assert deployed_at == next(e["at"] for e in switched["events"] if e["kind"] == "deployed")
    assert old["status"] == "stopped" and old["reason"] == f"replaced by deployment {second['id']}"
    assert old["finished_at"] == deployed_at  # replaced in the write that switched
    assert "restoring" not in [e["kind"] for e in old["events"]]


def test_sigkill_mid_rollout_keeps_the_old_build_and_says_the_new_one_never_served(
    offline_server, tmp_path
):
    srv = offline_server().start()
    d = Deployed(srv, tmp_path)
    d.model("m")
    one = d.build("m", {"predict.py": SLOW_ON_MINUS_ONE})
    two = d.build("m", {"predict.py": SLOW_BOOT})
    first = d.deploy("m", one)
    second = d.deploy("m", two, wait=False, env={"SLOW_BOOT": "1"})  # boots for two minutes
    until(
        lambda: (
            d.c.get(f"/api/v1/models/m/deployments/{second['id']}").json()["status"] == "deploying"
        ),
        what="the rollout",
    )
    assert serving_build(d, "m") == "1"
    srv.stop(signal.SIGKILL)

    srv.start()
    until(lambda: serving_build(d, "m") == "1", what="build 1 serving after the restart")
    assert d.predict("m", {"a": 1}).json() == 2.0
    history = {x["id"]: x for x in d.c.get("/api/v1/models/m/deployments").json()["items"]}
    new, old = history[second["id"]], history[first["id"]]
    assert new["status"] == "failed" and "interrupted" in new["reason"]
    kinds = [e["kind"] for e in new["events"]]
    assert "interrupted" in kinds and "deployed" not in kinds
    assert old["status"] == "deployed" and "replaced" not in [e["kind"] for e in old["events"]]
    until(
        lambda: (
            "restored"
            in [e["kind"] for e in d.c.get("/api/v1/models/m/deployments/current").json()["events"]]
        ),
        what="the restored event",
    )
    assert d.c.get("/api/v1/models/m/deployments/current").json()["id"] == first["id"]
