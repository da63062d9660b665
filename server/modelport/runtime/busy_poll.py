"""Poll instead of sleeping when the next message is due within microseconds.

A process asleep in epoll that its peer's write wakes pays for it twice: the write (the wake-up
of a halted virtual CPU, tens of µs here) and the first instructions after it (cold caches). For
the trivial model a prediction is four such hand-offs — client → server → replica → server →
client — and they were most of its latency. So a process that expects its next message very soon
keeps its event loop turning instead (epoll with a zero timeout, giving the CPU to any other
runnable task on every turn) for a bounded window, and the message is picked up as soon as it
lands: the server while a replica's answer is due and just after it answered a client, the
replica just after it answered a call.

Only where it pays: each waiting point keeps a moving average of how long its waits lasted, and
polls only while that is shorter than the window (``max_s``, MODELPORT_BUSY_POLL_US). A model
called now and then, or slowly, never polls; a replica answering a steady stream polls through
the short gaps. ``max_s = 0`` turns it off. Standard library only: the replica runtime uses it.
"""

from __future__ import annotations

import asyncio
import os
import time

__all__ = ["Gap", "Spinner"]

_clock = time.perf_counter
_yield = getattr(os, "sched_yield", lambda: None)


class Gap:
    """How long the waits at one point last (moving average): ``start()`` when the wait begins,
    ``stop()`` when the message came. ``window()`` is how long to poll for the next one: twice
    the average, up to ``max_s``; 0 when the average is ``max_s`` or more."""

    __slots__ = ("_most", "_since", "avg_s", "max_s")

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self.avg_s = 0.0
        self._since = 0.0
        self._most = max_s  # the bound of the wait in progress

    def start(self, now: float, turns: int = 1) -> float:
        """Begin a wait at ``now``; the window to poll for (0: do not). ``turns``: the wait spans
        that many hand-offs (a replica whose next call comes after the others' in a rotation),
        so the bound is ``turns × max_s``."""
        self._since = now
        self._most = most = self.max_s * turns
        avg = self.avg_s
        if avg >= most:
            return 0.0
        return min(most, 2.0 * avg + 20e-6)

    def cancel(self) -> None:
        """The wait ended some other way (it is not measured)."""
        self._since = 0.0

    def stop(self, now: float) -> None:
        since = self._since
        if since:
            self._since = 0.0
            # A long wait counts as twice the window: a few of them close the gate, and a few
            # short ones open it again.
            waited = min(now - since, 2.0 * self._most)
            self.avg_s += (waited - self.avg_s) * 0.25


class Spinner:
    """Keeps ``loop`` turning until ``until`` (a perf_counter time) while ``allowed()``. It gives
    up as soon as a turn comes back late: the CPU is contended, another process ran, and polling
    would only take time from the processes doing the work."""

    __slots__ = ("_allowed", "_last", "_loop", "_on", "until")

    def __init__(self, allowed=None) -> None:
        self.until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on = False
        self._allowed = allowed
        self._last = 0.0

    def spin(self, loop: asyncio.AbstractEventLoop, until: float) -> None:
        self.until = until
        if not self._on:
            self._on, self._loop, self._last = True, loop, _clock()
            loop.call_soon(self._turn)

    def stop(self) -> None:
        self.until = 0.0

    def _turn(self) -> None:
        now = _clock()
        allowed = self._allowed
        if now < self.until and now - self._last < LATE_TURN_S and (allowed is None or allowed()):
            self._last = now
            _yield()
            assert self._loop is not None  # spin() set it before the first turn
            self._loop.call_soon(self._turn)
        else:
            self._on = False


LATE_TURN_S = 50e-6  # a turn of the loop takes a few µs; one this late means another task ran
