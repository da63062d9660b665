"""What every controller shares: the registry and auth from app state, who is asking, paging."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Request
from litestar.params import PathParameter, QueryParameter

from modelport.auth import Identity, identity_of
from modelport.registry.records import MODEL_NAME

ModelName = Annotated[str, msgspec.Meta(pattern=MODEL_NAME, description="Model name")]

ROW_MAX = 2**53 - 1  # the largest integer every JSON client reads exactly; ids never get there
RowNumber = Annotated[int, msgspec.Meta(ge=1, le=ROW_MAX)]
PathNumber = Annotated[int, PathParameter(ge=1, le=ROW_MAX)]

Limit = Annotated[int | None, QueryParameter(required=False, ge=1, le=500)]
Cursor = Annotated[str | None, QueryParameter(required=False)]


def positive(**meta) -> msgspec.Meta:
    """``Meta(gt=0, ...)`` whose bound reaches the OpenAPI document: Litestar drops a zero bound of
    an optional field (it tests the bound's truth), so it is repeated as schema ``extra``."""
    return msgspec.Meta(gt=0, extra_json_schema={"extra": {"exclusive_minimum": 0}}, **meta)


def who(request: Request) -> Identity:
    return identity_of(request)


def state(request: Request):
    return request.app.state
