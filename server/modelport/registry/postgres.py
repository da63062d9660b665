"""The registry on PostgreSQL: `Database` and `Tx` over an asyncpg pool, migrations under a lock.

The table modules write `?` placeholders; each statement is renumbered to `$1, $2…` once (cached)
and asyncpg prepares it once per connection. Several servers may share one database: migrations
run once, under a session advisory lock; what must not interleave takes a transaction advisory
lock (`Tx.hold`) or relies on a constraint. A server that cannot reach the database answers
RegistryUnreachable (503 registry.unavailable) and recovers when it is back: the pool replaces
connections that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from modelport.clock import now_iso
from modelport.registry.db import (
    IntegrityError,
    Params,
    RegistryTooNew,
    RegistryUnreachable,
    Row,
)
from modelport.registry.schema import MIGRATIONS, SCHEMA_TABLE, scripts, too_new

log = logging.getLogger("modelport.registry")

SCHEMES = ("postgresql", "postgres")
CHANNEL = "modelport"  # what Tx.notify sends on and listen hears (the payload: a topic)
LISTEN_CHECK_S = 2.0  # a listening connection is checked this often (a lost link shows then)
CONNECT_TIMEOUT_S = 5.0  # a database that does not answer is unavailable, not a hung request
COMMAND_TIMEOUT_S = 60.0


def lock_key(name: str) -> int:
    """A stable 64-bit advisory lock key for a name (the same in every server)."""
    return int.from_bytes(hashlib.sha256(f"modelport:{name}".encode()).digest()[:8], signed=True)


MIGRATION_LOCK = lock_key("migrations")

if TYPE_CHECKING:  # a pooled connection, as the pool lends it (generic in the stubs only)
    from asyncpg.pool import PoolConnectionProxy

    Connection = PoolConnectionProxy[asyncpg.Record]


def check_url(url: str) -> str:
    """A database URL the server can use, or ValueError saying what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{redacted(url)!r} is not a postgresql:// URL")
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError(f"{redacted(url)!r} names no host")
    if not parts.path.strip("/"):
        raise ValueError(f"{redacted(url)!r} names no database (postgresql://user@host/DATABASE)")
    return url


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@functools.lru_cache(maxsize=2048)
def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2…``; a ``?`` inside quotes is left alone."""
    out: list[str] = []
    quote = ""
    n = 0
    for ch in sql:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    return "".join(out)


# What means the database cannot be reached (rather than a statement being wrong): no connection,
# a connection lost, the server shutting down or starting up, out of connections, a timeout.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.exceptions.OperatorInterventionError,  # class 57: admin shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections
)


# What ends a listening connection: the above, or a statement the server refused (shutting down)
_LISTEN_LOST: tuple[type[BaseException], ...] = (
    *_UNREACHABLE,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def _rowcount(status: str) -> int:
    """The rows a statement changed, from its command tag ("UPDATE 3", "INSERT 0 1")."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class _PgTx:
    """`Tx` on one pooled connection, inside the transaction `PostgresDatabase.write` began."""

    def __init__(self, conn: Connection, errors: Any) -> None:
        self._conn, self._errors = conn, errors

    async def execute(self, sql: str, params: Params = ()) -> int:
        with self._errors():
            return _rowcount(await self._conn.execute(numbered(sql), *params))

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        changed = 0
        with self._errors():
            statement = await self._conn.prepare(numbered(sql))
            for row in rows:
                await statement.fetch(*row)
                changed += _rowcount(statement.get_statusmsg() or "")
        return changed

    async def insert(self, sql: str, params: Params = ()) -> int:
        row = await self.one(sql, params)
        if row is None:
            raise LookupError(f"no id returned by {sql!r}")
        new_id: int = row["id"]
        return new_id

    async def one(self, sql: str, params: Params = ()) -> Row | None:
        with self._errors():
            found = await self._conn.fetchrow(numbered(sql), *params)
        return None if found is None else dict(found)

    async def all(self, sql: str, params: Params = ()) -> list[Row]:
        with self._errors():
            return [dict(r) for r in await self._conn.fetch(numbered(sql), *params)]

    async def value(self, sql: str, params: Params = ()) -> Any:
        row = await self.one(sql, params)
        return None if row is None else next(iter(row.values()))

    async def hold(self, key: str) -> None:
        with self._errors():
            await self._conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(key))

    async def notify(self, topic: str) -> None:
        with self._errors():  # sent at commit (the same topic once per transaction)
            await self._conn.execute("SELECT pg_notify($1, $2)", CHANNEL, topic)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection back in the pool needs besides the rollback asyncpg does anyway:
    nothing. No statement here sets session state (advisory locks are the transaction's, the
    migrations' session lock is let go where it is taken), so asyncpg's default reset (a round
    trip: unlock all, CLOSE ALL, UNLISTEN *, RESET ALL) would cost every read one more."""


class PostgresDatabase:
    """`Database` on a PostgreSQL database, shared by any number of servers: a pool of
    connections; each write is one transaction on one of them (read committed), each read runs
    on any, and sees every write committed before it."""

    dialect = "postgresql"

    def __init__(self, url: str, *, read_only: bool = False, max_connections: int = 10):
        self.url = check_url(url)
        self.where = redacted(url)
        self.read_only = read_only  # no migration, no write: for the CLI beside servers
        self.max_connections = max_connections
        self._pool: asyncpg.Pool | None = None

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """asyncpg's errors as the registry's own: a broken constraint, an unreachable server."""
        try:
            yield
        except asyncpg.IntegrityConstraintViolationError as exc:  # class 23
            raise IntegrityError(str(exc)) from exc
        except _UNREACHABLE as exc:
            raise RegistryUnreachable(
                f"the registry's database at {self.where} cannot be reached: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    async def open(self) -> PostgresDatabase:
        settings = {"application_name": "modelport"}
        if self.read_only:
            settings["default_transaction_read_only"] = "on"
        with self._errors():
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.max_connections,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
                server_settings=settings,
                reset=_keep_session,
            )
        try:
            async with self._connection() as conn:
                if self.read_only:
                    await self._check_version(conn)
                else:
                    await self._migrate(conn)
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(*_UNREACHABLE):
                await pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        if self._pool is None:
            raise RuntimeError("the registry is not open")
        with self._errors():
            # No timeout on the wait for a free connection: a busy pool is not an unreachable
            # database (connecting has its own, CONNECT_TIMEOUT_S, and each statement its own).
            async with self._pool.acquire() as conn:
                yield conn

    async def _version(self, conn: Connection) -> int:
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", SCHEMA_TABLE)
        if not exists:
            return 0
        version: int = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {SCHEMA_TABLE}")
        return version

    async def _check_version(self, conn: Connection) -> int:
        version = await self._version(conn)
        if version > len(MIGRATIONS):
            raise RegistryTooNew(too_new(version, self.where))
        return version

    async def _migrate(self, conn: Connection) -> int:
        """Every migration not yet run, each in its own transaction and recorded with it; under a
        session advisory lock, so that servers starting together run each once."""
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version BIGINT PRIMARY KEY,"
                " applied_at TEXT NOT NULL)"
            )
            version = await self._check_version(conn)
            for number, script in enumerate(scripts(self.dialect)[version:], start=version + 1):
                async with conn.transaction():
                    await conn.execute(script)
                    await conn.execute(
                        f"INSERT INTO {SCHEMA_TABLE} (version, applied_at) VALUES ($1, $2)",
                        number,
                        now_iso(),
                    )
            return len(MIGRATIONS)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

    async def listen(self, heard: Callable[[str], None], connected: Callable[[], None]) -> None:
        """LISTEN on a connection of its own (not the pool's), checked every LISTEN_CHECK_S;
        when it is lost, connect again (0.2 s, doubling to 5 s, between tries) and say
        ``connected()`` once listening again."""
        delay, said = 0.2, ""
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self.url,
                    timeout=CONNECT_TIMEOUT_S,
                    server_settings={"application_name": "modelport-listen"},
                )
                lost = asyncio.get_running_loop().create_future()

                def on_lost(_conn: object, lost: asyncio.Future[None] = lost) -> None:
                    if not lost.done():
                        lost.set_result(None)

                conn.add_termination_listener(on_lost)
                await conn.add_listener(CHANNEL, lambda _c, _pid, _ch, topic: heard(topic))
                if said:
                    log.info("listening to the registry's changes again")
                delay, said = 0.2, ""
                connected()
                while not lost.done():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(lost), LISTEN_CHECK_S)
                    if not lost.done():
                        await conn.fetchval("SELECT 1", timeout=LISTEN_CHECK_S)
            except _LISTEN_LOST as exc:
                why = f"{type(exc).__name__}: {exc}"
                if why != said:
                    said = why
                    log.warning(
                        "not listening to the registry's changes at %s (%s): trying again",
                        self.where,
                        why,
                    )
            finally:
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def lead(self, name: str, held: Callable[[bool], Awaitable[None]]) -> None:
        """Until cancelled: take the session advisory lock ``name`` on a connection of its own
        (tried every LISTEN_CHECK_S / 2 while another session holds it), ``held(True)`` once it is
        ours, and ``held(False)`` as soon as that connection is lost (the lock with it: another
        server may hold it from then on); then try again."""
        key, said = lock_key(name), ""
        while True:
            conn: asyncpg.Connection | None = None
            ours = False
            try:
                conn = await asyncpg.connect(
                    self.url,
                    timeout=CONNECT_TIMEOUT_S,
                    server_settings={"application_name": "modelport-lead"},
                )
                said = ""
                # polled: the lock's holder may be another machine; no event tells us it let go
                while not await conn.fetchval(  # noqa: ASYNC110
                    "SELECT pg_try_advisory_lock($1)", key, timeout=LISTEN_CHECK_S
                ):
                    await asyncio.sleep(LISTEN_CHECK_S / 2)
                ours = True
                await held(True)
                while True:
                    await asyncio.sleep(LISTEN_CHECK_S / 2)
                    await conn.fetchval("SELECT 1", timeout=LISTEN_CHECK_S)
            except _LISTEN_LOST as exc:
                why = f"{type(exc).__name__}: {exc}"
                if why != said:
                    said = why
                    log.warning("the %s lock's connection to %s: %s", name, self.where, why)
            finally:
                if conn is not None:
                    conn.terminate()
                if ours:
                    await held(False)
            await asyncio.sleep(LISTEN_CHECK_S / 2)

    async def one(self, sql: str, params: Params = ()) -> Row | None:
        async with self._connection() as conn:
            found = await conn.fetchrow(numbered(sql), *params)
        return None if found is None else dict(found)

    async def all(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._connection() as conn:
            return [dict(r) for r in await conn.fetch(numbered(sql), *params)]

    async def found(self, sql: str, params: Params = ()) -> Row:
        row = await self.one(sql, params)
        if row is None:
            raise LookupError(f"no row for {sql!r}")
        return row

    async def value(self, sql: str, params: Params = ()) -> Any:
        row = await self.one(sql, params)
        return None if row is None else next(iter(row.values()))

    @asynccontextmanager
    async def write(self, *, scrub: bool = False) -> AsyncIterator[_PgTx]:
        """A write transaction on one connection. ``scrub`` is not needed here: PostgreSQL
        leaves old row versions until vacuum, which no option of a transaction changes."""
        if self.read_only:
            raise RuntimeError("the registry is read-only")
        async with self._connection() as conn:
            transaction = conn.transaction()
            with self._errors():
                await transaction.start()
            try:
                yield _PgTx(conn, self._errors)
            except BaseException:
                with contextlib.suppress(Exception):
                    await transaction.rollback()
                raise
            with self._errors():
                await transaction.commit()

    async def execute(self, sql: str, params: Params = ()) -> int:
        """One write statement in its own transaction; the rows it changed (tests' set-up)."""
        async with self.write() as tx:
            return await tx.execute(sql, params)
