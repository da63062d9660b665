"""A model's per-caller rate limit: a token bucket per key, token or address; the clock injected."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["RateLimit", "default_burst"]

_SWEEP_MIN = 4096  # buckets kept before the first sweep of full (idle) ones


def default_burst(rate: float) -> int:
    """Without a burst setting: one second's worth of requests (at least one)."""
    return max(1, math.ceil(rate))


class RateLimit:
    """``rate`` requests a second per caller, up to ``burst`` at once.

    A caller's bucket starts full, loses one token per request and refills at ``rate`` tokens a
    second. A bucket idle long enough to be full again is the same as no bucket, so sweeping those
    (when the table has doubled since the last sweep) keeps memory to the callers seen lately.
    """

    __slots__ = ("_buckets", "_clock", "_sweep_at", "burst", "burst_setting", "rate")

    def __init__(
        self, rate: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        self.burst_setting = burst
        self.burst = float(burst or default_burst(rate))
        self._buckets: dict[str, list[float]] = {}  # caller → [tokens, when counted]
        self._clock = clock
        self._sweep_at = _SWEEP_MIN

    def same_as(self, rate: float, burst: int | None) -> bool:
        return self.rate == rate and self.burst_setting == burst

    def take(self, caller: str) -> float:
        """0.0 when ``caller`` may go now (a token is spent); else the seconds until it may."""
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now)
            self._buckets[caller] = [self.burst - 1.0, now]
            return 0.0
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        tokens = min(tokens, self.burst)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def _sweep(self, now: float) -> None:
        rate, burst = self.rate, self.burst
        self._buckets = {
            k: b for k, b in self._buckets.items() if b[0] + (now - b[1]) * rate < burst
        }
        self._sweep_at = max(_SWEEP_MIN, 2 * len(self._buckets))

    def __len__(self) -> int:
        return len(self._buckets)
