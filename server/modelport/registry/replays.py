"""Replay reports: one build's captured requests sent to another, the answers compared."""

from __future__ import annotations

from typing import Any

import msgspec

from modelport.registry.db import Database, Tx
from modelport.registry.records import ReplayDiff
from modelport.registry.rows import ReplayReportRow, load, load_all

# What a finished run writes (the counts, the latencies, the first diffs, or why it failed).
RESULT_FIELDS = (
    "status",
    "replayed",
    "equal",
    "different",
    "skipped",
    "errors_from",
    "errors_to",
    "p50_ms_from",
    "p50_ms_to",
    "error",
    "finished_at",
)


async def create(db: Database, **fields: Any) -> ReplayReportRow:
    """A running report (model_id, from_build, to_build, source, since, until, max_requests,
    rtol, atol, created_by, at, node)."""
    names = sorted(fields)
    async with db.write() as tx:
        report_id = await tx.insert(
            f"INSERT INTO replay_reports ({', '.join(names)})"
            f" VALUES ({', '.join('?' for _ in names)}) RETURNING id",
            [fields[n] for n in names],
        )
    return load(
        ReplayReportRow, await db.found("SELECT * FROM replay_reports WHERE id = ?", (report_id,))
    )


async def finish(db: Database, report_id: int, diffs: list[ReplayDiff], **result: Any) -> None:
    unknown = set(result) - set(RESULT_FIELDS)
    if unknown:
        raise ValueError(f"not fields of a report's result: {sorted(unknown)}")
    names = sorted(result)
    sets = ", ".join(f"{n} = ?" for n in names)
    async with db.write() as tx:
        await tx.execute(
            f"UPDATE replay_reports SET {sets}, diffs = ? WHERE id = ?",
            [*(result[n] for n in names), msgspec.json.encode(diffs).decode(), report_id],
        )


async def row(db: Database, model_id: int, report_id: int) -> ReplayReportRow | None:
    found = await db.one(
        "SELECT * FROM replay_reports WHERE model_id = ? AND id = ?", (model_id, report_id)
    )
    return None if found is None else load(ReplayReportRow, found)


async def of_model(
    db: Database, model_id: int, *, build: int | None, after_id: int | None, limit: int
) -> list[ReplayReportRow]:
    """Newest first (``limit`` + 1 at most: one more tells a next page is there); with
    ``build``, the reports from or to that build."""
    where, params = "model_id = ? AND id < ?", [model_id, after_id if after_id else 2**62]
    if build is not None:
        where += " AND (from_build = ? OR to_build = ?)"
        params += [build, build]
    rows = await db.all(
        f"SELECT * FROM replay_reports WHERE {where} ORDER BY id DESC LIMIT ?",
        [*params, limit + 1],
    )
    return load_all(ReplayReportRow, rows)


async def interrupted(db: Database, node: str, why: str, at: float) -> int:
    """Reports this server (``node``) left running when it stopped: failed, saying why (at
    start-up; another server's running replays are its own)."""
    async with db.write() as tx:
        return await tx.execute(
            "UPDATE replay_reports SET status = 'failed', error = ?, finished_at = ?"
            " WHERE status = 'running' AND node = ?",
            (why, at, node),
        )


async def prune(tx: Tx, before: float) -> int:
    """Reports made before ``before`` (capture_retention_days) go."""
    return await tx.execute("DELETE FROM replay_reports WHERE at < ?", (before,))


async def stats(db: Database) -> tuple[int, int]:
    """(reports, bytes of their diffs)."""
    found = await db.one(
        "SELECT count(*) AS n, coalesce(sum(length(diffs)), 0) AS b FROM replay_reports"
    )
    return (int(found["n"]), int(found["b"])) if found else (0, 0)
