"""Replays: a window of one build's captured requests sent to another build, the diff report.

Captures and reports may hold personal data: deployer and admin only (a viewer gets 403)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from modelport.api.common import (
    Cursor,
    DbDep,
    Limit,
    PathNumber,
    ReplaysDep,
    RowNumber,
    parse_time,
    who,
)
from modelport.clock import iso
from modelport.errors import ReplayNotFound
from modelport.registry import models as model_rows
from modelport.registry import replays as report_rows
from modelport.registry.paging import clamp_limit, decode_cursor, next_cursor
from modelport.registry.records import Page, ReplayDiff
from modelport.registry.rows import ReplayReportRow
from modelport.replay.runner import DEFAULT_MAX_REQUESTS

When = Annotated[
    str,
    msgspec.Meta(
        max_length=64,
        description="An ISO-8601 time (`2026-12-01T10:00:00Z`) or seconds before now "
        "(`3600`, `15m`, `2h`, `7d`)",
    ),
]
Tolerance = Annotated[float, msgspec.Meta(ge=0, le=1e6)]


class ReplayCreate(msgspec.Struct, forbid_unknown_fields=True):
    from_build: RowNumber
    to_build: RowNumber
    since: When
    until: When | None = None
    max_requests: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = DEFAULT_MAX_REQUESTS
    rtol: Tolerance = 1e-9
    atol: Tolerance = 0.0
    source: Annotated[
        Literal["capture", "shadow"],
        msgspec.Meta(
            description="capture: send from_build's captured requests to to_build; shadow: "
            "compare the answers a shadow recorded for the same requests (nothing sent)"
        ),
    ] = "capture"


class ReplayReport(msgspec.Struct):
    id: int
    status: str  # running | done | failed
    source: str
    from_build: int
    to_build: int
    since: str
    until: str
    max_requests: int
    rtol: float
    atol: float
    replayed: int
    equal: int
    different: int
    skipped: int
    errors_from: int
    errors_to: int
    diffs: list[ReplayDiff]
    p50_ms_from: float | None
    p50_ms_to: float | None
    error: str | None
    created_by: str
    created_at: str
    finished_at: str | None


def _iso(unix: float | None) -> str | None:
    return None if unix is None else iso(datetime.fromtimestamp(unix, UTC))


# What a report shows as it is stored; its times are shown in ISO-8601 (created_at: its `at`)
_TIMES = ("since", "until", "created_at", "finished_at")
_AS_STORED = tuple(f for f in ReplayReport.__struct_fields__ if f not in _TIMES)


def shown(row: ReplayReportRow) -> ReplayReport:
    return ReplayReport(
        **{f: getattr(row, f) for f in _AS_STORED},
        since=_iso(row.since) or "",
        until=_iso(row.until) or "",
        created_at=_iso(row.at) or "",
        finished_at=_iso(row.finished_at),
    )


class ReplaysController(Controller):
    path = "/api/v1/models/{name:str}/replays"
    tags = ["replays"]
    opt = {"perm": "private"}  # reports quote captured answers: deployer and admin only

    @post("/", opt={"perm": "write"}, status_code=202)
    async def create(
        self,
        request: Request,
        db: DbDep,
        replays: ReplaysDep,
        name: FromPath[str],
        data: JSONBody[ReplayCreate],
    ) -> ReplayReport:
        """Replay a window of `from_build`'s captured requests on `to_build` (202: it runs in
        the background; read the report until its status is done or failed)."""
        model = await model_rows.row(db, name)
        now = replays.clock()
        row = await replays.start(
            model,
            from_build=data.from_build,
            to_build=data.to_build,
            since=parse_time(data.since, now, "since", now - 3600),
            until=parse_time(data.until, now, "until", now + 1),
            max_requests=data.max_requests,
            rtol=data.rtol,
            atol=data.atol,
            source=data.source,
            actor=who(request).actor,
        )
        return shown(row)

    @get("/")
    async def list_reports(
        self,
        db: DbDep,
        name: FromPath[str],
        build: Annotated[int | None, QueryParameter(required=False, ge=1)] = None,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> Page[ReplayReport]:
        """The model's replay reports, newest first (`?build=N`: those from or to build N)."""
        model = await model_rows.row(db, name)
        key, size = decode_cursor(cursor, int), clamp_limit(limit)
        found = await report_rows.of_model(db, model.id, build=build, after_id=key, limit=size)
        nxt = next_cursor(found, size, "id")
        return Page([shown(r) for r in found[:size]], nxt)

    @get("/{report_id:int}")
    async def read(self, db: DbDep, name: FromPath[str], report_id: PathNumber) -> ReplayReport:
        """One replay report: the counts, the p50 latency of each side, the first diffs."""
        model = await model_rows.row(db, name)
        row = await report_rows.row(db, model.id, report_id)
        if row is None:
            raise ReplayNotFound(f"Model '{name}' has no replay report {report_id}.")
        return shown(row)
