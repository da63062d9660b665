"""When a replica is late: it owes an answer and has been silent too long (pure; clock passed in).

A replica that stops answering (SIGSTOPped, swapping, wedged in a C call) still looks ready: its
pipe is open and its process alive. It is found out by what it owes — a call's answer, or a Pong
— and by when it last sent anything at all. Silence is measured against its own pace: a model
whose calls take 2 s is not late after 1 s, one whose calls take 50 µs is after 0.5 s. A late
replica is only passed over by the balancer; it is not killed (``timeout_s`` and the ping timeout
still do that), and it is chosen again as soon as it sends anything.
"""

from __future__ import annotations

__all__ = ["CHECK_S", "LATE_FACTOR", "LATE_MIN_S", "Punctuality", "allowance"]

LATE_FACTOR = 4.0  # × the replica's recent service time
LATE_MIN_S = 0.5  # never less: a GC pause or a busy machine is not a fault
CHECK_S = 0.25  # how often a group looks at its replicas (one timer per group, none per call)


def allowance(service_s: float) -> float:
    """How long a replica may owe an answer without a sign of life."""
    return max(LATE_FACTOR * service_s, LATE_MIN_S)


class Punctuality:
    """One replica's debt as the group's checks see it. ``check`` says what to do now: "late",
    "probe" (send it a Ping: a replica that runs calls off its event loop answers one while they
    run, which tells a slow call from a silent process), or None."""

    __slots__ = ("owed_since", "probed_at")

    def __init__(self) -> None:
        self.owed_since: float | None = None  # when a check first saw it owe something
        self.probed_at = float("-inf")

    def check(
        self, now: float, *, owes: bool, heard: float, service_s: float, can_probe: bool
    ) -> str | None:
        """``owes``: a call in flight or a Ping unanswered; ``heard``: when it last sent
        anything; ``service_s``: how long its calls take lately."""
        if not owes:
            self.owed_since = None
            return None
        since = self.owed_since
        if since is None:
            self.owed_since = since = now  # at most one check after the debt began: never early
        silent = now - max(since, heard)
        limit = allowance(service_s)
        if silent > limit:
            return "late"
        if can_probe and silent > limit / 2 and now - self.probed_at > limit / 2:
            self.probed_at = now
            return "probe"
        return None
