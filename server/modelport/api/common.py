"""What every controller shares: the registry and auth from app state, who is asking, paging."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Request
from litestar.params import QueryParameter

from modelport.auth import Identity, identity_of

MODEL_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
ModelName = Annotated[str, msgspec.Meta(pattern=MODEL_NAME, description="Model name")]

Limit = Annotated[int | None, QueryParameter(required=False)]
Cursor = Annotated[str | None, QueryParameter(required=False)]


def who(request: Request) -> Identity:
    return identity_of(request)


def state(request: Request):
    return request.app.state
