"""Zero-downtime proof: two replicas under continuous concurrent load while a new build is deployed
and then rolled back — every response is 200, and the builds switch as expected."""

from __future__ import annotations

import threading
import time

import httpx

from tests.e2e.test_deployments import Deployed, typed


def test_deploy_and_rollback_under_load(offline_server, tmp_path):
    d = Deployed(offline_server().start(), tmp_path)
    key = d.model("live")
    one = d.build("live", {"predict.py": typed(1.0)})
    two = d.build("live", {"predict.py": typed(2.0)})
    d.deploy("live", one, replicas=2)

    stop = threading.Event()
    results: list[tuple[float, int, str]] = []  # (time, status, build)
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(
            base_url=d.srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as c:
            while not stop.is_set():
                r = c.post("/models/live/predict", json={"a": 0})
                with lock:
                    results.append(
                        (
                            time.monotonic(),
                            r.status_code,
                            r.headers.get("x-model-build", r.text[:200]),
                        )
                    )

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        deployed_at = time.monotonic()
        assert d.deploy("live", two, replicas=2)["status"] == "deployed"
        time.sleep(4)
        rolled = d.c.post("/api/v1/models/live/rollback", json={}).json()
        rolled_at = time.monotonic()
        assert d.wait("live", rolled["id"])["status"] == "deployed"
        time.sleep(4)
    finally:
        stop.set()
        for t in threads:
            t.join(30)

    assert len(results) > 200
    failures = [r for r in results if r[1] != 200]
    assert failures == [], failures[:5]
    builds = [b for _, _, b in sorted(results)]
    assert builds[0] == "1" and builds[-1] == "1"
    assert "2" in builds  # build 2 served between the deploy and the rollback
    first_two = next(t for t, _, b in sorted(results) if b == "2")
    assert first_two >= deployed_at
    last_two = max(t for t, _, b in results if b == "2")
    assert last_two <= rolled_at + 5
