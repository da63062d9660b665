"""Per-prediction metrics rows: what `track_metric` recorded for a request id, and ground truth."""

from __future__ import annotations

from typing import Any

import aiosqlite
import msgspec

from modelport.registry.db import Database, Row, fetch_one

_encode = msgspec.json.encode
_decode = msgspec.json.decode


async def merge_many(
    conn: aiosqlite.Connection, items: list[tuple[int, str, int | None, float, dict[str, float]]]
) -> None:
    """(model id, request id, build, at, metrics): new rows, or new names merged into old ones."""
    for model_id, request_id, build, at, metrics in items:
        async with conn.execute(
            "SELECT id, metrics FROM tracked_metrics WHERE model_id = ? AND request_id = ?",
            (model_id, request_id),
        ) as cur:
            old = await cur.fetchone()
        if old is None:
            await conn.execute(
                "INSERT INTO tracked_metrics (model_id, request_id, build, at, metrics)"
                " VALUES (?, ?, ?, ?, ?)",
                (model_id, request_id, build, at, _encode(metrics).decode()),
            )
        else:
            merged = {**_decode(old["metrics"]), **metrics}
            await conn.execute(
                "UPDATE tracked_metrics SET metrics = ? WHERE id = ?",
                (_encode(merged).decode(), old["id"]),
            )


async def of_request(db: Database, model_id: int, request_id: str) -> Row | None:
    row = await db.one(
        "SELECT * FROM tracked_metrics WHERE model_id = ? AND request_id = ?",
        (model_id, request_id),
    )
    if row is not None:
        row["metrics"] = _decode(row["metrics"])
    return row


async def in_range(
    db: Database,
    model_id: int,
    *,
    since: float,
    until: float,
    name: str | None,
    after: tuple[float, int] | None,
    limit: int,
) -> list[Row]:
    """Predictions between ``since`` and ``until`` (oldest first), those with ``name`` only if
    given; paged by (at, id): ``after`` is the last one of the previous page."""
    where = ["model_id = ?", "at >= ?", "at < ?"]
    params: list[Any] = [model_id, since, until]
    if after is not None:
        where.append("(at, id) > (?, ?)")
        params += after
    if name is not None:
        where.append("EXISTS (SELECT 1 FROM json_each(metrics) WHERE key = ?)")
        params.append(name)
    rows = await db.all(
        f"SELECT * FROM tracked_metrics WHERE {' AND '.join(where)} ORDER BY at, id LIMIT ?",
        (*params, limit + 1),
    )
    for row in rows:
        row["metrics"] = _decode(row["metrics"])
    return rows


async def prune(conn: aiosqlite.Connection, before: float, max_rows: int) -> int:
    """Delete rows older than ``before``, then the oldest beyond ``max_rows``."""
    cur = await conn.execute("DELETE FROM tracked_metrics WHERE at < ?", (before,))
    gone = cur.rowcount
    async with conn.execute("SELECT count(*) AS n FROM tracked_metrics") as c:
        counted = await fetch_one(c)
    extra = (counted["n"] if counted else 0) - max_rows
    if extra > 0:
        cur = await conn.execute(
            "DELETE FROM tracked_metrics WHERE id IN (SELECT id FROM"
            " tracked_metrics ORDER BY at, id LIMIT ?)",
            (extra,),
        )
        gone += cur.rowcount
    return gone
