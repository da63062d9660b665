"""GET /api/v1/audit: who did what to which model, when, newest first."""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.params import QueryParameter

from modelport.api.common import Cursor, DbDep, Limit
from modelport.registry import audit
from modelport.registry.paging import clamp_limit, decode_cursor
from modelport.registry.records import AuditEntry, Page


@get("/api/v1/audit", opt={"perm": "read"}, tags=["audit"])
async def audit_log(
    db: DbDep,
    limit: Limit = None,
    cursor: Cursor = None,
    model: Annotated[str | None, QueryParameter(required=False)] = None,
) -> Page[AuditEntry]:
    """The audit trail, newest first; `?model=` narrows it to one model."""
    key = decode_cursor(cursor, int)
    return await audit.list_entries(db, limit=clamp_limit(limit), cursor=key, model=model)
