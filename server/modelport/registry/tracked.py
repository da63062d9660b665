"""Per-prediction metrics rows: what `track_metric` recorded for a request id, and ground truth."""

from __future__ import annotations

from typing import Any

import msgspec

from modelport.registry.db import Database, Tx
from modelport.registry.rows import TrackedRow, load, load_all

_encode = msgspec.json.encode

# A row whose metrics (a JSON object, stored as text) has a given name: the one filter spelt
# differently per backend, since JSON functions are not standard SQL.
_HAS_KEY = {
    "sqlite": "EXISTS (SELECT 1 FROM json_each(metrics) WHERE key = ?)",
    "postgresql": "jsonb_exists(metrics::jsonb, ?)",
}


async def merge_many(
    tx: Tx, items: list[tuple[int, str, int | None, float, dict[str, float]]]
) -> None:
    """(model id, request id, build, at, metrics): new rows, or new names merged into old ones."""
    for model_id, request_id, build, at, metrics in items:
        found = await tx.one(
            "SELECT * FROM tracked_metrics WHERE model_id = ? AND request_id = ?",
            (model_id, request_id),
        )
        if found is None:
            await tx.execute(
                "INSERT INTO tracked_metrics (model_id, request_id, build, at, metrics)"
                " VALUES (?, ?, ?, ?, ?)",
                (model_id, request_id, build, at, _encode(metrics).decode()),
            )
        else:
            old = load(TrackedRow, found)
            await tx.execute(
                "UPDATE tracked_metrics SET metrics = ? WHERE id = ?",
                (_encode({**old.metrics, **metrics}).decode(), old.id),
            )


async def of_request(db: Database, model_id: int, request_id: str) -> TrackedRow | None:
    found = await db.one(
        "SELECT * FROM tracked_metrics WHERE model_id = ? AND request_id = ?",
        (model_id, request_id),
    )
    return None if found is None else load(TrackedRow, found)


async def in_range(
    db: Database,
    model_id: int,
    *,
    since: float,
    until: float,
    name: str | None,
    after: tuple[float, int] | None,
    limit: int,
) -> list[TrackedRow]:
    """Predictions between ``since`` and ``until`` (oldest first), those with ``name`` only if
    given; paged by (at, id): ``after`` is the last one of the previous page (``limit`` + 1 at
    most: one more tells a next page is there)."""
    where = ["model_id = ?", "at >= ?", "at < ?"]
    params: list[Any] = [model_id, since, until]
    if after is not None:
        where.append("(at, id) > (?, ?)")
        params += after
    if name is not None:
        where.append(_HAS_KEY[db.dialect])
        params.append(name)
    rows = await db.all(
        f"SELECT * FROM tracked_metrics WHERE {' AND '.join(where)} ORDER BY at, id LIMIT ?",
        (*params, limit + 1),
    )
    return load_all(TrackedRow, rows)


async def prune(tx: Tx, before: float, max_rows: int) -> int:
    """Delete rows older than ``before``, then the oldest beyond ``max_rows``."""
    gone = await tx.execute("DELETE FROM tracked_metrics WHERE at < ?", (before,))
    extra = (await tx.value("SELECT count(*) AS n FROM tracked_metrics") or 0) - max_rows
    if extra > 0:
        gone += await tx.execute(
            "DELETE FROM tracked_metrics WHERE id IN (SELECT id FROM"
            " tracked_metrics ORDER BY at, id LIMIT ?)",
            (extra,),
        )
    return gone
