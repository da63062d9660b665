"""A full disk, for real (a small tmpfs as the data dir): writes answer 507 store.full naming the
data dir, the server stays up and serves, and the monitoring counted meanwhile is kept."""

from __future__ import annotations

import httpx

from tests.conftest import fill_disk, pack_bytes, upload_build, wait_build, write_project
from tests.e2e.test_crash_recovery import until
from tests.e2e.test_deployments import Deployed

PADDED = "def predict(a: float, pad: str = '') -> float:\n    return a + 1\n"
BODY = {"a": 1, "pad": "x" * 50_000}  # captured whole: 150 of them are 7.5 MB to write


def assert_store_full(response: httpx.Response, data_dir) -> None:
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert error["code"] == "store.full" and str(data_dir) in error["message"]


def test_a_full_disk_is_507_store_full_and_serving_and_monitoring_go_on(
    offline_server, small_disk, tmp_path
):
    data = small_disk(64)
    srv = offline_server(data_dir=data).start()
    d = Deployed(srv, tmp_path)
    d.model("m")
    d.deploy("m", d.build("m", {"predict.py": PADDED}), capture_percent=100)
    exported = d.c.get("/api/v1/models/m/builds/1/export").content
    project = pack_bytes(
        write_project(tmp_path / "p2", {"predict.py": PADDED, "weights.bin": b"\1" * 300_000})
    )

    filler = fill_disk(data)
    try:
        assert_store_full(upload_build(d.c, "m", project, entrypoint="predict.py:predict"), data)
        assert_store_full(
            d.c.post(
                "/api/v1/builds/import",
                data={"model": "copy"},
                files={"archive": ("b.tar.zst", exported)},
            ),
            data,
        )
        for _ in range(150):
            answer = d.predict("m", BODY)
            assert answer.status_code == 200 and answer.json() == 2.0
        # the monitor's next write (the captures are too big for what is left) is refused
        until(lambda: "what is counted is held in memory" in srv.log(), 40, "a refused write")
        assert d.predict("m", BODY).status_code == 200
        assert d.c.get("/api/v1/health").status_code == 200
        assert d.c.get("/api/v1/models/m/builds").json()["items"][0]["number"] == 1
    finally:
        filler.unlink()

    queued = upload_build(d.c, "m", project, entrypoint="predict.py:predict")
    assert queued.status_code == 202, queued.text
    assert wait_build(d.c, "m", queued.json()["number"])["status"] == "built"
    assert (
        d.c.post(
            "/api/v1/builds/import",
            data={"model": "copy"},
            files={"archive": ("b.tar.zst", exported)},
        ).status_code
        == 201
    )
    until(lambda: "the disk has room again" in srv.log(), 40, "the held points written")
    series = d.c.get("/api/v1/models/m/metrics", params={"since": "1h"}).json()
    assert sum(p["requests"] for p in series["points"]) == 151
    captured, cursor = 0, None
    while True:
        page = d.c.get(
            "/api/v1/models/m/builds/1/captures",
            params={"limit": 100, **({"cursor": cursor} if cursor else {})},
        ).json()
        captured += len(page["items"])
        if not (cursor := page["next"]):
            break
    assert captured == 151
    assert "Traceback" not in srv.log()
