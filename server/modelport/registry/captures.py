"""Captured requests and responses of a build (sampled per deployment), oldest pruned."""

from __future__ import annotations

from typing import Any

from modelport.registry.db import Database, Row, Tx


async def add_many(tx: Tx, items: list[tuple[Any, ...]]) -> None:
    """(model id, build, request id, at, status, latency_s, request, response, truncated)."""
    await tx.execute_many(
        "INSERT INTO captures (model_id, build, request_id, at, status, latency_s, request,"
        " response, truncated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        items,
    )


async def of_build(
    db: Database, model_id: int, build: int, *, after_id: int | None, limit: int
) -> list[Row]:
    """Newest first."""
    return await db.all(
        "SELECT * FROM captures WHERE model_id = ? AND build = ? AND id < ? ORDER BY id DESC"
        " LIMIT ?",
        (model_id, build, after_id if after_id is not None else 2**62, limit + 1),
    )


async def prune(tx: Tx, before: float, per_build: int) -> int:
    """Delete captures older than ``before``, and beyond the newest ``per_build`` of a build."""
    gone = await tx.execute("DELETE FROM captures WHERE at < ?", (before,))
    return gone + await tx.execute(
        "DELETE FROM captures WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER"
        " (PARTITION BY model_id, build ORDER BY id DESC) AS k FROM captures) AS ranked"
        " WHERE k > ?)",
        (per_build,),
    )
