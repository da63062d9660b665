"""The per-model readiness probe (no token) and JSON 404s for every unknown API-looking path."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("path", [
    "/models/m/health", "/models/m/ready/x", "/models/m/nope", "/models/m/builds/1/zzz",
    "/models/m/builds/x", "/api/v1/nope", "/api/nope", "/v2/models", "/v2/models/m/infer",
])
def test_unknown_paths_are_json_404s_never_the_web_ui(app_client, path):
    response = app_client.get(path)
    assert response.status_code == 404, path
    assert response.headers["content-type"].startswith("application/json"), path
    assert response.json()["error"]["code"] == "route.not_found"


@pytest.mark.parametrize("path", [
    "/models/m", "/models/m/builds", "/models/m/monitoring", "/models/m/builds/3",
    "/models/m/builds/3/log", "/models/m/builds/3/diff", "/models/m/builds/3/diff/2",
])
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
