"""GET /api/v1/health: is the server up, and which version."""

from __future__ import annotations

import msgspec
from litestar import Request, get

from modelport.auth import identity_of

from modelport import __version__


class Health(msgspec.Struct):
    status: str
    version: str


@get("/api/v1/health", opt={"perm": "public"}, tags=["health"])
async def health() -> Health:
    """Liveness: answers without a token."""
    return Health("ok", __version__)


class WhoAmI(msgspec.Struct):
    id: str
    name: str
    role: str
    models: list[str]
    expires_at: str | None


@get("/api/v1/whoami", opt={"perm": "any"}, tags=["health"])
async def whoami(request: Request) -> WhoAmI:
    """The token this request came with: its name, role and (for predict tokens) models."""
    me = identity_of(request)
    return WhoAmI(me.id, me.name, me.role, list(me.models), me.expires_at)
