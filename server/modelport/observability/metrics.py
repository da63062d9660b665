"""The hot path's side of monitoring: `Recorder.on_result` counts each prediction in memory."""

from __future__ import annotations

import logging
import random
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING

from .series import SLOT_S, Bucket

if TYPE_CHECKING:
    from modelport.gateway.predict import Outcome

__all__ = ["PROM_BOUNDS", "Capture", "Recorder", "Stats", "Tracked"]

log = logging.getLogger("modelport.requests")

# Prometheus latency buckets (seconds); +Inf is the last slot of Stats.buckets.
PROM_BOUNDS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Stats:
    """Everything counted for one (model, build) since the server started, and its open bucket."""

    __slots__ = (
        "bucket",
        "buckets",
        "build",
        "codes",
        "model",
        "request_bytes",
        "response_bytes",
        "seconds",
    )

    def __init__(self, model: str, build: int | None) -> None:
        self.model, self.build = model, build
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(PROM_BOUNDS) + 1)
        self.seconds = 0.0
        self.request_bytes = self.response_bytes = 0
        self.bucket: Bucket | None = None  # the open 10 s bucket of the series


class Tracked:
    """What ``track_metric`` recorded for one prediction, waiting to be written."""

    __slots__ = ("at", "build", "metrics")

    def __init__(self, build: int | None, at: float, metrics: dict[str, float]) -> None:
        self.build, self.at, self.metrics = build, at, metrics


class Capture:
    """One sampled request and its answer, cut to the deployment's ``capture_max_bytes``."""

    __slots__ = (
        "at",
        "build",
        "latency_s",
        "model",
        "request",
        "request_id",
        "response",
        "source",
        "status",
        "truncated",
    )

    def __init__(
        self,
        model: str,
        build: int,
        request_id: str,
        at: float,
        status: int,
        latency_s: float,
        request: bytes,
        response: bytes,
        cap: int,
        source: str = "sample",
    ) -> None:
        self.model, self.build, self.request_id, self.at = model, build, request_id, at
        self.source = source  # sample (capture_percent) | shadow (one side of a shadow's pair)
        self.status, self.latency_s = status, latency_s
        self.truncated = len(request) > cap or len(response) > cap
        self.request, self.response = request[:cap], response[:cap]


class Recorder:
    """Counts predictions in memory (a few dict increments per call; no I/O, no await).

    ``known(name)`` says whether a model exists (requests for unknown names are counted apart, so a
    scan of made-up names cannot grow the label set); ``current_build(name)`` attributes the
    requests refused before a build was chosen (401, 403) to the build serving then. The monitor
    takes the closed buckets, tracked metrics and captures from here and writes them in batches.
    """

    def __init__(
        self,
        *,
        known: Callable[[str], bool],
        current_build: Callable[[str], int | None],
        clock: Callable[[], float] = time.time,
        max_tracked: int = 50_000,
        max_captures: int = 1_000,
        max_capture_bytes: int = 64 * 2**20,
    ) -> None:
        self.known, self.current_build, self.clock = known, current_build, clock
        self.stats: dict[tuple[str, int | None], Stats] = {}
        self.unknown: dict[int, int] = {}  # status → count, for names that are no model
        self.closed: list[tuple[str, int, Bucket]] = []  # closed series buckets, not yet written
        self.tracked: dict[tuple[str, str], Tracked] = {}  # (model, request id) → metrics
        self.captures: list[Capture] = []
        self.capture_bytes = 0
        self.max_tracked, self.max_captures = max_tracked, max_captures
        self.max_capture_bytes = max_capture_bytes
        self.dropped = {"tracked": 0, "captures": 0}
        self.debug = log.isEnabledFor(logging.DEBUG)  # fixed at start: no cost when off
        self._random = random.random

    def on_result(self, o: Outcome) -> None:
        """The gateway's hook, after every prediction (see ``gateway.predict.Outcome``)."""
        model, build, status, seconds = o.model, o.build, o.status, o.seconds
        if build is None:  # refused before a build was chosen (401, 403): the build serving now
            build = self.current_build(model)
        st = self.stats.get((model, build))
        if st is None:
            st = self._stats(model, build)
            if st is None:
                self.unknown[status] = self.unknown.get(status, 0) + 1
                return
        codes = st.codes
        codes[status] = codes.get(status, 0) + 1
        st.buckets[bisect_left(PROM_BOUNDS, seconds)] += 1
        st.seconds += seconds
        body, out = o.body, o.out
        nin, nout = len(body), len(out)
        st.request_bytes += nin
        st.response_bytes += nout
        if st.build is not None:
            now = self.clock()
            b = st.bucket
            if b is None or now - b.t >= SLOT_S:
                b = self._roll(st, int(now) - int(now) % SLOT_S)
            b.add(status, seconds, nin, nout)
            request_id, group = o.request_id, o.group
            if o.metrics:
                self._track(model, st.build, request_id, now, o.metrics)
            if (
                group is not None
                and group.spec.capture_percent
                and (self._random() * 100 < group.spec.capture_percent)
            ):
                self._capture(
                    group.spec, model, st.build, request_id, now, status, seconds, body, out
                )
        if self.debug:
            ms = round(seconds * 1000, 3)
            rid = o.replica.id if o.replica is not None else None
            log.debug(
                "%s model=%s build=%s replica=%s status=%d %.3fms",
                o.request_id,
                model,
                st.build,
                rid,
                status,
                ms,
                extra={
                    "request_id": o.request_id,
                    "model": model,
                    "build": st.build,
                    "replica": rid,
                    "status": status,
                    "latency_ms": ms,
                },
            )

    def on_shadow(
        self,
        model: str,
        build: int,
        candidate: int,
        request_id: str,
        body: bytes,
        status: int,
        out: bytes,
        seconds: float,
        candidate_status: int,
        candidate_out: bytes,
        candidate_seconds: float,
        cap: int,
    ) -> None:
        """A shadow's pair (serving.traffic.OnShadow): the request with the primary's answer
        and with the candidate's, two captures of source shadow under the same request id."""
        size = 2 * min(len(body), cap) + min(len(out), cap) + min(len(candidate_out), cap)
        if (
            len(self.captures) + 2 > self.max_captures
            or self.capture_bytes + size > self.max_capture_bytes
        ):
            self.dropped["captures"] += 1
            return
        now = self.clock()
        self.captures.append(
            Capture(model, build, request_id, now, status, seconds, body, out, cap, "shadow")
        )
        self.captures.append(
            Capture(
                model,
                candidate,
                request_id,
                now,
                candidate_status,
                candidate_seconds,
                body,
                candidate_out,
                cap,
                "shadow",
            )
        )
        self.capture_bytes += size

    # -- the rarer paths --------------------------------------------------------------------------

    def _stats(self, model: str, build: int | None) -> Stats | None:
        if not self.known(model):
            return None
        st = self.stats[(model, build)] = Stats(model, build)
        return st

    def _roll(self, st: Stats, t: int) -> Bucket:
        bucket = st.bucket
        if bucket is not None and bucket.t != t:
            assert st.build is not None  # only a build's stats have buckets
            self.closed.append((st.model, st.build, bucket))
        if bucket is None or bucket.t != t:
            bucket = st.bucket = Bucket(t)
        return bucket

    def _track(self, model: str, build: int, request_id: str, now: float, metrics: dict) -> None:
        key = (model, request_id)
        entry = self.tracked.get(key)
        if entry is not None:
            entry.metrics.update(metrics)
        elif len(self.tracked) < self.max_tracked:
            self.tracked[key] = Tracked(build, now, dict(metrics))
        else:
            self.dropped["tracked"] += 1

    def _capture(
        self,
        spec,
        model: str,
        build: int,
        request_id: str,
        now: float,
        status: int,
        seconds: float,
        body: bytes,
        out: bytes,
    ) -> None:
        cap = spec.capture_max_bytes
        size = min(len(body), cap) + min(len(out), cap)
        if (
            len(self.captures) >= self.max_captures
            or self.capture_bytes + size > self.max_capture_bytes
        ):
            self.dropped["captures"] += 1
            return
        self.captures.append(
            Capture(model, build, request_id, now, status, seconds, body, out, cap)
        )
        self.capture_bytes += size

    # -- what the monitor takes -------------------------------------------------------------------

    def close_buckets(self, now: float) -> list[tuple[str, int, Bucket]]:
        """Every bucket whose 10 s are over, taken out (the open ones stay)."""
        for st in self.stats.values():
            b = st.bucket
            if b is not None and b.t + SLOT_S <= now and st.build is not None:
                self.closed.append((st.model, st.build, b))
                st.bucket = None
        closed, self.closed = self.closed, []
        return closed

    def open_buckets(self, model: str) -> list[tuple[int, Bucket]]:
        """The buckets of ``model`` not yet written (closed or still open), for a live series."""
        found = [(build, b) for m, build, b in self.closed if m == model]
        found += [
            (st.build, st.bucket)
            for (m, _), st in self.stats.items()
            if m == model and st.bucket is not None and st.build is not None
        ]
        return found

    def add_resources(
        self, model: str, build: int, t: int, cpu_s: float, memory_bytes: int
    ) -> None:
        """CPU seconds used and resident memory of a build's replicas over the slot at ``t``."""
        st = self.stats.get((model, build)) or self.stats.setdefault(
            (model, build), Stats(model, build)
        )
        b = st.bucket
        if b is None or b.t < t:
            b = self._roll(st, t)
        elif b.t > t:  # a slot already closed: written (and merged) with the others
            b = Bucket(t)
            self.closed.append((model, build, b))
        b.cpu_s += cpu_s
        b.memory_bytes = max(b.memory_bytes, memory_bytes)

    def forget(self, model: str) -> None:
        """A deleted model: its counters leave /metrics, and nothing of it is written later."""
        self.stats = {k: st for k, st in self.stats.items() if k[0] != model}
        self.closed = [c for c in self.closed if c[0] != model]
        self.tracked = {k: t for k, t in self.tracked.items() if k[0] != model}
        kept = [c for c in self.captures if c.model != model]
        if len(kept) != len(self.captures):
            self.captures = kept
            self.capture_bytes = sum(len(c.request) + len(c.response) for c in kept)

    def take_tracked(self) -> dict[tuple[str, str], Tracked]:
        taken, self.tracked = self.tracked, {}
        return taken

    def take_captures(self) -> list[Capture]:
        taken, self.captures, self.capture_bytes = self.captures, [], 0
        return taken
