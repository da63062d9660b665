"""The promotion gate's verdict on a replay report (replay/gate.py), each refusal named."""

from __future__ import annotations

from modelport.registry.rows import ReplayReportRow, load
from modelport.replay.gate import verdict

DONE = {
    "id": 4,
    "model_id": 1,
    "from_build": 6,
    "to_build": 7,
    "source": "capture",
    "status": "done",
    "since": 0.0,
    "until": 50.0,
    "max_requests": 1000,
    "rtol": 1e-9,
    "atol": 0.0,
    "replayed": 20,
    "equal": 20,
    "different": 0,
    "skipped": 0,
    "errors_from": 0,
    "errors_to": 0,
    "p50_ms_from": 1.0,
    "p50_ms_to": 1.0,
    "diffs": "[]",
    "error": None,
    "created_by": "t",
    "at": 100.0,
    "finished_at": 110.0,
    "node": "",
}


def report(**over) -> ReplayReportRow:
    return load(ReplayReportRow, DONE | over)


def test_a_done_report_of_the_two_builds_with_no_difference_passes():
    assert verdict(report(), primary_build=6, candidate_build=7) is None


def test_each_refusal_says_why():
    def why(**over) -> str:
        found = verdict(report(**over), primary_build=6, candidate_build=7)
        assert found is not None
        return found

    assert "2 of 20" in why(different=2, equal=18)
    assert "running, not done" in why(status="running")
    assert "failed, not done" in why(status="failed")
    assert "replayed no request" in why(replayed=0, equal=0)
    assert "not the primary #6 on the candidate #7" in why(from_build=5)
    assert "not the primary #6 on the candidate #7" in why(to_build=8)
    assert "not the primary" in why(from_build=7, to_build=6)  # the other way round
    assert verdict(None, primary_build=6, candidate_build=7) == (
        "there is no such replay report of this model"
    )
