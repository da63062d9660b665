"""Deployment rows and their events, in the deployment shape of the API."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import msgspec

from modelport.clock import now_iso
from modelport.registry import audit, servers
from modelport.registry.db import Database, IntegrityError, Row, Tx
from modelport.registry.records import (
    SETTING_NAMES,
    CandidateOf,
    Deployment,
    DeploymentEvent,
    DeploymentSettings,
    Guard,
    Traffic,
)
from modelport.registry.rows import (
    BuildRow,
    DeploymentRow,
    NamedDeploymentRow,
    load,
    load_all,
)
from modelport.registry.sealed import Sealer, SealError
from modelport.registry.states import (
    ACTIVE_DEPLOYMENT,
    CANDIDATE,
    EventKind,
    IllegalMove,
    finishes,
    moving,
    status_after,
)

log = logging.getLogger("modelport.registry")

# History-only events the other servers sharing the registry act on: a restart renews every
# server's share of the deployment (each reports server.restarted: `restarts`); a server's
# report of its share, which the rolling-out server waits for.
HEARD: tuple[EventKind, ...] = (
    "restarting",
    "server.ready",
    "server.failed",
    "server.restarted",
    "server.restart_failed",
)
RESTART_ENDS: tuple[EventKind, ...] = ("restarted", "restart_failed", "restart_interrupted")


def traffic_of(row: DeploymentRow) -> Traffic | None:
    """A candidate row's traffic (None for a deployment that never was a candidate)."""
    if row.traffic_mode is None:
        return None
    return Traffic(row.traffic_mode, row.candidate_percent, row.sticky_header)


def guard_of(row: DeploymentRow) -> Guard | None:
    return msgspec.json.decode(row.guard, type=Guard) if row.guard else None


def to_deployment(
    row: DeploymentRow,
    model: str,
    events: list[DeploymentEvent] | None = None,
    candidate: DeploymentRow | None = None,
) -> Deployment:
    shown = candidate if candidate is not None else row
    is_candidate = row.status == CANDIDATE
    return Deployment(
        id=row.id,
        model=model,
        build=row.build_number,
        status=row.status,
        env_keys=sorted(row.env),  # the API shows its names only
        created_by=row.created_by,
        created_at=row.created_at,
        finished_at=row.finished_at,
        reason=row.reason,
        events=events or [],
        **{name: getattr(row, name) for name in SETTING_NAMES if name != "env"},
        candidate_of=row.candidate_of,
        candidate=(
            CandidateOf(candidate.id, candidate.build_number, candidate.status)
            if candidate is not None
            else None
        ),
        traffic=traffic_of(shown) if candidate is not None or is_candidate else None,
        guard=guard_of(shown) if candidate is not None or is_candidate else None,
    )


def settings_of(row: DeploymentRow, sealer: Sealer) -> DeploymentSettings:
    """What a deployment was created with, its env in clear (for its replicas, or a deployment
    that carries them over: keep_current, a rollback)."""
    values = {name: getattr(row, name) for name in SETTING_NAMES}
    return DeploymentSettings(**(values | {"env": env_of(row, sealer)}))


def _one(found: Row | None) -> DeploymentRow | None:
    return None if found is None else load(DeploymentRow, found)


async def current_by_model(db: Database, model_ids: Iterable[int]) -> dict[int, DeploymentRow]:
    """The active deployment row of each model that has one."""
    ids = list(model_ids)
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    states = ",".join("?" * len(ACTIVE_DEPLOYMENT))
    rows = await db.all(
        f"SELECT * FROM deployments WHERE model_id IN ({marks}) AND status IN ({states}) "
        "ORDER BY id",
        [*ids, *ACTIVE_DEPLOYMENT],
    )
    return {row.model_id: row for row in load_all(DeploymentRow, rows)}


async def events_of(
    db: Database, deployment_id: int, kinds: tuple[EventKind, ...] = ()
) -> list[DeploymentEvent]:
    """A deployment's history, oldest first; only the events of ``kinds`` when given (the other
    servers' reports of their share: server.ready, server.failed...)."""
    only = f" AND kind IN ({','.join('?' * len(kinds))})" if kinds else ""
    rows = await db.all(
        f"SELECT * FROM deployment_events WHERE deployment_id = ?{only} ORDER BY id",
        (deployment_id, *kinds),
    )
    return [
        DeploymentEvent(r["at"], r["kind"], r["actor"], msgspec.json.decode(r["detail"]))
        for r in rows
    ]


async def full(db: Database, row: DeploymentRow, model: str) -> Deployment:
    cand = await candidate(db, row.id) if row.status in ACTIVE_DEPLOYMENT else None
    return to_deployment(row, model, await events_of(db, row.id), cand)


async def candidate(db: Database, deployment_id: int) -> DeploymentRow | None:
    """The candidate of a deployment (a canary or a shadow beside it), if it has one."""
    return _one(
        await db.one(
            "SELECT * FROM deployments WHERE candidate_of = ? AND status = ?"
            " ORDER BY id DESC LIMIT 1",
            (deployment_id, CANDIDATE),
        )
    )


async def traffic_changed(
    db: Database,
    primary_id: int,
    candidate_id: int,
    percent: float,
    *,
    kind: EventKind = "traffic",
    actor: str | None,
    detail: dict[str, Any],
    audited: tuple[str, str] | None = None,
) -> None:
    """The candidate's share changed (by a person, or its guard): stored on its row, an event
    of both deployments' histories."""
    at = now_iso()
    async with db.write() as tx:
        await tx.execute(
            "UPDATE deployments SET candidate_percent = ? WHERE id = ?", (percent, candidate_id)
        )
        full_detail = {**detail, "candidate": candidate_id, "candidate_percent": percent}
        await _event(tx, primary_id, at, kind, actor, full_detail)
        await _event(tx, candidate_id, at, kind, actor, full_detail)
        await tx.notify("deployments")
        if audited is not None:
            action, model = audited
            await audit.record(
                tx, actor or "system", action, model=model, target=str(primary_id), detail=detail
            )


async def candidate_event(
    db: Database,
    primary_id: int,
    candidate_id: int,
    kind: EventKind,
    *,
    actor: str | None = None,
    detail: dict[str, Any],
    primary_kind: EventKind | None = None,
    reason: str | None = None,
    audited: tuple[str, str] | None = None,
) -> None:
    """An event of a candidate (``kind``, moving its status by the table) and of the deployment
    it is the candidate of (``primary_kind``, history only; the same kind when not given)."""
    at = now_iso()
    async with db.write() as tx:
        await _move(tx, candidate_id, at, kind, actor, detail, reason=reason)
        pk = primary_kind or kind
        await _event(tx, primary_id, at, pk, actor, {**detail, "candidate": candidate_id})
        await tx.notify("deployments")
        if audited is not None:
            action, model = audited
            await audit.record(
                tx, actor or "system", action, model=model, target=str(candidate_id), detail=detail
            )


async def promoted(
    db: Database, primary_id: int, candidate_id: int, *, actor: str | None, detail: dict[str, Any]
) -> None:
    """One write at the moment a candidate takes all its model's traffic: the primary (and any
    other deployment left active) is stopped, replaced by it, and it is deployed. Superseded when
    it is no longer a candidate (aborted meanwhile, replaced by a full deploy)."""
    at = now_iso()
    async with db.write() as tx:
        model_id = await tx.value("SELECT model_id FROM deployments WHERE id = ?", (candidate_id,))
        if model_id is None:
            raise Superseded(f"deployment {candidate_id} is gone (its model was deleted)")
        await tx.hold(f"deployments:{model_id}")
        status = await tx.value("SELECT status FROM deployments WHERE id = ?", (candidate_id,))
        if status != CANDIDATE:
            raise Superseded(f"deployment {candidate_id} is no longer a candidate ({status})")
        replaced = await tx.all(
            "UPDATE deployments SET status = ?, finished_at = ?, reason = ? WHERE"
            " model_id = ? AND id != ? AND status IN"
            f" ({','.join('?' * len(ACTIVE_DEPLOYMENT))}) RETURNING id",
            (
                status_after("deployed", "replaced"),
                at,
                f"replaced by deployment {candidate_id} (promoted)",
                model_id,
                candidate_id,
                *ACTIVE_DEPLOYMENT,
            ),
        )
        await tx.execute(
            "UPDATE deployments SET status = ? WHERE id = ?",
            (status_after(CANDIDATE, "promoted"), candidate_id),
        )
        await _event(tx, candidate_id, at, "promoted", actor, {**detail, "from": primary_id})
        for row in replaced:
            await _event(
                tx, row["id"], at, "replaced", actor, {"by": candidate_id, "promoted": True}
            )
        await audit.record(
            tx,
            actor or "system",
            "deployment.promote",
            model=await tx.value("SELECT name FROM models WHERE id = ?", (model_id,)),
            target=str(candidate_id),
            detail={**detail, "from": primary_id},
        )
        await tx.notify("deployments")


async def by_id(db: Database, model_id: int, deployment_id: int) -> DeploymentRow | None:
    return _one(
        await db.one(
            "SELECT * FROM deployments WHERE id = ? AND model_id = ?", (deployment_id, model_id)
        )
    )


async def current(db: Database, model_id: int) -> DeploymentRow | None:
    return (await current_by_model(db, [model_id])).get(model_id)


async def latest(db: Database, model_id: int) -> DeploymentRow | None:
    """The model's newest deployment, whatever its status."""
    return _one(
        await db.one(
            "SELECT * FROM deployments WHERE model_id = ? ORDER BY id DESC LIMIT 1", (model_id,)
        )
    )


async def history(
    db: Database, model_id: int, *, limit: int, cursor: int | None
) -> list[DeploymentRow]:
    return load_all(
        DeploymentRow,
        await db.all(
            "SELECT * FROM deployments WHERE model_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (model_id, cursor if cursor is not None else 2**62, limit + 1),
        ),
    )


def env_of(row: DeploymentRow, sealer: Sealer) -> dict[str, str]:
    """A deployment's env in clear (for its replicas, or a deployment that carries it over)."""
    return sealer.unseal_env(row.env) if row.env_sealed else row.env


KEY_CHECK = ("modelport", "the registry's key check")  # (name, value) sealed in seal_check


async def check_key(db: Database, sealer: Sealer) -> None:
    """The registry's key check opens with this server's key, else SealError: its env values
    were sealed with another one. The first server to look seals it (one row, whoever wins)."""
    sealed = await db.value("SELECT sealed FROM seal_check WHERE id = 1")
    if sealed is None:
        async with db.write() as tx:
            await tx.execute(
                "INSERT INTO seal_check (id, sealed) VALUES (1, ?) ON CONFLICT DO NOTHING",
                (sealer.seal(*KEY_CHECK),),
            )
        sealed = (await db.found("SELECT sealed FROM seal_check WHERE id = 1"))["sealed"]
    try:
        sealer.unseal(KEY_CHECK[0], sealed)
    except SealError:
        raise SealError(
            f"the registry's env values are sealed with another key than {sealer.where}: every "
            "server sharing a registry needs the same key (copy the first server's secret.key, "
            "or name one file with MODELPORT_SECRET_KEY_FILE)"
        ) from None


async def seal_clear_env(db: Database, sealer: Sealer) -> int:
    """Seal the env values of rows written before migration 5; returns how many rows. Their old
    bytes are zeroed in the file (secure_delete) and the WAL emptied, so that the clear values
    are nowhere in the registry's files afterwards."""
    rows = await db.all("SELECT id, env FROM deployments WHERE env_sealed = ?", (False,))
    if not rows:
        return 0
    async with db.write(scrub=True) as tx:
        for row in rows:
            sealed = sealer.seal_env(msgspec.json.decode(row["env"]))
            await tx.execute(
                "UPDATE deployments SET env = ?, env_sealed = ? WHERE id = ?",
                (msgspec.json.encode(sealed).decode(), True, row["id"]),
            )
    return len(rows)


async def create(
    db: Database,
    *,
    model_id: int,
    model: str,
    build_id: int,
    build_number: int,
    settings: DeploymentSettings,
    actor: str,
    sealer: Sealer,
    reason: str | None = None,
    schema_note: str | None = None,
    node: str | None = None,
    candidate_of: int | None = None,
    traffic: Traffic | None = None,
    guard: Guard | None = None,
) -> DeploymentRow:
    """A pending deployment; ``schema_note`` (how the input schema changed from the build
    that served) goes into its created event and the audit entry; ``node``: the server that
    rolls it out (the controller settles it if that server is gone before it served). With
    ``candidate_of`` (and its ``traffic``, its ``guard``): a candidate beside that deployment,
    created candidate, and an event candidate.added of the deployment it is the candidate of."""
    noted = {"schema_note": schema_note} if schema_note else {}
    kind: EventKind = "created" if candidate_of is None else "candidate.created"
    shape: dict[str, Any] = {}
    if traffic is not None:
        shape = {
            "mode": traffic.mode,
            "candidate_percent": traffic.candidate_percent,
            "sticky_header": traffic.sticky_header,
            "guard": msgspec.to_builtins(guard) if guard is not None else None,
        }
    columns: dict[str, Any] = {
        "model_id": model_id,
        "build_id": build_id,
        "build_number": build_number,
        "status": status_after(None, kind),
        **msgspec.structs.asdict(settings),
        "env": msgspec.json.encode(sealer.seal_env(settings.env)).decode(),
        "env_sealed": True,
        "resources": msgspec.json.encode(settings.resources).decode(),
        "created_by": actor,
        "created_at": now_iso(),
        "reason": reason,
        "candidate_of": candidate_of,
        "traffic_mode": traffic.mode if traffic is not None else None,
        "candidate_percent": traffic.candidate_percent if traffic is not None else 0.0,
        "sticky_header": traffic.sticky_header if traffic is not None else None,
        "guard": msgspec.json.encode(guard).decode() if guard is not None else None,
    }
    async with db.write() as tx:
        deployment_id = await tx.insert(
            f"INSERT INTO deployments ({', '.join(columns)})"
            f" VALUES ({','.join('?' * len(columns))}) RETURNING id",
            tuple(columns.values()),
        )
        if node is not None:
            await tx.execute("UPDATE deployments SET node = ? WHERE id = ?", (node, deployment_id))
        await _event(
            tx,
            deployment_id,
            now_iso(),
            kind,
            actor,
            {"build": build_number, "reason": reason, **noted, **shape},
        )
        if candidate_of is not None:
            await _event(
                tx,
                candidate_of,
                now_iso(),
                "candidate.added",
                actor,
                {"candidate": deployment_id, "build": build_number, **noted, **shape},
            )
        await audit.record(
            tx,
            actor,
            "deployment.create" if candidate_of is None else "deployment.candidate",
            model=model,
            target=str(deployment_id),
            detail={
                "build": build_number,
                "replicas": settings.replicas,
                "reason": reason,
                **noted,
                **shape,
            },
        )
        await tx.notify("deployments")
    found = await db.found("SELECT * FROM deployments WHERE id = ?", (deployment_id,))
    return load(DeploymentRow, found)


async def transition(
    db: Database,
    deployment_id: int,
    kind: EventKind,
    *,
    at_restart: bool = False,
    actor: str | None = None,
    detail: dict[str, Any] | None = None,
    reason: str | None = None,
    replicas: int | None = None,
    audited: tuple[str, str] | None = None,
    term: int | None = None,
) -> str:
    """Record an event of a deployment and the status it leads to (``states.status_after``);
    the event's time. ``at_restart``: the server's restart is the cause. ``audited`` (action,
    model name): a person's change, in the audit trail in the same transaction. ``term``: the
    controller's write, refused (servers.Fenced) once another server leads."""
    async with db.write() as tx:
        if term is not None:
            await servers.check_term(tx, term)
        at = now_iso()
        await _move(
            tx,
            deployment_id,
            at,
            kind,
            actor,
            detail or {},
            at_restart=at_restart,
            reason=reason,
            replicas=replicas,
        )
        if audited is not None:
            action, model = audited
            await audit.record(
                tx,
                actor or "system",
                action,
                model=model,
                target=str(deployment_id),
                detail=detail,
            )
    return at


async def _move(
    tx: Tx,
    deployment_id: int,
    at: str,
    kind: EventKind,
    actor: str | None,
    detail: dict[str, Any],
    *,
    at_restart: bool = False,
    reason: str | None = None,
    replicas: int | None = None,
) -> None:
    """The event, and the deployment's status after it (finished_at when that ends it). An event
    the table has no move for in the deployment's status (changed meanwhile by another server)
    is recorded, and the status stays: never a move the table does not have."""
    sets: list[str] = []
    params: list[Any] = []
    status = await tx.value("SELECT status FROM deployments WHERE id = ?", (deployment_id,))
    if status is not None:  # (a deployment gone with its model: the event's insert says so)
        try:
            after = status_after(status, kind, at_restart=at_restart)
        except IllegalMove as exc:
            log.warning("deployment %s: %s; its status stays", deployment_id, exc)
            after, reason = status, None
        if after != status:
            sets.append("status = ?")
            params.append(after)
        if finishes(status, after):
            sets.append("finished_at = ?")
            params.append(at)
    if reason is not None:
        sets.append("reason = ?")
        params.append(reason)
    if replicas is not None:
        sets.append("replicas = ?")
        params.append(replicas)
    if sets:
        await tx.execute(
            f"UPDATE deployments SET {', '.join(sets)} WHERE id = ?", (*params, deployment_id)
        )
    # what other servers serve changed, or an event they act on (a report, a restart)
    if "status = ?" in sets or replicas is not None or kind in HEARD:
        await tx.notify("deployments")
    await _event(tx, deployment_id, at, kind, actor, detail)


async def audited(
    db: Database, actor: str, action: str, model: str, deployment_id: int, detail: dict[str, Any]
) -> None:
    """A person's change to a deployment that wrote no event of its own, in the audit trail."""
    async with db.write() as tx:
        await audit.record(tx, actor, action, model=model, target=str(deployment_id), detail=detail)


class Superseded(Exception):
    """A deployment about to take its model's traffic was stopped meanwhile (a newer one took the
    traffic first, on this server or another; a stop): it must not switch."""


async def switched(
    db: Database, deployment_id: int, *, actor: str | None, detail: dict[str, Any]
) -> None:
    """One write at the moment a deployment takes the model's traffic: the earlier ones still
    active (the one it replaces, any left half-way) are stopped, and it is deployed — unless it
    was stopped itself meanwhile (Superseded). Under the model's lock, so that two servers
    switching two deployments of one model at once leave exactly one deployed: the newer."""
    at = now_iso()
    async with db.write() as tx:
        model_id = await tx.value("SELECT model_id FROM deployments WHERE id = ?", (deployment_id,))
        if model_id is None:
            raise Superseded(f"deployment {deployment_id} is gone (its model was deleted)")
        await tx.hold(f"deployments:{model_id}")
        # the earlier active ones, and any candidate (a full replace ends a canary, a shadow)
        replaced = await tx.all(
            "UPDATE deployments SET status = ?, finished_at = ?, reason = ? WHERE"
            " model_id = ? AND ((id < ? AND status IN"
            f" ({','.join('?' * len(ACTIVE_DEPLOYMENT))})) OR status = ?) RETURNING id",
            (
                status_after("deployed", "replaced"),
                at,
                f"replaced by deployment {deployment_id}",
                model_id,
                deployment_id,
                *ACTIVE_DEPLOYMENT,
                CANDIDATE,
            ),
        )
        switchable = moving("deployed")  # the statuses the switch may leave
        try:
            took = await tx.execute(
                "UPDATE deployments SET status = ? WHERE id = ?"
                f" AND status IN ({','.join('?' * len(switchable))})",
                (status_after(switchable[0], "deployed"), deployment_id, *switchable),
            )
        except IntegrityError:
            # a newer one is deployed already (deployments_one_deployed): one whose switch did
            # not see this one, committed after it (ids are not given in commit order)
            raise Superseded(
                f"deployment {deployment_id} does not take the traffic: a newer deployment "
                "of the model is deployed"
            ) from None
        if not took:  # (the transaction is undone: nothing above is stopped)
            raise Superseded(
                f"deployment {deployment_id} does not take the traffic: it was stopped "
                "meanwhile (a newer deployment took it, or a stop)"
            )
        await _event(tx, deployment_id, at, "deployed", actor, detail)
        for row in replaced:
            await _event(tx, row["id"], at, "replaced", None, {"by": deployment_id})
        await tx.notify("deployments")


async def _event(
    tx: Tx,
    deployment_id: int,
    at: str,
    kind: EventKind,
    actor: str | None,
    detail: dict[str, Any],
) -> None:
    await tx.execute(
        "INSERT INTO deployment_events (deployment_id, at, kind, actor, detail)"
        " VALUES (?, ?, ?, ?, ?)",
        (deployment_id, at, kind, actor, msgspec.json.encode(detail).decode()),
    )


async def restarts(db: Database) -> dict[int, str]:
    """The restarts under way: deployed deployment id → the time of its newest `restarting`
    event (what names the restart), when no restarted, restart_failed or restart_interrupted
    came after it."""
    kinds = ("restarting", *RESTART_ENDS)
    found = await db.all(
        "SELECT e.deployment_id, e.kind, e.at FROM deployment_events e"
        " JOIN deployments d ON d.id = e.deployment_id WHERE d.status = ? AND e.kind IN"
        f" ({','.join('?' * len(kinds))}) ORDER BY e.id",
        ("deployed", *kinds),
    )
    last = {r["deployment_id"]: r for r in found}
    return {i: r["at"] for i, r in last.items() if r["kind"] == "restarting"}


async def previous_build(
    db: Database, model_id: int, current_id: int, current_build: int
) -> int | None:
    """The build that served before the current deployment (one that reached deployed)."""
    build: int | None = await db.value(
        "SELECT d.build_number FROM deployments d WHERE d.model_id = ? AND d.id < ?"
        " AND d.build_number != ? AND EXISTS (SELECT 1 FROM deployment_events e"
        " WHERE e.deployment_id = d.id AND e.kind IN ('deployed', 'promoted'))"
        " ORDER BY d.id DESC LIMIT 1",
        (model_id, current_id, current_build),
    )
    return build


async def last_served_build(db: Database, model_id: int) -> BuildRow | None:
    """The build of the latest deployment that reached deployed: the one callers use now (or
    used last, when the model is stopped)."""
    found = await db.one(
        "SELECT b.* FROM deployments d JOIN builds b ON b.id = d.build_id WHERE d.model_id = ?"
        " AND EXISTS (SELECT 1 FROM deployment_events e WHERE e.deployment_id = d.id"
        " AND e.kind IN ('deployed', 'promoted')) ORDER BY d.id DESC LIMIT 1",
        (model_id,),
    )
    return None if found is None else load(BuildRow, found)


async def to_restore(db: Database) -> list[NamedDeploymentRow]:
    """At startup: what should serve again (a candidate too), and what was left half-way."""
    return load_all(
        NamedDeploymentRow,
        await db.all(
            "SELECT d.*, m.name AS model FROM deployments d JOIN models m ON m.id = d.model_id"
            f" WHERE d.status IN ({','.join('?' * (len(ACTIVE_DEPLOYMENT) + 1))}) ORDER BY d.id",
            (*ACTIVE_DEPLOYMENT, CANDIDATE),
        ),
    )


async def deployed(
    db: Database, model: str | None = None, status: str = "deployed"
) -> list[NamedDeploymentRow]:
    """The deployments that take traffic now (one a model at most), with their model's name;
    only ``model``'s when named: what every server sharing the registry serves. With
    ``status="deploying"``: those being rolled out (that other servers may start ahead)."""
    where, params = ("AND m.name = ?", (status, model)) if model is not None else ("", (status,))
    return load_all(
        NamedDeploymentRow,
        await db.all(
            "SELECT d.*, m.name AS model FROM deployments d JOIN models m ON m.id = d.model_id"
            f" WHERE d.status = ? {where} ORDER BY d.id",
            params,
        ),
    )
