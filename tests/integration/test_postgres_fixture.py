"""The tests' PostgreSQL (scripts/pg-server): up on loopback, one fresh database per test."""

from __future__ import annotations

import asyncio

import asyncpg


def test_each_test_gets_its_own_empty_database(postgres, pg_url):
    other = postgres.fresh_database()
    assert other != pg_url

    async def check() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("CREATE TABLE t (x int)")
            assert await conn.fetchval("SELECT current_user") == "modelport"
            assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        finally:
            await conn.close()
        conn = await asyncpg.connect(other)
        try:
            tables = await conn.fetch("SELECT 1 FROM pg_tables WHERE schemaname = 'public'")
            assert tables == []
        finally:
            await conn.close()

    asyncio.run(check())
