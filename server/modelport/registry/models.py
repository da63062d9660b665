"""Model rows: create, read, list, change, delete; the access key is kept as a hash only."""

from __future__ import annotations

from typing import Any

from modelport.clock import now_iso
from modelport.errors import ModelActive, ModelExists, ModelNotFound
from modelport.registry import audit
from modelport.registry.db import Database, IntegrityError
from modelport.registry.deployments import current_by_model, to_deployment
from modelport.registry.paging import next_cursor
from modelport.registry.records import Model, Page
from modelport.registry.rows import DeploymentRow, ModelRow, load, load_all


def _to_model(row: ModelRow, deployment: DeploymentRow | None = None) -> Model:
    return Model(
        name=row.name,
        description=row.description,
        auth=row.auth,
        owner=row.owner,
        created_at=row.created_at,
        updated_at=row.updated_at,
        deployment=to_deployment(deployment, row.name) if deployment else None,
        rate_limit_per_s=row.rate_limit_per_s,
        rate_limit_burst=row.rate_limit_burst,
    )


async def row(db: Database, name: str) -> ModelRow:
    """The model named ``name``; ModelNotFound if there is none."""
    found = await db.one("SELECT * FROM models WHERE name = ?", (name,))
    if found is None:
        raise ModelNotFound(f"No model named '{name}'.")
    return load(ModelRow, found)


async def get(db: Database, name: str) -> Model:
    found = await row(db, name)
    current = await current_by_model(db, [found.id])
    return _to_model(found, current.get(found.id))


async def list_models(db: Database, *, limit: int, cursor: str | None) -> Page[Model]:
    rows = load_all(
        ModelRow,
        await db.all(
            "SELECT * FROM models WHERE name > ? ORDER BY name LIMIT ?", (cursor or "", limit + 1)
        ),
    )
    nxt = next_cursor(rows, limit, "name")
    current = await current_by_model(db, [r.id for r in rows])
    return Page([_to_model(r, current.get(r.id)) for r in rows], nxt)


async def every(db: Database) -> list[Model]:
    """Every model, without its deployment (what the gateway is told at start)."""
    rows = load_all(ModelRow, await db.all("SELECT * FROM models ORDER BY name"))
    return [_to_model(r) for r in rows]


async def create(
    db: Database,
    *,
    name: str,
    description: str,
    auth: bool,
    owner: str,
    key_hash: str,
    rate_limit_per_s: float | None = None,
    rate_limit_burst: int | None = None,
) -> Model:
    at = now_iso()
    detail: dict[str, Any] = {"auth": auth, "description": description}
    if rate_limit_per_s is not None:
        detail.update(rate_limit_per_s=rate_limit_per_s, rate_limit_burst=rate_limit_burst)
    try:
        async with db.write() as tx:
            await tx.execute(
                "INSERT INTO models (name, description, auth, owner, access_key_hash, created_at,"
                " updated_at, rate_limit_per_s, rate_limit_burst)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    description,
                    auth,
                    owner,
                    key_hash,
                    at,
                    at,
                    rate_limit_per_s,
                    rate_limit_burst,
                ),
            )
            await audit.record(tx, owner, "model.create", model=name, detail=detail)
            await tx.notify("models")
    except IntegrityError:
        raise ModelExists(f"A model named '{name}' already exists.") from None
    return await get(db, name)


async def update(db: Database, name: str, actor: str, changes: dict[str, Any]) -> Model:
    await row(db, name)
    if changes:
        sets = ", ".join(f"{col} = ?" for col in changes)
        async with db.write() as tx:
            await tx.execute(
                f"UPDATE models SET {sets}, updated_at = ? WHERE name = ?",
                (*changes.values(), now_iso(), name),
            )
            await audit.record(tx, actor, "model.update", model=name, detail=changes)
            await tx.notify("models")
    return await get(db, name)


async def set_access_key(db: Database, name: str, actor: str, key_hash: str) -> None:
    await row(db, name)
    async with db.write() as tx:
        await tx.execute(
            "UPDATE models SET access_key_hash = ?, updated_at = ? WHERE name = ?",
            (key_hash, now_iso(), name),
        )
        await audit.record(tx, actor, "model.access_key.rotate", model=name)
        await tx.notify("models")


async def delete(db: Database, name: str, actor: str) -> None:
    found = await row(db, name)
    current = await current_by_model(db, [found.id])
    if found.id in current:
        state = current[found.id].status
        raise ModelActive(
            f"Model '{name}' still has a deployment ({state}); stop it first "
            f"(`modelport stop {name}` or POST /api/v1/models/{name}/stop)."
        )
    async with db.write() as tx:
        await tx.execute("DELETE FROM models WHERE id = ?", (found.id,))
        await audit.record(tx, actor, "model.delete", model=name)
        await tx.notify("models")


async def access_key_hashes(db: Database) -> dict[str, str]:
    """hash → model name, for the in-memory key cache."""
    rows = await db.all("SELECT name, access_key_hash FROM models")
    return {r["access_key_hash"]: r["name"] for r in rows}
