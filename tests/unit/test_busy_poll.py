"""Busy polling decides by the waits it has seen: short ones open the window, long ones close it."""

from __future__ import annotations

import asyncio

from modelport.runtime import busy_poll
from modelport.runtime.busy_poll import Gap, Spinner
from modelport.serving.poller import Poller

MAX = 250e-6


def waits(gap: Gap, seconds: float, n: int, turns: int = 1) -> None:
    t = 100.0
    for _ in range(n):
        gap.start(t, turns)
        gap.stop(t + seconds)
        t += 1.0


def test_short_waits_open_the_window_up_to_the_maximum():
    gap = Gap(MAX)
    assert gap.start(0.0) > 0  # nothing seen yet: try
    gap.cancel()
    waits(gap, 40e-6, 20)
    assert 40e-6 < gap.start(50.0) <= MAX  # about twice the waits seen


def test_long_waits_close_it_and_short_ones_open_it_again():
    gap = Gap(MAX)
    waits(gap, 40e-6, 20)
    waits(gap, 5.0, 6)  # a model called now and then
    assert gap.start(200.0) == 0.0
    gap.cancel()
    waits(gap, 40e-6, 12)
    assert gap.start(300.0) > 0


def test_a_wait_spanning_the_other_replicas_turns_has_a_wider_bound():
    # Two replicas in rotation at c=1: each waits two hand-offs for its next call.
    alone, rotating = Gap(MAX), Gap(MAX)
    waits(alone, 1.5 * MAX, 20, turns=1)
    waits(rotating, 1.5 * MAX, 20, turns=2)
    assert alone.start(50.0) == 0.0  # one replica: that long a wait is not worth polling
    assert MAX < rotating.start(50.0, 2) <= 2 * MAX
    waits(rotating, 5.0, 6, turns=2)  # called now and then: closed again
    assert rotating.start(200.0, 2) == 0.0


def test_a_cancelled_wait_is_not_measured():
    gap = Gap(MAX)
    waits(gap, 40e-6, 10)
    before = gap.avg_s
    gap.start(10.0)
    gap.cancel()
    gap.stop(20.0)
    assert gap.avg_s == before


def test_off_never_polls():
    gap = Gap(0.0)
    assert gap.start(1.0) == 0.0
    poller = Poller(0.0)
    loop = asyncio.new_event_loop()
    try:
        poller.sent(loop)
        poller.answered()
        poller.responded(loop)
        assert poller.out == 0 and not poller.spinner._on
    finally:
        loop.close()


class StepClock:
    """A perf_counter that moves ``step`` seconds a reading, whatever the machine is doing."""

    def __init__(self, step: float = 1e-6) -> None:
        self.now, self.step = 100.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_the_spinner_stops_at_its_deadline_when_late_and_when_not_allowed(monkeypatch):
    clock = StepClock()
    monkeypatch.setattr(busy_poll, "_clock", clock)

    async def main():
        loop = asyncio.get_running_loop()
        turns = 0
        allowed = True

        def allow():
            nonlocal turns
            turns += 1
            return allowed

        spinner = Spinner(allow)
        spinner.spin(loop, clock.now + 20e-6)  # about ten turns of the clock
        while spinner._on:
            await asyncio.sleep(0)
        assert 1 < turns < 20  # it turned, then stopped by itself at the deadline

        turns = 0
        spinner.spin(loop, clock.now + 60)
        await asyncio.sleep(0)
        clock.now += 2 * busy_poll.LATE_TURN_S  # a turn comes back late: another process ran
        while spinner._on:
            await asyncio.sleep(0)
        assert turns >= 1

        spinner.spin(loop, clock.now + 60)
        await asyncio.sleep(0)
        allowed = False
        while spinner._on:
            await asyncio.sleep(0)
        assert not spinner._on

    asyncio.run(asyncio.wait_for(main(), 30))


def test_the_server_polls_only_while_one_call_is_out():
    async def main():
        loop = asyncio.get_running_loop()
        poller = Poller(MAX)
        poller.sent(loop)
        assert poller.spinner._on  # the lone call's answer is polled for
        poller.sent(loop)  # a second call: the loop is busy, no polling
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not poller.spinner._on
        poller.answered()
        poller.answered()
        assert poller.out == 0

    asyncio.run(main())
