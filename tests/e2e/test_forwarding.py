"""Forwarding between two real `modelport serve` on one PostgreSQL registry (tests/e2e/
test_cluster.py's pair): a one-replica model runs on one server, and the other answers it through
gateway/forward.py as the host itself would — its headers, its errors, msgpack both ways,
`POST /model` — on kept-alive connections that outlive the host's keep-alive timeout."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import msgspec
import pytest

from tests.e2e import test_cluster as cluster

pytestmark = pytest.mark.slow

pair = cluster.pair  # the fixture: servers a and b on one registry and one bucket


def test_the_server_without_a_replica_answers_as_the_host_would(pair, tmp_path):
    a, b = pair
    key = a.client().post("/api/v1/models", json={"name": "one"}).json()["access_key"]
    cluster.deploy(a, "one", cluster.build(a, tmp_path, "one", cluster.ADDER))
    counts, _ = cluster.until(
        lambda: (n := [len(cluster.replicas(s, "one")) for s in (a, b)]) in ([1, 0], [0, 1]) and n
    )
    host, other = (a, b) if counts == [1, 0] else (b, a)
    replica = cluster.replicas(host, "one")[0]["id"]
    cluster.until(lambda: cluster.predict(other, "one", key).status_code == 200)
    http = httpx.Client(base_url=other.url, timeout=30)
    auth = {"Authorization": f"Bearer {key}"}

    r = http.post(
        "/models/one/predict",
        json={"a": 2, "b": 3},
        headers={**auth, "X-Request-Id": "forwarded-1"},
    )
    assert r.status_code == 200 and r.json() == 5.0
    assert r.headers["x-request-id"] == "forwarded-1"  # the host took the caller's id
    assert r.headers["x-replica-id"] == replica and r.headers["x-model-build"] == "1"
    assert len(r.headers.get_list("date")) == 1  # this server's, not the host's besides

    packed = http.post(  # msgpack in and out: Content-Type and Accept reach the host
        "/models/one/predict",
        content=msgspec.msgpack.encode({"a": 1.5, "b": 1}),
        headers={**auth, "Content-Type": "application/msgpack", "Accept": "application/msgpack"},
    )
    assert packed.status_code == 200, packed.text
    assert packed.headers["content-type"] == "application/msgpack"
    assert msgspec.msgpack.decode(packed.content) == 2.5

    wrong = http.post("/models/one/predict", json={"a": 2}, headers=auth)  # the host's refusal
    assert wrong.status_code == 422 and wrong.headers["x-replica-id"] == replica
    assert wrong.json()["error"]["code"] == "request.invalid"

    by_key = http.post("/model", json={"accessKey": key, "request": {"a": 4, "b": 5}})
    assert by_key.status_code == 200 and by_key.json()["response"] == 9.0
    assert by_key.headers["x-replica-id"] == replica

    def one(i: int) -> tuple[int, object]:
        got = httpx.post(
            f"{other.url}/models/one/predict", json={"a": i, "b": 1}, headers=auth, timeout=30
        )
        return got.status_code, got.json()

    with ThreadPoolExecutor(16) as pool:  # 16 at once: each answer is its own request's
        answers = list(pool.map(one, range(64)))
    assert answers == [(200, float(i + 1)) for i in range(64)]

    time.sleep(6)  # past the host's keep-alive timeout (5 s): it closed the pooled connections
    again = http.post("/models/one/predict", json={"a": 2, "b": 3}, headers=auth)
    assert again.status_code == 200 and again.headers["x-replica-id"] == replica
    http.close()
