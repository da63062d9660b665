"""The registry moves a deployment's status as its events lead it (registry/states.py), on each
backend: the status and finished_at each event writes, the switch's one write, and an event with
no move from the deployment's status recorded, the status staying."""

from __future__ import annotations

import asyncio

import pytest
from modelport.registry import deployments as rows
from modelport.registry.db import Database
from modelport.registry.records import DEPLOYMENT_DEFAULTS
from modelport.registry.sealed import Sealer

SETTINGS = DEPLOYMENT_DEFAULTS


def _run(registry, body):
    async def go():
        db = await registry.open()
        try:
            return await body(db)
        finally:
            await db.close()

    return asyncio.run(go())


async def _deployment(db: Database) -> tuple[int, int]:
    """A model with a build, and a deployment of it just created: (model id, deployment id)."""
    async with db.write() as tx:
        model_id = await tx.insert(
            "INSERT INTO models (name, owner, access_key_hash, created_at, updated_at)"
            " VALUES ('m', 'me', 'h', 't', 't') RETURNING id"
        )
        await tx.execute(
            "INSERT INTO builds (model_id, number, status, entrypoint, python, created_by,"
            " created_at) VALUES (?, 1, 'built', 'a.py:f', '3.11', 'me', 't')",
            (model_id,),
        )
    return model_id, await _another(db, model_id)


async def _another(db: Database, model_id: int) -> int:
    """One more deployment of the model's build; its id."""
    build_id = await db.value("SELECT id FROM builds WHERE model_id = ?", (model_id,))
    row = await rows.create(
        db,
        model_id=model_id,
        model="m",
        build_id=build_id,
        build_number=1,
        settings=SETTINGS,
        actor="me",
        sealer=Sealer(bytes(32)),
    )
    return row.id


async def _shown(db: Database, model_id: int, deployment_id: int):
    row = await rows.by_id(db, model_id, deployment_id)
    assert row is not None
    return await rows.full(db, row, "m")


def test_a_deployment_goes_from_pending_to_stopped_through_its_events(registry):
    async def body(db: Database):
        model_id, d = await _deployment(db)
        seen = [(await _shown(db, model_id, d)).status]
        await rows.transition(db, d, "deploying", actor="me")
        seen.append((await _shown(db, model_id, d)).status)
        await rows.switched(db, d, actor="me", detail={"replicas": 1})
        seen.append((await _shown(db, model_id, d)).status)
        await rows.transition(db, d, "replica.crashed", detail={"replica": "m-1-0-abcd"})
        await rows.transition(db, d, "scaled", actor="me", detail={"to": 3}, replicas=3)
        shown = await _shown(db, model_id, d)
        seen.append(shown.status)
        assert shown.replicas == 3 and shown.finished_at is None
        await rows.transition(db, d, "stopping", actor="me")
        seen.append((await _shown(db, model_id, d)).status)
        await rows.transition(db, d, "stopped", actor="me", reason="stopped by me")
        shown = await _shown(db, model_id, d)
        assert shown.status == "stopped" and shown.reason == "stopped by me"
        assert shown.finished_at is not None
        assert seen == ["pending", "deploying", "deployed", "deployed", "stopping"]
        assert [e.kind for e in shown.events] == [
            "created",
            "deploying",
            "deployed",
            "replica.crashed",
            "scaled",
            "stopping",
            "stopped",
        ]

    _run(registry, body)


def test_an_event_with_no_move_from_the_status_is_recorded_and_the_status_stays(registry, caplog):
    # (another server changed the deployment meanwhile): never a move the table does not have
    async def body(db: Database):
        model_id, d = await _deployment(db)
        await rows.transition(db, d, "stopped", actor="me", reason="stopped by me")
        shown = await _shown(db, model_id, d)
        assert shown.status == "pending" and shown.reason is None and shown.finished_at is None
        assert [e.kind for e in shown.events] == ["created", "stopped"]
        await rows.transition(db, d, "interrupted", reason="replaced")
        await rows.transition(db, d, "deploying")  # a late report: it stays stopped
        shown = await _shown(db, model_id, d)
        assert (shown.status, shown.reason) == ("stopped", "replaced")
        with pytest.raises(rows.Superseded, match="stopped meanwhile"):
            await rows.switched(db, d, actor="me", detail={})
        shown = await _shown(db, model_id, d)
        assert shown.status == "stopped" and shown.events[-1].kind == "deploying"

    _run(registry, body)
    assert "'stopped' event cannot happen to a deployment pending" in caplog.text


def test_the_switch_stops_what_it_replaces_in_the_same_write(registry):
    async def body(db: Database):
        model_id, first = await _deployment(db)
        await rows.transition(db, first, "deploying")
        await rows.switched(db, first, actor="me", detail={})
        second = await _another(db, model_id)
        await rows.transition(db, second, "deploying")
        await rows.switched(db, second, actor="me", detail={})
        old, new = await _shown(db, model_id, first), await _shown(db, model_id, second)
        assert (old.status, new.status) == ("stopped", "deployed")
        assert old.reason == f"replaced by deployment {second}" and old.finished_at is not None
        assert old.events[-1].kind == "replaced" and old.events[-1].detail == {"by": second}

    _run(registry, body)


def test_the_servers_restart_fails_a_deployment_that_never_took_traffic(registry):
    async def body(db: Database):
        model_id, d = await _deployment(db)
        await rows.transition(db, d, "deploying")
        await rows.transition(db, d, "interrupted", at_restart=True, reason="restarted")
        shown = await _shown(db, model_id, d)
        assert (shown.status, shown.events[-1].kind) == ("failed", "interrupted")
        assert shown.finished_at is not None

        other = await _another(db, model_id)
        await rows.transition(db, other, "interrupted", reason="replaced")  # a person's doing
        assert (await _shown(db, model_id, other)).status == "stopped"

    _run(registry, body)
