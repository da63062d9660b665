"""Monitoring through a real server and real replicas: /metrics, logs, tracked metrics, series."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_deployments import Deployed

MODEL = """\
from modelport import track_metric

print("observed: loaded", flush=True)


def predict(x: float) -> float:
    print(f"observed: predict x={x}")
    track_metric("input", x)
    if x < 0:
        raise ValueError("negative")
    return x * 2
"""


@pytest.fixture(scope="module")
def obs(tmp_path_factory, wheel_links):
    """One server (debug log level, JSON lines) with model `obs` deployed, capturing everything,
    after 5 good predictions (request ids obs-1…obs-5) and a failing one."""
    from tests.conftest import Server, free_port, server_env

    tmp = tmp_path_factory.mktemp("obs")
    data = tmp / "data"
    env = {**server_env(data), "MODELPORT_FIND_LINKS": str(wheel_links), "MODELPORT_NO_INDEX": "1"}
    srv = Server(
        data_dir=data,
        port=free_port(),
        env=env,
        extra_args=["--log-level", "debug", "--log-format", "json"],
    ).start()
    try:
        d = Deployed(srv, tmp)
        d.model("obs")
        done = d.deploy("obs", d.build("obs", {"predict.py": MODEL}), capture_percent=100)
        assert done["status"] == "deployed" and done["capture_percent"] == 100
        for x in range(1, 6):
            r = d.predict("obs", {"x": x}, headers={"X-Request-Id": f"obs-{x}"})
            assert r.status_code == 200 and r.json() == 2 * x
        assert d.predict("obs", {"x": -1}).status_code == 500
        d.viewer = d.c.post("/api/v1/tokens", json={"name": "v", "role": "viewer"}).json()["token"]
        yield d
    finally:
        srv.stop()


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fam, **labels) -> list:
    return [s for s in fam.samples if all(s.labels.get(k) == v for k, v in labels.items())]


def test_prometheus_needs_a_token_and_counts(obs):
    assert httpx.get(f"{obs.srv.url}/metrics").status_code == 401
    with obs.srv.client(token=obs.viewer) as viewer:
        r = viewer.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = families(r.text)
    requests = {
        s.labels["code"]: s.value
        for s in samples(fams["modelport_requests"], model="obs", build="1")
    }
    assert requests == {"200": 5.0, "500": 1.0}
    latency = fams["modelport_request_duration_seconds"]
    buckets = [s for s in samples(latency, model="obs", build="1") if s.name.endswith("_bucket")]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf"  # cumulative
    count = samples(latency, model="obs", build="1")
    assert counts[-1] == 6 == next(s.value for s in count if s.name.endswith("_count"))
    assert next(s.value for s in count if s.name.endswith("_sum")) > 0
    assert samples(fams["modelport_request_bytes"], model="obs")[0].value == 5 * len('{"x":1}') + 8
    assert samples(fams["modelport_response_bytes"], model="obs")[0].value > 0
    assert samples(fams["modelport_in_flight"], model="obs")[0].value == 0
    assert samples(fams["modelport_queue_depth"], model="obs")[0].value == 0
    assert samples(fams["modelport_replicas"], model="obs", state="ready")[0].value == 1
    assert samples(fams["modelport_replica_restarts"], model="obs")[0].value == 0
    assert samples(fams["modelport_replica_cpu_seconds"], model="obs")[0].value > 0
    assert samples(fams["modelport_replica_resident_memory_bytes"], model="obs")[0].value > 1e6
    assert samples(fams["modelport_builds"], model="obs", status="built")[0].value == 1
    open_metrics = obs.c.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert open_metrics.text.rstrip().endswith("# EOF")


def test_a_models_print_is_in_its_replica_log_and_follow_streams(obs):
    replica = obs.c.get("/api/v1/models/obs/replicas").json()["items"][0]["id"]
    path = f"/api/v1/models/obs/replicas/{replica}/logs"
    log = obs.c.get(path, params={"stream": "stdout"}).text
    assert "observed: loaded" in log and "observed: predict x=3.0" in log
    with obs.c.stream(
        "GET", path, params={"stream": "stdout", "follow": "1", "tail": "0"}, timeout=30
    ) as stream:
        assert obs.predict("obs", {"x": 42}).status_code == 200
        seen = ""
        for chunk in stream.iter_text():
            seen += chunk
            if "x=42.0" in seen:
                break
    assert "observed: predict x=42.0" in seen


def test_tracked_metrics_by_request_id_and_ground_truth(obs):
    got = obs.c.get("/api/v1/models/obs/predictions/obs-3/metrics")
    assert got.status_code == 200
    assert got.json()["request_id"] == "obs-3" and got.json()["metrics"] == {"input": 3.0}
    assert got.json()["build"] == 1
    missing = obs.c.get("/api/v1/models/obs/predictions/nope/metrics")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "prediction.not_found"
    with obs.srv.client(token=obs.viewer) as viewer:
        assert (
            viewer.post(
                "/api/v1/models/obs/predictions/obs-3/metrics", json={"metrics": {"truth": 6}}
            ).status_code
            == 403
        )
    added = obs.c.post(
        "/api/v1/models/obs/predictions/obs-3/metrics", json={"metrics": {"truth": 6}}
    )
    assert added.status_code == 200 and added.json()["metrics"] == {"input": 3.0, "truth": 6.0}
    bad = obs.c.post("/api/v1/models/obs/predictions/obs-3/metrics", json={"metrics": {"t": "x"}})
    assert bad.status_code == 422
    tracked = obs.c.get("/api/v1/models/obs/metrics/tracked", params={"name": "truth"}).json()
    assert [i["request_id"] for i in tracked["items"]] == ["obs-3"]
    page = obs.c.get("/api/v1/models/obs/metrics/tracked", params={"limit": 2}).json()
    assert [i["request_id"] for i in page["items"]] == ["obs-1", "obs-2"] and page["next"]
    rest = obs.c.get(
        "/api/v1/models/obs/metrics/tracked", params={"limit": 500, "cursor": page["next"]}
    ).json()["items"]
    assert [i["request_id"] for i in rest][:3] == ["obs-3", "obs-4", "obs-5"]


def test_series_returns_points_after_traffic(obs):
    ten_minutes_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
    for since in ("600", "10m", ten_minutes_ago):
        series = obs.c.get("/api/v1/models/obs/metrics", params={"since": since}).json()
        assert series["step_s"] == 10
        points = series["points"]
        assert points and {p["build"] for p in points} == {1}
        served = [p for p in points if p["requests"]]
        assert sum(p["requests"] for p in served) >= 6 and sum(p["errors"] for p in served) >= 1
        assert all(p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"] for p in served)
    wide = obs.c.get("/api/v1/models/obs/metrics", params={"since": "3600", "step": 300}).json()
    assert wide["step_s"] == 300 and sum(p["requests"] for p in wide["points"]) >= 6
    bad = obs.c.get("/api/v1/models/obs/metrics", params={"since": "yesterday"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "since"


def test_captures_and_the_debug_request_log(obs):
    items = obs.c.get("/api/v1/models/obs/builds/1/captures").json()["items"]
    by_id = {i["request_id"]: i for i in items}
    assert by_id["obs-2"]["request"] == {"x": 2} and by_id["obs-2"]["response"] == 4.0
    assert by_id["obs-2"]["status"] == 200 and not by_id["obs-2"]["truncated"]
    assert any(i["status"] == 500 for i in items)
    for bad in ({"capture_percent": 101}, {"capture_percent": -1}, {"capture_max_bytes": -1}):
        r = obs.c.post("/api/v1/models/obs/deployments", json={"build": 1, **bad})
        assert r.status_code == 422 and r.json()["error"]["field"] == next(iter(bad))
    lines = [json.loads(line) for line in obs.srv.log().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == "obs-4"]
    assert mine and mine[0]["logger"] == "modelport.requests" and mine[0]["level"] == "debug"
    assert mine[0]["model"] == "obs" and mine[0]["build"] == 1 and mine[0]["status"] == 200
    assert mine[0]["replica"].startswith("obs-1-") and mine[0]["latency_ms"] > 0


def test_a_deleted_models_counters_leave_metrics(obs):
    obs.model("gone")
    refused = obs.predict("gone", {"x": 1})  # known, not deployed: counted
    assert refused.json()["error"]["code"] == "model.not_deployed"
    assert samples(families(obs.c.get("/metrics").text)["modelport_requests"], model="gone")
    assert obs.c.delete("/api/v1/models/gone").status_code == 204
    after = families(obs.c.get("/metrics").text)
    assert not samples(after["modelport_requests"], model="gone")
    assert samples(after["modelport_requests"], model="obs")  # the others stay
