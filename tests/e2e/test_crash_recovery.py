"""A server SIGKILLed mid-way leaves nothing half-made: no partial upload or build folder survives
a restart or `modelport gc`, and a build it was making is built again, or failed with the reason."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import MODELPORT, pack_bytes, upload_build, wait_build, write_project

TYPED = "def predict(a: float, b: float = 1.0) -> float:\n    return a + b\n"
SCRATCH_GLOBS = ("uploads/*", ".build-*", ".wheels-*", "projects/.tmp-*", "envs/.tmp-*",
                 "store/tmp/*")


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
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"entrypoint\"\r\n\r\n"
            f"predict.py:predict\r\n--{boundary}\r\nContent-Disposition: form-data; "
            f"name=\"archive\"; filename=\"p.tar\"\r\nContent-Type: application/octet-stream"
            f"\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall((f"POST /api/v1/models/{model}/builds HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {srv.token}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                  f"Content-Length: {len(head) + size + len(tail)}\r\n\r\n").encode() + head)
    chunk = b"\x00" * (1 << 20)
    for _ in range(size // 2 // len(chunk)):
        sock.sendall(chunk)
    return sock


def test_sigkill_mid_upload_leaves_no_partial_file(offline_server, tmp_path):
    srv = offline_server().start()
    with srv.client() as c:
        assert c.post("/api/v1/models", json={"name": "m"}).status_code == 201
    sock = start_upload(srv, "m", 64 << 20)
    partial = until(lambda: [p for p in (srv.data_dir / "uploads").glob("upload-*")
                             if p.stat().st_size >= 16 << 20], what="the upload's temp file")
    srv.stop(signal.SIGKILL)
    sock.close()
    assert partial[0].exists()  # what a killed server leaves
    gc = subprocess.run([*MODELPORT, "gc", "--data-dir", str(srv.data_dir), "--json"],
                        capture_output=True, text=True, env=srv.env, timeout=120)
    assert gc.returncode == 0, gc.stderr
    assert json.loads(gc.stdout)["temp_removed"] >= 1
    assert leftovers(srv.data_dir) == []

    sock = start_upload(srv.start(), "m", 64 << 20)  # again, and this time a restart cleans up
    until(lambda: [p for p in (srv.data_dir / "uploads").glob("upload-*")
                   if p.stat().st_size >= 16 << 20], what="the second upload's temp file")
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


SLOW_BACKEND = '''\
import pathlib
import time

def get_requires_for_build_wheel(config_settings=None):
    pathlib.Path({started!r}).touch()
    deadline = time.monotonic() + 120
    while not pathlib.Path({release!r}).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return []
'''


def kill_mid_build(srv, started: Path) -> list[str]:
    """Wait for the build's dependency step, check what it has made, SIGKILL the server."""
    until(started.exists, 120, "the build's dependency step")
    with srv.client() as c:
        assert c.get("/api/v1/models/m/builds/1").json()["status"] == "building"
    made = leftovers(srv.data_dir)
    assert any(p.startswith(".build-") for p in made), made
    assert any(p.startswith("projects/.tmp-") for p in made), made
    srv.stop(signal.SIGKILL)
    started.unlink()
    assert leftovers(srv.data_dir) == made
    return made


@pytest.mark.slow
def test_sigkill_mid_build_leaves_no_folder_and_a_true_status(offline_server, tmp_path):
    """A build resolving a local package whose build backend waits: its work folder and staged
    project exist when the server is killed. After a restart they are gone and the build runs
    again; killed during that second try too, it is failed with the reason."""
    started, release = tmp_path / "started", tmp_path / "release"
    folder = write_project(tmp_path / "slow", {
        "predict.py": TYPED,
        "requirements.txt": "./slowpkg\n",
        "slowpkg/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                                  'backend-path = ["."]\n[project]\nname = "slowpkg"\n'
                                  'dynamic = ["version"]\n',
        "slowpkg/backend.py": SLOW_BACKEND.format(started=str(started), release=str(release)),
    })
    srv = offline_server().start()
    try:
        with srv.client() as c:
            assert c.post("/api/v1/models", json={"name": "m"}).status_code == 201
            assert upload_build(c, "m", pack_bytes(folder),
                                entrypoint="predict.py:predict").status_code == 202
        first = kill_mid_build(srv, started)
        srv.start()
        assert not set(first) & set(leftovers(srv.data_dir))
        second = kill_mid_build(srv, started)  # the build runs again, and is killed again
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
    finally:
        release.touch()  # the orphaned backends, if they outlived the server, end now
