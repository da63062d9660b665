"""Tokens and roles through the app: missing, invalid, expired, revoked, denied."""

from __future__ import annotations

import pytest

from tests.conftest import app_sql


def code(response) -> str:
    return response.json()["error"]["code"]


def token_for(app_client, role: str, **extra) -> str:
    created = app_client.post("/api/v1/tokens", json={"name": f"t-{role}", "role": role, **extra})
    assert created.status_code == 201, created.text
    return created.json()["token"]


def as_(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token is not None else {"Authorization": ""}


def test_health_needs_no_token(app_client):
    response = app_client.get("/api/v1/health", headers={"Authorization": ""})
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_no_token_is_401_missing(app_client):
    response = app_client.get("/api/v1/models", headers={"Authorization": ""})
    assert response.status_code == 401 and code(response) == "auth.missing"


@pytest.mark.parametrize(
    "header", ["Bearer garbage", "Bearer mp_tok_" + "x" * 43, "Basic abc", "Bearer ", "mp_tok_abc"]
)
def test_garbage_token_is_401_invalid(app_client, header):
    response = app_client.get("/api/v1/models", headers={"Authorization": header})
    assert response.status_code == 401 and code(response) == "auth.invalid"


def test_viewer_reads_but_cannot_write(app_client):
    viewer = token_for(app_client, "viewer")
    assert app_client.get("/api/v1/models", headers=as_(viewer)).status_code == 200
    assert app_client.get("/api/v1/audit", headers=as_(viewer)).status_code == 200
    response = app_client.post("/api/v1/models", json={"name": "x"}, headers=as_(viewer))
    assert response.status_code == 403 and code(response) == "auth.denied"
    assert app_client.get("/api/v1/models/x").status_code == 404  # nothing was created


def test_deployer_manages_models_not_tokens(app_client):
    deployer = token_for(app_client, "deployer")
    made = app_client.post("/api/v1/models", json={"name": "dep"}, headers=as_(deployer))
    assert made.status_code == 201 and made.json()["owner"] == "t-deployer"
    response = app_client.get("/api/v1/tokens", headers=as_(deployer))
    assert response.status_code == 403 and code(response) == "auth.denied"


def test_predict_token_cannot_manage(app_client):
    predict = token_for(app_client, "predict")
    response = app_client.get("/api/v1/models", headers=as_(predict))
    assert response.status_code == 403 and code(response) == "auth.denied"


def test_revoked_token_is_401_at_once(app_client):
    created = app_client.post("/api/v1/tokens", json={"name": "tmp", "role": "viewer"}).json()
    assert app_client.get("/api/v1/models", headers=as_(created["token"])).status_code == 200
    assert app_client.delete(f"/api/v1/tokens/{created['id']}").status_code == 200
    response = app_client.get("/api/v1/models", headers=as_(created["token"]))
    assert response.status_code == 401 and code(response) == "auth.invalid"
    listed = [t["id"] for t in app_client.get("/api/v1/tokens").json()["items"]]
    assert created["id"] not in listed


def test_expired_token_is_401(app_client):
    created = app_client.post("/api/v1/tokens", json={"name": "old", "role": "viewer"}).json()
    app_sql(
        app_client,
        "UPDATE tokens SET expires_at = '2000-01-01T00:00:00.000Z' WHERE id = ?",
        (created["id"],),
    )
    app_client.blocking_portal.call(app_client.app.state.services.auth.load)
    response = app_client.get("/api/v1/models", headers=as_(created["token"]))
    assert response.status_code == 401 and code(response) == "auth.invalid"


def test_token_shape_and_secret_stored_hashed(app_client):
    created = app_client.post(
        "/api/v1/tokens",
        json={"name": "p", "role": "predict", "models": ["a", "b"], "expires_in_days": 2},
    ).json()
    assert created["token"].startswith("mp_tok_") and created["models"] == ["a", "b"]
    assert set(created) >= {
        "id",
        "name",
        "role",
        "models",
        "created_at",
        "expires_at",
        "last_used_at",
        "token",
    }
    if app_client.app.state.services.db.dialect == "sqlite":  # the file's bytes, WAL too
        raw = app_client.app.state.settings.registry_path.read_bytes()
        wal = app_client.app.state.settings.registry_path.with_name("registry.sqlite3-wal")
        raw += wal.read_bytes() if wal.exists() else b""
    else:  # every row of the tables a token touches
        raw = repr(app_sql(app_client, "SELECT * FROM tokens")).encode()
        raw += repr(app_sql(app_client, "SELECT * FROM audit")).encode()
        assert created["id"].encode() in raw
    assert created["token"].encode() not in raw


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "role": "god"},
        {"name": "", "role": "viewer"},
        {"name": "x", "role": "viewer", "models": ["a"]},
        {"name": "x", "role": "viewer", "expires_in_days": -1},
    ],
)
def test_bad_token_requests_are_422(app_client, body):
    response = app_client.post("/api/v1/tokens", json=body)
    assert response.status_code == 422 and code(response) == "request.invalid"


def test_revoke_unknown_token_is_404(app_client):
    response = app_client.delete("/api/v1/tokens/tok_nope")
    assert response.status_code == 404 and code(response) == "token.not_found"


def test_last_used_is_recorded(app_client):
    viewer = app_client.post("/api/v1/tokens", json={"name": "u", "role": "viewer"}).json()
    app_client.get("/api/v1/models", headers=as_(viewer["token"]))
    app_client.blocking_portal.call(app_client.app.state.services.auth.flush_usage)
    listed = {t["id"]: t for t in app_client.get("/api/v1/tokens").json()["items"]}
    assert listed[viewer["id"]]["last_used_at"] is not None


def test_the_last_admin_token_cannot_be_revoked(app_client):
    """Revoking the only admin token that works would lock everyone out: 409, and it still works;
    once another admin token exists, it can go."""
    mine = app_client.get("/api/v1/whoami").json()
    tokens = app_client.get("/api/v1/tokens").json()["items"]
    admins = [t for t in tokens if t["role"] == "admin"]
    for other in admins[1:]:
        if other["id"] != mine["id"]:
            app_client.delete(f"/api/v1/tokens/{other['id']}")
    refused = app_client.delete(f"/api/v1/tokens/{mine['id']}")
    assert refused.status_code == 409 and code(refused) == "conflict"
    assert "last admin token" in refused.json()["error"]["message"]
    assert app_client.get("/api/v1/models").status_code == 200
    second = token_for(app_client, "admin")
    assert app_client.delete(f"/api/v1/tokens/{mine['id']}").status_code == 200
    assert app_client.get("/api/v1/models", headers=as_(second)).status_code == 200
