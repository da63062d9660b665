"""Monitoring series rows: one (model, build, resolution, bucket start) with its counters."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from modelport.registry.db import Database, Tx
from modelport.registry.rows import MetricPointRow, load, load_all

KEY = ("model_id", "t", "build", "res")
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
Merge = Callable[[MetricPointRow, MetricPointRow], MetricPointRow]  # (stored, new) → to keep


async def model_ids(tx: Tx) -> dict[str, int]:
    return {r["name"]: r["id"] for r in await tx.all("SELECT name, id FROM models")}


async def upsert(tx: Tx, point: MetricPointRow, merge: Merge) -> None:
    """Insert a point, or merge it into the one already there (a restart within a slot)."""
    key = tuple(getattr(point, k) for k in KEY)
    found = await tx.one(
        "SELECT * FROM metric_points WHERE model_id = ? AND t = ? AND build = ? AND res = ?", key
    )
    if found is not None:
        point = merge(load(MetricPointRow, found), point)
        await tx.execute(
            f"UPDATE metric_points SET {', '.join(f'{c} = ?' for c in COLUMNS)}"
            " WHERE model_id = ? AND t = ? AND build = ? AND res = ?",
            (*(getattr(point, c) for c in COLUMNS), *key),
        )
        return
    await tx.execute(
        f"INSERT INTO metric_points ({', '.join(KEY)}, {', '.join(COLUMNS)})"
        f" VALUES ({', '.join('?' * (len(KEY) + len(COLUMNS)))})",
        tuple(getattr(point, c) for c in (*KEY, *COLUMNS)),
    )


async def older(tx: Tx, res: int, before: int) -> list[MetricPointRow]:
    rows = await tx.all("SELECT * FROM metric_points WHERE res = ? AND t < ?", (res, before))
    return load_all(MetricPointRow, rows)


async def delete_older(tx: Tx, res: int | None, before: int) -> int:
    if res is None:
        return await tx.execute("DELETE FROM metric_points WHERE t < ?", (before,))
    return await tx.execute("DELETE FROM metric_points WHERE res = ? AND t < ?", (res, before))


async def in_range(
    db: Database, model_id: int, since: int, until: int, builds: Iterable[int] | None = None
) -> list[MetricPointRow]:
    rows = load_all(
        MetricPointRow,
        await db.all(
            "SELECT * FROM metric_points WHERE model_id = ? AND t >= ? AND t < ? ORDER BY t",
            (model_id, since, until),
        ),
    )
    if builds is not None:
        wanted = set(builds)
        rows = [r for r in rows if r.build in wanted]
    return rows


async def count(db: Database) -> dict[int, int]:
    """Rows per resolution (for tests and the store's size)."""
    rows = await db.all("SELECT res, count(*) AS n FROM metric_points GROUP BY res")
    return {r["res"]: r["n"] for r in rows}
