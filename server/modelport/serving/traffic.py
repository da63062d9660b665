"""A model's traffic between its primary build and a candidate (a canary or a shadow).

The primary group carries ``traffic`` (None for a model with no candidate: the gateway pays one
attribute read). ``Traffic`` says, per request and without I/O, which group answers
(``pick``), records each build's outcomes for its live figures and the guard (``seen``), and in
shadow mode sends the candidate a copy after the primary answered (``mirror``): its answer is
recorded (``on_shadow``), never returned; the copy is dropped, and counted, when the candidate
has no free slot; its failures never reach the caller.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, cast

from modelport.errors import error_json
from modelport.runtime.protocol import Result

if TYPE_CHECKING:
    from modelport.runtime.protocol import Failure

    from .group import ReplicaGroup

__all__ = ["Guard", "OnShadow", "Traffic", "TrafficMode", "Window"]

log = logging.getLogger("modelport.serving")

TrafficMode = Literal["split", "shadow"]
COPY_QUEUE = 16  # a shadow's copies in flight at most, per slot of the candidate
# on_shadow(model, primary build, candidate build, request id, request body, primary status,
# primary answer, primary seconds, candidate status, candidate answer, candidate seconds,
# capture_max_bytes): a shadow's pair, to record (in memory; no I/O)
OnShadow = Callable[[str, int, int, str, bytes, int, bytes, float, int, bytes, float, int], None]


class Guard:
    """The candidate's limits over the last ``window_s`` seconds (None: that limit is off)."""

    __slots__ = ("max_error_rate", "max_p99_ms", "window_s")

    def __init__(
        self, max_error_rate: float | None, max_p99_ms: float | None, window_s: float
    ) -> None:
        self.max_error_rate, self.max_p99_ms, self.window_s = max_error_rate, max_p99_ms, window_s


class Window:
    """A build's recent outcomes: (monotonic time, failed, seconds), the newest ``maxlen``."""

    __slots__ = ("samples",)

    def __init__(self, maxlen: int = 100_000) -> None:
        self.samples: deque[tuple[float, bool, float]] = deque(maxlen=maxlen)

    def summary(
        self, window_s: float, now: float | None = None, late: list[float] | None = None
    ) -> dict[str, Any]:
        """Requests, errors, error_rate, p50_ms and p99_ms of the last ``window_s`` seconds;
        ``late``: the ages (seconds) of calls still in flight, counted as answers that took
        that long (the guard's: a hanging call is judged before it times out)."""
        since = (time.monotonic() if now is None else now) - window_s
        recent = [s for s in self.samples if s[0] >= since]
        recent += [(0.0, False, age) for age in late or ()]
        n = len(recent)
        errors = sum(1 for s in recent if s[1])
        latencies = sorted(s[2] for s in recent)

        def q(p: float) -> float | None:
            if not latencies:
                return None
            return round(latencies[min(n - 1, int(p * n))] * 1000, 3)

        return {
            "requests": n,
            "errors": errors,
            "error_rate": round(errors / n, 6) if n else 0.0,
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
        }

    def clear(self) -> None:
        self.samples.clear()


class Traffic:
    """The candidate group and how requests reach it. ``percent`` is the share of requests the
    candidate answers (split) or gets a copy of (shadow)."""

    def __init__(
        self,
        primary: ReplicaGroup,
        candidate: ReplicaGroup,
        *,
        mode: TrafficMode,
        percent: float,
        sticky_header: str | None = None,
        guard: Guard | None = None,
        on_shadow: OnShadow | None = None,
    ) -> None:
        self.primary, self.group = primary, candidate
        self.mode = mode
        self.split = mode == "split"
        self.shadow = mode == "shadow"
        self.sticky_header = sticky_header
        self._sticky = sticky_header.lower().encode() if sticky_header else None
        self.guard = guard
        self.on_shadow = on_shadow
        self.percent = 0.0
        self._threshold = 0  # of 10,000
        self.set_percent(percent)
        self.windows = {primary.spec.build: Window(), candidate.spec.build: Window()}
        self._primary_window = self.windows[primary.spec.build]
        self._candidate_window = self.windows[candidate.spec.build]
        if primary.spec.build == candidate.spec.build:  # a build against itself: apart
            self._candidate_window = Window()
        self.answered = {"primary": 0, "candidate": 0}
        # shadow copies: sent, dropped (the candidate busy), failed (an error or no answer)
        self.copies = {"sent": 0, "dropped": 0, "failed": 0, "recorded": 0}
        self._in_copy = 0
        # the candidate's calls in flight: token → time.monotonic() when it went out
        self._open: dict[int, float] = {}
        self._opened = 0
        self._tasks: set[asyncio.Future[None]] = set()
        self._random = random.random

    def set_percent(self, percent: float) -> None:
        self.percent = float(percent)
        self._threshold = round(self.percent * 100)

    @property
    def max_copies(self) -> int:
        """Copies in flight at most: the candidate's slots, and as many waiting for one (a copy
        past that finds the candidate busy: dropped, never a longer queue)."""
        spec = self.group.spec
        return COPY_QUEUE * max(1, spec.replicas * max(1, spec.max_concurrency))

    # -- the hot path -----------------------------------------------------------------------------

    def pick(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """True when the candidate answers this request (split mode)."""
        threshold = self._threshold
        if threshold <= 0:
            return False
        if threshold >= 10_000:
            return True
        sticky = self._sticky
        if sticky is not None:
            for key, value in headers:
                if key == sticky:
                    return zlib.crc32(value) % 10_000 < threshold
        return self._random() * 10_000 < threshold

    def begin(self) -> int:
        """A call to the candidate goes out: its token, for ``end``."""
        self._opened += 1
        self._open[self._opened] = time.monotonic()
        return self._opened

    def end(self, token: int) -> None:
        self._open.pop(token, None)

    def late(self, over_s: float) -> list[float]:
        """The ages (seconds) of the candidate's calls in flight for longer than ``over_s``."""
        now = time.monotonic()
        return [now - t for t in self._open.values() if now - t > over_s]

    def seen(self, candidate: bool, status: int, seconds: float) -> None:
        """One answer of the primary (or the candidate): for the live figures and the guard."""
        if candidate:
            self.answered["candidate"] += 1
            self._candidate_window.samples.append((time.monotonic(), status >= 500, seconds))
        else:
            self.answered["primary"] += 1
            self._primary_window.samples.append((time.monotonic(), status >= 500, seconds))

    def mirror(
        self,
        model: str,
        body: bytes,
        content_type: str,
        wants: str,
        rid: str,
        status: int,
        out: bytes,
        seconds: float,
    ) -> None:
        """Shadow mode, after the primary answered: a copy to the candidate, in the background."""
        threshold = self._threshold
        if threshold <= 0 or (threshold < 10_000 and self._random() * 10_000 >= threshold):
            return
        if self._in_copy >= self.max_copies:
            self.copies["dropped"] += 1
            return
        self._in_copy += 1
        self.copies["sent"] += 1
        task = asyncio.ensure_future(
            self._copy(model, body, content_type, wants, rid, status, out, seconds)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _copy(
        self,
        model: str,
        body: bytes,
        content_type: str,
        wants: str,
        rid: str,
        status: int,
        out: bytes,
        seconds: float,
    ) -> None:
        group = self.group
        started = time.perf_counter()
        token = self.begin()
        try:
            try:
                _, msg = await group.call(body, content_type, wants, rid)
            except Exception as exc:  # draining, unavailable, busy: never the caller's concern
                self.copies["failed"] += 1
                self._candidate_window.samples.append(
                    (time.monotonic(), True, time.perf_counter() - started)
                )
                log.debug("shadow copy of %s to build %s: %s", rid, group.spec.build, exc)
                return
            took = time.perf_counter() - started
            if type(msg) is Result:
                code, answer = 200, msg.body
            else:  # a Failure: its status, its error as the answer
                failed = cast("Failure", msg)
                code = failed.status
                answer = error_json(code, failed.code, failed.message, failed.field)
            self._candidate_window.samples.append((time.monotonic(), code >= 500, took))
            if code >= 500:
                self.copies["failed"] += 1
            if self.on_shadow is not None:
                self.copies["recorded"] += 1
                self.on_shadow(
                    model,
                    self.primary.spec.build,
                    group.spec.build,
                    rid,
                    body,
                    status,
                    out,
                    seconds,
                    code,
                    answer,
                    took,
                    group.spec.capture_max_bytes,
                )
        except Exception:
            log.exception("a shadow copy failed inside the server")
        finally:
            self.end(token)
            self._in_copy -= 1

    # -- what the API shows -----------------------------------------------------------------------

    def live(self, window_s: float = 60.0) -> dict[str, Any]:
        """Each build's share of the answers and its recent errors and latency."""
        total = self.answered["primary"] + self.answered["candidate"]
        builds = []
        for role, group, window in (
            ("primary", self.primary, self._primary_window),
            ("candidate", self.group, self._candidate_window),
        ):
            figures = window.summary(window_s)
            served = self.answered[role]
            share = (served / total * 100) if total and self.split else None
            if not self.split:
                share = 100.0 if role == "primary" else 0.0
            builds.append(
                {
                    "build": group.spec.build,
                    "role": role,
                    "answered": served,
                    "share_percent": None if share is None else round(share, 3),
                    **figures,
                }
            )
        return {"window_s": window_s, "builds": builds, "shadow": dict(self.copies)}

    def candidate_window(self) -> Window:
        return self._candidate_window

    async def settle(self) -> None:
        """The copies in flight finish (or fail)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
