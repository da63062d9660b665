"""Monitoring: Prometheus `/metrics`, a model's series, per-prediction metrics, captures."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime
from typing import Annotated, Any, cast

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from modelport.api.common import Cursor, DbDep, Limit, MonitorDep, PathNumber, parse_time
from modelport.clock import iso
from modelport.errors import PredictionNotFound, RequestInvalid
from modelport.observability.prometheus import exposition
from modelport.observability.series import Point, to_point
from modelport.registry import models as model_rows
from modelport.registry.paging import clamp_limit, decode_cursor, encode_cursor
from modelport.registry.records import Page
from modelport.registry.rows import TrackedRow

Text = Annotated[
    str | None,
    QueryParameter(
        required=False,
        description="An ISO-8601 time (`2026-12-01T10:00:00Z`) or seconds before now "
        "(`3600`, `-3600`, `15m`, `2h`, `7d`)",
    ),
]
MetricName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Series(msgspec.Struct):
    step_s: int
    points: list[Point]


class PredictionMetrics(msgspec.Struct):
    request_id: str
    metrics: dict[str, float]
    build: int | None = None
    at: str | None = None


class MetricsIn(msgspec.Struct, forbid_unknown_fields=True):
    metrics: Annotated[dict[MetricName, float], msgspec.Meta(min_length=1, max_length=100)]


class CapturedRequest(msgspec.Struct):
    """A sampled request and its answer. ``request``/``response`` hold the JSON value when the
    bytes are whole JSON; otherwise they are null and ``*_base64`` holds the (cut) bytes."""

    id: int
    request_id: str
    build: int
    at: str
    status: int
    latency_ms: float
    truncated: bool
    request: Any = None
    response: Any = None
    request_base64: str | None = None
    response_base64: str | None = None


def _iso(unix: float) -> str:
    return iso(datetime.fromtimestamp(unix, UTC))


def _body(blob: bytes, truncated: bool) -> tuple[Any, str | None]:
    if not truncated:
        try:
            msgspec.json.decode(blob, type=msgspec.Raw)  # checked, then sent as it is (any depth)
            return msgspec.Raw(blob), None
        except (msgspec.DecodeError, RecursionError):
            pass
    return None, base64.b64encode(blob).decode()


def _prediction(row: TrackedRow) -> PredictionMetrics:
    # A value that was not finite is stored as null, and shown so (the schema says a number)
    metrics = cast(dict[str, float], row.metrics)
    return PredictionMetrics(row.request_id, metrics, row.build, _iso(row.at))


@get("/metrics", opt={"perm": "any"}, tags=["monitoring"], media_type="text/plain")
async def prometheus(request: Request, monitor: MonitorDep) -> Response:
    """Prometheus text (OpenMetrics when asked): requests, latency, bytes, replicas, builds."""
    body, content_type = exposition(
        monitor.recorder,
        monitor.groups(),
        await monitor.build_counts(),
        request.headers.get("accept"),
    )
    if content_type.startswith("text/"):  # Litestar adds the charset to text/* itself
        content_type = content_type.replace("; charset=utf-8", "")
    return Response(body, media_type=content_type)


class MonitoringController(Controller):
    path = "/api/v1/models/{name:str}"
    tags = ["monitoring"]
    opt = {"perm": "read"}

    @get("/metrics")
    async def series(
        self,
        db: DbDep,
        monitor: MonitorDep,
        name: FromPath[str],
        since: Text = None,
        until: Text = None,
        step: Annotated[int | None, QueryParameter(required=False, ge=1, le=86_400)] = None,
    ) -> Series:
        """Requests, errors, latency p50/p95/p99, bytes, CPU and memory per build and step."""
        model = await model_rows.row(db, name)
        now = monitor.clock()
        start = parse_time(since, now, "since", now - 3600)
        end = parse_time(until, now, "until", now + 1)
        if end <= start:
            raise RequestInvalid("`until` must be after `since`.", field="until")
        used, cells = await monitor.series(model.id, name, start, end, step)
        return Series(used, [to_point(_iso(t), build, b, used) for t, build, b in cells])

    @get("/metrics/tracked")
    async def tracked(
        self,
        db: DbDep,
        monitor: MonitorDep,
        name: FromPath[str],
        metric: Annotated[str | None, QueryParameter(name="name", required=False)] = None,
        since: Text = None,
        until: Text = None,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> Page[PredictionMetrics]:
        """What `track_metric` recorded, prediction by prediction, oldest first (`read_metrics`)."""
        model = await model_rows.row(db, name)
        now = monitor.clock()
        size = clamp_limit(limit)
        after = None
        if cursor:
            key = decode_cursor(cursor)
            try:
                at, _, last = str(key).partition(":")
                after = (float(at), int(last))
            except ValueError:
                raise RequestInvalid(
                    "The cursor is not one this server gave out.", field="cursor"
                ) from None
        rows = await monitor.tracked(
            model.id,
            since=parse_time(since, now, "since", 0.0),
            until=parse_time(until, now, "until", math.inf),
            name=metric,
            after=after,
            limit=size,
        )
        nxt = None
        if len(rows) > size:
            del rows[size:]
            nxt = encode_cursor(f"{rows[-1].at!r}:{rows[-1].id}")
        return Page([_prediction(r) for r in rows], nxt)

    @get("/predictions/{request_id:str}/metrics")
    async def prediction(
        self, db: DbDep, monitor: MonitorDep, name: FromPath[str], request_id: FromPath[str]
    ) -> PredictionMetrics:
        """What `track_metric` recorded for one prediction, with any delayed metrics."""
        model = await model_rows.row(db, name)
        row = await monitor.prediction(model.id, request_id)
        if row is None:
            raise PredictionNotFound(f"No metrics were recorded for request '{request_id}'.")
        return _prediction(row)

    @post("/predictions/{request_id:str}/metrics", opt={"perm": "write"}, status_code=200)
    async def add(
        self,
        db: DbDep,
        monitor: MonitorDep,
        name: FromPath[str],
        request_id: FromPath[str],
        data: JSONBody[MetricsIn],
    ) -> PredictionMetrics:
        """Delayed metrics (ground truth) for a prediction, merged into what it recorded."""
        if len(request_id) > 128:
            raise RequestInvalid("A request id has at most 128 characters.", field="request_id")
        model = await model_rows.row(db, name)
        row = await monitor.add_metrics(model.id, request_id, data.metrics)
        return _prediction(row)

    @get("/builds/{number:int}/captures", opt={"perm": "private"})
    async def captures(
        self,
        db: DbDep,
        monitor: MonitorDep,
        name: FromPath[str],
        number: PathNumber,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> Page[CapturedRequest]:
        """Requests and responses sampled while this build served (newest first)."""
        model = await model_rows.row(db, name)
        size = clamp_limit(limit)
        key = decode_cursor(cursor, int)
        rows = await monitor.captures(model.id, number, after_id=key, limit=size)
        nxt = None
        if len(rows) > size:
            del rows[size:]
            nxt = encode_cursor(rows[-1].id)
        items = []
        for r in rows:
            req, req_b64 = _body(r.request, r.truncated)
            resp, resp_b64 = _body(r.response, r.truncated)
            items.append(
                CapturedRequest(
                    r.id,
                    r.request_id,
                    r.build,
                    _iso(r.at),
                    r.status,
                    round(r.latency_s * 1000, 3),
                    r.truncated,
                    req,
                    resp,
                    req_b64,
                    resp_b64,
                )
            )
        return Page(items, nxt)
