"""Registry at size: 10,000 models with 10 builds each; list a page and get one through the API.

Run: scripts/bench/run tests/bench/test_registry_bench.py
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import time

import pytest

from tests.bench.conftest import quick

MODELS, BUILDS = (300, 3) if quick() else (10_000, 10)


@pytest.fixture(scope="module")
def big_registry(tmp_path_factory):
    from litestar.testing import TestClient
    from modelport.app import create_app
    from modelport.settings import Settings

    settings = Settings(data_dir=tmp_path_factory.mktemp("registry-bench"))
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {client.app.state.services.admin_token}"
        started = time.perf_counter()
        for i in range(200):  # the first 200 through the API, the real path
            assert client.post("/api/v1/models", json={"name": f"m{i:05d}"}).status_code == 201
        api_rate = 200 / (time.perf_counter() - started)
        conn = sqlite3.connect(settings.registry_path)
        with conn:
            conn.executemany(
                "INSERT INTO models (name, description, auth, owner, access_key_hash, created_at,"
                " updated_at) VALUES (?, '', 1, 'bench', ?, '2026-01-01', '2026-01-01')",
                [(f"m{i:05d}", f"h{i}") for i in range(200, MODELS)],
            )
            conn.execute(
                "INSERT INTO builds (model_id, number, status, entrypoint, python, created_by,"
                " created_at, digest, labels) SELECT m.id, n.value, 'built', 'p.py:f', '3.11',"
                " 'bench', '2026-01-01', 'sha256:' || hex(randomblob(32)), '{}' FROM models m,"
                " (WITH RECURSIVE c(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM c"
                f" WHERE value < {BUILDS}) SELECT value FROM c) n"
            )
        conn.close()
        yield client, api_rate


def _p99(samples: list[float]) -> float:
    if len(samples) < 2:  # one untimed round
        return samples[0] * 1000
    return statistics.quantiles(samples, n=100)[98] * 1000


def test_list_page_and_get_one(benchmark, big_registry):
    client, api_rate = big_registry
    names = [f"m{i:05d}" for i in range(MODELS)]
    timings: dict[str, list[float]] = {"list": [], "get": [], "builds": []}

    def one_round():
        for kind, path in (
            ("list", "/api/v1/models?limit=50&cursor="),
            ("get", f"/api/v1/models/{random.choice(names)}"),
            ("builds", f"/api/v1/models/{random.choice(names)}/builds"),
        ):
            if kind == "list":
                page = client.get("/api/v1/models", params={"limit": 50}).json()
                path = None
                start = time.perf_counter()
                client.get("/api/v1/models", params={"limit": 50, "cursor": page["next"]})
            else:
                start = time.perf_counter()
                assert client.get(path).status_code == 200
            timings[kind].append(time.perf_counter() - start)

    benchmark.pedantic(one_round, rounds=300, iterations=1)
    benchmark.extra_info.update(
        {
            "models": MODELS,
            "builds": MODELS * BUILDS,
            "create_model_api_per_s": round(api_rate, 1),
            **{f"{k}_p99_ms": round(_p99(v), 2) for k, v in timings.items()},
            **{f"{k}_p50_ms": round(statistics.median(v) * 1000, 2) for k, v in timings.items()},
        }
    )
    print(benchmark.extra_info)
