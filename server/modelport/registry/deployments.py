"""Deployment rows and their events, as the SPEC's deployment shape."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from modelport.registry.db import Database
from modelport.registry.records import ACTIVE_DEPLOYMENT, Deployment, DeploymentEvent


def to_deployment(row: dict, model: str, events: list[DeploymentEvent] | None = None) -> Deployment:
    return Deployment(
        id=row["id"],
        model=model,
        build=row["build_number"],
        status=row["status"],
        replicas=row["replicas"],
        memory_mb=row["memory_mb"],
        timeout_s=row["timeout_s"],
        max_concurrency=row["max_concurrency"],
        queue_timeout_s=row["queue_timeout_s"],
        max_body_mb=row["max_body_mb"],
        env_keys=sorted(msgspec.json.decode(row["env"])),
        created_by=row["created_by"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        reason=row["reason"],
        events=events or [],
    )


async def current_by_model(db: Database, model_ids: Iterable[int]) -> dict[int, dict]:
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
    return {row["model_id"]: row for row in rows}
