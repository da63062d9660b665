"""Monitoring series, pure: 10 s buckets with a log-scale latency histogram, merged, percentiles."""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec

from modelport.registry.rows import MetricPointRow

__all__ = [
    "RESOLUTIONS",
    "SLOT_S",
    "Bucket",
    "Point",
    "Retention",
    "decode_hist",
    "encode_hist",
    "latency_index",
    "percentile_ms",
    "rebucket",
]

SLOT_S = 10  # the finest resolution, seconds
# Latency histogram: bucket i holds [MIN_S·2^(i/8), MIN_S·2^((i+1)/8)): ±4.5% around its middle.
MIN_S = 1e-5
PER_OCTAVE = 8
MAX_INDEX = 255  # 10 µs · 2^(255/8) ≈ 41 min; anything longer lands in the last bucket


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    """How long each resolution is kept: 10 s rows for an hour, 1 min rows for a day, 10 min rows
    for 14 days. Tracked metrics and captures are kept ``keep_s`` too."""

    fine_s: int = 3600  # 10 s rows older than this become 1 min rows
    minute_s: int = 86_400  # 1 min rows older than this become 10 min rows
    keep_s: int = 14 * 86_400  # anything older is deleted


RESOLUTIONS = (SLOT_S, 60, 600)


def latency_index(seconds: float) -> int:
    if seconds <= MIN_S:
        return 0
    i = int(math.log2(seconds / MIN_S) * PER_OCTAVE)
    return min(MAX_INDEX, i)


def index_ms(i: int) -> float:
    """The geometric middle of bucket ``i``, in milliseconds."""
    return MIN_S * 2 ** ((i + 0.5) / PER_OCTAVE) * 1000.0


class Bucket:
    """One (model, build) over one slot: counters, a sparse latency histogram, resources."""

    __slots__ = (
        "cpu_s",
        "errors",
        "hist",
        "latency_s",
        "memory_bytes",
        "request_bytes",
        "requests",
        "response_bytes",
        "server_errors",
        "t",
    )

    def __init__(self, t: int) -> None:
        self.t = t
        self.requests = self.errors = self.server_errors = 0
        self.request_bytes = self.response_bytes = 0
        self.latency_s = 0.0
        self.hist: dict[int, int] = {}
        self.cpu_s = 0.0
        self.memory_bytes = 0

    def add(self, status: int, seconds: float, request_bytes: int, response_bytes: int) -> None:
        self.requests += 1
        if status >= 400:
            self.errors += 1
            if status >= 500:
                self.server_errors += 1
        self.latency_s += seconds
        self.request_bytes += request_bytes
        self.response_bytes += response_bytes
        i = latency_index(seconds)
        hist = self.hist
        hist[i] = hist.get(i, 0) + 1

    def merge(self, other: Bucket) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.server_errors += other.server_errors
        self.request_bytes += other.request_bytes
        self.response_bytes += other.response_bytes
        self.latency_s += other.latency_s
        for i, n in other.hist.items():
            self.hist[i] = self.hist.get(i, 0) + n
        self.cpu_s += other.cpu_s
        self.memory_bytes = max(self.memory_bytes, other.memory_bytes)

    def row(self, model_id: int, build: int, res: int) -> MetricPointRow:
        """As the registry keeps it (``hist`` as a small msgpack blob)."""
        return MetricPointRow(
            model_id=model_id,
            build=build,
            res=res,
            t=self.t,
            requests=self.requests,
            errors=self.errors,
            server_errors=self.server_errors,
            latency_s=self.latency_s,
            hist=encode_hist(self.hist),
            request_bytes=self.request_bytes,
            response_bytes=self.response_bytes,
            cpu_s=self.cpu_s,
            memory_bytes=self.memory_bytes,
        )

    @classmethod
    def from_row(cls, row: MetricPointRow) -> Bucket:
        b = cls(row.t)
        b.requests, b.errors, b.server_errors = row.requests, row.errors, row.server_errors
        b.latency_s = row.latency_s
        b.hist = decode_hist(row.hist)
        b.request_bytes, b.response_bytes = row.request_bytes, row.response_bytes
        b.cpu_s, b.memory_bytes = row.cpu_s, row.memory_bytes
        return b


_hist_encode = msgspec.msgpack.Encoder().encode
_hist_decode = msgspec.msgpack.Decoder(dict[int, int]).decode


def encode_hist(hist: dict[int, int]) -> bytes:
    return _hist_encode(hist)


def decode_hist(blob: bytes | None) -> dict[int, int]:
    return _hist_decode(blob) if blob else {}


def percentile_ms(hist: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram, in ms (the middle of its bucket); None if empty."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i in sorted(hist):
        seen += hist[i]
        if seen >= rank:
            return round(index_ms(i), 3)
    return round(index_ms(max(hist)), 3)  # pragma: no cover - unreachable


class Point(msgspec.Struct):
    """One point of ``GET …/metrics``: a build over ``step_s`` seconds from ``t``."""

    t: str
    build: int
    requests: int
    errors: int  # answers with status >= 400
    server_errors: int  # status >= 500
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    request_bytes: int
    response_bytes: int
    cpu_percent: float  # CPU time of the build's replicas over the step (100 = one core)
    memory_mb: float  # the largest resident memory of the build's replicas together


def rebucket(rows: Iterable[tuple[int, Bucket]], step: int) -> dict[tuple[int, int], Bucket]:
    """(build, bucket) pairs → {(t, build): merged bucket} on a grid of ``step`` seconds."""
    out: dict[tuple[int, int], Bucket] = {}
    for build, b in rows:
        t = b.t - b.t % step
        merged = out.get((t, build))
        if merged is None:
            merged = out[(t, build)] = Bucket(t)
        merged.merge(b)
    return out


def to_point(t_iso: str, build: int, b: Bucket, step: int) -> Point:
    hist = b.hist
    return Point(
        t=t_iso,
        build=build,
        requests=b.requests,
        errors=b.errors,
        server_errors=b.server_errors,
        p50_ms=percentile_ms(hist, 0.50),
        p95_ms=percentile_ms(hist, 0.95),
        p99_ms=percentile_ms(hist, 0.99),
        mean_ms=round(b.latency_s / b.requests * 1000, 3) if b.requests else None,
        request_bytes=b.request_bytes,
        response_bytes=b.response_bytes,
        cpu_percent=round(b.cpu_s / step * 100, 2),
        memory_mb=round(b.memory_bytes / 2**20, 1),
    )
