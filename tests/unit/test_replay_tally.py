"""A replay's tally (replay/runner.py, pure): counts, latencies, the first diffs, each value cut
to the capture's size bound; an answer decoded from JSON or MessagePack."""

from __future__ import annotations

import msgspec
from modelport.registry.records import ReplayDiff
from modelport.registry.rows import CaptureRow
from modelport.replay.runner import MAX_DIFFS, _decoded, _is_json, _Tally


def captured(request_id: str, response, status: int = 200, latency_s: float = 0.002) -> CaptureRow:
    return CaptureRow(
        id=1,
        model_id=1,
        build=1,
        request_id=request_id,
        at=0.0,
        status=status,
        latency_s=latency_s,
        request=b"{}",
        response=msgspec.json.encode(response),
        truncated=False,
    )


def tally(cap: int = 65_536) -> _Tally:
    return _Tally(rtol=1e-9, atol=0.0, cap=cap)


def test_equal_different_and_errors_are_counted_with_each_sides_p50():
    t = tally()
    t.add(captured("a", {"x": 1}), 200, {"x": 1}, 4.0)
    t.add(captured("b", {"x": 1}), 200, {"x": 2}, 6.0)
    t.add(captured("c", {"error": "e"}, status=422), 422, {"error": "e"}, 8.0)
    found = t.result()
    assert (found["replayed"], found["equal"], found["different"]) == (3, 2, 1)
    assert (found["errors_from"], found["errors_to"]) == (1, 1)
    assert found["p50_ms_from"] == 2.0 and found["p50_ms_to"] == 6.0
    assert found["diffs"] == [ReplayDiff("b", "$.x", 1, 2, "changed")]


def test_the_same_body_with_another_status_differs_at_status():
    t = tally()
    t.add(captured("a", {"error": "e"}, status=500), 503, {"error": "e"}, 1.0)
    assert t.result()["diffs"] == [ReplayDiff("a", "$.status", 500, 503, "changed")]


def test_a_report_keeps_the_first_diffs_only():
    t = tally()
    for i in range(30):
        t.add(captured(f"r{i}", list(range(10))), 200, list(range(1, 11)), 1.0)
    found = t.result()
    assert found["different"] == 30 and len(found["diffs"]) == MAX_DIFFS
    assert found["diffs"][0].request_id == "r0" and found["diffs"][-1].request_id == "r9"


def test_each_value_is_cut_to_the_capture_bound():
    t = tally(cap=16)
    t.add(captured("a", {"text": "x" * 100}), 200, {"text": "y" * 100}, 1.0)
    [diff] = t.result()["diffs"]
    assert diff.old == '"' + "x" * 15 + "…" and diff.new == '"' + "y" * 15 + "…"
    t.add(captured("b", {"n": 1}), 200, {"n": 2}, 1.0)
    assert t.result()["diffs"][1].old == 1  # a short value is kept as it is


def test_answers_decode_from_json_or_msgpack_else_text():
    assert _decoded(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    assert _decoded(msgspec.msgpack.encode({"a": [1, 2.5]})) == {"a": [1, 2.5]}
    assert _decoded(b"\xc1 not either") == "\ufffd not either"
    assert _is_json(b'{"a": 1}') and not _is_json(msgspec.msgpack.encode({"a": 1}))
