"""Export a build from one server, import it into another with no index; restarts mid-build."""

from __future__ import annotations

import io
import signal
import subprocess
import tarfile
import time

import zstandard

from tests.conftest import MODELPORT, pack_bytes, upload_build, wait_build, write_project

CODE = "import tinypkg\ndef predict(x: int) -> dict:\n    return {'x': x, 'v': tinypkg.VERSION}\n"
NOWHERE = "http://127.0.0.1:9/nonexistent"


def _built(srv, tmp_path) -> dict:
    folder = write_project(
        tmp_path / "proj",
        {
            "predict.py": CODE,
            "requirements.txt": "tinypkg==2.0\n",
            "params/w.bin": b"\x07" * 50_000,
        },
    )
    with srv.client() as c:
        c.post("/api/v1/models", json={"name": "src"})
        n = upload_build(
            c,
            "src",
            pack_bytes(folder),
            entrypoint="predict.py:predict",
            example_input={"x": 1},
            message="to export",
        ).json()["number"]
        return wait_build(c, "src", n)


def _offline(make_server):
    srv = make_server()
    srv.env.update(
        {
            "UV_INDEX_URL": NOWHERE,
            "PIP_INDEX_URL": NOWHERE,
            "UV_OFFLINE": "1",
            "MODELPORT_NO_INDEX": "1",
        }
    )
    return srv.start()


def test_export_import_keeps_digest_on_an_offline_server(offline_server, make_server, tmp_path):
    a = offline_server().start()
    built = _built(a, tmp_path)
    assert built["status"] == "built", built["error"]
    with a.client() as c:
        exported = c.get("/api/v1/models/src/builds/1/export")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/zstd")
    b = _offline(make_server)
    with b.client() as c:
        c.post("/api/v1/models", json={"name": "other"})
        imported = c.post(
            "/api/v1/builds/import", files={"archive": ("b.tar.zst", exported.content)}
        )
        assert imported.status_code == 201, imported.text
        body = imported.json()
        assert body["digest"] == built["digest"] and body["status"] == "built"
        assert body["model"] == "src" and body["number"] == 1
        assert body["access_key"].startswith("mp_key_")  # the model was made here
        assert body["input_schema"] == built["input_schema"]
        again = c.post(
            "/api/v1/builds/import",
            data={"model": "other"},
            files={"archive": ("b.tar.zst", exported.content)},
        ).json()
        assert again["model"] == "other" and again["number"] == 1 and again["access_key"] is None
        assert again["digest"] == built["digest"]
        files = c.get("/api/v1/models/src/builds/1/files").json()["items"]
        assert sorted(f["path"] for f in files) == [
            "params/w.bin",
            "predict.py",
            "requirements.txt",
        ]
        assert c.get("/api/v1/models/src/builds/1/files/predict.py").text == CODE
    # the imported build's environment comes from its stored wheels, no index needed
    verify = subprocess.run(
        [*MODELPORT, "verify", "--data-dir", str(b.data_dir)],
        capture_output=True,
        text=True,
        env=b.env,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stderr


def test_import_refuses_what_is_not_an_export(make_server):
    srv = make_server().start()
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with srv.client() as c:
        for payload in (
            b"garbage" * 50,
            plain.getvalue(),
            zstandard.ZstdCompressor().compress(plain.getvalue()),
        ):
            response = c.post("/api/v1/builds/import", files={"archive": ("x", payload)})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "archive.invalid"
        assert c.get("/api/v1/models").json()["items"] == []


def test_import_refuses_a_tampered_object(offline_server, make_server, tmp_path):
    a = offline_server().start()
    _built(a, tmp_path)
    with a.client() as c:
        exported = c.get("/api/v1/models/src/builds/1/export").content
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(exported)).read()
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.startswith("objects/") and len(data) == 50_000:
                data = b"\x08" + data[1:]  # one byte of the weights changed
            dst.addfile(member, io.BytesIO(data))
    b = make_server().start()
    with b.client() as c:
        response = c.post("/api/v1/builds/import", files={"archive": ("x", out.getvalue())})
        assert response.status_code == 400
        assert "does not match" in response.json()["error"]["message"]
        assert c.get("/api/v1/models").json()["items"] == []


def test_bad_import_model_name_is_422(offline_server, tmp_path):
    a = offline_server().start()
    _built(a, tmp_path)
    with a.client() as c:
        exported = c.get("/api/v1/models/src/builds/1/export").content
        response = c.post(
            "/api/v1/builds/import", data={"model": "Bad Name"}, files={"archive": ("x", exported)}
        )
        assert response.status_code == 422 and response.json()["error"]["field"] == "model"


def test_a_build_interrupted_by_kill_9_is_built_after_restart(offline_server, tmp_path):
    srv = offline_server().start()
    folder = write_project(
        tmp_path / "p",
        {"predict.py": "import time\ntime.sleep(4)\ndef predict(a: int) -> int:\n    return a\n"},
    )
    with srv.client() as c:
        c.post("/api/v1/models", json={"name": "m"})
        number = upload_build(c, "m", pack_bytes(folder), entrypoint="predict.py:predict").json()[
            "number"
        ]
        deadline = time.monotonic() + 60
        log = ""
        while "checking the function" not in log and time.monotonic() < deadline:
            log = c.get(f"/api/v1/models/m/builds/{number}/log").text
            time.sleep(0.1)
    srv.stop(signal.SIGKILL)
    again = offline_server(data_dir=srv.data_dir).start()
    with again.client() as c:
        build = wait_build(c, "m", number)
        assert build["status"] == "built", build["error"]
        assert "restarted" in c.get(f"/api/v1/models/m/builds/{number}/log").text


def test_cli_build_builds_export_import(offline_server, make_server, tmp_path):
    srv = offline_server().start()
    folder = write_project(
        tmp_path / "proj",
        {
            "predict.py": CODE,
            "requirements.txt": "tinypkg==1.0\n",
            ".gitignore": "scratch/\n",
            "scratch/big.bin": b"\0" * 1000,
        },
    )
    env = {**srv.env, "MODELPORT_URL": srv.url}

    def run(*args):
        return subprocess.run(
            [*MODELPORT, *args], capture_output=True, text=True, env=env, timeout=300
        )

    built = run(
        "build",
        str(folder),
        "--name",
        "cli",
        "--entry",
        "predict.py:predict",
        "--example-input",
        '{"x": 3}',
        "-m",
        "first cut",
        "--label",
        "team=ml",
    )
    assert built.returncode == 0, built.stderr
    assert "built #1 sha256:" in built.stderr and "resolving" in built.stderr
    listed = run("builds", "cli", "--json")
    items = __import__("json").loads(listed.stdout)["items"]
    assert items[0]["message"] == "first cut" and items[0]["labels"] == {"team": "ml"}
    assert items[0]["example_output"] == {"x": 3, "v": "1.0"}
    with srv.client() as c:
        paths = [f["path"] for f in c.get("/api/v1/models/cli/builds/1/files").json()["items"]]
    assert "scratch/big.bin" not in paths  # .gitignore honoured by the packer
    out = tmp_path / "cli-1.tar.zst"
    assert run("export", "cli", "1", "-o", str(out)).returncode == 0 and out.stat().st_size > 0
    imported = run("import", str(out), "--model", "cli-copy")
    assert imported.returncode == 0 and "cli-copy #1" in imported.stdout
    failed = run("build", str(folder), "--name", "cli", "--entry", "predict.py:missing")
    assert failed.returncode == 1 and "missing" in failed.stderr


def test_corruption_is_never_served_and_verify_and_gc_work(offline_server, tmp_path):
    srv = offline_server().start()
    built = _built(srv, tmp_path)
    with srv.client() as c:
        files = {f["path"]: f for f in c.get("/api/v1/models/src/builds/1/files").json()["items"]}
        digest = files["params/w.bin"]["digest"].removeprefix("sha256:")
        obj = srv.data_dir / "store" / "objects" / digest[:2] / digest[2:]
        obj.chmod(0o644)
        data = bytearray(obj.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped bit in the stored object
        obj.write_bytes(bytes(data))
        served = c.get("/api/v1/models/src/builds/1/files/params/w.bin")
        assert served.status_code == 500
        assert served.json()["error"]["code"] == "store.corrupt"
        assert digest in served.json()["error"]["message"]
        checked = c.post("/api/v1/store/verify").json()
        assert [p["digest"] for p in checked["corrupt"]] == ["sha256:" + digest]
        # an unreferenced object is collected by gc, referenced ones are kept
        c.post("/api/v1/models", json={"name": "tmp"})
        assert c.delete("/api/v1/models/src").status_code == 204
        before = c.get("/api/v1/store").json()["objects"]
        # while the server runs, gc keeps an hour's grace: nothing this young goes
        live = c.post("/api/v1/store/gc").json()
        assert live == {
            "removed": 0,
            "freed_bytes": 0,
            "folders_removed": 0,
            "files_removed": 0,
            "temp_removed": 0,
        }
    srv.stop()
    cli = subprocess.run(
        [*MODELPORT, "verify", "--data-dir", str(srv.data_dir)],
        capture_output=True,
        text=True,
        env=srv.env,
        timeout=60,
    )
    assert cli.returncode == 1 and digest in cli.stderr
    gc = subprocess.run(
        [*MODELPORT, "gc", "--data-dir", str(srv.data_dir), "--grace-s", "0", "--json"],
        capture_output=True,
        text=True,
        env=srv.env,
        timeout=60,
    )
    assert gc.returncode == 0, gc.stderr
    collected = __import__("json").loads(gc.stdout)
    assert collected["removed"] == before
    # the deleted model's project folder, environment and checked-out files went with it
    assert collected["folders_removed"] == 2 and collected["files_removed"] > 0
    for folder in ("projects", "envs", "files"):
        assert list((srv.data_dir / folder).iterdir()) == [], folder
    again = subprocess.run(
        [*MODELPORT, "verify", "--data-dir", str(srv.data_dir)],
        capture_output=True,
        text=True,
        env=srv.env,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert built["status"] == "built"
