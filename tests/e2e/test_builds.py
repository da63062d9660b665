"""Builds through a real `modelport serve`: upload, states, log, files, diff, digest, failures."""

from __future__ import annotations

import io
import tarfile

import pytest

from tests.conftest import pack_bytes, upload_build, wait_build, write_project

TYPED = "def predict(a: float, b: float = 1.0) -> float:\n    return a + b\n"


@pytest.fixture
def srv(offline_server):
    server = offline_server().start()
    with server.client() as c:
        assert c.post("/api/v1/models", json={"name": "m"}).status_code == 201
    return server


def build(srv, tmp_path, files, **fields) -> dict:
    folder = write_project(tmp_path / f"p{len(list(tmp_path.iterdir()))}", files)
    fields.setdefault("entrypoint", "predict.py:predict")
    with srv.client() as c:
        queued = upload_build(c, "m", pack_bytes(folder), **fields)
        assert queued.status_code == 202, queued.text
        assert queued.json()["status"] == "queued"
        return wait_build(c, "m", queued.json()["number"])


def test_build_records_schema_example_and_log(srv, tmp_path):
    built = build(
        srv,
        tmp_path,
        {"predict.py": TYPED},
        example_input={"a": 2},
        message="first cut",
        labels={"team": "ml"},
    )
    assert built["status"] == "built", built["error"]
    assert built["number"] == 1 and built["digest"].startswith("sha256:")
    assert built["input_schema"]["properties"]["a"] == {"type": "number"}
    assert built["input_schema"]["required"] == ["a"]
    assert built["output_schema"] == {"type": "number"}
    assert built["example_output"] == 3.0
    assert built["message"] == "first cut" and built["labels"] == {"team": "ml"}
    assert built["created_by"] == "admin" and built["finished_at"]
    with srv.client() as c:
        got = c.get("/api/v1/models/m/builds/1/log")
        log = got.text
        files = c.get("/api/v1/models/m/builds/1/files").json()["items"]
        raw = c.get("/api/v1/models/m/builds/1/files/predict.py")
        content = raw.text
        followed = c.get("/api/v1/models/m/builds/1/log", params={"follow": 1})
    for answer in (got, raw, followed):  # one charset, not two
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert "resolving dependencies" in log and "msgspec==" in log and "example output" in log
    assert [f["path"] for f in files] == ["predict.py"] and content == TYPED


def test_same_folder_twice_same_digest_and_no_new_file_bytes(srv, tmp_path):
    first = build(srv, tmp_path, {"predict.py": TYPED, "weights.bin": b"\x01" * 200_000})
    second = build(
        srv, tmp_path, {"predict.py": TYPED, "weights.bin": b"\x01" * 200_000}, message="again"
    )
    assert first["status"] == second["status"] == "built"
    assert first["digest"] == second["digest"]
    assert second["number"] == 2
    assert second["new_bytes"] < 5_000  # only its snapshot listing and manifest are new


def test_code_change_adds_only_that_file(srv, tmp_path):
    weights = bytes(range(256)) * 4000  # ~1 MB that does not change
    first = build(srv, tmp_path, {"predict.py": TYPED, "weights.bin": weights})
    changed = TYPED.replace("1.0", "2.0")
    second = build(srv, tmp_path, {"predict.py": changed, "weights.bin": weights})
    assert second["digest"] != first["digest"]
    assert second["new_bytes"] < len(changed) + 5_000
    with srv.client() as c:
        diff = c.get("/api/v1/models/m/builds/1/diff/2").json()
    assert diff["files"] == [
        {
            "path": "predict.py",
            "change": "changed",
            "size_before": len(TYPED),
            "size_after": len(changed),
        }
    ]
    assert diff["dependencies"] == []
    assert diff["schemas"][0]["changed"] == ["b"]


def test_dependencies_locked_and_diffed(srv, tmp_path):
    code = "import tinypkg\ndef predict(x: int) -> str:\n    return tinypkg.VERSION\n"
    one = build(
        srv,
        tmp_path,
        {"predict.py": code, "requirements.txt": "tinypkg==1.0\n"},
        example_input={"x": 1},
    )
    two = build(
        srv,
        tmp_path,
        {"predict.py": code, "requirements.txt": "tinypkg==2.0\n"},
        example_input={"x": 1},
    )
    assert one["example_output"] == "1.0" and two["example_output"] == "2.0"
    assert one["requirements"] == "requirements.txt"
    with srv.client() as c:
        diff = c.get("/api/v1/models/m/builds/1/diff/2").json()
    assert {"name": "tinypkg", "change": "changed", "before": "1.0", "after": "2.0"} in diff[
        "dependencies"
    ]


@pytest.mark.parametrize(
    "files,entry,needle",
    [
        ({"predict.py": TYPED}, "missing.py:predict", "missing.py"),
        ({"predict.py": TYPED}, "predict.py:nothere", "nothere"),
        ({"predict.py": TYPED + "CONST = 3\n"}, "predict.py:CONST", "not callable"),
        (
            {"predict.py": "import nonexistent_pkg_xyz\n" + TYPED},
            "predict.py:predict",
            "nonexistent_pkg_xyz",
        ),
        ({"predict.py": "def predict(a:\n"}, "predict.py:predict", "SyntaxError"),
        (
            {"predict.py": "raise RuntimeError('weights missing')\n"},
            "predict.py:predict",
            "weights missing",
        ),
        (
            {"predict.py": "def predict(n: int):\n    yield n\n"},
            "predict.py:predict",
            "generator function",
        ),
    ],
)
def test_broken_code_fails_the_build_with_the_real_error(srv, tmp_path, files, entry, needle):
    failed = build(srv, tmp_path, files, entrypoint=entry)
    assert failed["status"] == "failed"
    assert needle in failed["error"]
    with srv.client() as c:
        assert needle in c.get(f"/api/v1/models/m/builds/{failed['number']}/log").text


def test_unresolvable_requirement_fails_with_uvs_words(srv, tmp_path):
    failed = build(srv, tmp_path, {"predict.py": TYPED, "requirements.txt": "tinypkg==9.9\n"})
    assert failed["status"] == "failed" and "tinypkg" in failed["error"]


def test_example_input_not_matching_schema_fails(srv, tmp_path):
    failed = build(srv, tmp_path, {"predict.py": TYPED}, example_input={"a": "not a number"})
    assert failed["status"] == "failed" and "a" in failed["error"]


def test_example_output_mismatch_fails(srv, tmp_path):
    failed = build(srv, tmp_path, {"predict.py": TYPED}, example_input={"a": 1}, example_output=5)
    assert failed["status"] == "failed" and "does not match" in failed["error"]
    ok = build(srv, tmp_path, {"predict.py": TYPED}, example_input={"a": 1}, example_output=2.0)
    assert ok["status"] == "built"


def test_server_applies_modelportignore(srv, tmp_path):
    built = build(
        srv,
        tmp_path,
        {"predict.py": TYPED, "notes/secret.txt": "x", ".modelportignore": "notes/\n"},
    )
    with srv.client() as c:
        paths = [
            f["path"]
            for f in c.get(f"/api/v1/models/m/builds/{built['number']}/files").json()["items"]
        ]
    assert "notes/secret.txt" not in paths and "predict.py" in paths


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize(
    "archive,code,status",
    [
        (_tar([_file("predict.py", TYPED.encode()), _file("../evil.py")]), "archive.unsafe", 400),
        (_tar([_file("/etc/evil")]), "archive.unsafe", 400),
        (_tar([_link("x", "/etc/passwd")]), "archive.unsafe", 400),
        (_tar([_link("h", "../../etc/passwd", tarfile.LNKTYPE)]), "archive.unsafe", 400),
        (_tar([_file("a.py"), _link("loop", ".")]), "archive.unsafe", 400),
        (b"this is not a tar at all" * 100, "archive.invalid", 400),
        (b"\x1f\x8b\x08" + b"\x00" * 200, "archive.invalid", 400),
    ],
)
def test_hostile_archives_are_refused_and_nothing_recorded(srv, archive, code, status):
    with srv.client() as c:
        response = upload_build(c, "m", archive, entrypoint="predict.py:predict")
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert c.get("/api/v1/models/m/builds").json()["items"] == []
        assert c.get("/api/v1/health").status_code == 200
    assert (
        not (srv.data_dir / "evil.py").exists() and not (srv.data_dir.parent / "evil.py").exists()
    )


def test_archive_over_the_limit_is_413(offline_server, tmp_path):
    srv = offline_server()
    srv.env["MODELPORT_ARCHIVE_MAX_BYTES"] = "100000"
    srv.start()
    with srv.client() as c:
        c.post("/api/v1/models", json={"name": "m"})
        big = write_project(
            tmp_path / "big", {"predict.py": TYPED, "w.bin": __import__("os").urandom(300_000)}
        )
        response = upload_build(c, "m", pack_bytes(big), entrypoint="predict.py:predict")
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "archive.too_large"
        assert c.get("/api/v1/models/m/builds").json()["items"] == []


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"entrypoint": "predict"}, "entrypoint"),
        ({"entrypoint": "predict.py"}, "entrypoint"),
        ({"entrypoint": "../x.py:f"}, "entrypoint"),
        ({"entrypoint": "predict.py:predict", "example_input": "{not json"}, "example_input"),
        ({"entrypoint": "predict.py:predict", "example_input": "[1]"}, "example_input"),
        ({"entrypoint": "predict.py:predict", "labels": '{"a": 1}'}, "labels[...]"),
        ({"entrypoint": "predict.py:predict", "python": "2.7.x"}, "python"),
        ({"entrypoint": "predict.py:predict", "requirements": "nope.txt"}, "requirements"),
        ({"entrypoint": "predict.py:predict", "colour": "red"}, "colour"),
        ({}, "entrypoint"),
    ],
)
def test_bad_build_fields_are_422(srv, tmp_path, fields, field):
    folder = write_project(tmp_path / "p", {"predict.py": TYPED})
    with srv.client() as c:
        response = upload_build(c, "m", pack_bytes(folder), **fields)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field
        assert c.get("/api/v1/models/m/builds").json()["items"] == []


def test_upload_without_archive_or_multipart(srv):
    with srv.client() as c:
        no_archive = c.post(
            "/api/v1/models/m/builds", data={"entrypoint": "p.py:f"}, files={"other": ("x", b"y")}
        )
        assert no_archive.status_code == 422 and no_archive.json()["error"]["field"] == "archive"
        not_multipart = c.post("/api/v1/models/m/builds", json={"entrypoint": "p.py:f"})
        assert not_multipart.status_code == 400
        assert not_multipart.json()["error"]["code"] == "request.malformed"
        unknown = upload_build(c, "nope", b"x", entrypoint="p.py:f")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model.not_found"


def test_viewer_cannot_upload(srv, tmp_path):
    with srv.client() as c:
        viewer = c.post("/api/v1/tokens", json={"name": "v", "role": "viewer"}).json()["token"]
    folder = write_project(tmp_path / "p", {"predict.py": TYPED})
    with srv.client(token=viewer) as c:
        response = upload_build(c, "m", pack_bytes(folder), entrypoint="predict.py:predict")
        assert response.status_code == 403
        assert c.get("/api/v1/models/m/builds").status_code == 200


def test_unknown_build_is_404(srv):
    with srv.client() as c:
        response = c.get("/api/v1/models/m/builds/7")
        assert response.status_code == 404 and response.json()["error"]["code"] == "build.not_found"
        assert c.get("/api/v1/models/m/builds/7/log").status_code == 404


def test_follow_streams_the_log_until_the_end(srv, tmp_path):
    slow = "import time\ntime.sleep(1.5)\n" + TYPED
    folder = write_project(tmp_path / "p", {"predict.py": slow})
    with srv.client() as c:
        number = upload_build(c, "m", pack_bytes(folder), entrypoint="predict.py:predict").json()[
            "number"
        ]
        with c.stream(
            "GET", f"/api/v1/models/m/builds/{number}/log", params={"follow": "1"}
        ) as response:
            lines = list(response.iter_lines())
        assert any("checking the function" in line for line in lines)
        assert any(
            line.endswith("Built " + c.get(f"/api/v1/models/m/builds/{number}").json()["digest"])
            for line in lines
        )


def test_links_inside_the_folder_become_copies(srv):
    archive = _tar(
        [
            _file("predict.py", TYPED.encode()),
            _file("params/w.txt", b"weights"),
            _link("alias.py", "predict.py"),
            _link("p2", "params"),
        ]
    )
    with srv.client() as c:
        queued = upload_build(c, "m", archive, entrypoint="alias.py:predict")
        assert queued.status_code == 202, queued.text
        built = wait_build(c, "m", queued.json()["number"])
        assert built["status"] == "built", built["error"]
        files = {f["path"]: f for f in c.get("/api/v1/models/m/builds/1/files").json()["items"]}
    assert set(files) == {"predict.py", "alias.py", "params/w.txt", "p2/w.txt"}
    assert files["alias.py"]["digest"] == files["predict.py"]["digest"]


def test_manifest_and_whoami(srv, tmp_path):
    built = build(srv, tmp_path, {"predict.py": TYPED, "requirements.txt": "tinypkg==1.0\n"})
    with srv.client() as c:
        manifest = c.get("/api/v1/models/m/builds/1/manifest").json()
        me = c.get("/api/v1/whoami").json()
    assert manifest["digest"] == built["digest"]
    assert {w["name"]: w["version"] for w in manifest["derived"]["wheels"]}["tinypkg"] == "1.0"
    assert [f["path"] if isinstance(f, dict) else f[0] for f in manifest["content"]["files"]] == [
        "predict.py",
        "requirements.txt",
    ]
    assert me["role"] == "admin" and me["name"] == "admin"
