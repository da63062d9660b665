"""The registry's database seam (`Database`, `Tx`) and its SQLite backend: WAL, foreign keys,
numbered migrations, one reader and one writer (the PostgreSQL backend: registry/postgres.py).

The table modules of `registry/` speak only to `Database` and `Tx`, in SQL that both SQLite and
PostgreSQL read: `?` placeholders (a PostgreSQL backend renumbers them), `RETURNING id` for a new
row's id, `ON CONFLICT DO NOTHING`, booleans passed as Python bools, never a PRAGMA. What only
one backend can do (SQLite's `secure_delete`) is a backend's method or argument here, not SQL in
a table module."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import aiosqlite

from modelport.registry.schema import MIGRATIONS, too_new

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)


class RegistryTooNew(RuntimeError):
    """The registry's schema is newer than this modelport knows: a server refuses to start."""


class RegistryUnreachable(RuntimeError):
    """The registry's database server cannot be reached (PostgreSQL down, the network between):
    the API answers 503 registry.unavailable until it is back; predictions go on from memory."""


def migrate(conn: sqlite3.Connection, where: str = "") -> int:
    """Bring a file up to the newest migration, each in its own transaction; return the version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RegistryTooNew(too_new(version, where or "the SQLite file"))
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
    return len(MIGRATIONS)


#: A row as the database returns it: column name → value.
Row = dict[str, Any]
Params = Iterable[Any]


class IntegrityError(Exception):
    """A statement broke a constraint (unique, foreign key, not null), whatever the backend."""


class Tx(Protocol):
    """One write transaction: every statement in it commits together or not at all."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        """Run one statement once per parameter tuple; the rows changed, summed."""
        ...

    async def insert(self, sql: str, params: Params = ()) -> int:
        """Run an INSERT ending in `RETURNING id`; the new row's id."""
        ...

    async def one(self, sql: str, params: Params = ()) -> Row | None: ...

    async def all(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def value(self, sql: str, params: Params = ()) -> Any:
        """The first column of the first row, None when there is no row."""
        ...

    async def hold(self, key: str) -> None:
        """Until this transaction ends, no other transaction holding ``key`` runs, in this
        process or another (a read-then-write that must not interleave: the last admin token).
        PostgreSQL: a transaction-level advisory lock; SQLite: every write transaction already
        runs alone (BEGIN IMMEDIATE), so nothing to do."""
        ...

    async def notify(self, topic: str) -> None:
        """When this transaction commits, every server listening on the registry (`listen`)
        hears ``topic`` ("models", "tokens", "deployments"): what it keeps in memory of it
        changed. PostgreSQL: pg_notify, sent at commit, dropped with a rollback; SQLite: one
        server, which changed its memory itself: nothing to do."""
        ...


@runtime_checkable  # the API's handlers are given one, and Litestar checks what it injects
class Database(Protocol):
    """The registry's database, whichever backend: reads see every committed write, writes go
    through `write()` one transaction at a time."""

    dialect: str  # "sqlite" or "postgresql", for the few queries spelt differently

    async def open(self) -> Database:
        """Connect, and bring the schema up to date (unless read-only); RegistryTooNew when the
        registry is newer than this modelport, RegistryUnreachable when it cannot be reached."""
        ...

    async def one(self, sql: str, params: Params = ()) -> Row | None: ...

    async def all(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def found(self, sql: str, params: Params = ()) -> Row:
        """The row `sql` selects, which must be there (one just written); LookupError if not."""
        ...

    async def value(self, sql: str, params: Params = ()) -> Any: ...

    async def close(self) -> None: ...

    async def listen(self, heard: Callable[[str], None], connected: Callable[[], None]) -> None:
        """Until cancelled: ``heard(topic)`` for each topic another transaction notified
        (`Tx.notify`, this server's own included), ``connected()`` each time listening (re)starts
        (what was notified meanwhile is lost: the caller reloads everything). SQLite: returns at
        once (one server: nothing to hear)."""
        ...

    async def lead(self, name: str, held: Callable[[bool], Awaitable[None]]) -> None:
        """Until cancelled: ``held(True)`` once this server alone holds the lock ``name`` among
        those sharing the registry, ``held(False)`` when it lost it (its connection lost).
        SQLite: one server, which holds it at once, for good."""
        ...

    def write(self, *, scrub: bool = False) -> AbstractAsyncContextManager[Tx]:
        """A write transaction. ``scrub``: what it overwrites or deletes is to leave no old
        bytes in the database's files (SQLite: secure_delete, then the WAL emptied); a backend
        that cannot do that cheaply may ignore it."""
        ...


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


@contextlib.contextmanager
def _constraints() -> Iterator[None]:
    """sqlite3's constraint error as the registry's own, which every backend raises."""
    try:
        yield
    except sqlite3.IntegrityError as e:
        raise IntegrityError(str(e)) from e


class _SqliteTx:
    """`Tx` on the writer connection, inside the transaction `SqliteDatabase.write` opened."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        with _constraints():
            async with self._conn.execute(sql, tuple(params)) as cur:
                return cur.rowcount

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        with _constraints():
            async with self._conn.executemany(sql, [tuple(r) for r in rows]) as cur:
                return cur.rowcount

    async def insert(self, sql: str, params: Params = ()) -> int:
        row = await self.one(sql, params)
        if row is None:
            raise LookupError(f"no id returned by {sql!r}")
        new_id: int = row["id"]
        return new_id

    async def one(self, sql: str, params: Params = ()) -> Row | None:
        with _constraints():
            async with self._conn.execute(sql, tuple(params)) as cur:
                return cast(Row | None, await cur.fetchone())  # the row factory makes dicts

    async def all(self, sql: str, params: Params = ()) -> list[Row]:
        with _constraints():
            async with self._conn.execute(sql, tuple(params)) as cur:
                return cast(list[Row], await cur.fetchall())

    async def value(self, sql: str, params: Params = ()) -> Any:
        row = await self.one(sql, params)
        return None if row is None else next(iter(row.values()))

    async def hold(self, key: str) -> None:
        return None  # this transaction began with BEGIN IMMEDIATE: no other writer runs

    async def notify(self, topic: str) -> None:
        return None  # one server on a SQLite file: it changed its own memory with the write


class SqliteDatabase:
    """`Database` on a SQLite file: one writer connection behind a lock, one reader connection;
    rows come back as dicts."""

    dialect = "sqlite"

    def __init__(self, path: Path, *, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only  # no migration, no writer: for a reader beside a server
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        # One query at a time on the reader: while a statement is open (executed, not yet
        # fetched and closed), SQLite keeps that connection's read snapshot, and a query of
        # another task run meanwhile would not see a write committed just before it.
        self._read_lock = asyncio.Lock()

    async def open(self) -> SqliteDatabase:
        if self.read_only:
            self._reader = await self._connect()
            version = await self.value("PRAGMA user_version")
            if version > len(MIGRATIONS):  # its tables may mean what this modelport does not know
                await self.close()
                raise RegistryTooNew(too_new(version, str(self.path)))
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._migrate)
        self._writer = await self._connect()
        self._reader = await self._connect()
        return self

    def _migrate(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            migrate(conn, str(self.path))
        finally:
            conn.close()

    async def _connect(self) -> aiosqlite.Connection:
        if self.read_only:
            conn = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True)
        else:
            conn = await aiosqlite.connect(self.path, isolation_level=None)
        # aiosqlite's stub types row_factory as a class; sqlite3 takes any callable
        conn.row_factory = _dict_row  # type: ignore[assignment]
        for pragma in () if self.read_only else PRAGMAS:
            await conn.execute(pragma)
        return conn

    def _read(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("the registry is not open")
        return self._reader

    def _write(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise RuntimeError(
                "the registry is read-only" if self.read_only else "the registry is not open"
            )
        return self._writer

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def listen(self, heard: Callable[[str], None], connected: Callable[[], None]) -> None:
        return None  # one server per file (the data dir's lock): nobody else writes it

    async def lead(self, name: str, held: Callable[[bool], Awaitable[None]]) -> None:
        await held(True)  # the data dir's lock made this server the only one

    async def one(self, sql: str, params: Params = ()) -> Row | None:
        async with self._read_lock, self._read().execute(sql, tuple(params)) as cur:
            return cast(Row | None, await cur.fetchone())  # the row factory makes dicts

    async def all(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._read_lock, self._read().execute(sql, tuple(params)) as cur:
            return cast(list[Row], await cur.fetchall())

    async def found(self, sql: str, params: Params = ()) -> Row:
        row = await self.one(sql, params)
        if row is None:
            raise LookupError(f"no row for {sql!r}")
        return row

    async def value(self, sql: str, params: Params = ()) -> Any:
        row = await self.one(sql, params)
        return None if row is None else next(iter(row.values()))

    @asynccontextmanager
    async def write(self, *, scrub: bool = False) -> AsyncIterator[Tx]:
        """A write transaction; the only way to change the file, one at a time."""
        async with self._write_lock:
            writer = self._write()
            if scrub:  # this connection's, until set back
                await writer.execute("PRAGMA secure_delete = ON")
            try:
                await writer.execute("BEGIN IMMEDIATE")
                try:
                    yield _SqliteTx(writer)
                    await writer.execute("COMMIT")
                except BaseException:
                    # SQLite may have rolled back itself (a full disk does that); the next
                    # write must find no transaction open, whatever failed.
                    if writer.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            await writer.execute("ROLLBACK")
                    raise
            finally:
                if scrub:
                    await writer.execute("PRAGMA secure_delete = OFF")
            if scrub:
                await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Copy the WAL into the file and empty it: until then it keeps old images of pages."""
        await self._write().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def execute(self, sql: str, params: Params = ()) -> int:
        """One write statement in its own transaction; returns lastrowid (tests' set-up)."""
        async with self.write():
            cur = await self._write().execute(sql, tuple(params))
            assert cur.lastrowid is not None  # None only before a statement ran
            return cur.lastrowid
