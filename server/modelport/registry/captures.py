"""Captured requests and responses of a build (sampled per deployment), oldest pruned."""

from __future__ import annotations

from typing import Any

from modelport.registry.db import Database, Row, Tx
from modelport.registry.rows import CaptureRow, ShadowPair, load, load_all


async def add_many(tx: Tx, items: list[tuple[Any, ...]]) -> None:
    """(model id, build, request id, at, status, latency_s, request, response, truncated,
    source): source ``sample`` (capture_percent) or ``shadow`` (one side of a shadow's pair)."""
    await tx.execute_many(
        "INSERT INTO captures (model_id, build, request_id, at, status, latency_s, request,"
        " response, truncated, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        items,
    )


# A shadow's pair is two captures joined: the primary's (p) and the candidate's (c), each one's
# columns under its own prefix.
_PAIR_COLUMNS = ", ".join(
    f"{side}.{c} AS {side}_{c}" for side in "pc" for c in CaptureRow.__struct_fields__
)


def _side(row: Row, side: str) -> CaptureRow:
    return load(CaptureRow, {c: row[f"{side}_{c}"] for c in CaptureRow.__struct_fields__})


async def shadow_pairs(
    db: Database,
    model_id: int,
    primary_build: int,
    candidate_build: int,
    *,
    since: float = 0.0,
    until: float | None = None,
    limit: int = 1_000,
) -> list[ShadowPair]:
    """A shadow's recorded pairs, oldest first: the primary's capture (old) and the
    candidate's (new) of one request."""
    rows = await db.all(
        f"SELECT {_PAIR_COLUMNS} FROM captures p JOIN captures c ON"
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
    return [ShadowPair(old=_side(r, "p"), new=_side(r, "c")) for r in rows]


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
) -> list[CaptureRow]:
    """Newest first (``limit`` + 1 of them at most: one more tells a next page is there)."""
    rows = await db.all(
        "SELECT * FROM captures WHERE model_id = ? AND build = ? AND id < ? ORDER BY id DESC"
        " LIMIT ?",
        (model_id, build, after_id if after_id is not None else 2**62, limit + 1),
    )
    return load_all(CaptureRow, rows)


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
) -> list[CaptureRow]:
    """The build's captures made in [since, until), oldest first, at most ``limit``."""
    rows = await db.all(
        "SELECT * FROM captures WHERE model_id = ? AND build = ? AND at >= ? AND at < ?"
        " ORDER BY id LIMIT ?",
        (model_id, build, since, until, limit),
    )
    return load_all(CaptureRow, rows)


async def stats(db: Database) -> tuple[int, int]:
    """(captures, bytes of their requests and responses)."""
    found = await db.one(
        "SELECT count(*) AS n, coalesce(sum(length(request) + length(response)), 0) AS b"
        " FROM captures"
    )
    return (int(found["n"]), int(found["b"])) if found else (0, 0)
