"""The server's busy polling (see ``modelport.runtime.busy_poll``): while exactly one call is out
to a replica, for its answer; right after an answer went out with no call left, for the next
request. Never with more than one call out: the loop is busy then, and a polling server would
take the CPU its replicas need."""

from __future__ import annotations

import asyncio
import time

from modelport.runtime.busy_poll import Gap, Spinner

__all__ = ["Poller"]

_clock = time.perf_counter


class Poller:
    """``sent(loop)`` when a call goes to a replica, ``answered()`` when it is back (or failed),
    ``responded(loop)`` when an HTTP answer was written. ``max_s = 0``: never polls."""

    __slots__ = ("answer", "on", "out", "request", "spinner")

    def __init__(self, max_s: float) -> None:
        self.on = max_s > 0
        self.out = 0  # calls sent and not answered, every replica of every model
        self.answer = Gap(max_s)  # a lone call's answer
        self.request = Gap(max_s)  # the next request once nothing is out
        self.spinner = Spinner(self._alone)

    def _alone(self) -> bool:
        return self.out <= 1

    def sent(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Count a call going out; True when it is the only one (its replica may poll after
        answering it)."""
        self.out += 1
        if not self.on:
            return False
        if self.out == 1:
            now = _clock()
            self.request.stop(now)
            window = self.answer.start(now)
            if window:
                self.spinner.spin(loop, now + window)
            else:
                self.spinner.stop()
            return True
        if self.out == 2:  # not alone any more: these waits are not the ones measured
            self.answer.cancel()
            self.request.cancel()
        return False

    def answered(self) -> None:
        self.out -= 1
        if self.on and self.out == 0:
            self.answer.stop(_clock())

    def responded(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.on and self.out == 0:
            now = _clock()
            window = self.request.start(now)
            if window:
                self.spinner.spin(loop, now + window)
            else:
                self.spinner.stop()
