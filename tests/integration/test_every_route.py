"""Every route of the app, from its own route table: no token → 401, a role too weak → 403,
the weakest role allowed → neither. A new route cannot be forgotten: it is walked too."""

from __future__ import annotations

import re

import pytest

WEAKEST = {
    "any": "predict",
    "read": "viewer",
    "private": "deployer",
    "write": "deployer",
    "admin": "admin",
}
TOO_WEAK = {"read": "predict", "private": "viewer", "write": "viewer", "admin": "deployer"}
FILL = {
    "name": "nope",
    "number": "1",
    "other": "2",
    "path": "x.py",
    "token_id": "tok_nope",
    "deployment_id": "1",
    "replica_id": "nope-1-1-abcd",
    "request_id": "req-1",
    "report_id": "1",
}


def _routes(app):
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in sorted(handler.http_methods - {"HEAD", "OPTIONS"}):
                perm = handler.opt.get("perm", "admin")
                path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: FILL.get(m.group(1), "x"), route.path)
                yield method, path, perm


@pytest.fixture
def tokens(app_client):
    out = {"admin": app_client.app.state.services.admin_token}
    for role in ("deployer", "viewer", "predict"):
        out[role] = app_client.post("/api/v1/tokens", json={"name": role, "role": role}).json()[
            "token"
        ]
    return out


def test_every_route_checks_its_token(app_client, tokens):
    walked = list(_routes(app_client.app))
    assert len(walked) > 30
    checked = {"public": 0, "guarded": 0}
    for method, path, perm in walked:

        def call(token, method=method, path=path):
            headers = {"Authorization": f"Bearer {token}"} if token else {"Authorization": ""}
            return app_client.request(
                method,
                path,
                headers=headers,
                json={} if method in ("POST", "PATCH", "PUT") else None,
            )

        if perm == "public":
            assert call(None).status_code not in (401, 403), (method, path)
            checked["public"] += 1
            continue
        missing = call(None)
        assert missing.status_code == 401, (method, path, missing.text)
        assert missing.json()["error"]["code"] == "auth.missing"
        assert call("mp_tok_garbage").status_code == 401, (method, path)
        if perm in TOO_WEAK:
            denied = call(tokens[TOO_WEAK[perm]])
            assert denied.status_code == 403, (method, path, perm, denied.text)
            assert denied.json()["error"]["code"] == "auth.denied"
        allowed = call(tokens[WEAKEST[perm]])
        assert allowed.status_code not in (401, 403), (method, path, perm, allowed.text)
        checked["guarded"] += 1
    print(f"routes checked: {checked}")
    assert checked["guarded"] >= 30 and checked["public"] >= 2
