"""Captured requests and responses of a build (sampled per deployment), oldest pruned."""

from __future__ import annotations

from typing import Any

from modelport.registry.db import Database, Row, Tx


async def add_many(tx: Tx, items: list[tuple[Any, ...]]) -> None:
    """(model id, build, request id, at, status, latency_s, request, response, truncated,
    source): source ``sample`` (capture_percent) or ``shadow`` (one side of a shadow's pair)."""
    await tx.execute_many(
        "INSERT INTO captures (model_id, build, request_id, at, status, latency_s, request,"
        " response, truncated, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        items,
    )


async def shadow_pairs(
    db: Database,
    model_id: int,
    primary_build: int,
    candidate_build: int,
    *,
    since: float = 0.0,
    until: float | None = None,
    limit: int = 1_000,
) -> list[Row]:
    """A shadow's recorded pairs, oldest first: request_id, at, request, old and new (the
    primary's and the candidate's answers), old_status, new_status, old_latency_s,
    new_latency_s, old_truncated, new_truncated."""
    return await db.all(
        "SELECT p.request_id, p.at, p.request, p.response AS old, c.response AS new,"
        " p.status AS old_status, c.status AS new_status, p.latency_s AS old_latency_s,"
        " c.latency_s AS new_latency_s, p.truncated AS old_truncated,"
        " c.truncated AS new_truncated FROM captures p JOIN captures c ON"
        " c.model_id = p.model_id AND c.request_id = p.request_id AND c.build = ?"
        " AND c.source = 'shadow' AND c.id != p.id WHERE p.model_id = ? AND p.build = ?"
        " AND p.source = 'shadow' AND p.at >= ? AND p.at <= ? ORDER BY p.id LIMIT ?",
        (
            candidate_build,
            model_id,
            primary_build,
            since,
            until if until is not None else 2.0**62,
            limit,
        ),
    )


async def count(db: Database, model_id: int, build: int, source: str | None = None) -> int:
    """How many captures a build has (of one source when given)."""
    if source is None:
        n = await db.value(
            "SELECT count(*) FROM captures WHERE model_id = ? AND build = ?", (model_id, build)
        )
    else:
        n = await db.value(
            "SELECT count(*) FROM captures WHERE model_id = ? AND build = ? AND source = ?",
            (model_id, build, source),
        )
    return int(n or 0)


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


async def stats(db: Database) -> tuple[int, int]:
    """(captures, bytes of their requests and responses)."""
    found = await db.one(
        "SELECT count(*) AS n, coalesce(sum(length(request) + length(response)), 0) AS b"
        " FROM captures"
    )
    return (int(found["n"]), int(found["b"])) if found else (0, 0)
