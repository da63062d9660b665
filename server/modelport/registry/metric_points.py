"""Monitoring series rows: one (model, build, resolution, bucket start) with its counters."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from modelport.registry.db import Database, Row, Tx

COLUMNS = (
    "requests",
    "errors",
    "server_errors",
    "latency_s",
    "hist",
    "request_bytes",
    "response_bytes",
    "cpu_s",
    "memory_bytes",
)
Merge = Callable[[Row, Row], Row]  # (stored row, new row) → the row to keep


async def model_ids(tx: Tx) -> dict[str, int]:
    return {r["name"]: r["id"] for r in await tx.all("SELECT name, id FROM models")}


async def upsert(tx: Tx, model_id: int, build: int, res: int, row: Row, merge: Merge) -> None:
    """Insert a point, or merge it into the one already there (a restart within a slot)."""
    key = (model_id, row["t"], build, res)
    old = await tx.one(
        "SELECT * FROM metric_points WHERE model_id = ? AND t = ? AND build = ? AND res = ?", key
    )
    if old is not None:
        row = merge(old, row)
        await tx.execute(
            f"UPDATE metric_points SET {', '.join(f'{c} = ?' for c in COLUMNS)}"
            " WHERE model_id = ? AND t = ? AND build = ? AND res = ?",
            (*(row[c] for c in COLUMNS), *key),
        )
        return
    await tx.execute(
        f"INSERT INTO metric_points (model_id, t, build, res, {', '.join(COLUMNS)})"
        f" VALUES (?, ?, ?, ?, {', '.join('?' * len(COLUMNS))})",
        (*key, *(row[c] for c in COLUMNS)),
    )


async def older(tx: Tx, res: int, before: int) -> list[Row]:
    return await tx.all("SELECT * FROM metric_points WHERE res = ? AND t < ?", (res, before))


async def delete_older(tx: Tx, res: int | None, before: int) -> int:
    if res is None:
        return await tx.execute("DELETE FROM metric_points WHERE t < ?", (before,))
    return await tx.execute("DELETE FROM metric_points WHERE res = ? AND t < ?", (res, before))


async def in_range(
    db: Database, model_id: int, since: int, until: int, builds: Iterable[int] | None = None
) -> list[Row]:
    rows = await db.all(
        "SELECT * FROM metric_points WHERE model_id = ? AND t >= ? AND t < ? ORDER BY t",
        (model_id, since, until),
    )
    if builds is not None:
        wanted = set(builds)
        rows = [r for r in rows if r["build"] in wanted]
    return rows


async def count(db: Database) -> dict[int, int]:
    """Rows per resolution (for tests and the store's size)."""
    rows = await db.all("SELECT res, count(*) AS n FROM metric_points GROUP BY res")
    return {r["res"]: r["n"] for r in rows}
