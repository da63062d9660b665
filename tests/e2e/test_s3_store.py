"""A real server whose artifact store is a bucket on a real radosgw (MODELPORT_STORE_URL): build,
deploy and predict, export to a local store; the S3 service going away (503 store.unavailable,
predictions go on); a corrupt object in the bucket named by verify; the CLI's verify and gc on the
same bucket."""

from __future__ import annotations

import json
import random
import subprocess
import time

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

CODE = (
    "import tinypkg\nfrom pathlib import Path\n"
    "W = Path(__file__).with_name('w.bin').read_bytes()\n"
    "def predict(x: int) -> dict:\n    return {'x': x, 'v': tinypkg.VERSION, 'w': len(W)}\n"
)
pytestmark = pytest.mark.slow  # radosgw for the session (~15 s), then builds

WEIGHTS = random.Random(5).randbytes(12 << 20)  # past one PUT: a multipart upload


def bucket_objects(client) -> list[str]:
    return [m["path"] for batch in obstore.list(client, "objects/") for m in batch]


@pytest.fixture
def s3_srv(offline_server, s3):
    prefix = s3.prefix()
    srv = offline_server()
    srv.env.update(S3_CREDENTIALS)
    srv.env["MODELPORT_STORE_URL"] = s3.url(prefix)
    srv.prefix = prefix
    return srv.start()


def _build(c: httpx.Client, tmp_path, name: str, files: dict) -> httpx.Response:
    folder = write_project(tmp_path / f"{name}-{time.monotonic_ns()}", files)
    return upload_build(c, "m", pack_bytes(folder), entrypoint="predict.py:predict")


def _predict(srv, key: str, x: int) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/models/m/predict",
        json={"x": x},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_build_deploy_predict_with_the_store_in_s3(s3_srv, s3, offline_server, tmp_path):
    bucket = s3.client(s3_srv.prefix)
    files = {"predict.py": CODE, "requirements.txt": "tinypkg==2.0\n", "w.bin": WEIGHTS}
    with s3_srv.client() as c:
        key = c.post("/api/v1/models", json={"name": "m"}).json()["access_key"]
        number = _build(c, tmp_path, "p", files).json()["number"]
        built = wait_build(c, "m", number)
        assert built["status"] == "built", built["error"]
        deploying = c.post("/api/v1/models/m/deployments", json={"build": number})
        assert deploying.status_code == 202, deploying.text
        deadline = time.monotonic() + 60
        while (r := _predict(s3_srv, key, 1)).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.json() == {"x": 1, "v": "2.0", "w": len(WEIGHTS)}

        # every object is in the bucket (the snapshot's files, the wheels, the manifest)
        status = c.get("/api/v1/store").json()
        assert status["objects"] == len(bucket_objects(bucket)) >= 5
        assert not (s3_srv.data_dir / "store" / "objects").exists()  # only the cache is local

        s3.stop_gateway()
        try:
            assert _predict(s3_srv, key, 2).json()["x"] == 2  # serving goes on
            refused = _build(c, tmp_path, "q", {**files, "predict.py": CODE + "# 2\n"})
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["code"] == "store.unavailable" and "s3://modelport/" in error["message"]
            assert c.post("/api/v1/store/verify").json()["error"]["code"] == "store.unavailable"
            assert _predict(s3_srv, key, 3).status_code == 200
        finally:
            s3.start_gateway()
        again = _build(c, tmp_path, "r", {**files, "predict.py": CODE + "# 3\n"})
        assert again.status_code == 202, again.text
        assert wait_build(c, "m", again.json()["number"])["status"] == "built"

        # a build exported from the bucket imports into a server with a local store
        exported = c.get("/api/v1/models/m/builds/1/export")
        assert exported.status_code == 200, exported.text
        with offline_server().start().client() as local:
            imported = local.post(
                "/api/v1/builds/import", files={"archive": ("b.tar.zst", exported.content)}
            )
            assert imported.status_code == 201, imported.text
            assert imported.json()["digest"] == built["digest"]

        # a corrupt object in the bucket: verify names it
        listed = c.get("/api/v1/models/m/builds/1/files").json()["items"]
        weights = next(f["digest"] for f in listed if f["path"] == "w.bin")
        path = f"objects/{weights[7:9]}/{weights[9:]}"
        damaged = bytearray(obstore.get(bucket, path).bytes())
        damaged[-100] ^= 0xFF
        obstore.put(bucket, path, bytes(damaged))
        found = c.post("/api/v1/store/verify").json()
        [problem] = found["corrupt"]
        assert problem["digest"] == weights
        assert problem["path"] == f"s3://modelport/{s3_srv.prefix}/{path}"


def test_the_cli_verifies_and_collects_the_bucket(s3_srv, s3, tmp_path):
    with s3_srv.client() as c:
        c.post("/api/v1/models", json={"name": "m"})
        files = {"predict.py": CODE, "requirements.txt": "tinypkg==2.0\n", "w.bin": b"w" * 1000}
        built = wait_build(c, "m", _build(c, tmp_path, "p", files).json()["number"])
        assert built["status"] == "built", built["error"]
        c.delete("/api/v1/models/m")
    s3_srv.stop()
    env = s3_srv.env
    verified = subprocess.run(
        [*MODELPORT, "verify", "--data-dir", str(s3_srv.data_dir), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["objects"] == len(bucket_objects(s3.client(s3_srv.prefix)))
    collected = subprocess.run(
        [*MODELPORT, "gc", "--data-dir", str(s3_srv.data_dir), "--grace-s", "0", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert collected.returncode == 0, collected.stderr
    assert json.loads(collected.stdout)["removed"] > 0
    assert bucket_objects(s3.client(s3_srv.prefix)) == []
