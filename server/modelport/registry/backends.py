"""Which registry a server opens: PostgreSQL when MODELPORT_DATABASE_URL names one, else the
data dir's SQLite file."""

from __future__ import annotations

from pathlib import Path

from modelport.registry.db import Database, SqliteDatabase


def registry(database_url: str | None, sqlite_path: Path, *, read_only: bool = False) -> Database:
    """The registry, not yet opened (`await db.open()`)."""
    if database_url:
        from modelport.registry.postgres import PostgresDatabase  # asyncpg only when used

        return PostgresDatabase(database_url, read_only=read_only)
    return SqliteDatabase(sqlite_path, read_only=read_only)


def check_url(url: str) -> str:
    """MODELPORT_DATABASE_URL as a server can use it; ValueError saying what is wrong."""
    from modelport.registry.postgres import check_url as check

    return check(url)


def where(database_url: str | None, sqlite_path: Path) -> str:
    """The registry in words, for messages (a URL without its password)."""
    if database_url:
        from modelport.registry.postgres import redacted

        return redacted(database_url)
    return str(sqlite_path)
