"""The registry's schema on both backends: one migration source, the same tables and columns,
migrations run once however many servers start together, and a registry newer than this
modelport refused with a message saying so."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg
import pytest
from modelport.registry.db import RegistryTooNew, RegistryUnreachable
from modelport.registry.postgres import PostgresDatabase
from modelport.registry.schema import MIGRATIONS, SCHEMA_TABLE

from tests.conftest import Registry, free_port


def _columns(registry) -> dict[str, list[str]]:
    async def read():
        db = await registry.open()
        try:
            if registry.dialect == "sqlite":
                tables = await db.all("SELECT name FROM sqlite_master WHERE type = 'table'")
                return {
                    t["name"]: sorted(
                        c["name"] for c in await db.all(f"PRAGMA table_info({t['name']})")
                    )
                    for t in tables
                }
            rows = await db.all(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name != ?",
                (SCHEMA_TABLE,),
            )
            out: dict[str, list[str]] = {}
            for r in rows:
                out.setdefault(r["table_name"], []).append(r["column_name"])
            return {t: sorted(c) for t, c in out.items()}
        finally:
            await db.close()

    return asyncio.run(read())


def test_both_backends_have_the_same_tables_and_columns(tmp_path, pg_url):
    sqlite = _columns(Registry("sqlite", tmp_path / "r.sqlite3", None))
    postgres = _columns(Registry("postgresql", tmp_path / "unused", pg_url))
    assert sqlite == postgres
    assert {"models", "builds", "deployments", "tokens", "audit", "captures"} <= set(postgres)


def test_postgres_migrations_run_once_when_servers_start_together(pg_url):
    async def run():
        dbs = await asyncio.gather(*(PostgresDatabase(pg_url).open() for _ in range(4)))
        for db in dbs:
            await db.close()
        conn = await asyncpg.connect(pg_url)
        try:
            return [r["version"] for r in await conn.fetch(f"SELECT version FROM {SCHEMA_TABLE}")]
        finally:
            await conn.close()

    assert sorted(asyncio.run(run())) == list(range(1, len(MIGRATIONS) + 1))


def _age_registry(registry) -> None:
    """The registry as a newer modelport would leave it: one migration past what we know."""

    async def bump():
        db = await registry.open()
        await db.close()
        if registry.dialect == "sqlite":
            conn = sqlite3.connect(registry.path)
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
            conn.commit()
            conn.close()
        else:
            conn = await asyncpg.connect(registry.url)
            await conn.execute(
                f"INSERT INTO {SCHEMA_TABLE} (version, applied_at) VALUES ($1, 'later')",
                len(MIGRATIONS) + 1,
            )
            await conn.close()

    asyncio.run(bump())


def test_a_registry_newer_than_this_modelport_is_refused(registry):
    _age_registry(registry)
    with pytest.raises(RegistryTooNew, match=f"version {len(MIGRATIONS) + 1}, newer than"):
        asyncio.run(registry.open())
    with pytest.raises(RegistryTooNew, match="Upgrade modelport"):
        asyncio.run(registry.open(read_only=True))


def test_an_unreachable_postgres_is_registry_unreachable_naming_it_without_password():
    url = f"postgresql://modelport:s3cret@127.0.0.1:{free_port()}/modelport"
    with pytest.raises(RegistryUnreachable, match="cannot be reached") as caught:
        asyncio.run(PostgresDatabase(url).open())
    assert "s3cret" not in str(caught.value) and "modelport:***@127.0.0.1" in str(caught.value)


def test_migrate_copies_every_table_of_the_schema(registry):
    from modelport.registry.transfer import TABLES, tables_of

    async def read():
        db = await registry.open()
        try:
            return await tables_of(db)
        finally:
            await db.close()

    assert asyncio.run(read()) == {t for t, _ in TABLES}


def test_the_registry_key_check_refuses_another_key(registry, tmp_path):
    from modelport.registry.deployments import check_key
    from modelport.registry.sealed import Sealer, SealError, load_key

    mine, other = Sealer(b"a" * 32, "mine"), Sealer(b"b" * 32, "theirs")

    async def run():
        db = await registry.open()
        try:
            await check_key(db, mine)  # the first to look seals it
            await check_key(db, mine)
            with pytest.raises(SealError, match="sealed with another key than theirs"):
                await check_key(db, other)
            return await db.value("SELECT count(*) FROM seal_check")
        finally:
            await db.close()

    assert asyncio.run(run()) == 1
    with pytest.raises(SealError, match="cannot be read"):  # a shared key is never made here
        load_key(tmp_path / "absent.key", create=False)
    assert not (tmp_path / "absent.key").exists()
