"""Monitoring without I/O: latency histogram, percentiles, rebucketing, the Recorder's counting."""

from __future__ import annotations

from types import SimpleNamespace

from modelport.gateway.predict import Outcome
from modelport.observability.metrics import PROM_BOUNDS, Recorder
from modelport.observability.series import (
    Bucket,
    index_ms,
    latency_index,
    percentile_ms,
    rebucket,
    to_point,
)


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def recorder(clock, known=("m",), serving=None, **kw) -> Recorder:
    return Recorder(
        known=set(known).__contains__, current_build=lambda m: serving, clock=clock, **kw
    )


def test_latency_buckets_are_within_five_percent():
    for seconds in (0.00002, 0.0013, 0.05, 0.7, 3.0, 100.0):
        ms = index_ms(latency_index(seconds))
        assert abs(ms - seconds * 1000) / (seconds * 1000) < 0.05
    assert latency_index(0) == 0 and latency_index(1e9) == 255


def test_percentiles_of_a_histogram():
    b = Bucket(0)
    for i in range(1, 101):  # 1 ms … 100 ms
        b.add(200, i / 1000, 10, 20)
    p50, p95, p99 = (percentile_ms(b.hist, q) for q in (0.5, 0.95, 0.99))
    assert 47 < p50 < 53 and 90 < p95 < 100 and 94 < p99 < 104
    assert percentile_ms({}, 0.5) is None
    point = to_point("t", 1, b, 10)
    assert point.requests == 100 and point.errors == 0 and point.request_bytes == 1000
    assert 49 < point.mean_ms < 52


def test_rebucket_merges_builds_apart_and_adds_up():
    items = []
    for t in range(0, 60, 10):
        for build in (1, 2):
            b = Bucket(t)
            b.add(200 if t else 500, 0.01, 1, 1)
            b.cpu_s, b.memory_bytes = 0.5, 100 + t
            items.append((build, b))
    grid = rebucket(items, 60)
    assert sorted(grid) == [(0, 1), (0, 2)]
    one = grid[(0, 1)]
    assert one.requests == 6 and one.errors == 1 and one.server_errors == 1
    assert one.cpu_s == 3.0 and one.memory_bytes == 150
    assert to_point("t", 1, one, 60).cpu_percent == 5.0


def test_recorder_counts_codes_histogram_and_bytes():
    clock = Clock()
    rec = recorder(clock)
    for seconds, status in [(0.0005, 200), (0.003, 200), (0.2, 500), (99.0, 200)]:
        rec.on_result(Outcome("m", 1, status, seconds, "r", {}, None, None, b"abc", b"hello"))
    st = rec.stats[("m", 1)]
    assert st.codes == {200: 3, 500: 1}
    assert sum(st.buckets) == 4 and st.buckets[-1] == 1  # 99 s is past the last bound
    assert st.buckets[0] == 1 and len(st.buckets) == len(PROM_BOUNDS) + 1
    assert st.request_bytes == 12 and st.response_bytes == 20
    rec.on_result(Outcome("nope", None, 404, 0.001, "r", {}, None, None, b"", b""))
    assert rec.unknown == {404: 1} and ("nope", None) not in rec.stats


def test_refusals_count_against_the_build_serving():
    rec = recorder(Clock(), serving=3)
    rec.on_result(Outcome("m", None, 401, 0.001, "r", {}, None, None, b"", b""))
    assert rec.stats[("m", 3)].codes == {401: 1}


def test_buckets_close_on_the_slot_boundary():
    clock = Clock(1_000_000.0)
    rec = recorder(clock)
    rec.on_result(Outcome("m", 1, 200, 0.01, "a", {}, None, None, b"", b""))
    clock.t += 3
    rec.on_result(Outcome("m", 1, 200, 0.01, "b", {}, None, None, b"", b""))
    assert rec.close_buckets(clock.t) == []  # still open
    assert [b.requests for _, b in rec.open_buckets("m")] == [2]
    clock.t += 10
    rec.on_result(Outcome("m", 1, 200, 0.01, "c", {}, None, None, b"", b""))  # rolls the first one
    closed = rec.close_buckets(clock.t)
    assert [(m, build, b.requests, b.t) for m, build, b in closed] == [("m", 1, 2, 1_000_000)]
    assert [b.requests for _, b in rec.open_buckets("m")] == [1]


def test_tracked_metrics_and_captures_are_bounded():
    rec = recorder(Clock(), max_tracked=2, max_captures=1)
    for rid in ("a", "b", "c"):
        rec.on_result(Outcome("m", 1, 200, 0.01, rid, {"x": 1.0}, None, None, b"", b""))
    assert sorted(k[1] for k in rec.tracked) == ["a", "b"] and rec.dropped["tracked"] == 1
    group = SimpleNamespace(spec=SimpleNamespace(capture_percent=100.0, capture_max_bytes=4))
    for rid in ("a", "b"):
        rec.on_result(Outcome("m", 1, 200, 0.01, rid, {}, group, None, b'{"a": 1}', b"2"))
    assert len(rec.captures) == 1 and rec.dropped["captures"] == 1
    cap = rec.captures[0]
    assert cap.request == b'{"a"' and cap.response == b"2" and cap.truncated
    off = SimpleNamespace(spec=SimpleNamespace(capture_percent=0.0, capture_max_bytes=4))
    rec.take_captures()
    rec.on_result(Outcome("m", 1, 200, 0.01, "z", {}, off, None, b"{}", b"2"))
    assert rec.captures == []
