"""GET /api/v1/health: is the server up, and which version."""

from __future__ import annotations

import msgspec
from litestar import get

from modelport import __version__


class Health(msgspec.Struct):
    status: str
    version: str


@get("/api/v1/health", opt={"perm": "public"}, tags=["health"])
async def health() -> Health:
    """Liveness: answers without a token."""
    return Health("ok", __version__)
