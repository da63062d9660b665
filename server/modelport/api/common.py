"""What every controller shares: who is asking, names, numbers, paging, strict booleans."""

from __future__ import annotations

import re
from datetime import UTC
from typing import Annotated

import msgspec
import msgspec.inspect as mi
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers import BaseRouteHandler
from litestar.params import PathParameter, QueryParameter

from modelport.auth import Auth, Identity, identity_of
from modelport.builder.pipeline import Builder
from modelport.builder.service import Builds
from modelport.clock import parse_iso
from modelport.errors import RequestInvalid
from modelport.gateway.routes import Routes
from modelport.models import Models
from modelport.observability.monitor import Monitor
from modelport.registry.db import Database
from modelport.registry.records import MODEL_NAME
from modelport.replay.runner import Replays
from modelport.runtime.invoke import field_of
from modelport.sandboxing import Sandbox
from modelport.serving.deployer import Deployer
from modelport.serving.supervisor import Supervisor
from modelport.settings import Settings
from modelport.store.contract import ContentStore

# The server's services, as a handler asks for them: by parameter name and type (`db: DbDep`).
# `app.dependencies` provides each under that name; the types make the handler's use checkable.
AuthDep = NamedDependency[Auth]
BuilderDep = NamedDependency[Builder]
BuildsDep = NamedDependency[Builds]
DbDep = NamedDependency[Database]
DeployerDep = NamedDependency[Deployer]
ModelsDep = NamedDependency[Models]
ReplaysDep = NamedDependency[Replays]
MonitorDep = NamedDependency[Monitor]
RoutesDep = NamedDependency[Routes]
SandboxDep = NamedDependency[Sandbox]
SettingsDep = NamedDependency[Settings]
StoreDep = NamedDependency[ContentStore]
SupervisorDep = NamedDependency[Supervisor]

ModelName = Annotated[str, msgspec.Meta(pattern=MODEL_NAME, description="Model name")]

ROW_MAX = 2**53 - 1  # the largest integer every JSON client reads exactly; ids never get there
RowNumber = Annotated[int, msgspec.Meta(ge=1, le=ROW_MAX)]
PathNumber = Annotated[int, PathParameter(ge=1, le=ROW_MAX)]

Limit = Annotated[int | None, QueryParameter(required=False, ge=1, le=500)]
Cursor = Annotated[
    str | None,
    QueryParameter(
        required=False,
        description="Opaque: the `next_cursor` of the page before (absent for the first page)",
    ),
]


def positive(**meta) -> msgspec.Meta:
    """``Meta(gt=0, ...)`` whose bound reaches the OpenAPI document: Litestar drops a zero bound of
    an optional field (it tests the bound's truth), so it is repeated as schema ``extra``."""
    return msgspec.Meta(gt=0, extra_json_schema={"extra": {"exclusive_minimum": 0}}, **meta)


def who(request: Request) -> Identity:
    return identity_of(request)


# --- JSON booleans are booleans -------------------------------------------------------------
# Litestar converts a body into its Struct leniently (it must, for query strings), so `0`, `1` and
# "false" would pass as booleans. For the bodies that hold a boolean, this guard decodes the
# (cached) body strictly first; other bodies cost nothing.

_strict_types: dict[object, type | None] = {}


def _holds_bool(info: mi.Type, seen: set[int]) -> bool:
    if id(info) in seen:
        return False
    seen.add(id(info))
    if isinstance(info, mi.BoolType):
        return True
    if isinstance(info, mi.UnionType):
        return any(_holds_bool(t, seen) for t in info.types)
    if isinstance(info, (mi.StructType, mi.DataclassType, mi.TypedDictType)):
        return any(_holds_bool(f.type, seen) for f in info.fields)
    return False


def _strict_type(handler: BaseRouteHandler) -> type | None:
    if handler not in _strict_types:
        found = None
        data = handler.parsed_fn_signature.parameters.get("data")
        if (
            data is not None
            and isinstance(data.type_, type)
            and issubclass(data.type_, msgspec.Struct)
        ):
            found = data.type_ if _holds_bool(mi.type_info(data.type_), set()) else None
        _strict_types[handler] = found
    return _strict_types[handler]


async def strict_booleans(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    body_type = _strict_type(handler)
    if body_type is None or not isinstance(connection, Request):
        return
    try:
        msgspec.json.decode(await connection.body(), type=body_type)
    except msgspec.ValidationError as exc:
        if "Expected `bool" in str(exc):  # `bool` or `bool | null`
            raise RequestInvalid(str(exc), field=field_of(str(exc))) from None
    except msgspec.DecodeError:
        pass  # Litestar's own reading of the body answers request.malformed


_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_time(text: str | None, now: float, field: str, default: float) -> float:
    """ISO-8601, or seconds before now (`3600`, `-3600`, `15m`, `2h`, `7d`)."""
    if not text:
        return default
    match = _RELATIVE.match(text.strip())
    if match:
        return now - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        moment = parse_iso(text.strip().replace(" ", "+"))  # a bare '+' in a query is a space
    except ValueError:
        raise RequestInvalid(
            f"`{field}` is neither an ISO-8601 time nor seconds before now.", field=field
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
