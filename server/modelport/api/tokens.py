"""API tokens (admin only): issue (the secret shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, JSONBody

from modelport.api.common import AuthDep, Cursor, DbDep, Limit, ModelName, positive, who
from modelport.errors import RequestInvalid
from modelport.registry import tokens as rows
from modelport.registry.paging import clamp_limit, decode_cursor
from modelport.registry.records import Page, Role, Token, TokenCreated


class TokenCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    role: Role
    expires_in_days: Annotated[float, positive(le=36500)] | None = 365
    models: list[ModelName] = []


class TokensController(Controller):
    path = "/api/v1/tokens"
    tags = ["tokens"]
    opt = {"perm": "admin"}

    @post("/", status_code=201)
    async def create(
        self, request: Request, auth: AuthDep, data: JSONBody[TokenCreate]
    ) -> TokenCreated:
        """Issue a token; the response holds the secret, shown this once."""
        if data.models and data.role != "predict":
            raise RequestInvalid("Only predict tokens are scoped to models.", field="models")
        token, secret = await auth.issue_token(
            name=data.name,
            role=data.role,
            expires_in_days=data.expires_in_days,
            models=list(data.models),
            actor=who(request).actor,
        )
        return TokenCreated(**msgspec.structs.asdict(token), token=secret)

    @get("/")
    async def list_tokens(
        self, db: DbDep, limit: Limit = None, cursor: Cursor = None
    ) -> Page[Token]:
        """Every token that is not revoked (never the secrets)."""
        key = decode_cursor(cursor, str)
        return await rows.list_tokens(db, limit=clamp_limit(limit), cursor=key)

    @delete("/{token_id:str}", status_code=200)
    async def revoke(self, request: Request, auth: AuthDep, token_id: FromPath[str]) -> Token:
        """Revoke a token; it stops working at once."""
        return await auth.revoke_token(token_id, who(request).actor)
