"""Every row of one registry copied into another (`modelport migrate`: a SQLite file into
PostgreSQL), ids kept, resumable, and each table's row count checked at the end."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from modelport.registry.db import Database

#: Every table of the schema, parents before the rows that refer to them, with its key (the
#: order pages are read in). A table missing here is refused, not silently left behind.
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("models", ("id",)),
    ("builds", ("id",)),
    ("build_objects", ("build_id", "digest")),
    ("deployments", ("id",)),
    ("deployment_events", ("id",)),
    ("tokens", ("id",)),
    ("audit", ("id",)),
    ("metric_points", ("model_id", "t", "build", "res")),
    ("tracked_metrics", ("id",)),
    ("captures", ("id",)),
    ("seal_check", ("id",)),
    ("replay_reports", ("id",)),
    ("servers", ("node",)),
    ("leadership", ("name",)),
)
PAGE = 500
#: Tables keyed by an integer the database draws (an identity on PostgreSQL): a resumed copy
#: starts after the target's largest, and the identity is set to go on after it.
IDENTITY = frozenset(
    {
        "models",
        "builds",
        "deployments",
        "deployment_events",
        "audit",
        "tracked_metrics",
        "captures",
        "replay_reports",
    }
)


class Copied(msgspec.Struct, frozen=True):
    table: str
    source: int  # rows in the source
    target: int  # rows in the target afterwards (equal, or the copy failed)
    written: int  # rows this run inserted (a resumed run skips what is there)


class CopyMismatch(RuntimeError):
    """After the copy a table's rows differ in number between the registries."""


async def tables_of(db: Database) -> set[str]:
    if db.dialect == "sqlite":
        rows = await db.all(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        return {r["name"] for r in rows}
    rows = await db.all(
        "SELECT table_name AS name FROM information_schema.tables"
        " WHERE table_schema = current_schema() AND table_name != 'modelport_schema'"
    )
    return {r["name"] for r in rows}


async def _count(db: Database, table: str) -> int:
    n: int = await db.value(f"SELECT count(*) FROM {table}")
    return n


async def copy_table(
    source: Database, target: Database, table: str, key: tuple[str, ...]
) -> Copied:
    """Copy the rows of ``table`` the target lacks, a page per transaction. An IDENTITY table
    resumes after the target's largest id (pages are committed in id order); the others are read
    again from the start (text sorts differently per database), what is there skipped by key."""
    total = await _count(source, table)
    before = await _count(target, table)
    written = 0
    if before < total:
        after: tuple[object, ...] | None = None
        if table in IDENTITY and before:
            after = (await target.value(f"SELECT max(id) FROM {table}"),)
        order = ", ".join(key)
        while True:
            where = f"WHERE ({order}) > ({', '.join('?' * len(key))})" if after else ""
            rows = await source.all(
                f"SELECT * FROM {table} {where} ORDER BY {order} LIMIT ?", (*(after or ()), PAGE)
            )
            if not rows:
                break
            columns = list(rows[0])
            sql = (
                f"INSERT INTO {table} ({', '.join(columns)})"
                f" VALUES ({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING"
            )
            async with target.write() as tx:
                written += await tx.execute_many(sql, [tuple(r[c] for c in columns) for r in rows])
            after = tuple(rows[-1][k] for k in key)
    if target.dialect == "postgresql" and table in IDENTITY:
        # ids were given, not drawn: the identity goes on after the largest one
        async with target.write() as tx:
            await tx.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" (SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
            )
    return Copied(table, total, await _count(target, table), written)


async def copy_all(
    source: Database, target: Database, on_table: Callable[[Copied], None] = lambda c: None
) -> list[Copied]:
    """Every table, in order; CopyMismatch when a table's counts differ afterwards (the target
    held rows of another registry), ValueError when the source has a table not in TABLES."""
    unknown = await tables_of(source) - {t for t, _ in TABLES}
    if unknown:
        raise ValueError(f"the source registry has tables this modelport cannot copy: {unknown}")
    done = []
    for table, key in TABLES:
        copied = await copy_table(source, target, table, key)
        on_table(copied)
        if copied.source != copied.target:
            raise CopyMismatch(
                f"table {table}: {copied.source} rows in the source, {copied.target} in the "
                "target after the copy: the target holds rows of another registry (migrate "
                "into an empty database)"
            )
        done.append(copied)
    return done
