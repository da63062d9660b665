"""A monitoring write refused by a full disk: held in memory, bounded, written first next time."""

from __future__ import annotations

import msgspec

from .metrics import Capture, Tracked
from .series import Bucket

__all__ = ["Backlog", "Batch"]

Closed = list[tuple[str, int, Bucket]]  # (model, build, a closed 10 s bucket)
TrackedMap = dict[tuple[str, str], Tracked]  # (model, request id) → what it recorded


class Batch(msgspec.Struct):
    """One write's worth: closed buckets, tracked metrics, captures."""

    closed: Closed = []
    tracked: TrackedMap = {}
    captures: list[Capture] = []

    def __len__(self) -> int:
        return len(self.closed) + len(self.tracked) + len(self.captures)


class Backlog:
    """Batches the disk refused, kept until a write succeeds. Bounded: past the limits the oldest
    go first (and are counted in ``dropped``). A day of 10 s buckets for 50 builds is 432,000
    buckets; the default keeps about 6 hours of that, in some 20 MB."""

    def __init__(
        self,
        *,
        max_buckets: int = 100_000,
        max_tracked: int = 50_000,
        max_captures: int = 1_000,
        max_capture_bytes: int = 64 * 2**20,
    ) -> None:
        self.max_buckets, self.max_tracked = max_buckets, max_tracked
        self.max_captures, self.max_capture_bytes = max_captures, max_capture_bytes
        self.held = Batch([], {}, [])
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.held)

    def with_held(self, batch: Batch) -> Batch:
        """What is held, then ``batch`` (newer metrics of a request win), and nothing held."""
        held, self.held = self.held, Batch([], {}, [])
        tracked = held.tracked
        for key, entry in batch.tracked.items():
            old = tracked.get(key)
            if old is not None:
                entry.metrics = {**old.metrics, **entry.metrics}
                entry.build = entry.build if entry.build is not None else old.build
                del tracked[key]  # re-inserted as the newest
            tracked[key] = entry
        return Batch(held.closed + batch.closed, tracked, held.captures + batch.captures)

    def hold(self, batch: Batch) -> None:
        """Keep a batch whose write failed (after ``with_held``: it holds the earlier ones)."""
        closed, tracked, captures = list(batch.closed), dict(batch.tracked), list(batch.captures)
        if len(closed) > self.max_buckets:
            self.dropped += len(closed) - self.max_buckets
            del closed[: len(closed) - self.max_buckets]
        while len(tracked) > self.max_tracked:
            del tracked[next(iter(tracked))]
            self.dropped += 1
        size = sum(len(c.request) + len(c.response) for c in captures)
        while captures and (len(captures) > self.max_captures or size > self.max_capture_bytes):
            first = captures.pop(0)
            size -= len(first.request) + len(first.response)
            self.dropped += 1
        self.held = Batch(closed, tracked, captures)

    def buckets_of(self, model: str) -> list[tuple[int, Bucket]]:
        """The held buckets of a model, as (build, bucket), for reads while the disk is full."""
        return [(build, b) for m, build, b in self.held.closed if m == model]
