"""When to restart a replica that died: capped exponential backoff, a flapping window."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Decision", "RestartPolicy"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a slot whose process ended: restart after ``delay`` seconds, or give up."""

    restart: bool
    delay: float = 0.0
    reason: str = ""
    give_up_group: bool = False  # the whole group is failed (flapping or a boot failure)


class RestartPolicy:
    """Pure logic with an injected clock (circus's flapping plugin, gunicorn's boot exit code).

    - A boot failure (exit code 3, or death before Ready) is not retried: the build cannot start,
      restarting it would only loop.
    - Crashes of a slot back off: ``base_s`` doubling up to ``cap_s``; a slot that stayed up
      ``healthy_after_s`` seconds starts again from ``base_s``.
    - ``max_crashes`` crashes of the group within ``window_s`` seconds: the group is flapping and
      is given up.
    - A recycle we asked for (a timed-out call) restarts at once and counts as no crash.
    """

    def __init__(
        self,
        *,
        base_s: float = 0.5,
        factor: float = 2.0,
        cap_s: float = 30.0,
        max_crashes: int = 5,
        window_s: float = 60.0,
        healthy_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_s, self.factor, self.cap_s = base_s, factor, cap_s
        self.max_crashes, self.window_s = max_crashes, window_s
        self.healthy_after_s = healthy_after_s
        self.clock = clock
        self._crashes: deque[float] = deque()
        self._streak: dict[int, int] = {}  # slot → consecutive crashes without a healthy run

    def boot_failed(self, slot: int, reason: str) -> Decision:
        """The process never became ready: the build is broken; do not restart it."""
        return Decision(False, 0.0, f"boot failure: {reason}", give_up_group=True)

    def recycled(self, slot: int) -> Decision:
        """We killed it on purpose (a call ran past timeout_s): replace it now."""
        return Decision(True, 0.0, "recycled")

    def crashed(self, slot: int, uptime_s: float, reason: str) -> Decision:
        """It died after Ready: back off, unless the group is flapping."""
        now = self.clock()
        crashes = self._crashes
        crashes.append(now)
        while crashes and crashes[0] <= now - self.window_s:
            crashes.popleft()
        if len(crashes) >= self.max_crashes:
            return Decision(
                False,
                0.0,
                f"flapping: {len(crashes)} crashes within {self.window_s:g}s (last: {reason})",
                give_up_group=True,
            )
        streak = 0 if uptime_s >= self.healthy_after_s else self._streak.get(slot, 0)
        self._streak[slot] = streak + 1
        delay = min(self.cap_s, self.base_s * self.factor**streak)
        return Decision(True, delay, reason)

    def forget(self, slot: int) -> None:
        """The slot is gone (scaled down)."""
        self._streak.pop(slot, None)
