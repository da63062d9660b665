"""Replays: a window of one build's captured requests sent to another build, answers compared.

A run sends one request at a time, at most ``rate`` a second, and waits while the target group
has callers queued, so that live traffic always goes first. The target is the group of that
build already serving beside the primary (a candidate) or, when there is none, a replica group
of it started for the run (one replica, not routed) and stopped after. A shadow's recorded pairs
(``source: "shadow"``) are compared as they are, nothing sent: the to-build's captures of the
same request ids.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import msgspec

from modelport.builder.compat import compare as compare_schemas
from modelport.errors import (
    BuildNotReady,
    ModelportError,
    RequestInvalid,
    SchemaBreaking,
    error_json,
)
from modelport.observability.monitor import Monitor
from modelport.registry import builds as build_rows
from modelport.registry import captures as capture_rows
from modelport.registry import deployments as deployment_rows
from modelport.registry import replays as report_rows
from modelport.registry.db import Database
from modelport.registry.records import DEPLOYMENT_DEFAULTS, ReplayDiff
from modelport.registry.rows import CaptureRow, ModelRow, ReplayReportRow
from modelport.replay.compare import compare
from modelport.runtime.protocol import Result
from modelport.serving.deployer import Deployer
from modelport.serving.supervisor import ReplicaGroup, Supervisor

log = logging.getLogger("modelport.replay")

Source = Literal["capture", "shadow"]

MAX_DIFFS = 100  # the first diffs a report keeps (over all its requests)
DEFAULT_MAX_REQUESTS = 1_000
RATE_PER_S = 50.0  # requests a run sends per second, at most


class Replays:
    """Starts runs (``start``), each a background task writing its report when done."""

    def __init__(
        self,
        db: Database,
        supervisor: Supervisor,
        deployer: Deployer,
        monitor: Monitor,
        *,
        node: str = "",
        rate: float = RATE_PER_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db, self.supervisor, self.deployer, self.monitor = db, supervisor, deployer, monitor
        self.node = node  # this server's name among those sharing the registry
        self.rate, self.clock = rate, clock
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        """The reports this server left running when it stopped are failed, saying so."""
        await report_rows.interrupted(
            self.db, self.node, "the server stopped while the replay ran", self.clock()
        )

    async def start(
        self,
        model: ModelRow,
        *,
        from_build: int,
        to_build: int,
        since: float,
        until: float,
        max_requests: int,
        rtol: float,
        atol: float,
        source: Source,
        actor: str,
    ) -> ReplayReportRow:
        """Check the request, record a running report and start the run; the report row."""
        old = await build_rows.row(self.db, model.id, from_build, model.name)
        new = await build_rows.row(self.db, model.id, to_build, model.name)
        if new.status != "built":
            raise BuildNotReady(f"Build #{to_build} is {new.status}, not built.")
        verdict = compare_schemas(old.input_schema, new.input_schema)
        if verdict.breaking:
            raise SchemaBreaking(
                f"Build #{to_build}'s input schema is not compatible with build "
                f"#{from_build}'s: {verdict.summary()}; its captured requests cannot be "
                "replayed on it."
            )
        if until <= since:
            raise RequestInvalid("`until` must be after `since`.", field="until")
        await self.monitor.flush_pending()
        if source == "shadow":
            if not await capture_rows.shadow_pairs(
                self.db, model.id, from_build, to_build, since=since, until=until, limit=1
            ):
                raise RequestInvalid(
                    f"No request of build #{from_build} was shadowed on build #{to_build} in "
                    f"the window: add #{to_build} as a shadow (deploy --shadow), or widen "
                    "`since`.",
                    field="since",
                )
        elif not await capture_rows.in_window(self.db, model.id, from_build, since, until, 1):
            raise RequestInvalid(
                f"Build #{from_build} has no captured requests in the window: deploy it with "
                "capture_percent above 0 (CLI --capture-percent), or widen `since`.",
                field="since",
            )
        report = await report_rows.create(
            self.db,
            model_id=model.id,
            from_build=from_build,
            to_build=to_build,
            source=source,
            since=since,
            until=until,
            max_requests=max_requests,
            rtol=rtol,
            atol=atol,
            created_by=actor,
            at=self.clock(),
            node=self.node,
        )
        self._spawn(self._run(model, report))
        return report

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the run ---------------------------------------------------------------------------------

    async def _run(self, model: ModelRow, report: ReplayReportRow) -> None:
        try:
            result = await self._replay(model, report)
        except asyncio.CancelledError:
            await self._fail(report, "the server stopped while the replay ran")
            raise
        except Exception as exc:
            if not isinstance(exc, ModelportError | OSError):
                log.exception("replay %s of %s failed", report.id, model.name)
            await self._fail(report, str(exc) or repr(exc))
            return
        diffs = result.pop("diffs")
        await report_rows.finish(
            self.db, report.id, diffs, status="done", finished_at=self.clock(), **result
        )

    async def _fail(self, report: ReplayReportRow, why: str) -> None:
        try:
            await report_rows.finish(
                self.db, report.id, [], status="failed", error=why, finished_at=self.clock()
            )
        except Exception:
            log.exception("could not record that replay %s failed", report.id)

    async def _replay(self, model: ModelRow, report: ReplayReportRow) -> dict[str, Any]:
        tally = _Tally(rtol=report.rtol, atol=report.atol, cap=await self._cap(model))
        if report.source == "shadow":
            await self._pairs(model, report, tally)
            return tally.result()
        captured = await capture_rows.in_window(
            self.db, model.id, report.from_build, report.since, report.until, report.max_requests
        )
        await self._send(model, report, captured, tally)
        return tally.result()

    async def _cap(self, model: ModelRow) -> int:
        """The capture's size bound: each value a report keeps is cut to it."""
        row = await deployment_rows.current(self.db, model.id) or await deployment_rows.latest(
            self.db, model.id
        )
        return row.capture_max_bytes if row is not None else DEPLOYMENT_DEFAULTS.capture_max_bytes

    async def _pairs(self, model: ModelRow, report: ReplayReportRow, tally: _Tally) -> None:
        """A shadow's recorded pairs (the primary's answer and the candidate's to one request),
        compared as they are."""
        pairs = await capture_rows.shadow_pairs(
            self.db,
            model.id,
            report.from_build,
            report.to_build,
            since=report.since,
            until=report.until,
            limit=report.max_requests,
        )
        for p in pairs:
            if p.old.truncated or p.new.truncated:  # an answer was cut: no comparison
                tally.skipped += 1
                continue
            tally.add(p.old, p.new.status, _decoded(p.new.response), p.new.latency_s * 1000)

    async def _send(
        self,
        model: ModelRow,
        report: ReplayReportRow,
        captured: list[CaptureRow],
        tally: _Tally,
    ) -> None:
        group, started = await self._target(model, report)
        try:
            gap = 1.0 / self.rate if self.rate > 0 else 0.0
            next_at = time.monotonic()
            for n, c in enumerate(captured):
                if c.truncated:  # the request was cut: it cannot be sent as it was
                    tally.skipped += 1
                    continue
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await _behind_live(group)
                next_at = time.monotonic() + gap
                body = c.request
                kind = "json" if _is_json(body) else "msgpack"
                began = time.perf_counter()
                try:
                    _, msg = await group.call(body, kind, "json", f"replay-{report.id}-{n}")
                    if isinstance(msg, Result):
                        status, out = 200, msg.body
                    else:
                        status = msg.status
                        out = error_json(msg.status, msg.code, msg.message, msg.field)
                except ModelportError as exc:
                    status, out = exc.status, error_json(exc.status, exc.code, exc.message)
                took_ms = (time.perf_counter() - began) * 1000
                tally.add(c, status, _decoded(out), took_ms)
        finally:
            if started:
                await self.supervisor.retire(group, drain_timeout=10.0)

    async def _target(self, model: ModelRow, report: ReplayReportRow) -> tuple[ReplicaGroup, bool]:
        """(the group to send to, whether the run started it)."""
        build = report.to_build
        candidate = self.supervisor.candidate(model.name)  # serving beside the primary
        if candidate is not None and candidate.spec.build == build and candidate.state == "running":
            return candidate, False
        row = await deployment_rows.current(self.db, model.id) or await deployment_rows.latest(
            self.db, model.id
        )
        if row is None:
            raise RequestInvalid(f"Model '{model.name}' has no deployment to take settings from.")
        spec = await self.deployer.spec_for(
            model.name, row, await build_rows.row(self.db, model.id, build, model.name)
        )
        spec = msgspec.structs.replace(
            spec, replicas=1, deployment_id=f"replay-{report.id}", capture_percent=0.0
        )
        return await self.supervisor.start_group(spec), True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Tally:
    """The counts of one run, and its first diffs (each value cut to the capture's bound)."""

    def __init__(self, *, rtol: float, atol: float, cap: int) -> None:
        self.rtol, self.atol, self.cap = rtol, atol, cap
        self.replayed = self.equal = self.different = self.skipped = 0
        self.errors_from = self.errors_to = 0
        self.ms_from: list[float] = []
        self.ms_to: list[float] = []
        self.diffs: list[ReplayDiff] = []

    def add(self, captured: CaptureRow, status: int, new: Any, ms_to: float) -> None:
        """One captured answer (``captured``) against its replayed one (``status``, ``new``,
        ``ms_to``: decoded, and how long it took)."""
        self.replayed += 1
        old_status = captured.status
        self.errors_from += old_status != 200
        self.errors_to += status != 200
        self.ms_from.append(captured.latency_s * 1000)
        self.ms_to.append(ms_to)
        old = _decoded(captured.response)
        room = MAX_DIFFS - len(self.diffs)
        found = compare(old, new, rtol=self.rtol, atol=self.atol, limit=max(room, 1))
        if old_status != status and not found:
            found = compare({"status": old_status}, {"status": status})
        if not found:
            self.equal += 1
            return
        self.different += 1
        for d in found[:room]:
            self.diffs.append(
                ReplayDiff(captured.request_id, d.path, self._cut(d.old), self._cut(d.new), d.kind)
            )

    def _cut(self, value: Any) -> Any:
        text = msgspec.json.encode(value)
        if len(text) <= self.cap:
            return value
        return text[: self.cap].decode("utf-8", "ignore") + "…"

    def result(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed,
            "equal": self.equal,
            "different": self.different,
            "skipped": self.skipped,
            "errors_from": self.errors_from,
            "errors_to": self.errors_to,
            "p50_ms_from": _p50(self.ms_from),
            "p50_ms_to": _p50(self.ms_to),
            "diffs": self.diffs,
        }


async def _behind_live(group: ReplicaGroup, poll_s: float = 0.01, most_s: float = 60.0) -> None:
    """Wait while live callers queue for the group's replicas (they go first), a minute at
    most (then the replay's call queues like any other)."""
    waited = 0.0
    while group.balancer.queued > 0 and waited < most_s:
        await asyncio.sleep(poll_s)
        waited += poll_s


def _p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _is_json(blob: bytes) -> bool:
    try:
        msgspec.json.decode(blob)
        return True
    except (msgspec.DecodeError, RecursionError):
        return False


def _decoded(blob: bytes) -> Any:
    """An answer as a value: JSON, else msgpack (a caller that asked for it), else its text."""
    blob = bytes(blob)
    try:
        return msgspec.json.decode(blob)
    except (msgspec.DecodeError, RecursionError):
        pass
    try:
        return msgspec.msgpack.decode(blob)
    except (msgspec.DecodeError, RecursionError):
        return blob.decode("utf-8", "replace")
