"""The audit trail: who did what to which model, when — written in the change's own transaction."""

from __future__ import annotations

from typing import Any

import msgspec

from modelport.clock import now_iso
from modelport.registry.db import Database, Tx
from modelport.registry.paging import next_cursor
from modelport.registry.records import AuditEntry, Page


async def record(
    tx: Tx,
    actor: str,
    action: str,
    *,
    model: str | None = None,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await tx.execute(
        "INSERT INTO audit (at, actor, action, model, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (now_iso(), actor, action, model, target, msgspec.json.encode(detail or {}).decode()),
    )


async def list_entries(
    db: Database, *, limit: int, cursor: int | None, model: str | None = None
) -> Page[AuditEntry]:
    where: list[str] = ["1=1"]
    params: list[Any] = []
    if cursor is not None:
        where.append("id < ?")
        params.append(cursor)
    if model:
        where.append("model = ?")
        params.append(model)
    rows = await db.all(
        f"SELECT * FROM audit WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
        [*params, limit + 1],
    )
    nxt = next_cursor(rows, limit, "id")
    items = [
        AuditEntry(
            r["id"],
            r["at"],
            r["actor"],
            r["action"],
            r["model"],
            r["target"],
            msgspec.json.decode(r["detail"]),
        )
        for r in rows
    ]
    return Page(items, nxt)
