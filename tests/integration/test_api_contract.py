"""What the API promises clients: the per-model readiness probe (no token), JSON 404s for every
unknown API-looking path, JSON booleans only, and bounds in the OpenAPI document as enforced."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "path",
    [
        "/models/m/health",
        "/models/m/ready/x",
        "/models/m/nope",
        "/models/m/builds/1/zzz",
        "/models/m/builds/x",
        "/api/v1/nope",
        "/api/nope",
        "/v2/models",
        "/v2/models/m/infer",
    ],
)
def test_unknown_paths_are_json_404s_never_the_web_ui(app_client, path):
    response = app_client.get(path)
    assert response.status_code == 404, path
    assert response.headers["content-type"].startswith("application/json"), path
    assert response.json()["error"]["code"] == "route.not_found"


@pytest.mark.parametrize(
    "path",
    [
        "/models/m",
        "/models/m/builds",
        "/models/m/monitoring",
        "/models/m/traffic",
        "/models/m/builds/3",
        "/models/m/builds/3/log",
        "/models/m/builds/3/diff",
        "/models/m/builds/3/diff/2",
    ],
)
def test_the_web_uis_own_pages_still_load(app_client, path):
    response = app_client.get(path)
    assert response.status_code in (200, 503), path  # 503: the web UI is not built
    assert "application/json" not in response.headers["content-type"]


def test_the_ready_probe_without_a_token(app_client):
    unknown = app_client.get("/models/ghost/ready", headers={"Authorization": ""})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model.not_found"
    app_client.post("/api/v1/models", json={"name": "idle"})
    idle = app_client.get("/models/idle/ready", headers={"Authorization": ""})
    assert idle.status_code == 503 and idle.json()["error"]["code"] == "model.unavailable"
    assert "not deployed" in idle.json()["error"]["message"]


@pytest.mark.parametrize("value", [0, 1, "false", "true", None])
def test_booleans_are_json_booleans(app_client, value):
    made = app_client.post("/api/v1/models", json={"name": "b", "auth": value})
    assert made.status_code == 422, made.text
    assert made.json()["error"]["field"] == "auth"
    assert app_client.get("/api/v1/models/b").status_code == 404
    app_client.post("/api/v1/models", json={"name": "ok", "auth": False})
    changed = app_client.patch("/api/v1/models/ok", json={"auth": "true"})
    assert changed.status_code == 422 and changed.json()["error"]["field"] == "auth"
    assert app_client.get("/api/v1/models/ok").json()["auth"] is False


def test_documented_bounds_and_formats_are_the_enforced_ones(app_client):
    doc = app_client.get("/schema/openapi.json").json()
    create = doc["components"]["schemas"]["DeploymentCreate"]["properties"]
    for field in ("max_body_mb", "timeout_s", "boot_timeout_s"):
        assert create[field]["exclusiveMinimum"] == 0, field
        app_client.post("/api/v1/models", json={"name": "z"})
        refused = app_client.post("/api/v1/models/z/deployments", json={"build": 1, field: 0})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == field
    assert create["queue_timeout_s"]["minimum"] == 0
    files = doc["paths"]["/api/v1/models/{name}/builds/{number}/files/{path}"]["get"]
    assert set(files["responses"]["200"]["content"]) == {"text/plain", "application/octet-stream"}
    series = doc["paths"]["/api/v1/models/{name}/metrics"]["get"]["parameters"]
    since = next(p for p in series if p["name"] == "since")
    assert "ISO-8601" in since["description"] and "15m" in since["description"]
    listing = doc["paths"]["/api/v1/models"]["get"]["parameters"]
    assert "next_cursor" in next(p for p in listing if p["name"] == "cursor")["description"]
