"""Several builds at once (issue 17): a canary's split and sticky callers, a shadow's copies,
promote and abort, the guard, and the same split after a SIGKILL — a real server and replicas."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.e2e.test_deployments import Deployed, typed

ERRORS = "def predict(a: float, b: float = 1.0) -> float:\n    raise ValueError('broken')\n"
HANGS = (
    "import time\n\ndef predict(a: float, b: float = 1.0) -> float:\n"
    "    time.sleep(60)\n    return a + b\n"
)
CRASHES = "import os\n\ndef predict(a: float, b: float = 1.0) -> float:\n    os._exit(3)\n"


@pytest.fixture
def d(offline_server, tmp_path):
    return Deployed(offline_server().start(), tmp_path)


def candidate(d: Deployed, name: str, build: int, **body) -> dict:
    """Add a candidate and wait until it serves its share."""
    r = d.c.post(f"/api/v1/models/{name}/deployments", json={"build": build, **body})
    assert r.status_code == 202, r.text
    cand = r.json()
    assert cand["status"] == "candidate" and cand["candidate_of"] is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = d.c.get(f"/api/v1/models/{name}/deployments/{cand['id']}").json()
        if any(e["kind"] == "candidate.ready" for e in found["events"]):
            return found
        assert found["status"] == "candidate", found
        time.sleep(0.05)
    raise TimeoutError(cand)


def builds_of(d: Deployed, name: str, n: int, headers: dict | None = None) -> Counter:
    seen: Counter = Counter()
    with httpx.Client(
        base_url=d.srv.url,
        headers={"Authorization": f"Bearer {d.keys[name]}", **(headers or {})},
        timeout=30,
    ) as c:
        for _ in range(n):
            r = c.post(f"/models/{name}/predict", json={"a": 0})
            assert r.status_code == 200, r.text
            assert r.json() == float(r.headers["x-model-build"])  # build N answers N
            seen[r.headers["x-model-build"]] += 1
    return seen


def kinds(deployment: dict) -> list[str]:
    return [e["kind"] for e in deployment["events"]]


def test_canary_split_sticky_callers_promote_and_bad_input(d):
    d.model("fraud")
    d.model("other")
    one = d.build("fraud", {"predict.py": typed(1.0)})
    two = d.build("fraud", {"predict.py": typed(2.0)})
    broken = d.build("fraud", {"predict.py": "def predict(:\n"}, example_input={"a": 1})
    d.deploy("fraud", one, replicas=2)
    url = "/api/v1/models/fraud"

    # bad input: no candidate yet
    for route in ("/promote", "/abort"):
        r = d.c.post(url + route, json={})
        assert r.status_code == 409 and r.json()["error"]["code"] == "candidate.none"
    r = d.c.patch(url + "/deployments/current/traffic", json={"candidate_percent": 5})
    assert r.status_code == 409 and r.json()["error"]["code"] == "candidate.none"
    for bad in (-1, 100.5, 150):
        r = d.c.post(url + "/deployments", json={"build": two, "canary_percent": bad})
        assert r.status_code == 422, r.text
    r = d.c.post(url + "/deployments", json={"build": broken, "canary_percent": 10})
    assert r.status_code == 409 and r.json()["error"]["code"] == "build.not_ready"
    r = d.c.post(url + "/deployments", json={"build": 99, "canary_percent": 10})
    assert r.status_code == 404 and r.json()["error"]["code"] == "build.not_found"
    # another model's build: its numbers are its own (model other has no build)
    r = d.c.post("/api/v1/models/other/deployments", json={"build": two, "canary_percent": 10})
    assert r.status_code == 404

    cand = candidate(d, "fraud", two, canary_percent=20)
    assert cand["traffic"] == {"mode": "split", "candidate_percent": 20.0, "sticky_header": None}
    r = d.c.post(url + "/deployments", json={"build": two, "canary_percent": 5})
    assert r.status_code == 409 and r.json()["error"]["code"] == "candidate.exists"
    r = d.c.patch(url + "/deployments/current/traffic", json={"candidate_percent": 101})
    assert r.status_code == 422
    current = d.c.get(url + "/deployments/current").json()
    assert current["build"] == one and current["candidate"]["build"] == two
    assert current["traffic"]["candidate_percent"] == 20.0

    seen = builds_of(d, "fraud", 1000)
    assert 150 <= seen[str(two)] <= 250, seen
    assert seen[str(one)] + seen[str(two)] == 1000
    live = d.c.get(url + "/deployments/current/traffic").json()
    by_role = {b["role"]: b for b in live["builds"]}
    assert by_role["candidate"]["answered"] == seen[str(two)]
    assert by_role["primary"]["answered"] == seen[str(one)]
    assert by_role["candidate"]["error_rate"] == 0 and by_role["candidate"]["p99_ms"] > 0

    r = d.c.patch(url + "/deployments/current/traffic", json={"candidate_percent": 0})
    assert r.status_code == 200
    assert builds_of(d, "fraud", 50) == Counter({str(one): 50})
    assert d.c.post(url + "/abort").status_code == 200
    aborted = d.c.get(f"{url}/deployments/{cand['id']}").json()
    assert aborted["status"] == "stopped" and kinds(aborted)[-1] == "aborted"

    # sticky: each caller always on the same build, and both builds serve some callers
    cand = candidate(d, "fraud", two, canary_percent=50, sticky_header="X-User-Id")
    assert cand["traffic"]["sticky_header"] == "X-User-Id"
    per_user = {
        user: builds_of(d, "fraud", 8, headers={"X-User-Id": f"user-{user}"}) for user in range(24)
    }
    assert all(len(seen) == 1 for seen in per_user.values()), per_user
    assert {b for seen in per_user.values() for b in seen} == {str(one), str(two)}

    # promote: the candidate serves everything; the history says who served which share when
    promoted = d.c.post(url + "/promote", json={}).json()
    assert promoted["id"] == cand["id"] and promoted["status"] == "deployed"
    assert builds_of(d, "fraud", 30) == Counter({str(two): 30})
    old = d.c.get(f"{url}/deployments/{current['id']}").json()
    assert old["status"] == "stopped"
    history = [e for e in old["events"] if e["kind"] in ("candidate.added", "traffic", "replaced")]
    assert [(e["kind"], e["detail"].get("candidate_percent")) for e in history] == [
        ("candidate.added", 20.0),
        ("traffic", 0.0),  # the split moved to 0
        ("traffic", None),  # the abort
        ("candidate.added", 50.0),
        ("replaced", None),  # promoted
    ]
    assert old["events"][-1]["detail"] == {"by": cand["id"], "promoted": True}
    r = d.c.post(url + "/promote", json={})
    assert r.status_code == 409 and r.json()["error"]["code"] == "candidate.none"

    # a rollback during a canary aborts it
    back = candidate(d, "fraud", one, canary_percent=10)
    rolled = d.c.post(url + "/rollback", json={}).json()
    assert d.wait("fraud", rolled["id"])["status"] == "deployed"
    ended = d.c.get(f"{url}/deployments/{back['id']}").json()
    assert ended["status"] == "stopped" and kinds(ended)[-1] == "replaced"
    assert d.c.get(url + "/deployments/current").json()["candidate"] is None
    assert builds_of(d, "fraud", 20) == Counter({str(one): 20})


def test_shadow_every_request_answered_by_the_primary_and_recorded(d):
    d.model("sh")
    one = d.build("sh", {"predict.py": typed(1.0)})
    two = d.build("sh", {"predict.py": typed(2.0)})
    d.deploy("sh", one)
    candidate(d, "sh", two, shadow=True, max_concurrency=4)
    n = 120
    assert builds_of(d, "sh", n) == Counter({str(one): n})  # callers only see the primary
    deadline = time.monotonic() + 30
    while True:
        live = d.c.get("/api/v1/models/sh/deployments/current/traffic").json()
        copies = live["shadow"]
        if (copies["sent"] + copies["dropped"] == n and copies["recorded"] == copies["sent"]) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.1)
    # a copy finds the candidate busy only when the earlier ones have not finished (4 slots):
    # rare one request at a time, and then dropped and counted, never queued
    assert copies["sent"] + copies["dropped"] == n and copies["dropped"] <= n // 10, copies
    assert copies["recorded"] == copies["sent"] and copies["failed"] == 0
    captured = []
    cursor = None
    while True:
        page = d.c.get(
            f"/api/v1/models/sh/builds/{two}/captures",
            params={"limit": 100, **({"cursor": cursor} if cursor else {})},
        ).json()
        captured += page["items"]
        cursor = page["next"]
        if not cursor:
            break
    assert len(captured) == copies["recorded"]  # the candidate's recorded count matches
    assert all(c["status"] == 200 for c in captured)


@pytest.mark.slow
def test_promote_under_load_fails_no_request(d):
    d.model("live")
    one = d.build("live", {"predict.py": typed(1.0)})
    two = d.build("live", {"predict.py": typed(2.0)})
    d.deploy("live", one, replicas=2)
    candidate(d, "live", two, canary_percent=10, replicas=2)
    stop = threading.Event()
    results: list[tuple[float, int, str]] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(
            base_url=d.srv.url, headers={"Authorization": f"Bearer {d.keys['live']}"}, timeout=30
        ) as c:
            while not stop.is_set():
                r = c.post("/models/live/predict", json={"a": 0})
                with lock:
                    results.append(
                        (time.monotonic(), r.status_code, r.headers.get("x-model-build", r.text))
                    )

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(7)
        before = time.monotonic()
        r = d.c.post("/api/v1/models/live/promote", json={})
        after = time.monotonic()
        assert r.status_code == 200, r.text
        time.sleep(8)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert len(results) > 200
    failures = [r for r in results if r[1] != 200]
    assert failures == [], failures[:5]
    early = Counter(b for at, _, b in results if at < before)
    late = Counter(b for at, _, b in results if at > after + 1)
    assert early[str(one)] > 0 and early[str(two)] > 0  # the canary's share
    assert set(late) == {str(two)}  # then the candidate serves everything


@pytest.mark.slow
def test_sigkill_mid_canary_serves_the_same_split_after_restart(offline_server, tmp_path):
    srv = offline_server().start()
    d = Deployed(srv, tmp_path)
    d.model("k")
    one = d.build("k", {"predict.py": typed(1.0)})
    two = d.build("k", {"predict.py": typed(2.0)})
    d.deploy("k", one)
    cand = candidate(d, "k", two, canary_percent=30)
    r = d.c.patch("/api/v1/models/k/deployments/current/traffic", json={"candidate_percent": 40})
    assert r.status_code == 200
    srv.stop(signal.SIGKILL)
    srv.start()
    d.c = srv.client()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = d.c.get("/api/v1/models/k/deployments/current/traffic").json()
        if live.get("candidate_status") == "serving":
            break
        time.sleep(0.1)
    assert live["candidate"] == cand["id"] and live["build"] == one
    assert live["traffic"]["candidate_percent"] == 40.0
    seen = builds_of(d, "k", 400)
    assert 120 <= seen[str(two)] <= 200, seen  # 40 % of 400 is 160
    restored = d.c.get(f"/api/v1/models/k/deployments/{cand['id']}").json()
    assert restored["status"] == "candidate"


def _until_tripped(d: Deployed, name: str, cand_id: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = d.c.get(f"/api/v1/models/{name}/deployments/{cand_id}").json()
        if "guard.tripped" in kinds(found):
            return found
        time.sleep(0.1)
    raise TimeoutError(found)


@pytest.mark.slow
def test_the_guard_sets_a_broken_candidate_to_zero_and_the_primary_is_untouched(d):
    d.model("g")
    one = d.build("g", {"predict.py": typed(1.0)})
    errs = d.build("g", {"predict.py": ERRORS})
    hangs = d.build("g", {"predict.py": HANGS})
    crashes = d.build("g", {"predict.py": CRASHES})
    d.deploy("g", one, replicas=2)
    url = "/api/v1/models/g"

    def load(seconds: float, threads: int = 4) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        stop = time.monotonic() + seconds

        def run() -> None:
            with httpx.Client(
                base_url=d.srv.url, headers={"Authorization": f"Bearer {d.keys['g']}"}, timeout=30
            ) as c:
                while time.monotonic() < stop:
                    r = c.post("/models/g/predict", json={"a": 0})
                    out.append((r.status_code, r.headers.get("x-model-build", "")))

        ts = [threading.Thread(target=run) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        return out

    for build, guard, extra in (
        (errs, {"max_error_rate": 0.05, "window_s": 30}, {}),
        # a hanging candidate's calls are judged in flight, long before its timeout_s
        (hangs, {"max_p99_ms": 300, "window_s": 30}, {"timeout_s": 10}),
        (crashes, {"max_error_rate": 0.05, "window_s": 30}, {}),
    ):
        cand = candidate(d, "g", build, canary_percent=50, guard=guard, **extra)
        assert cand["guard"]["window_s"] == 30
        # (a hanging candidate: 6 callers, so that 5 calls can be in flight at once, the fewest
        # the guard judges)
        seen = load(4) if build != hangs else load(5, threads=6)
        tripped = _until_tripped(d, "g", cand["id"])
        event = next(e for e in tripped["events"] if e["kind"] == "guard.tripped")
        assert event["detail"]["candidate_percent"] == 0
        assert event["detail"]["why"]  # says which limit broke, and by how much
        if build == hangs:  # tripped by calls still in flight (none had timed out: 10 s)
            assert "calls in flight longer than that counted" in event["detail"]["why"]
            assert event["detail"]["p99_ms"] < 10_000
        assert tripped["traffic"]["candidate_percent"] == 0
        # the primary answered every request it was given
        assert all(status == 200 for status, b in seen if b == str(one)), Counter(seen)
        assert any(b == str(build) for _, b in seen)  # the candidate did get its share
        after = load(1.5, threads=2)
        assert after and all(r == (200, str(one)) for r in after), Counter(after)
        primary = d.c.get(url + "/deployments/current").json()
        assert primary["build"] == one and "guard.tripped" in kinds(primary)
        assert d.c.post(url + "/abort").status_code == 200
