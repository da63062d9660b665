"""Writes that must not race, hammered from two registries at once (two servers' connections to one
SQLite file, or two pools on one PostgreSQL database), each on both backends: build numbers, the
one deployed deployment of a model, token revocation, the last admin token."""

from __future__ import annotations

import asyncio
import random

import pytest
from modelport.errors import Conflict, TokenNotFound
from modelport.registry import builds, deployments, models, tokens
from modelport.registry.records import DEPLOYMENT_DEFAULTS
from modelport.registry.sealed import Sealer

ROUNDS = 12


def _two(registry, body):
    """``body(a, b)`` with two registries opened on the same data (as two servers have)."""

    async def go():
        a = await registry.open()
        b = await registry.open()
        try:
            return await body(a, b)
        finally:
            await a.close()
            await b.close()

    return asyncio.run(go())


async def _model(db, name="m") -> int:
    await models.create(db, name=name, description="", auth=True, owner="me", key_hash="h" + name)
    return (await models.row(db, name)).id


def _new_build() -> builds.NewBuild:
    return builds.NewBuild(
        entrypoint="m.py:f",
        python="3.11",
        requirements=None,
        snapshot="s",
        size_bytes=1,
        new_bytes=0,
        objects=["a" * 64],
    )


def test_build_numbers_of_one_model_are_unique_and_gapless_from_two_servers(registry):
    async def body(a, b):
        model_id = await _model(a)

        async def make(db) -> int:
            row = await builds.create(db, model_id, "m", "me", _new_build())
            return row.number

        numbers = await asyncio.gather(*(make(db) for _ in range(ROUNDS) for db in (a, b)))
        stored = [r["number"] for r in await b.all("SELECT number FROM builds ORDER BY number")]
        return sorted(numbers), stored

    numbers, stored = _two(registry, body)
    assert numbers == stored == list(range(1, 2 * ROUNDS + 1))


def test_two_servers_switching_deployments_of_one_model_leave_one_deployed_the_newest(registry):
    sealer = Sealer(b"k" * 32)
    settings = DEPLOYMENT_DEFAULTS

    async def body(a, b):
        model_id = await _model(a)
        build = await builds.create(a, model_id, "m", "me", _new_build(), status="built")
        outcomes: list[tuple[int, str]] = []
        for _ in range(4):
            made = [
                await deployments.create(
                    db,
                    model_id=model_id,
                    model="m",
                    build_id=build.id,
                    build_number=1,
                    settings=settings,
                    actor="me",
                    sealer=sealer,
                )
                for db in (a, b, a, b, a)
            ]
            ids = [row.id for row in made]
            order = ids[:]
            random.shuffle(order)

            async def switch(db, deployment_id: int) -> None:
                try:
                    await deployments.switched(db, deployment_id, actor="me", detail={})
                    outcomes.append((deployment_id, "deployed"))
                except deployments.Superseded:
                    outcomes.append((deployment_id, "superseded"))

            await asyncio.gather(*(switch((a, b)[i % 2], d) for i, d in enumerate(order)))
            rows = await b.all(
                "SELECT id, status FROM deployments WHERE model_id = ? ORDER BY id", (model_id,)
            )
            deployed = [r["id"] for r in rows if r["status"] == "deployed"]
            assert deployed == [max(ids)], rows
            assert {r["status"] for r in rows if r["id"] != max(ids)} == {"stopped"}
        return outcomes

    outcomes = dict(_two(registry, body))
    assert len(outcomes) == 20  # each switch either took the traffic or was told it may not


def _token(db, token_id: str, role: str = "admin"):
    return tokens.insert(
        db,
        token_id=token_id,
        name=token_id,
        role=role,
        models=[],
        secret_hash="h" + token_id,
        expires_at=None,
        actor="me",
    )


def test_a_token_revoked_from_two_servers_at_once_is_revoked_once(registry):
    async def body(a, b):
        for token_id in ("keep", "t"):
            await _token(a, token_id)

        async def revoke(db) -> str:
            try:
                await tokens.revoke(db, "t", "me")
                return "revoked"
            except TokenNotFound:
                return "not_found"

        results = await asyncio.gather(*(revoke(db) for _ in range(ROUNDS) for db in (a, b)))
        entries = await a.value("SELECT count(*) FROM audit WHERE action = 'token.revoke'")
        return sorted(results), entries

    results, entries = _two(registry, body)
    assert results.count("revoked") == 1 and results.count("not_found") == 2 * ROUNDS - 1
    assert entries == 1


def test_two_servers_revoking_every_admin_token_at_once_leave_one(registry):
    async def body(a, b):
        ids = [f"admin{i}" for i in range(6)]
        for token_id in ids:
            await _token(a, token_id)
        await _token(a, "viewer", role="viewer")

        async def revoke(db, token_id: str) -> str:
            try:
                await tokens.revoke(db, token_id, "me")
                return "revoked"
            except Conflict:
                return "refused"

        results = await asyncio.gather(*(revoke((a, b)[i % 2], t) for i, t in enumerate(ids)))
        left = await b.all("SELECT id FROM tokens WHERE role = 'admin' AND revoked_at IS NULL")
        return results, left

    results, left = _two(registry, body)
    assert sorted(results) == ["refused"] + ["revoked"] * 5
    assert len(left) == 1


@pytest.mark.parametrize("role", ["viewer"])
def test_the_last_admin_rule_does_not_hold_back_other_roles(registry, role):
    async def body(a, b):
        await _token(a, "admin")
        await _token(a, "other", role=role)
        revoked = await tokens.revoke(b, "other", "me")
        with pytest.raises(Conflict, match="last admin token"):
            await tokens.revoke(a, "admin", "me")
        return revoked

    assert _two(registry, body).revoked_at is not None


def test_one_model_created_from_two_servers_at_once_exists_once(registry):
    from modelport.errors import ModelExists

    async def body(a, b):
        async def create(db, i: int) -> str:
            try:
                await models.create(
                    db, name="same", description=f"{i}", auth=True, owner="me", key_hash=f"k{i}"
                )
                return "created"
            except ModelExists:
                return "exists"

        results = await asyncio.gather(*(create((a, b)[i % 2], i) for i in range(2 * ROUNDS)))
        rows = await a.all("SELECT name FROM models")
        entries = await b.value("SELECT count(*) FROM audit WHERE action = 'model.create'")
        return results, rows, entries

    results, rows, entries = _two(registry, body)
    assert sorted(results) == ["created"] + ["exists"] * (2 * ROUNDS - 1)
    assert rows == [{"name": "same"}] and entries == 1  # nothing half-made by the others
