"""Replays through a real server and real replicas: a build's captured requests sent to another
build and the answers compared (issue 17, part 4); who may read them (part 6)."""

from __future__ import annotations

import time

import httpx
import msgspec
import pytest

from tests.e2e.test_deployments import Deployed


def model(total_offset: float) -> str:
    return (
        "def predict(a: float, b: float = 1.0) -> dict:\n"
        f"    return {{'total': a + b + {total_offset}, 'label': 'ok',"
        f" 'parts': [a, b + {total_offset}], 'n': int(a)}}\n"
    )


OTHER = "def predict(x: str) -> str:\n    return x\n"


@pytest.fixture(scope="module")
def rp(tmp_path_factory, wheel_links):
    """One server with model `rp`: builds one, same (the same code), changed (one constant
    changed) and other (another input schema); one deployed capturing every request, after 10
    good predictions (rp-0…rp-9), a refused one and one in MessagePack."""
    from tests.conftest import Server, free_port, server_env

    tmp = tmp_path_factory.mktemp("replays")
    data = tmp / "data"
    env = {**server_env(data), "MODELPORT_FIND_LINKS": str(wheel_links), "MODELPORT_NO_INDEX": "1"}
    srv = Server(data_dir=data, port=free_port(), env=env).start()
    try:
        d = Deployed(srv, tmp)
        d.model("rp")
        d.one = d.build("rp", {"predict.py": model(0.0)})
        d.same = d.build("rp", {"predict.py": model(0.0)})
        d.changed = d.build("rp", {"predict.py": model(0.5)})
        d.other = d.build("rp", {"predict.py": OTHER})
        d.deploy("rp", d.one, capture_percent=100)
        for a in range(10):
            r = d.predict("rp", {"a": a}, headers={"X-Request-Id": f"rp-{a}"})
            assert r.status_code == 200, r.text
        assert d.predict("rp", {"a": "not a number"}).status_code == 422  # an error, captured
        packed = httpx.post(  # MessagePack both ways: replayed as it came, compared as values
            f"{srv.url}/models/rp/predict",
            content=msgspec.msgpack.encode({"a": 20}),
            headers={
                "Authorization": f"Bearer {d.keys['rp']}",
                "Content-Type": "application/msgpack",
                "Accept": "application/msgpack",
                "X-Request-Id": "rp-packed",
            },
        )
        assert msgspec.msgpack.decode(packed.content)["total"] == 21.0
        d.viewer = d.c.post("/api/v1/tokens", json={"name": "v", "role": "viewer"}).json()["token"]
        yield d
    finally:
        srv.stop()


def replay(d: Deployed, model: str = "rp", **body) -> dict:
    r = d.c.post(f"/api/v1/models/{model}/replays", json={"since": "1h", **body})
    assert r.status_code == 202, r.text
    report = r.json()
    assert report["status"] == "running"
    deadline = time.monotonic() + 120
    while report["status"] == "running":
        assert time.monotonic() < deadline, report
        time.sleep(0.1)
        report = d.c.get(f"/api/v1/models/{model}/replays/{report['id']}").json()
    return report


def test_a_build_against_itself_is_all_equal(rp):
    report = replay(rp, from_build=rp.one, to_build=rp.one)
    assert report["status"] == "done", report
    assert (report["replayed"], report["equal"], report["different"]) == (12, 12, 0)
    assert report["errors_from"] == report["errors_to"] == 1  # the refused request, refused again
    assert report["diffs"] == [] and report["skipped"] == 0
    assert report["p50_ms_from"] > 0 and report["p50_ms_to"] > 0
    # the replay's own replica group is gone afterwards; build 1 serves on alone
    replicas = rp.c.get("/api/v1/models/rp/replicas").json()["items"]
    assert len(replicas) == 1 and replicas[0]["id"].startswith(f"rp-{rp.one}-")
    again = replay(rp, from_build=rp.one, to_build=rp.same)
    assert (again["replayed"], again["equal"], again["different"]) == (12, 12, 0)


def test_a_changed_constant_names_exactly_the_outputs_it_changes(rp):
    report = replay(rp, from_build=rp.one, to_build=rp.changed)
    assert report["status"] == "done", report
    assert (report["replayed"], report["equal"], report["different"]) == (12, 1, 11)
    assert {d["path"] for d in report["diffs"]} == {"$.total", "$.parts[1]"}
    assert len(report["diffs"]) == 22
    first = next(d for d in report["diffs"] if d["request_id"] == "rp-3" and d["path"] == "$.total")
    assert (first["old"], first["new"], first["kind"]) == (4.0, 4.5, "changed")
    tolerant = replay(rp, from_build=rp.one, to_build=rp.changed, atol=0.6)
    assert (tolerant["equal"], tolerant["different"]) == (12, 0)
    listed = rp.c.get("/api/v1/models/rp/replays", params={"build": rp.changed}).json()["items"]
    assert [r["id"] for r in listed][:2] == [tolerant["id"], report["id"]]
    assert all(rp.changed in (r["from_build"], r["to_build"]) for r in listed)


def test_bad_replays_are_refused_before_anything_is_sent(rp):
    def refused(**body):
        r = rp.c.post("/api/v1/models/rp/replays", json={"since": "1h", **body})
        return r.status_code, r.json()["error"]

    status, error = refused(from_build=rp.one, to_build=rp.other)
    assert status == 409 and error["code"] == "schema.breaking"
    assert "field 'x'" in error["message"]
    status, error = refused(from_build=rp.one, to_build=99)
    assert status == 404 and error["code"] == "build.not_found"
    status, error = refused(from_build=98, to_build=rp.one)
    assert status == 404 and error["code"] == "build.not_found"
    status, error = refused(from_build=rp.same, to_build=rp.one)  # build 2 never served
    assert status == 422 and error["field"] == "since"
    assert "no captured requests" in error["message"]
    r = rp.c.post(
        "/api/v1/models/rp/replays",
        json={"from_build": rp.one, "to_build": rp.one, "since": "3h", "until": "2h"},
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "since"
    status, error = refused(from_build=rp.one, to_build=rp.one, rtol=-1)
    assert status == 422 and error["field"] == "rtol"
    status, error = refused(from_build=rp.one, to_build=rp.one, since="yesterday")
    assert status == 422 and error["field"] == "since"
    r = rp.c.post(
        "/api/v1/models/nope/replays", json={"from_build": 1, "to_build": 1, "since": "1h"}
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "model.not_found"
    r = rp.c.get("/api/v1/models/rp/replays/9999")
    assert r.status_code == 404 and r.json()["error"]["code"] == "replay.not_found"


def test_a_viewer_sees_neither_captures_nor_reports(rp):
    with rp.srv.client(token=rp.viewer) as viewer:
        for path in ("/api/v1/models/rp/replays", f"/api/v1/models/rp/builds/{rp.one}/captures"):
            r = viewer.get(path)
            assert r.status_code == 403 and r.json()["error"]["code"] == "auth.denied", path
        r = viewer.post(
            "/api/v1/models/rp/replays", json={"from_build": 1, "to_build": 1, "since": "1h"}
        )
        assert r.status_code == 403
        assert viewer.get("/api/v1/models/rp/deployments").status_code == 200  # the rest it sees


def test_the_cli_replays_waits_and_prints_the_report(rp):
    from tests.e2e.test_deployments import _cli

    run = _cli(rp.srv)
    same = run("replay", "rp", "--build", str(rp.same), "--since", "1h")
    assert same.returncode == 0, same.stderr
    assert "replayed 12 · equal 12 · different 0" in same.stdout
    changed = run("replay", "rp", "--build", str(rp.changed))
    assert changed.returncode == 1, changed.stderr
    assert "different 11" in changed.stdout and "$.parts[1]" in changed.stdout
    assert "$.total" in changed.stdout and "rp-3" in changed.stdout
    as_json = run("replay", "rp", "--build", str(rp.changed), "--atol", "1", "--json")
    assert as_json.returncode == 0 and '"different": 0' in as_json.stdout
    refused = run("replay", "rp", "--build", str(rp.other))
    assert refused.returncode != 0 and "schema.breaking" in refused.stderr + refused.stdout
    listed = run("replays", "rp", "--build", str(rp.same))
    assert listed.returncode == 0 and f"#{rp.one} → #{rp.same}" in listed.stdout


def test_the_store_counts_captures_and_reports(rp):
    replay(rp, from_build=rp.one, to_build=rp.one)
    stats = rp.c.get("/api/v1/store").json()
    assert stats["captures"] == 12 and stats["capture_bytes"] > 12 * len('{"a":0}')
    assert stats["replay_reports"] >= 1 and stats["replay_report_bytes"] > 0


def test_a_shadow_candidates_pairs_and_the_promote_gate(tmp_path_factory, wheel_links):
    """A shadow candidate answering one output differently: its recorded pairs give a report
    naming that output; a replay of captures goes to the candidate's own group; promote is
    refused on the differing report (409 replay.mismatch) and goes through on a matching one."""
    from tests.conftest import Server, free_port, server_env

    tmp = tmp_path_factory.mktemp("shadow")
    data = tmp / "data"
    env = {**server_env(data), "MODELPORT_FIND_LINKS": str(wheel_links), "MODELPORT_NO_INDEX": "1"}
    srv = Server(data_dir=data, port=free_port(), env=env).start()
    try:
        d = Deployed(srv, tmp)
        d.model("sh")
        one = d.build("sh", {"predict.py": model(0.0)})
        changed = d.build("sh", {"predict.py": model(0.5)})
        same = d.build("sh", {"predict.py": model(0.0)})
        d.deploy("sh", one)
        r = d.c.post("/api/v1/models/sh/deployments", json={"build": changed, "shadow": True})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 90
        while (
            d.c.get("/api/v1/models/sh/deployments/current/traffic").json().get("candidate_status")
            != "serving"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for a in range(5):
            answer = d.predict("sh", {"a": a}, headers={"X-Request-Id": f"sh-{a}"})
            assert answer.status_code == 200 and answer.headers["x-model-build"] == str(one)
        deadline = time.monotonic() + 30
        while (
            d.c.get("/api/v1/models/sh/deployments/current/traffic").json()["shadow"]["recorded"]
            < 5
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        shadowed = replay(d, from_build=one, to_build=changed, source="shadow", model="sh")
        assert shadowed["status"] == "done", shadowed
        assert (shadowed["replayed"], shadowed["different"]) == (5, 5)
        assert {x["path"] for x in shadowed["diffs"]} == {"$.total", "$.parts[1]"}
        refused = d.c.post("/api/v1/models/sh/promote", json={"if_replay_matches": shadowed["id"]})
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "replay.mismatch"
        assert "5 of 5" in refused.json()["error"]["message"]
        none_yet = d.c.post(
            "/api/v1/models/sh/replays",
            json={"from_build": one, "to_build": same, "since": "1h", "source": "shadow"},
        )
        assert none_yet.status_code == 422 and "shadowed" in none_yet.json()["error"]["message"]

        # a matching candidate: the captured requests sent to its own group, then promoted
        assert d.c.post("/api/v1/models/sh/abort").status_code == 200
        r = d.c.post(
            "/api/v1/models/sh/deployments",
            json={
                "build": same,
                "canary_percent": 0,
                "capture_percent": 100,
                "require_replay": True,
            },
        )
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 90
        while (
            d.c.get("/api/v1/models/sh/deployments/current/traffic").json().get("candidate_status")
            != "serving"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        matching = replay(d, from_build=one, to_build=same, model="sh")
        assert matching["status"] == "done" and matching["different"] == 0, matching
        assert matching["replayed"] == 5  # the primary's shadowed requests, captured
        wrong = d.c.post("/api/v1/models/sh/promote", json={"if_replay_matches": shadowed["id"]})
        assert wrong.status_code == 409 and "not the primary" in wrong.json()["error"]["message"]
        bare = d.c.post("/api/v1/models/sh/promote", json={})  # require_replay: a report first
        assert bare.status_code == 409 and "require_replay" in bare.json()["error"]["message"]
        promoted = d.c.post("/api/v1/models/sh/promote", json={"if_replay_matches": matching["id"]})
        assert promoted.status_code in (200, 202), promoted.text
        assert promoted.json()["require_replay"] is True
    finally:
        srv.stop()
