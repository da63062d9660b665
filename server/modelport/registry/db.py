"""The registry's SQLite file: WAL, foreign keys, numbered migrations, one reader and one writer."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from modelport.registry.schema import MIGRATIONS

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)


class RegistryTooNew(RuntimeError):
    pass


def migrate(conn: sqlite3.Connection) -> int:
    """Bring a file up to the newest migration, each in its own transaction; return the version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RegistryTooNew(
            f"The registry is at version {version}, newer than this modelport knows "
            f"({len(MIGRATIONS)}); upgrade modelport."
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
    return len(MIGRATIONS)


def _dict_row(cursor: sqlite3.Cursor, row: tuple) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row)}


class Database:
    """One writer connection behind a lock, one reader connection; rows come back as dicts."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        # One query at a time on the reader: while a statement is open (executed, not yet
        # fetched and closed), SQLite keeps that connection's read snapshot, and a query of
        # another task run meanwhile would not see a write committed just before it.
        self._read_lock = asyncio.Lock()

    async def open(self) -> "Database":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._migrate)
        self._writer = await self._connect()
        self._reader = await self._connect()
        return self

    def _migrate(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            migrate(conn)
        finally:
            conn.close()

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = _dict_row
        for pragma in PRAGMAS:
            await conn.execute(pragma)
        return conn

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def one(self, sql: str, params: Iterable[Any] = ()) -> dict[str, Any] | None:
        async with self._read_lock, self._reader.execute(sql, tuple(params)) as cur:
            return await cur.fetchone()

    async def all(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        async with self._read_lock, self._reader.execute(sql, tuple(params)) as cur:
            return await cur.fetchall()

    async def value(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = await self.one(sql, params)
        return None if row is None else next(iter(row.values()))

    @asynccontextmanager
    async def write(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction; the only way to change the file, one at a time."""
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
                await self._writer.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back itself (a full disk does that); the next write
                # must find no transaction open, whatever failed.
                if self._writer.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        await self._writer.execute("ROLLBACK")
                raise

    async def checkpoint(self) -> None:
        """Copy the WAL into the file and empty it: until then it keeps old images of pages."""
        async with self._write_lock:
            await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """One write statement in its own transaction; returns lastrowid."""
        async with self.write() as conn:
            cur = await conn.execute(sql, tuple(params))
            return cur.lastrowid
