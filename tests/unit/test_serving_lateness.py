"""When a replica is late: the pure rule, with the clock passed in (no processes)."""

from __future__ import annotations

from modelport.serving.lateness import CHECK_S, LATE_MIN_S, Punctuality, allowance


def checks(p: Punctuality, start: float, until: float, **state) -> list[tuple[float, str]]:
    """What the group's checks (every CHECK_S) say between ``start`` and ``until``."""
    said, now = [], start
    while now <= until + 1e-9:
        verdict = p.check(now, **state)
        if verdict:
            said.append((round(now, 2), verdict))
        now += CHECK_S
    return said


def test_the_allowance_follows_the_replicas_pace_with_a_floor():
    assert allowance(0.0) == allowance(50e-6) == LATE_MIN_S
    assert allowance(0.5) == 2.0 and allowance(3.0) == 12.0


def test_owing_nothing_is_never_late():
    p = Punctuality()
    assert checks(p, 100.0, 200.0, owes=False, heard=0.0, service_s=0.0, can_probe=True) == []


def test_a_silent_replica_is_late_past_its_allowance_counted_from_when_the_debt_was_seen():
    p = Punctuality()
    # last heard long ago (idle), then a call: silence is counted from the first check that
    # saw the debt, not from the last answer, so a replica idle for an hour is not late at once
    said = checks(p, 10.0, 12.0, owes=True, heard=0.0, service_s=0.0, can_probe=False)
    assert said[0] == (10.75, "late")  # 0.75 s after 10.0: past 0.5 s, at the next check


def test_a_replica_that_keeps_answering_is_not_late_however_long_it_owes():
    p = Punctuality()
    now = 50.0
    for _ in range(100):  # under load: always a call in flight, answers all the time
        assert p.check(now, owes=True, heard=now - 0.01, service_s=0.001, can_probe=False) is None
        now += CHECK_S


def test_a_slow_model_has_a_longer_allowance():
    p = Punctuality()
    said = checks(p, 0.0, 10.0, owes=True, heard=0.0, service_s=2.0, can_probe=False)
    assert said[0][1] == "late" and said[0][0] > 8.0


def test_a_replica_that_can_answer_pings_while_busy_is_probed_first():
    p = Punctuality()
    said = checks(p, 0.0, 1.0, owes=True, heard=0.0, service_s=0.0, can_probe=True)
    assert said[0] == (0.5, "probe") and said[-1][1] == "late"
    # each Pong is a sign of life: a slow call is probed now and then, and never late
    q = Punctuality()
    heard, said = 0.0, []
    for step in range(40):
        now = step * CHECK_S
        verdict = q.check(now, owes=True, heard=heard, service_s=0.0, can_probe=True)
        said.append(verdict)
        if verdict == "probe":
            heard = now + 0.001  # its Pong
    assert "late" not in said and 5 <= said.count("probe") <= 20


def test_the_debt_starts_again_after_it_was_paid():
    p = Punctuality()
    assert p.check(0.0, owes=True, heard=0.0, service_s=0.0, can_probe=False) is None
    assert p.check(0.25, owes=False, heard=0.2, service_s=0.0, can_probe=False) is None
    assert p.check(5.0, owes=True, heard=0.2, service_s=0.0, can_probe=False) is None
    assert p.check(5.25, owes=True, heard=0.2, service_s=0.0, can_probe=False) is None
    assert p.check(5.75, owes=True, heard=0.2, service_s=0.0, can_probe=False) == "late"
