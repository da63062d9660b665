"""The registry's database seam (`Database`, `Tx`) on each backend (a real SQLite file, a real
PostgreSQL database): what each method returns, constraint errors in the registry's own type, a
failed transaction leaves nothing, and a read-only registry reads but does not write."""

from __future__ import annotations

import asyncio

import pytest
from modelport.registry.db import Database, IntegrityError

MODEL = (
    "INSERT INTO models (name, description, auth, owner, access_key_hash, created_at,"
    " updated_at) VALUES (?, '', ?, 'me', ?, 't', 't') RETURNING id"
)


def _run(registry, body):
    async def go():
        db = await registry.open()
        try:
            return await body(db)
        finally:
            await db.close()

    return asyncio.run(go())


def test_a_transaction_returns_ids_counts_and_values(registry):
    async def body(db: Database):
        assert isinstance(db, Database) and db.dialect == registry.dialect
        async with db.write() as tx:
            first = await tx.insert(MODEL, ("a", True, "ha"))
            second = await tx.insert(MODEL, ("b", False, "hb"))
            changed = await tx.execute("UPDATE models SET description = 'x'")
            many = await tx.execute_many(
                "UPDATE models SET owner = ? WHERE id = ?", [("you", first), ("you", second)]
            )
            seen = await tx.value("SELECT count(*) FROM models")  # its own writes, uncommitted
            none = await tx.value("SELECT id FROM models WHERE name = 'c'")
        rows = await db.all("SELECT name, auth, owner FROM models ORDER BY id")
        return first, second, changed, many, seen, none, rows

    first, second, changed, many, seen, none, rows = _run(registry, body)
    assert second == first + 1 and (changed, many, seen, none) == (2, 2, 2, None)
    assert rows == [
        {"name": "a", "auth": 1, "owner": "you"},
        {"name": "b", "auth": 0, "owner": "you"},
    ]


def test_a_broken_constraint_is_the_registrys_error_and_undoes_the_transaction(registry):
    async def body(db: Database):
        with pytest.raises(IntegrityError):
            async with db.write() as tx:
                await tx.insert(MODEL, ("a", True, "h1"))
                await tx.insert(MODEL, ("a", True, "h2"))  # the name is unique
        async with db.write() as tx:  # no transaction left open
            await tx.insert(MODEL, ("b", True, "h3"))
        return await db.all("SELECT name FROM models")

    assert _run(registry, body) == [{"name": "b"}]


def test_found_insists_on_a_row(registry):
    async def body(db: Database):
        with pytest.raises(LookupError):
            await db.found("SELECT * FROM models WHERE name = ?", ("nobody",))
        return await db.value("SELECT name FROM models")

    assert _run(registry, body) is None


def test_a_read_only_registry_reads_and_refuses_to_write(registry):
    async def body(db: Database):
        async with db.write() as tx:
            await tx.insert(MODEL, ("a", True, "h"))

    _run(registry, body)

    async def read_only():
        db = await registry.open(read_only=True)
        try:
            names = await db.all("SELECT name FROM models")
            with pytest.raises(RuntimeError, match="read-only"):
                async with db.write():
                    pass
            return names
        finally:
            await db.close()

    assert asyncio.run(read_only()) == [{"name": "a"}]


def test_a_committed_notify_is_heard_by_another_registry_and_a_rolled_back_one_is_not(registry):
    """What one server writes, another hears (PostgreSQL: LISTEN on its own connection, the
    notify sent at commit); SQLite has one server, whose listen returns at once."""

    async def body(db: Database):
        other = await registry.open()
        heard: list[str] = []
        connected = asyncio.Event()
        listening = asyncio.create_task(other.listen(heard.append, connected.set))
        try:
            if registry.dialect == "sqlite":
                await asyncio.wait_for(listening, 5)  # nothing to hear: it returns
                async with db.write() as tx:
                    await tx.notify("models")
                assert heard == [] and not connected.is_set()
                return
            await asyncio.wait_for(connected.wait(), 10)
            with pytest.raises(IntegrityError):
                async with db.write() as tx:
                    await tx.notify("tokens")
                    await tx.insert(MODEL, ("a", True, "ha"))
                    await tx.insert(MODEL, ("a", True, "hb"))  # the name taken: rolled back
            async with db.write() as tx:
                await tx.notify("models")
                await tx.notify("models")  # once a transaction
                await tx.notify("deployments")
            for _ in range(200):
                if len(heard) >= 2:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            assert heard == ["models", "deployments"]
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
            await other.close()

    _run(registry, body)
