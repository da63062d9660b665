"""Models: create (with the access key, once), list, read, change, delete, rotate the key."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromPath, JSONBody

from modelport.api.common import Cursor, DbDep, Limit, ModelName, ModelsDep, who
from modelport.registry import models as rows
from modelport.registry.paging import clamp_limit, decode_cursor
from modelport.registry.records import AccessKey, Model, ModelCreated, Page

Description = Annotated[str, msgspec.Meta(max_length=10_000)]
RatePerSecond = Annotated[
    float,
    msgspec.Meta(
        ge=0.001,
        le=1_000_000,
        description="Requests a second per key, token or (auth off) client "
        "address, from 0.001 (one an hour is 0.00028: use 0.001 or more); null: no limit",
    ),
]
Burst = Annotated[
    int,
    msgspec.Meta(
        ge=1, le=1_000_000, description="Requests at once above the rate; null: one second's worth"
    ),
]


class ModelCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: ModelName
    description: Description = ""
    auth: bool = True
    rate_limit_per_s: RatePerSecond | None = None
    rate_limit_burst: Burst | None = None


class ModelPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Fields left out are unchanged; the rate limit's fields may be set to null (no limit)."""

    description: Description | None = None
    auth: bool | None = None
    rate_limit_per_s: RatePerSecond | msgspec.UnsetType | None = msgspec.UNSET
    rate_limit_burst: Burst | msgspec.UnsetType | None = msgspec.UNSET


class ModelsController(Controller):
    path = "/api/v1/models"
    tags = ["models"]

    @post("/", opt={"perm": "write"}, status_code=201)
    async def create(
        self, request: Request, models: ModelsDep, data: JSONBody[ModelCreate]
    ) -> ModelCreated:
        """Create a model; the response holds its access key, shown this once."""
        return await models.create(
            data.name,
            owner=who(request).actor,
            description=data.description,
            auth=data.auth,
            rate_limit_per_s=data.rate_limit_per_s,
            rate_limit_burst=data.rate_limit_burst,
        )

    @get("/", opt={"perm": "read"})
    async def list_models(
        self, db: DbDep, limit: Limit = None, cursor: Cursor = None
    ) -> Page[Model]:
        """Every model, by name, a page at a time."""
        key = decode_cursor(cursor, str)
        return await rows.list_models(db, limit=clamp_limit(limit), cursor=key)

    @get("/{name:str}", opt={"perm": "read"})
    async def read(self, db: DbDep, name: FromPath[str]) -> Model:
        """One model, with the deployment serving it now (or null)."""
        return await rows.get(db, name)

    @patch("/{name:str}", opt={"perm": "write"})
    async def change(
        self, request: Request, models: ModelsDep, name: FromPath[str], data: JSONBody[ModelPatch]
    ) -> Model:
        """Change the description, the auth flag or the rate limit."""
        changes = {
            k: v
            for k, v in msgspec.structs.asdict(data).items()
            if v is not msgspec.UNSET and (v is not None or k.startswith("rate_limit_"))
        }
        return await models.update(name, who(request).actor, changes)

    @delete("/{name:str}", opt={"perm": "write"}, status_code=204)
    async def remove(self, request: Request, models: ModelsDep, name: FromPath[str]) -> None:
        """Delete a model and its builds; refused while a deployment still serves it."""
        await models.delete(name, who(request).actor)

    @post("/{name:str}/access-key/rotate", opt={"perm": "write"}, status_code=200)
    async def rotate_key(
        self, request: Request, models: ModelsDep, name: FromPath[str]
    ) -> AccessKey:
        """A new access key, shown once; the old one stops working at once."""
        return AccessKey(await models.rotate_key(name, who(request).actor))
