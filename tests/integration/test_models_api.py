"""Models CRUD through the app on a real SQLite file: shapes, codes and what is recorded."""

from __future__ import annotations

import pytest


def error(response) -> dict:
    return response.json()["error"]


def test_create_returns_access_key_once(app_client):
    created = app_client.post("/api/v1/models", json={"name": "iris", "description": "flowers"})
    assert created.status_code == 201
    body = created.json()
    assert body["access_key"].startswith("mp_key_")
    assert body["name"] == "iris" and body["auth"] is True and body["deployment"] is None
    assert body["owner"] == "admin"
    fetched = app_client.get("/api/v1/models/iris").json()
    assert "access_key" not in fetched
    assert fetched["description"] == "flowers"


@pytest.mark.parametrize(
    "name", ["Iris", "has space", "a" * 64, "../x", "-lead", "", "under_score", "dot.ted"]
)
def test_invalid_names_are_422_naming_name(app_client, name):
    response = app_client.post("/api/v1/models", json={"name": name})
    assert response.status_code == 422
    assert error(response)["code"] == "request.invalid"
    assert error(response)["field"] == "name"


def test_longest_valid_name(app_client):
    assert app_client.post("/api/v1/models", json={"name": "a" * 63}).status_code == 201


def test_duplicate_is_409(app_client):
    assert app_client.post("/api/v1/models", json={"name": "dup"}).status_code == 201
    response = app_client.post("/api/v1/models", json={"name": "dup"})
    assert response.status_code == 409 and error(response)["code"] == "model.exists"


def test_unknown_model_is_404(app_client):
    for method, path in [
        ("GET", "/api/v1/models/nope"),
        ("PATCH", "/api/v1/models/nope"),
        ("DELETE", "/api/v1/models/nope"),
    ]:
        response = app_client.request(method, path, json={} if method == "PATCH" else None)
        assert response.status_code == 404, (method, response.text)
        assert error(response)["code"] == "model.not_found"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe"])
def test_malformed_body_is_400(app_client, body):
    response = app_client.post(
        "/api/v1/models", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert error(response)["code"] == "request.malformed"


def test_unknown_field_is_422(app_client):
    response = app_client.post("/api/v1/models", json={"name": "ok", "colour": "red"})
    assert response.status_code == 422
    assert error(response) == {
        "code": "request.invalid",
        "message": "Object contains unknown field `colour`",
        "field": "colour",
    }


def test_wrong_type_names_field(app_client):
    response = app_client.post("/api/v1/models", json={"name": "ok", "auth": "yes"})
    assert response.status_code == 422 and error(response)["field"] == "auth"


def test_missing_name_is_422(app_client):
    response = app_client.post("/api/v1/models", json={"description": "x"})
    assert response.status_code == 422 and error(response)["field"] == "name"


def test_patch_changes_and_keeps_the_rest(app_client):
    app_client.post("/api/v1/models", json={"name": "m", "description": "old"})
    changed = app_client.patch("/api/v1/models/m", json={"auth": False})
    assert changed.status_code == 200
    assert changed.json()["auth"] is False and changed.json()["description"] == "old"
    assert app_client.patch("/api/v1/models/m", json={"owner": "me"}).status_code == 422


def test_delete_then_gone(app_client):
    app_client.post("/api/v1/models", json={"name": "gone"})
    assert app_client.delete("/api/v1/models/gone").status_code == 204
    assert app_client.get("/api/v1/models/gone").status_code == 404
    assert app_client.post("/api/v1/models", json={"name": "gone"}).status_code == 201


def test_delete_while_serving_is_409(app_client):
    """A model with an active deployment refuses deletion and says to stop it first."""
    from tests.conftest import app_sql

    app_client.post("/api/v1/models", json={"name": "busy"})
    app_sql(
        app_client,
        "INSERT INTO builds (model_id, number, status, entrypoint, python, created_by,"
        " created_at) SELECT id, 1, 'built', 'p.py:f', '3.11', 'admin', 'now' FROM models",
    )
    app_sql(
        app_client,
        "INSERT INTO deployments (model_id, build_id, build_number, status, replicas,"
        " timeout_s, max_concurrency, queue_timeout_s, max_body_mb, created_by, created_at)"
        " SELECT model_id, id, 1, 'deployed', 1, 30, 1, 30, 5, 'admin', 'now' FROM builds",
    )
    response = app_client.delete("/api/v1/models/busy")
    assert response.status_code == 409
    assert error(response)["code"] == "model.active"
    assert "stop" in error(response)["message"]
    assert app_client.get("/api/v1/models/busy").json()["deployment"]["status"] == "deployed"


def test_list_pages_with_cursor(app_client):
    names = [f"m{i:03d}" for i in range(7)]
    for name in reversed(names):
        app_client.post("/api/v1/models", json={"name": name})
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = app_client.get("/api/v1/models", params=params).json()
        assert set(page) == {"items", "next"}
        seen += [m["name"] for m in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == names


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 501}, {"limit": "x"}, {"cursor": "!!notours"}]
)
def test_bad_paging_is_422(app_client, params):
    response = app_client.get("/api/v1/models", params=params)
    assert response.status_code == 422 and error(response)["code"] == "request.invalid"


def test_rotate_key_returns_new_key(app_client):
    first = app_client.post("/api/v1/models", json={"name": "k"}).json()["access_key"]
    rotated = app_client.post("/api/v1/models/k/access-key/rotate")
    assert rotated.status_code == 200
    second = rotated.json()["access_key"]
    assert second != first and second.startswith("mp_key_")
    auth = app_client.app.state.services.auth
    assert auth.key_model(second) == "k" and auth.key_model(first) is None


def test_every_change_is_audited(app_client):
    app_client.post("/api/v1/models", json={"name": "aud"})
    app_client.patch("/api/v1/models/aud", json={"description": "d"})
    app_client.post("/api/v1/models/aud/access-key/rotate")
    app_client.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"})
    app_client.delete("/api/v1/models/aud")
    entries = app_client.get("/api/v1/audit").json()["items"]
    actions = [e["action"] for e in entries]
    assert actions[:5] == [
        "model.delete",
        "token.create",
        "model.access_key.rotate",
        "model.update",
        "model.create",
    ]
    assert all(e["actor"] == "admin" and e["at"].endswith("Z") for e in entries[:5])
    assert entries[-1]["actor"] == "system" and entries[-1]["action"] == "token.create"
    only = app_client.get("/api/v1/audit", params={"model": "aud"}).json()["items"]
    assert {e["model"] for e in only} == {"aud"}
    assert "mp_" not in str(entries)  # no secret is ever written to the audit trail


def test_unknown_route_is_json_404(app_client):
    response = app_client.get("/api/v1/nothing-here")
    assert response.status_code == 404 and error(response)["code"] == "route.not_found"


def test_wrong_method_is_json_405(app_client):
    response = app_client.put("/api/v1/models")
    assert response.status_code == 405 and error(response)["code"] == "method.not_allowed"


def test_rate_limit_settings_shape_and_validation(app_client):
    made = app_client.post("/api/v1/models", json={"name": "rl", "rate_limit_per_s": 2.5})
    assert made.status_code == 201
    assert (made.json()["rate_limit_per_s"], made.json()["rate_limit_burst"]) == (2.5, None)
    assert app_client.app.state.services.routes.limits["rl"].burst == 3  # one second's worth
    plain = app_client.post("/api/v1/models", json={"name": "plain"}).json()
    assert (plain["rate_limit_per_s"], plain["rate_limit_burst"]) == (None, None)
    assert "plain" not in app_client.app.state.services.routes.limits
    changed = app_client.patch("/api/v1/models/rl", json={"rate_limit_burst": 10}).json()
    assert (changed["rate_limit_per_s"], changed["rate_limit_burst"]) == (2.5, 10)
    cleared = app_client.patch("/api/v1/models/rl", json={"rate_limit_per_s": None}).json()
    assert (
        cleared["rate_limit_per_s"] is None
        and "rl" not in app_client.app.state.services.routes.limits
    )
    for body, field in [
        ({"name": "x", "rate_limit_per_s": 0}, "rate_limit_per_s"),
        ({"name": "x", "rate_limit_per_s": 1e-309}, "rate_limit_per_s"),
        ({"name": "x", "rate_limit_per_s": 0.0009}, "rate_limit_per_s"),
        ({"name": "x", "rate_limit_per_s": 2e6}, "rate_limit_per_s"),
        ({"name": "x", "rate_limit_burst": 0}, "rate_limit_burst"),
        ({"name": "x", "rate_limit_burst": 1.5}, "rate_limit_burst"),
        ({"name": "x", "description": "d" * 10_001}, "description"),
    ]:
        r = app_client.post("/api/v1/models", json=body)
        assert r.status_code == 422 and error(r)["field"] == field, r.text


def test_a_version_2_registry_gains_the_rate_limit_columns(tmp_path):
    import asyncio
    import sqlite3

    from modelport.registry import models as rows
    from modelport.registry.db import SqliteDatabase
    from modelport.registry.schema import MIGRATIONS

    path = tmp_path / "registry.sqlite3"
    conn = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
    conn.execute(
        "INSERT INTO models (name, owner, access_key_hash, created_at, updated_at)"
        " VALUES ('old', 'me', 'h', 't', 't')"
    )
    conn.commit()
    conn.close()

    async def read():
        db = await SqliteDatabase(path).open()
        try:
            return await rows.get(db, "old")
        finally:
            await db.close()

    model = asyncio.run(read())
    assert model.name == "old" and model.rate_limit_per_s is None and model.rate_limit_burst is None
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_a_version_5_registry_loses_what_nothing_read_and_keeps_its_builds(tmp_path):
    import asyncio
    import sqlite3

    from modelport.registry.db import SqliteDatabase
    from modelport.registry.schema import MIGRATIONS

    path = tmp_path / "registry.sqlite3"
    conn = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:5], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
    conn.execute(
        "INSERT INTO models (name, owner, access_key_hash, created_at, updated_at)"
        " VALUES ('old', 'me', 'h', 't', 't')"
    )
    conn.execute(
        "INSERT INTO builds (model_id, number, status, entrypoint, python, created_by,"
        " created_at, env_python) VALUES (1, 1, 'built', 'p.py:f', '3.11', 'me', 't',"
        " '/envs/x/bin/python')"
    )
    conn.commit()
    conn.close()

    async def upgrade():
        db = await SqliteDatabase(path).open()
        try:
            return await db.all("SELECT * FROM builds")
        finally:
            await db.close()

    builds = asyncio.run(upgrade())
    assert [(b["number"], b["entrypoint"]) for b in builds] == [(1, "p.py:f")]
    assert "env_python" not in builds[0]
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "replicas" not in tables and {"models", "builds", "deployments"} <= tables
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_deep_json_is_400_on_the_management_api(app_client):
    deep = b"[" * 100_000 + b"]" * 100_000
    for method, path in [
        ("POST", "/api/v1/models"),
        ("PATCH", "/api/v1/models/x"),
        ("POST", "/api/v1/tokens"),
    ]:
        r = app_client.request(
            method, path, content=deep, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400 and error(r)["code"] == "request.malformed", r.text
    assert app_client.get("/api/v1/health").status_code == 200


def test_deep_example_input_and_captured_bodies():
    from modelport.api.metrics import _body
    from modelport.builder.service import MAX_EXAMPLE_DEPTH, parse_form
    from modelport.errors import RequestInvalid

    ok = "[" * MAX_EXAMPLE_DEPTH + "]" * MAX_EXAMPLE_DEPTH
    assert parse_form({"entrypoint": "m.py:f", "example_output": ok}).example_output is not None
    for depth in (MAX_EXAMPLE_DEPTH + 1, 100_000):
        with pytest.raises(RequestInvalid) as caught:
            parse_form(
                {"entrypoint": "m.py:f", "example_input": '{"a":' + "[" * depth + "]" * depth + "}"}
            )
        assert caught.value.field == "example_input"
    deep = b"[" * 100_000 + b"]" * 100_000
    value, b64 = _body(deep, truncated=False)  # a captured deep request: shown as base64
    assert value is None and b64
    value, b64 = _body(b'{"a": [1]}', truncated=False)
    assert bytes(value) == b'{"a": [1]}' and b64 is None
