"""The restart policy: backoff, flapping window, boot failures — with a fake clock, no processes."""

from __future__ import annotations

from modelport.serving.restart_policy import RestartPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(clock: Clock, **kw) -> RestartPolicy:
    defaults = {
        "base_s": 0.5,
        "factor": 2.0,
        "cap_s": 4.0,
        "max_crashes": 5,
        "window_s": 60.0,
        "healthy_after_s": 30.0,
    }
    return RestartPolicy(clock=clock, **(defaults | kw))


def test_backoff_doubles_up_to_the_cap():
    clock = Clock()
    p = policy(clock, max_crashes=100)
    delays = []
    for _ in range(6):
        clock.now += 1
        d = p.crashed(1, uptime_s=1.0, reason="exited with code 1")
        assert d.restart and not d.give_up_group
        delays.append(d.delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_healthy_run_resets_the_backoff_and_slots_back_off_separately():
    clock = Clock()
    p = policy(clock, max_crashes=100)
    assert p.crashed(1, 1.0, "x").delay == 0.5
    assert p.crashed(1, 1.0, "x").delay == 1.0
    assert p.crashed(2, 1.0, "x").delay == 0.5  # another slot has its own streak
    assert p.crashed(1, 31.0, "x").delay == 0.5  # it had stayed up past healthy_after_s
    assert p.crashed(1, 1.0, "x").delay == 1.0
    p.forget(1)
    assert p.crashed(1, 1.0, "x").delay == 0.5


def test_flapping_gives_the_group_up_within_the_window_only():
    clock = Clock()
    p = policy(clock, max_crashes=3, window_s=10.0)
    assert p.crashed(1, 1.0, "a").restart
    clock.now += 4
    assert p.crashed(1, 1.0, "b").restart
    clock.now += 7  # the first crash has left the window
    assert p.crashed(1, 1.0, "c").restart
    clock.now += 1
    d = p.crashed(2, 1.0, "killed by SIGKILL")
    assert not d.restart and d.give_up_group
    assert d.reason == "flapping: 3 crashes within 10s (last: killed by SIGKILL)"


def test_boot_failure_is_never_restarted():
    d = policy(Clock()).boot_failed(1, "ImportError: no module named torch")
    assert not d.restart and d.give_up_group
    assert "ImportError: no module named torch" in d.reason


def test_a_recycle_restarts_at_once_and_is_not_a_crash():
    clock = Clock()
    p = policy(clock, max_crashes=2)
    for _ in range(10):
        d = p.recycled(1)
        assert d.restart and d.delay == 0.0
    assert p.crashed(1, 1.0, "x").restart  # one real crash: under max_crashes=2
