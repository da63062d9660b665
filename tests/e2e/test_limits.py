"""Limits through a real server: per-key rate limits, deep and huge JSON, CORS off by default."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.test_deployments import Deployed

SUMMARY = (
    "def predict(args):\n"
    "    return {'keys': sorted(args),\n"
    "            'chars': sum(len(v) for v in args.values() if isinstance(v, str))}\n"
)
DEEP = 100_000


@pytest.fixture
def d(offline_server, tmp_path):
    return Deployed(offline_server().start(), tmp_path)


def _serve(d: Deployed, name: str, **model) -> str:
    key = d.model(name, **model)
    assert d.deploy(name, d.build(name, {"predict.py": SUMMARY}))["status"] == "deployed"
    return key


def _error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def _replica_restarts(d: Deployed, name: str) -> int:
    return sum(r["restarts"] for r in d.c.get(f"/api/v1/models/{name}/replicas").json()["items"])


# -- rate limits -------------------------------------------------------------------------------


def test_rate_limit_per_key_with_retry_after(d):
    # 0.01/s: one token back every 100 s, so the test never races the refill.
    key = _serve(d, "rl", rate_limit_per_s=0.01, rate_limit_burst=2)
    shown = d.c.get("/api/v1/models/rl").json()
    assert (shown["rate_limit_per_s"], shown["rate_limit_burst"]) == (0.01, 2)
    assert [d.predict("rl", {"a": 1}).status_code for _ in range(2)] == [200, 200]
    refused = d.predict("rl", {"a": 1})
    assert _error(refused) == (429, "rate.limited")
    assert 1 <= int(refused.headers["retry-after"]) <= 100
    assert "rate limit" in refused.json()["error"]["message"]
    # POST /model with the same access key draws from the same bucket
    cloudera = httpx.post(f"{d.srv.url}/model", json={"accessKey": key, "request": {"a": 1}})
    assert _error(cloudera) == (429, "rate.limited") and "retry-after" in cloudera.headers
    # another caller (a predict token) has its own bucket, as does the admin token
    token = d.c.post("/api/v1/tokens", json={"name": "p", "role": "predict"}).json()["token"]
    assert [d.predict("rl", {"a": 1}, key=token).status_code for _ in range(3)] == [200, 200, 429]
    assert d.predict("rl", {"a": 1}, key=d.srv.token).status_code == 200
    # a refused request never reached a replica; a refused caller is still refused
    again = d.predict("rl", {"a": 1})
    assert again.status_code == 429 and "x-replica-id" not in again.headers
    # auth runs first: a wrong key is 401, not 429
    assert _error(d.predict("rl", {"a": 1}, key="mp_key_wrong")) == (401, "auth.invalid")


def test_rate_limit_changes_apply_at_once_and_survive_a_restart(d):
    _serve(d, "rl", rate_limit_per_s=0.01)  # burst defaults to one second's worth: 1
    assert [d.predict("rl", {}).status_code for _ in range(2)] == [200, 429]
    lifted = d.c.patch("/api/v1/models/rl", json={"rate_limit_per_s": None})
    assert lifted.status_code == 200 and lifted.json()["rate_limit_per_s"] is None
    assert {d.predict("rl", {}).status_code for _ in range(5)} == {200}
    again = d.c.patch("/api/v1/models/rl", json={"rate_limit_per_s": 0.01, "rate_limit_burst": 3})
    assert (again.json()["rate_limit_per_s"], again.json()["rate_limit_burst"]) == (0.01, 3)
    assert [d.predict("rl", {}).status_code for _ in range(4)] == [200, 200, 200, 429]
    # a PATCH of something else keeps the limit, and the buckets with it
    d.c.patch("/api/v1/models/rl", json={"description": "limited"})
    assert d.predict("rl", {}).status_code == 429
    for body, field in [
        ({"rate_limit_per_s": 0}, "rate_limit_per_s"),
        ({"rate_limit_per_s": -1}, "rate_limit_per_s"),
        ({"rate_limit_burst": 0}, "rate_limit_burst"),
        ({"rate_limit_per_s": "fast"}, "rate_limit_per_s"),
    ]:
        bad = d.c.patch("/api/v1/models/rl", json=body)
        assert _error(bad) == (422, "request.invalid") and bad.json()["error"]["field"] == field
    audit = d.c.get("/api/v1/audit", params={"model": "rl"}).json()["items"]
    assert any(
        e["detail"].get("rate_limit_per_s") is None and e["action"] == "model.update" for e in audit
    )
    d.srv.stop()
    d.srv.start()
    d.c = d.srv.client()
    assert d.c.get("/api/v1/models/rl").json()["rate_limit_burst"] == 3
    codes = [d.predict("rl", {}).status_code for _ in range(4)]  # fresh buckets: the burst again
    assert codes[3] == 429 and 429 not in codes[:3]


def test_rate_limit_without_auth_is_per_client_address(d):
    _serve(d, "open", auth=False, rate_limit_per_s=0.01, rate_limit_burst=1)
    url = f"{d.srv.url}/models/open/predict"
    assert [httpx.post(url, json={}).status_code for _ in range(2)] == [200, 429]
    # another address (loopback is a /8) has its own bucket; a bearer header changes nothing
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other:
        assert other.post(url, json={}).status_code == 200
        assert other.post(url, json={}, headers={"Authorization": "Bearer x"}).status_code == 429


# -- nesting depth and string sizes -------------------------------------------------------------


def test_deep_bodies_are_400_and_the_server_and_replica_stay_up(d):
    key = _serve(d, "m")
    deep_array = b"[" * DEEP + b"]" * DEEP
    deep_object = b'{"a":' * DEEP + b"1" + b"}" * DEEP
    auth = {"Authorization": f"Bearer {key}"}
    for body in (b'{"x":' + deep_array + b"}", deep_object):
        r = httpx.post(f"{d.srv.url}/models/m/predict", content=body, headers=auth)
        assert _error(r) == (400, "request.malformed"), r.text
        assert "nested too deeply" in r.json()["error"]["message"]
    packed = b"\x81\xa1x" + b"\x91" * DEEP + b"\x90"  # {"x": [[[...]]]} in MessagePack
    r = httpx.post(
        f"{d.srv.url}/models/m/predict",
        content=packed,
        headers={**auth, "Content-Type": "application/msgpack"},
    )
    assert _error(r) == (400, "request.malformed")
    for body in (
        b'{"accessKey":"' + key.encode() + b'","request":{"x":' + deep_array + b"}}",
        b'{"request":' + deep_object + b"}",
    ):
        r = httpx.post(f"{d.srv.url}/model", content=body)
        assert _error(r) == (400, "request.malformed"), r.text
    for method, path, body in [
        ("POST", "/api/v1/models", deep_object),
        ("POST", "/api/v1/models", b'{"name":"x","description":' + deep_array + b"}"),
        ("PATCH", "/api/v1/models/m", deep_array),
        ("POST", "/api/v1/tokens", deep_object),
        ("POST", "/api/v1/models/m/deployments", deep_object),
    ]:
        r = d.c.request(method, path, content=body, headers={"Content-Type": "application/json"})
        assert _error(r) == (400, "request.malformed"), (method, path, r.text)
    # a sane depth is served; the replica was never restarted; the server is up
    nested = {"x": 1}
    for _ in range(200):
        nested = {"x": nested}
    assert d.predict("m", nested).json() == {"keys": ["x"], "chars": 0}
    assert _replica_restarts(d, "m") == 0
    assert d.c.get("/api/v1/health").status_code == 200
    assert "Traceback" not in d.srv.log()


def test_huge_strings_within_the_body_limit(d):
    key = _serve(d, "m")
    big = "é" * (2 << 20)  # 4 MiB of UTF-8, under the 5 MiB default
    r = d.predict("m", {"s": big})
    assert r.status_code == 200 and r.json() == {"keys": ["s"], "chars": len(big)}
    r = httpx.post(f"{d.srv.url}/model", json={"accessKey": key, "request": {"s": big}})
    assert r.status_code == 200 and r.json()["response"]["chars"] == len(big)
    over = d.predict("m", {"s": "x" * (6 << 20)})
    assert _error(over) == (413, "request.too_large")
    # management: free text is bounded by field, and bodies at 10 MB
    for method, path, body, field in [
        ("POST", "/api/v1/models", {"name": "n", "description": "x" * (4 << 20)}, "description"),
        ("PATCH", "/api/v1/models/m", {"description": "x" * 10_001}, "description"),
        ("POST", "/api/v1/tokens", {"name": "x" * (1 << 20), "role": "viewer"}, "name"),
        (
            "POST",
            "/api/v1/models/m/deployments",
            {"build": 1, "env": {"A": "x" * 70_000}},
            "env[...]",
        ),  # msgspec names a dict value so
    ]:
        r = d.c.request(method, path, json=body)
        assert _error(r) == (422, "request.invalid"), (path, r.text)
        assert r.json()["error"]["field"] == field, r.json()
    r = d.c.post("/api/v1/models", json={"name": "n", "description": "x" * (11 << 20)})
    assert _error(r) == (413, "request.too_large")
    assert d.predict("m", {"s": "ok"}).status_code == 200
    assert d.c.get("/api/v1/models/m").json()["description"] == ""


# -- CORS --------------------------------------------------------------------------------------


def test_no_cors_allowance_by_default(d):
    key = _serve(d, "m")
    origin = {"Origin": "https://a.example"}
    preflight = {
        **origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    answers = [
        d.c.get("/api/v1/models", headers=origin),
        d.c.post("/api/v1/models", json={"name": "c"}, headers=origin),
        d.c.options("/api/v1/models", headers=preflight),
        d.c.get("/api/v1/health", headers=origin),
        d.predict("m", {}, headers=origin),
        httpx.post(f"{d.srv.url}/model", json={"accessKey": key, "request": {}}, headers=origin),
        httpx.options(f"{d.srv.url}/models/m/predict", headers=preflight),
    ]
    assert [r.status_code for r in answers[:2]] == [200, 201]
    assert answers[4].status_code == 200 and answers[5].status_code == 200
    for r in answers:
        assert not any(h.startswith("access-control-") for h in r.headers), (
            r.request.url,
            r.headers,
        )


def test_cors_origins_setting_allows_exactly_those_origins(make_server):
    srv = make_server()
    srv.env["MODELPORT_CORS_ORIGINS"] = "https://a.example"
    srv.start()
    c = srv.client()
    allowed = c.get("/api/v1/models", headers={"Origin": "https://a.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://a.example"
    preflight = c.options(
        "/api/v1/models",
        headers={
            "Origin": "https://a.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code in (200, 204)
    assert preflight.headers["access-control-allow-origin"] == "https://a.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    for other in ("https://b.example", "http://a.example", "https://a.example.evil"):
        r = c.get("/api/v1/models", headers={"Origin": other})
        assert r.headers.get("access-control-allow-origin") in (None, ""), (other, r.headers)
        p = c.options(
            "/api/v1/models", headers={"Origin": other, "Access-Control-Request-Method": "POST"}
        )
        assert p.headers.get("access-control-allow-origin") in (None, ""), (other, p.headers)
    # predictions never carry a CORS allowance (they are called by servers, with a secret)
    r = httpx.post(
        f"{srv.url}/models/none/predict", json={}, headers={"Origin": "https://a.example"}
    )
    assert r.status_code == 404 and "access-control-allow-origin" not in r.headers
