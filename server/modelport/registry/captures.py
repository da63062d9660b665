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


async def in_window(
    db: Database, model_id: int, build: int, since: float, until: float, limit: int
) -> list[Row]:
    """The build's captures made in [since, until), oldest first, at most ``limit``."""
    return await db.all(
        "SELECT * FROM captures WHERE model_id = ? AND build = ? AND at >= ? AND at < ?"
        " ORDER BY id LIMIT ?",
        (model_id, build, since, until, limit),
    )


async def of_requests(db: Database, model_id: int, build: int, request_ids: list[str]) -> list[Row]:
    """The build's captures of these request ids (a shadow's recorded answers)."""
    if not request_ids:
        return []
    marks = ", ".join("?" for _ in request_ids)
    return await db.all(
        f"SELECT * FROM captures WHERE model_id = ? AND build = ? AND request_id IN ({marks})",
        (model_id, build, *request_ids),
    )


async def stats(db: Database) -> tuple[int, int]:
    """(captures, bytes of their requests and responses)."""
    found = await db.one(
        "SELECT count(*) AS n, coalesce(sum(length(request) + length(response)), 0) AS b"
        " FROM captures"
    )
    return (int(found["n"]), int(found["b"])) if found else (0, 0)
