"""The registry's SQLite file: WAL, foreign keys, numbered migrations, one reader and one writer."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

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


#: A row as the registry returns it: column name → value.
Row = dict[str, Any]


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {col[0]: value for col, value in zip(cursor.description, row)}


async def fetch_one(cur: aiosqlite.Cursor) -> Row | None:
    """A cursor's next row, typed as the row factory makes it."""
    return cast(Row | None, await cur.fetchone())


async def fetch_all(cur: aiosqlite.Cursor) -> list[Row]:
    return cast(list[Row], await cur.fetchall())


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

    async def open(self) -> Database:
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
        # aiosqlite's stub types row_factory as a class; sqlite3 takes any callable
        conn.row_factory = _dict_row  # type: ignore[assignment]
        for pragma in PRAGMAS:
            await conn.execute(pragma)
        return conn

    def _read(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("the registry is not open")
        return self._reader

    def _write(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise RuntimeError("the registry is not open")
        return self._writer

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def one(self, sql: str, params: Iterable[Any] = ()) -> dict[str, Any] | None:
        async with self._read_lock, self._read().execute(sql, tuple(params)) as cur:
            return cast(Row | None, await cur.fetchone())  # the row factory makes dicts

    async def all(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        async with self._read_lock, self._read().execute(sql, tuple(params)) as cur:
            return cast(list[Row], await cur.fetchall())

    async def found(self, sql: str, params: Iterable[Any] = ()) -> Row:
        """The row `sql` selects, which must be there (one just written); LookupError if not."""
        row = await self.one(sql, params)
        if row is None:
            raise LookupError(f"no row for {sql!r}")
        return row

    async def value(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = await self.one(sql, params)
        return None if row is None else next(iter(row.values()))

    @asynccontextmanager
    async def write(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction; the only way to change the file, one at a time."""
        async with self._write_lock:
            writer = self._write()
            await writer.execute("BEGIN IMMEDIATE")
            try:
                yield writer
                await writer.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back itself (a full disk does that); the next write
                # must find no transaction open, whatever failed.
                if writer.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        await writer.execute("ROLLBACK")
                raise

    async def checkpoint(self) -> None:
        """Copy the WAL into the file and empty it: until then it keeps old images of pages."""
        async with self._write_lock:
            await self._write().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """One write statement in its own transaction; returns lastrowid."""
        async with self.write() as conn:
            cur = await conn.execute(sql, tuple(params))
            assert cur.lastrowid is not None  # None only before a statement ran
            return cur.lastrowid
