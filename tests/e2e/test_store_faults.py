"""Faults of a store in S3 and of servers sharing one registry and one bucket, as a user sees them
through real servers (issue 15's "Faults"): radosgw stopped under a running server (a build is
refused with 503 store.unavailable and nothing is half-made, serving and a replica's restart go on
from the node's cache, the same build succeeds once radosgw is back, `modelport verify` says so);
two servers on one PostgreSQL and one bucket uploading the same weights and creating the same
model at the same moment; a corrupt object in the bucket (an export and a replica start that
need it fail naming its digest, the server stays up, verify names it)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import obstore
import pytest

from tests.conftest import (
    MODELPORT,
    S3_CREDENTIALS,
    pack_bytes,
    upload_build,
    wait_build,
    write_project,
)

pytestmark = pytest.mark.slow  # radosgw for the session (~15 s), servers, builds, replicas

CODE = (
    "import os\nfrom pathlib import Path\n"
    "W = Path(__file__).with_name('w.bin').read_bytes()\n"
    "def predict(x: int) -> dict:\n    return {'x': x, 'w': len(W), 'pid': os.getpid()}\n"
)


def bucket_objects(client) -> list[str]:
    return sorted(m["path"] for batch in obstore.list(client, "objects/") for m in batch)


def object_key(digest: str) -> str:
    return f"objects/{digest[7:9]}/{digest[9:]}"


def _s3_server(make, s3, prefix: str, **options: str):
    srv = make()
    srv.env.update(S3_CREDENTIALS)
    srv.env["MODELPORT_STORE_URL"] = s3.url(prefix, **options)
    srv.prefix = prefix
    return srv


def _upload(c: httpx.Client, tmp_path: Path, model: str, files: dict) -> httpx.Response:
    folder = write_project(tmp_path / f"{model}-{time.monotonic_ns()}", files)
    return upload_build(c, model, pack_bytes(folder), entrypoint="predict.py:predict")


def _until(pred, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := pred():
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout:g} s")


def _deploy(c: httpx.Client, model: str, number: int) -> dict:
    made = c.post(f"/api/v1/models/{model}/deployments", json={"build": number})
    assert made.status_code == 202, made.text
    path = f"/api/v1/models/{model}/deployments/{made.json()['id']}"
    done = _until(
        lambda: (d := c.get(path).json())["status"] in ("deployed", "failed", "stopped") and d,
        what="the deployment settled",
    )
    assert done["status"] == "deployed", done
    return done


def _predict(srv, key: str, x: int) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/models/m/predict",
        json={"x": x},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def _replicas(c: httpx.Client, model: str = "m") -> list[dict]:
    found = c.get(f"/api/v1/models/{model}/replicas")
    assert found.status_code == 200, found.text
    body = found.json()
    return body["items"] if isinstance(body, dict) else body


def _leftovers(data_dir: Path) -> list[str]:
    """Temp files and folders of uploads, builds and store puts left in a data dir."""
    found = []
    for folder in (data_dir / "uploads", data_dir / "store" / "cache" / "tmp"):
        if folder.is_dir():
            found += [str(p) for p in folder.iterdir()]
    for folder in (data_dir, data_dir / "projects"):
        if folder.is_dir():
            found += [str(p) for p in folder.iterdir() if p.name.startswith((".tmp-", ".build-"))]
    return found


def _cli(srv, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*MODELPORT, *args, "--data-dir", str(srv.data_dir)],
        env=srv.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_radosgw_stopped_a_build_is_refused_whole_serving_and_restarts_go_on(
    offline_server, s3, tmp_path
):
    srv = _s3_server(offline_server, s3, s3.prefix()).start()
    bucket = s3.client(srv.prefix)
    weights = random.Random(7).randbytes(1 << 20)
    files = {"predict.py": CODE, "w.bin": weights}
    c = srv.client()
    key = c.post("/api/v1/models", json={"name": "m"}).json()["access_key"]
    built = wait_build(c, "m", _upload(c, tmp_path, "m", files).json()["number"])
    assert built["status"] == "built", built["error"]
    _deploy(c, "m", built["number"])
    assert _predict(srv, key, 1).json()["w"] == len(weights)
    stored = bucket_objects(bucket)
    builds = c.get("/api/v1/models/m/builds").json()["items"]

    s3.stop_gateway()
    try:
        # a build: refused at once, naming the store; nothing recorded, nothing left on disk
        other = {**files, "predict.py": CODE + "# another build\n"}
        refused = _upload(c, tmp_path, "m", other)
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "store.unavailable"
        assert f"s3://modelport/{srv.prefix}" in error["message"]
        assert "cannot be reached" in error["message"]
        assert c.get("/api/v1/models/m/builds").json()["items"] == builds
        assert _leftovers(srv.data_dir) == []

        # predictions go on, and a replica killed comes back from this node's cache
        assert _predict(srv, key, 2).status_code == 200
        [replica] = _replicas(c)
        old = replica["pid"]
        os.kill(old, signal.SIGKILL)
        _until(
            lambda: [r for r in _replicas(c) if r["state"] == "ready" and r["pid"] != old],
            what="the killed replica back",
        )
        answer = _predict(srv, key, 3)
        assert answer.status_code == 200, answer.text
        assert answer.json()["pid"] != replica["pid"] and answer.json()["w"] == len(weights)

        # the CLI's verify says so in one line, and fails
        verified = _cli(srv, "verify")
        assert verified.returncode != 0
        assert "Traceback" not in verified.stderr, verified.stderr
        [line] = [ln for ln in (verified.stdout + verified.stderr).splitlines() if ln.strip()]
        assert f"s3://modelport/{srv.prefix}" in line and "cannot be reached" in line
        assert httpx.get(f"{srv.url}/api/v1/health", timeout=10).status_code == 200
    finally:
        s3.start_gateway()

    assert bucket_objects(bucket) == stored  # no partial object of the refused build
    again = _upload(c, tmp_path, "m", other)  # the same build, no server restart
    assert again.status_code == 202, again.text
    done = wait_build(c, "m", again.json()["number"])
    assert done["status"] == "built", done["error"]
    assert _leftovers(srv.data_dir) == []
    assert _predict(srv, key, 4).status_code == 200
    c.close()


# Imported by the build's check for a few seconds: the build is still running when radosgw stops
SLOW_IMPORT = "import time\ntime.sleep(8)\n" + CODE


def test_radosgw_stopped_during_a_build_fails_it_and_leaves_nothing_half_made(
    offline_server, s3, tmp_path
):
    srv = _s3_server(offline_server, s3, s3.prefix()).start()
    c = srv.client()
    c.post("/api/v1/models", json={"name": "m"})
    files = {"predict.py": SLOW_IMPORT, "w.bin": random.Random(9).randbytes(1 << 20)}
    accepted = _upload(c, tmp_path, "m", files)
    assert accepted.status_code == 202, accepted.text
    number = accepted.json()["number"]
    path = f"/api/v1/models/m/builds/{number}"
    _until(lambda: c.get(path).json()["status"] == "building", what="the build running")
    s3.stop_gateway()
    try:
        failed = wait_build(c, "m", number)  # it ends, failed, naming the store: not building
        assert failed["status"] == "failed", failed
        assert f"s3://modelport/{srv.prefix}" in failed["error"], failed["error"]
        assert "cannot be reached" in failed["error"]
        log = c.get(f"{path}/log").text
        assert "FAILED" in log and "cannot be reached" in log, log
        deploying = c.post("/api/v1/models/m/deployments", json={"build": number})
        assert deploying.status_code == 409, deploying.text
        assert deploying.json()["error"]["code"] == "build.not_ready"
        assert _leftovers(srv.data_dir) == []
    finally:
        s3.start_gateway()
    again = _upload(c, tmp_path, "m", files)  # the same project again, no server restart
    assert again.status_code == 202, again.text
    done = wait_build(c, "m", again.json()["number"])
    assert done["status"] == "built", done["error"]
    assert _leftovers(srv.data_dir) == []
    c.close()


def _at_once(*calls):
    """Each call in its own thread, released together; their results in order."""
    start = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        start.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.fixture
def two_servers(offline_server, s3, pg_url, tmp_path):
    """Two servers on one PostgreSQL database and one bucket prefix, one secret key file."""
    prefix = s3.prefix()
    a = _s3_server(offline_server, s3, prefix)
    a.env["MODELPORT_DATABASE_URL"] = pg_url
    a.start(timeout=60)
    shared = tmp_path / "shared.key"
    shutil.copy2(a.data_dir / "secret.key", shared)
    b = _s3_server(offline_server, s3, prefix)
    b.env["MODELPORT_DATABASE_URL"] = pg_url
    b.env["MODELPORT_SECRET_KEY_FILE"] = str(shared)
    b.start(timeout=60)
    b.token = a.token  # one registry: A's admin token is B's too
    return a, b


def test_two_servers_create_one_model_and_upload_the_same_weights_at_once(
    two_servers, s3, tmp_path
):
    a, b = two_servers
    ca, cb = a.client(), b.client()
    for round_ in range(4):  # the same name at the same moment: one 201, the other 409
        name = f"same{round_}"
        answers = _at_once(
            lambda name=name: ca.post("/api/v1/models", json={"name": name}),
            lambda name=name: cb.post("/api/v1/models", json={"name": name}),
        )
        assert sorted(r.status_code for r in answers) == [201, 409], [r.text for r in answers]
        [lost] = [r for r in answers if r.status_code == 409]
        assert lost.json()["error"]["code"] == "model.exists"
        assert [m["name"] for m in cb.get("/api/v1/models").json()["items"]].count(name) == 1

    # the same project with ~20 MB of weights, uploaded through both at the same moment
    weights = random.Random(11).randbytes(20 << 20)
    folder = write_project(tmp_path / "big", {"predict.py": CODE, "w.bin": weights})
    archive = pack_bytes(folder)
    assert ca.post("/api/v1/models", json={"name": "m"}).status_code == 201
    answers = _at_once(
        lambda: upload_build(ca, "m", archive, entrypoint="predict.py:predict"),
        lambda: upload_build(cb, "m", archive, entrypoint="predict.py:predict"),
    )
    assert [r.status_code for r in answers] == [202, 202], [r.text for r in answers]
    numbers = [r.json()["number"] for r in answers]
    assert sorted(numbers) == [1, 2]
    built = [wait_build(c, "m", n) for c, n in zip((ca, cb), numbers, strict=True)]
    assert [x["status"] for x in built] == ["built", "built"], [x["error"] for x in built]
    assert built[0]["digest"] == built[1]["digest"]  # one content, one build digest

    listed = ca.get(f"/api/v1/models/m/builds/{numbers[0]}/files").json()["items"]
    digest = next(f["digest"] for f in listed if f["path"] == "w.bin")
    objects = bucket_objects(s3.client(a.prefix))
    assert objects.count(object_key(digest)) == 1 and len(objects) == len(set(objects))
    for srv, c in ((a, ca), (b, cb)):  # each server re-reads the bucket: whole, nothing missing
        found = c.post("/api/v1/store/verify").json()
        assert (found["corrupt"], found["missing"], found["tampered"]) == ([], [], []), found
        assert found["objects"] == len(objects)
        assert _leftovers(srv.data_dir) == []
    for c, n in ((ca, numbers[1]), (cb, numbers[0])):  # each exports the other's build
        exported = c.get(f"/api/v1/models/m/builds/{n}/export")
        assert exported.status_code == 200, exported.text
    ca.close()
    cb.close()


def test_a_corrupt_object_in_the_bucket_is_named_and_the_server_stays_up(
    offline_server, s3, tmp_path
):
    # cache_mb=0: this server keeps no copy, so what it reads is what the bucket holds
    srv = _s3_server(offline_server, s3, s3.prefix(), cache_mb="0").start()
    bucket = s3.client(srv.prefix)
    weights = random.Random(13).randbytes(2 << 20)
    c = srv.client()
    key = c.post("/api/v1/models", json={"name": "m"}).json()["access_key"]
    built = wait_build(
        c, "m", _upload(c, tmp_path, "m", {"predict.py": CODE, "w.bin": weights}).json()["number"]
    )
    assert built["status"] == "built", built["error"]
    _deploy(c, "m", built["number"])
    assert _predict(srv, key, 1).status_code == 200

    listed = c.get(f"/api/v1/models/m/builds/{built['number']}/files").json()["items"]
    digest = next(f["digest"] for f in listed if f["path"] == "w.bin")
    damaged = bytearray(obstore.get(bucket, object_key(digest)).bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    obstore.put(bucket, object_key(digest), bytes(damaged))

    # an export needs it: 500 store.corrupt naming the digest; the server stays up
    exported = c.get(f"/api/v1/models/m/builds/{built['number']}/export")
    assert exported.status_code == 500, exported.status_code
    error = exported.json()["error"]
    assert error["code"] == "store.corrupt" and digest in error["message"], error
    assert httpx.get(f"{srv.url}/api/v1/health", timeout=10).status_code == 200
    assert _predict(srv, key, 2).status_code == 200
    assert _leftovers(srv.data_dir) == []

    # a replica start that needs it (its project folder damaged on this node too): it fails
    # naming the digest, the server stays up
    project = srv.data_dir / "projects" / built["digest"].removeprefix("sha256:")
    target = project / "w.bin"
    assert target.is_file(), sorted(p.name for p in (srv.data_dir / "projects").iterdir())
    os.chmod(target, 0o644)
    target.write_bytes(b"not the weights")
    [replica] = _replicas(c)
    os.kill(replica["pid"], signal.SIGKILL)

    def failed_start() -> dict | None:
        events = c.get("/api/v1/models/m/deployments/current").json()["events"]
        return next((e for e in events if e["kind"] == "group.failed"), None)

    failed = _until(failed_start, what="the replica's start failed")
    reason = failed["detail"]["reason"]
    assert digest in reason and "is corrupt" in reason and "w.bin changed" in reason, reason
    unserved = _predict(srv, key, 3)
    assert unserved.status_code == 503, unserved.text
    assert unserved.json()["error"]["code"] == "model.unavailable"
    assert httpx.get(f"{srv.url}/api/v1/health", timeout=10).status_code == 200

    # verify names it, through the API and the CLI
    found = c.post("/api/v1/store/verify").json()
    assert [p["digest"] for p in found["corrupt"]] == [digest]
    assert found["corrupt"][0]["path"] == f"s3://modelport/{srv.prefix}/{object_key(digest)}"
    verified = _cli(srv, "verify")
    assert verified.returncode == 1 and "Traceback" not in verified.stderr
    assert f"corrupt {digest}" in verified.stderr, verified.stderr
    c.close()
