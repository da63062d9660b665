"""The promotion gate's verdict on a replay report (replay/gate.py), each refusal named."""

from __future__ import annotations

from modelport.replay.gate import verdict


def report(**over) -> dict:
    row = {
        "id": 4,
        "from_build": 6,
        "to_build": 7,
        "status": "done",
        "replayed": 20,
        "equal": 20,
        "different": 0,
    }
    return row | over


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
