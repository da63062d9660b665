"""The monitor: writes what the Recorder counted in batches; downsamples, prunes, answers reads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from modelport.errors import disk_full
from modelport.registry import builds as build_rows
from modelport.registry import captures as capture_rows
from modelport.registry import metric_points as point_rows
from modelport.registry import replays as report_rows
from modelport.registry import tracked as tracked_rows
from modelport.registry.db import Database
from modelport.registry.rows import BuildCount, CaptureRow, MetricPointRow, TrackedRow

from . import procstat
from .backlog import Backlog, Batch
from .metrics import Recorder
from .series import RESOLUTIONS, SLOT_S, Bucket, Retention, rebucket

__all__ = ["Monitor"]

log = logging.getLogger("modelport.monitor")

MAX_POINTS = 2000  # a series asks for a coarser step rather than return more grid cells


def _merge_rows(old: MetricPointRow, new: MetricPointRow) -> MetricPointRow:
    b = Bucket.from_row(old)
    b.merge(Bucket.from_row(new))
    return b.row(old.model_id, old.build, old.res)


class Monitor:
    """Owns the Recorder (the gateway's ``on_result``); ``run()`` flushes every 10 s, on the slot
    boundary, through the registry's single writer. ``clock`` is injectable (unix seconds).
    While the disk is full, what a flush could not write is held (``backlog``) and written
    first by the next flush that can."""

    def __init__(
        self,
        db: Database,
        supervisor,
        routes,
        *,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
        max_tracked_rows: int = 1_000_000,
        captures_per_build: int = 1_000,
        prune_every_s: float = 600.0,
        capture_keep_s: float = 14 * 86_400.0,
    ) -> None:
        self.db, self.supervisor, self.routes = db, supervisor, routes
        self.retention = retention or Retention()
        self.clock = clock
        self.max_tracked_rows, self.captures_per_build = max_tracked_rows, captures_per_build
        self.prune_every_s = prune_every_s
        # captures and replay reports may hold personal data: kept this long
        # (capture_retention_days)
        self.capture_keep_s = capture_keep_s
        self.recorder = Recorder(
            known=routes.__contains__, current_build=self._serving_build, clock=clock
        )
        self.on_result = self.recorder.on_result
        self._lock = asyncio.Lock()  # a flush and a series read never see a batch twice
        self._cpu: dict[int, float] = {}  # pid → CPU seconds at the last sample
        self._pruned_at = float("-inf")
        self.backlog = Backlog()
        self._full = False  # the last write was refused by a full disk

    def _serving_build(self, model: str) -> int | None:
        group = self.routes.group(model)
        return group.spec.build if group is not None else None

    # -- the background job -----------------------------------------------------------------------

    async def run(self) -> None:
        """Flush just after every 10 s boundary, until cancelled."""
        while True:
            now = self.clock()
            await asyncio.sleep(SLOT_S - now % SLOT_S + 0.2)
            try:
                await self.flush()
            except Exception:
                log.exception("monitoring flush failed")

    async def flush(self, *, final: bool = False) -> None:
        """Sample the replicas' CPU and memory into the slot that just ended, write the closed
        buckets, tracked metrics and captures in one transaction, then downsample and prune.
        ``final`` (at shutdown) writes the open buckets too."""
        now = self.clock()
        if not final:
            self.sample_resources(now)
        async with self._lock:
            closed = self.recorder.close_buckets(now + SLOT_S if final else now)
            written = await self._write_or_hold(
                Batch(closed, self.recorder.take_tracked(), self.recorder.take_captures())
            )
        if not written:  # downsampling and pruning write too: they wait for room
            if final:
                log.warning(
                    "monitoring: %d points held while the disk is full are lost at shutdown",
                    len(self.backlog),
                )
            return
        await self.compact(now)
        if now - self._pruned_at >= self.prune_every_s:
            await self.prune(now)
            self._pruned_at = now

    async def flush_pending(self) -> None:
        """Write tracked metrics and captures now (before a query of them)."""
        if not self.recorder.tracked and not self.recorder.captures:
            return
        async with self._lock:
            await self._write_or_hold(
                Batch([], self.recorder.take_tracked(), self.recorder.take_captures())
            )

    async def _write_or_hold(self, batch: Batch) -> bool:
        """Write what is held and ``batch``; a full disk keeps them all in the backlog (False)."""
        batch = self.backlog.with_held(batch)
        try:
            await self._write(batch.closed, batch.tracked, batch.captures)
        except Exception as exc:
            if not disk_full(exc):
                raise
            self.backlog.hold(batch)
            if not self._full:
                log.warning(
                    "monitoring: the registry's disk is full (%s); what is counted is "
                    "held in memory until there is room",
                    exc,
                )
            self._full = True
            return False
        if self._full:
            log.info(
                "monitoring: the disk has room again; wrote %d points held while it was full%s",
                len(batch),
                f" ({self.backlog.dropped} dropped past the bound)" if self.backlog.dropped else "",
            )
            self._full, self.backlog.dropped = False, 0
        return True

    async def _write(self, closed, tracked, captures) -> None:
        if not closed and not tracked and not captures:
            return
        async with self.db.write() as conn:
            ids = await point_rows.model_ids(conn)
            for model, build, b in closed:
                if model in ids:
                    await point_rows.upsert(conn, b.row(ids[model], build, SLOT_S), _merge_rows)
            await tracked_rows.merge_many(
                conn,
                [
                    (ids[model], rid, e.build, e.at, e.metrics)
                    for (model, rid), e in tracked.items()
                    if model in ids
                ],
            )
            await capture_rows.add_many(
                conn,
                [
                    (
                        ids[c.model],
                        c.build,
                        c.request_id,
                        c.at,
                        c.status,
                        c.latency_s,
                        c.request,
                        c.response,
                        c.truncated,
                        c.source,
                    )
                    for c in captures
                    if c.model in ids
                ],
            )

    def sample_resources(self, now: float) -> None:
        """CPU seconds each build's replicas used since the last sample, and their resident memory
        together, into the slot that just ended. /proc is in memory: no disk wait."""
        t = int(now - 1) - int(now - 1) % SLOT_S
        seen: dict[int, float] = {}
        per_build: dict[tuple[str, int], list] = {}
        for group in self.groups():
            acc = per_build.setdefault((group.spec.model, group.spec.build), [0.0, 0])
            for r in group.replicas:
                if r.pid is None or r.state in ("exited", "crashed"):
                    continue
                cpu = procstat.cpu_seconds(r.pid)
                if cpu is None:
                    continue
                seen[r.pid] = cpu
                acc[0] += max(0.0, cpu - self._cpu.get(r.pid, 0.0))
                acc[1] += procstat.resident_bytes(r.pid) or 0
        self._cpu = seen
        for (model, build), (cpu_s, rss) in per_build.items():
            self.recorder.add_resources(model, build, t, cpu_s, rss)

    def groups(self) -> list:
        """Every replica group not yet stopped (the serving ones and those starting or draining)."""
        groups = {id(g): g for g in self.supervisor.groups}
        groups.update({id(g): g for g in self.supervisor.active.values()})
        return list(groups.values())

    # -- downsampling and retention ---------------------------------------------------------------

    async def compact(self, now: float) -> None:
        """10 s rows past an hour become 1 min rows; 1 min rows past a day become 10 min rows."""
        r = self.retention
        for src, dst, age in (
            (RESOLUTIONS[0], RESOLUTIONS[1], r.fine_s),
            (RESOLUTIONS[1], RESOLUTIONS[2], r.minute_s),
        ):
            before = int(now - age) - int(now - age) % dst
            async with self.db.write() as conn:
                rows = await point_rows.older(conn, src, before)
                if not rows:
                    continue
                merged: dict[tuple[int, int, int], Bucket] = {}
                for row in rows:
                    t = row.t - row.t % dst
                    b = merged.get((row.model_id, row.build, t))
                    if b is None:
                        b = merged[(row.model_id, row.build, t)] = Bucket(t)
                    b.merge(Bucket.from_row(row))
                for (model_id, build, _), b in merged.items():
                    await point_rows.upsert(conn, b.row(model_id, build, dst), _merge_rows)
                await point_rows.delete_older(conn, src, before)

    async def prune(self, now: float) -> None:
        """Anything past ``keep_s`` goes, captures and replay reports past ``capture_keep_s``;
        tracked metrics and captures are bounded in count too."""
        before = now - self.retention.keep_s
        async with self.db.write() as conn:
            await point_rows.delete_older(conn, None, int(before))
            await tracked_rows.prune(conn, before, self.max_tracked_rows)
            await capture_rows.prune(conn, now - self.capture_keep_s, self.captures_per_build)
            await report_rows.prune(conn, now - self.capture_keep_s)

    # -- queries ----------------------------------------------------------------------------------

    async def build_counts(self) -> list[BuildCount]:
        """Builds per model and status (for /metrics)."""
        return await build_rows.counts(self.db)

    def default_step(self, since: float, now: float) -> int:
        age = now - since - SLOT_S  # a window of "the last hour" is still 10 s points
        r = self.retention
        return (
            RESOLUTIONS[0]
            if age <= r.fine_s
            else RESOLUTIONS[1]
            if age <= r.minute_s
            else RESOLUTIONS[2]
        )

    async def series(
        self, model_id: int, model: str, since: float, until: float, step: int | None
    ) -> tuple[int, list[tuple[int, int, Bucket]]]:
        """(step used, [(t, build, bucket)]) over [since, until), written and live data merged.
        The step is at least the coarsest resolution found in the window, so that a point always
        covers ``step`` seconds."""
        lo, hi = int(since) - int(since) % SLOT_S, int(until)
        async with self._lock:
            rows = await point_rows.in_range(self.db, model_id, lo, hi)
            live = [
                (build, b)
                for build, b in [
                    *self.recorder.open_buckets(model),
                    *self.backlog.buckets_of(model),
                ]
                if lo <= b.t < hi
            ]
        want = step or self.default_step(since, self.clock())
        want = max(want, max((r.res for r in rows), default=SLOT_S))
        span = max(hi - lo, 1)
        if span / want > MAX_POINTS:
            want = -(-span // MAX_POINTS)
        want = -(-want // SLOT_S) * SLOT_S  # a multiple of 10 s
        grid = rebucket([(r.build, Bucket.from_row(r)) for r in rows] + live, want)
        return want, sorted(
            ((t, build, b) for (t, build), b in grid.items()), key=lambda x: (x[0], x[1])
        )

    async def prediction(self, model_id: int, request_id: str) -> TrackedRow | None:
        await self.flush_pending()
        return await tracked_rows.of_request(self.db, model_id, request_id)

    async def add_metrics(
        self, model_id: int, request_id: str, metrics: dict[str, float]
    ) -> TrackedRow:
        """Delayed metrics (ground truth) for a prediction, merged into what it recorded."""
        await self.flush_pending()
        async with self.db.write() as conn:
            await tracked_rows.merge_many(
                conn, [(model_id, request_id, None, self.clock(), metrics)]
            )
        row = await tracked_rows.of_request(self.db, model_id, request_id)
        if row is None:  # merge_many inserts the row when there was none
            raise LookupError(f"no metrics of request {request_id!r} after writing them")
        return row

    async def tracked(self, model_id: int, **query) -> list[TrackedRow]:
        await self.flush_pending()
        return await tracked_rows.in_range(self.db, model_id, **query)

    async def captures(self, model_id: int, build: int, **query) -> list[CaptureRow]:
        await self.flush_pending()
        return await capture_rows.of_build(self.db, model_id, build, **query)
