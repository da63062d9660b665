"""`GET /metrics`: the Recorder's counters, the replicas as /proc sees them, builds by status."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from modelport.registry.rows import BuildCount

from . import procstat
from .metrics import PROM_BOUNDS, Recorder

__all__ = ["exposition"]

_LE = [repr(float(b)) for b in PROM_BOUNDS] + ["+Inf"]


class Snapshot:
    """A prometheus-client collector over what was read at scrape time (no registry needed)."""

    def __init__(self, recorder: Recorder, groups: Iterable, builds: list[BuildCount]) -> None:
        self.recorder, self.groups, self.builds = recorder, list(groups), builds

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._replicas()
        built = GaugeMetricFamily(
            "modelport_builds", "Builds by status.", labels=["model", "status"]
        )
        for row in self.builds:
            built.add_metric([row.model, row.status], row.n)
        yield built
        dropped = CounterMetricFamily(
            "modelport_monitor_dropped",
            "Tracked metrics and captures dropped: the in-memory buffer was full before a write.",
            labels=["kind"],
        )
        for kind, n in self.recorder.dropped.items():
            dropped.add_metric([kind], n)
        yield dropped

    def _requests(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "modelport_requests",
            "Predictions answered, by status.",
            labels=["model", "build", "code"],
        )
        latency = HistogramMetricFamily(
            "modelport_request_duration_seconds",
            "Time from the request's headers to the answer.",
            labels=["model", "build"],
        )
        sent = CounterMetricFamily(
            "modelport_request_bytes",
            "Bytes of prediction request bodies.",
            labels=["model", "build"],
        )
        answered = CounterMetricFamily(
            "modelport_response_bytes",
            "Bytes of prediction response bodies.",
            labels=["model", "build"],
        )
        for (model, build), st in list(self.recorder.stats.items()):
            labels = [model, "" if build is None else str(build)]
            for code, n in sorted(st.codes.items()):
                requests.add_metric([*labels, str(code)], n)
            running, cumulative = 0, []
            for le, n in zip(_LE, st.buckets, strict=True):
                running += n
                cumulative.append((le, running))
            latency.add_metric(labels, cumulative, st.seconds)
            sent.add_metric(labels, st.request_bytes)
            answered.add_metric(labels, st.response_bytes)
        for code, n in sorted(self.recorder.unknown.items()):
            requests.add_metric(["", "", str(code)], n)  # names that are no model
        yield from (requests, latency, sent, answered)

    def _replicas(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "modelport_in_flight",
            "Predictions being handled by the build's replicas.",
            labels=["model", "build"],
        )
        queued = GaugeMetricFamily(
            "modelport_queue_depth",
            "Predictions waiting for a free replica.",
            labels=["model", "build"],
        )
        states = GaugeMetricFamily(
            "modelport_replicas", "Replicas by state.", labels=["model", "build", "state"]
        )
        restarts = CounterMetricFamily(
            "modelport_replica_restarts",
            "Restarts of a replica slot.",
            labels=["model", "build", "replica"],
        )
        cpu = CounterMetricFamily(
            "modelport_replica_cpu_seconds",
            "User and system CPU time of the replica's current process.",
            labels=["model", "build", "replica"],
        )
        rss = GaugeMetricFamily(
            "modelport_replica_resident_memory_bytes",
            "Resident memory of the replica's process.",
            labels=["model", "build", "replica"],
        )
        flight: dict[tuple, int] = defaultdict(int)
        queue: dict[tuple, int] = defaultdict(int)
        by_state: dict[tuple, int] = defaultdict(int)
        seen: set[str] = set()
        for group in self.groups:
            key = (group.spec.model, str(group.spec.build))
            queue[key] += group.balancer.queued
            flight[key] += 0
            for r in group.replicas:
                flight[key] += r.in_flight
                by_state[(*key, r.state)] += 1
                if r.id in seen:
                    continue
                seen.add(r.id)
                labels = [*key, r.id]
                restarts.add_metric(labels, r.restarts)
                if r.pid is not None and r.state not in ("exited", "crashed"):
                    seconds = procstat.cpu_seconds(r.pid)
                    if seconds is not None:
                        cpu.add_metric(labels, seconds)
                    resident = procstat.resident_bytes(r.pid)
                    if resident is not None:
                        rss.add_metric(labels, resident)
        for key, n in flight.items():
            in_flight.add_metric(list(key), n)
            queued.add_metric(list(key), queue[key])
        for key, n in by_state.items():
            states.add_metric(list(key), n)
        yield from (in_flight, queued, states, restarts, cpu, rss)


def exposition(
    recorder: Recorder, groups: Iterable, builds: list[BuildCount], accept: str | None
) -> tuple[bytes, str]:
    """(body, content type): Prometheus text, or OpenMetrics when the scraper asks for it."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(Snapshot(recorder, groups, builds)), content_type
