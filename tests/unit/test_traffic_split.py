"""serving/traffic.py: which build answers a request (a share, or sticky by a header's value), and
the live figures the guard reads; no I/O."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from modelport.serving.config import GroupSpec
from modelport.serving.traffic import Traffic, Window


def group(build: int, replicas: int = 1, max_concurrency: int = 1):
    spec = GroupSpec(
        model="m",
        build=build,
        python="py",
        project="p",
        entry="e.py:f",
        replicas=replicas,
        max_concurrency=max_concurrency,
    )
    return SimpleNamespace(spec=spec)


def traffic(percent: float, sticky: str | None = None, mode: str = "split") -> Traffic:
    return Traffic(group(1), group(2), mode=mode, percent=percent, sticky_header=sticky)  # type: ignore[arg-type]


@pytest.mark.parametrize("percent", [0, 10, 20, 50, 100])
def test_a_share_of_requests_goes_to_the_candidate(percent):
    t = traffic(percent)
    n = 20_000
    share = sum(t.pick([]) for _ in range(n)) / n * 100
    assert abs(share - percent) < 1.5


def test_sticky_callers_always_land_on_the_same_build():
    t = traffic(30, sticky="X-User-Id")
    picks = {}
    for user in range(2000):
        headers = [(b"content-type", b"application/json"), (b"x-user-id", f"u{user}".encode())]
        picks[user] = {t.pick(headers) for _ in range(5)}
    assert all(len(p) == 1 for p in picks.values())
    share = sum(p == {True} for p in picks.values()) / len(picks) * 100
    assert 25 < share < 35
    t.set_percent(60)  # a caller on the candidate stays on it when its share grows
    assert all(t.pick([(b"x-user-id", f"u{u}".encode())]) for u, p in picks.items() if p == {True})


def test_a_caller_without_the_sticky_header_is_split_per_request():
    t = traffic(50, sticky="X-User-Id")
    assert {t.pick([]) for _ in range(200)} == {True, False}


def test_the_live_figures_of_each_build():
    t = traffic(50)
    for i in range(100):
        t.seen(i % 2 == 0, 500 if i % 10 == 0 else 200, 0.001 * (i + 1))
    live = {b["role"]: b for b in t.live(60)["builds"]}
    assert live["candidate"]["answered"] == live["primary"]["answered"] == 50
    assert live["candidate"]["share_percent"] == 50.0
    assert live["candidate"]["errors"] == 10 and live["primary"]["errors"] == 0
    assert live["candidate"]["error_rate"] == 0.2
    assert live["candidate"]["p99_ms"] >= live["candidate"]["p50_ms"] > 0


def test_a_window_forgets_what_is_older_than_it():
    w = Window()
    w.samples.append((100.0, True, 0.5))
    w.samples.append((159.0, False, 0.1))
    assert w.summary(10, now=160.0)["requests"] == 1
    assert w.summary(100, now=160.0) | {"p50_ms": None} == {
        "requests": 2,
        "errors": 1,
        "error_rate": 0.5,
        "p50_ms": None,
        "p99_ms": 500.0,
    }


def test_a_shadow_copies_up_to_the_candidates_free_slots():
    t = traffic(100, mode="shadow")
    assert t.max_copies == 16 and not t.split and t.shadow
    t2 = Traffic(group(1), group(2, replicas=2, max_concurrency=3), mode="shadow", percent=100)  # type: ignore[arg-type]
    assert t2.max_copies == 96


def test_calls_in_flight_past_a_limit_count_as_that_slow_until_they_end():
    t = traffic(50)
    done, hung = t.begin(), t.begin()
    t._open[hung] -= 2.0  # went out 2 s ago
    t.end(done)
    late = t.late(0.3)
    assert len(late) == 1 and late[0] >= 2.0
    w = Window()
    for _ in range(4):
        w.samples.append((time.monotonic(), False, 0.01))
    figures = w.summary(30, late=late)
    assert figures["requests"] == 5 and figures["errors"] == 0
    assert figures["p99_ms"] >= 2000
    t.end(hung)
    assert t.late(0.3) == [] and w.summary(30)["requests"] == 4
