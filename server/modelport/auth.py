"""Tokens, model access keys and roles, with an in-memory cache so the hot path never asks SQLite.

Secrets are `mp_…` strings with 256 bits of randomness; the registry keeps only their sha256.
A salted slow hash (bcrypt, argon2) defends guessable passwords; a 256-bit random secret cannot be
guessed, so one sha256 is enough and keeps a lookup at a dictionary's cost. Lookups are keyed by
that hash, never by the secret, so the time a lookup takes says nothing about the secret's bytes;
where a presented secret is checked against one known hash, `hmac.compare_digest` does it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from pathlib import Path
from typing import Literal

import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from modelport.clock import in_days_iso, now_iso
from modelport.datadir import drop_admin_token
from modelport.errors import AuthDenied, AuthInvalid, AuthMissing
from modelport.registry import models as model_rows
from modelport.registry import tokens as token_rows
from modelport.registry.db import Database
from modelport.registry.records import Token
from modelport.registry.rows import TokenRow

log = logging.getLogger("modelport.auth")

TOKEN_PREFIX = "mp_tok_"
KEY_PREFIX = "mp_key_"

Permission = Literal["public", "any", "read", "private", "write", "admin"]
ALLOWED: dict[str, set[str]] = {
    "any": {"admin", "deployer", "viewer", "predict"},
    "read": {"admin", "deployer", "viewer"},
    # what may hold personal data (captured requests, replay reports): read by these only
    "private": {"admin", "deployer"},
    "write": {"admin", "deployer"},
    "admin": {"admin"},
}


class Identity(msgspec.Struct, frozen=True):
    id: str
    name: str
    role: str
    models: tuple[str, ...] = ()
    expires_at: str | None = None

    @property
    def actor(self) -> str:
        return self.name


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def bearer(header: str | None) -> str:
    if not header:
        raise AuthMissing()
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthInvalid("Send the token as `Authorization: Bearer <token>`.")
    return value.strip()


class Auth:
    """Who a token or key is; loaded once from the registry, kept current by every change."""

    def __init__(self, db: Database, token_file: Path | None = None):
        self.db, self.token_file = db, token_file  # token_file: the data dir's admin.token
        self._tokens: dict[str, Identity] = {}
        self._keys: dict[str, str] = {}  # access key hash → model name
        self._used: dict[str, str] = {}

    async def load(self) -> None:
        self._tokens = {r.hash: self._identity(r) for r in await token_rows.active_rows(self.db)}
        self._keys = await model_rows.access_key_hashes(self.db)

    async def load_keys(self) -> None:
        """The models' access keys again (another server rotated one, made or deleted a model)."""
        self._keys = await model_rows.access_key_hashes(self.db)

    @staticmethod
    def _identity(r: TokenRow) -> Identity:
        return Identity(r.id, r.name, r.role, tuple(r.models), r.expires_at)

    def token_identity(self, secret: str) -> Identity:
        """The token's identity; raises auth.invalid for unknown, expired or revoked ones."""
        return self.token_identity_hashed(hash_secret(secret))

    def token_identity_hashed(self, digest: str) -> Identity:
        """``token_identity`` for a secret already hashed (the gateway hashes once per request)."""
        found = self._tokens.get(digest)
        if found is None:
            raise AuthInvalid()
        if found.expires_at is not None and found.expires_at <= now_iso():
            raise AuthInvalid("The token has expired.")
        self._used[found.id] = now_iso()
        return found

    def key_model(self, secret: str) -> str | None:
        """The model a secret is the access key of, or None."""
        return self._keys.get(hash_secret(secret))

    def key_model_hashed(self, digest: str) -> str | None:
        return self._keys.get(digest)

    def authenticate(self, header: str | None, permission: Permission) -> Identity:
        identity = self.token_identity(bearer(header))
        if identity.role not in ALLOWED[permission]:
            raise AuthDenied(f"A token of role '{identity.role}' may not do this.")
        return identity

    def permission_guard(self, connection: ASGIConnection, handler: BaseRouteHandler) -> None:
        """Every route says what it needs in `opt["perm"]` (default admin); public routes say so."""
        permission: Permission = handler.opt.get("perm", "admin")
        if permission == "public":
            return
        header = connection.headers.get("authorization")
        if handler.opt.get("model_key") and header:
            # A route of one model's (its OpenAPI document) also takes that model's access key, so
            # whoever may call the model can read how to.
            name = connection.path_params.get("name")
            scheme, _, secret = header.partition(" ")
            if name and scheme.lower() == "bearer" and self.key_model(secret.strip()) == name:
                # the guard's finding travels in the scope, whose TypedDict Litestar closes
                connection.scope["identity"] = Identity(  # type: ignore[typeddict-unknown-key]
                    f"key:{name}", f"{name}'s access key", "predict", (name,)
                )
                return
        connection.scope["identity"] = self.authenticate(  # type: ignore[typeddict-unknown-key]
            header, permission
        )

    async def issue_token(
        self, *, name: str, role: str, expires_in_days: float | None, models: list[str], actor: str
    ) -> tuple[Token, str]:
        secret = new_secret(TOKEN_PREFIX)
        token = await token_rows.insert(
            self.db,
            token_id="tok_" + secrets.token_hex(6),
            name=name,
            role=role,
            models=models,
            secret_hash=hash_secret(secret),
            expires_at=in_days_iso(expires_in_days) if expires_in_days else None,
            actor=actor,
        )
        self._tokens[hash_secret(secret)] = Identity(
            token.id, name, role, tuple(models), token.expires_at
        )
        return token, secret

    async def revoke_token(self, token_id: str, actor: str) -> Token:
        """Revoke a token; 409 for the last admin token that works (nobody could manage the
        server after it: make another admin token first). The registry decides, in the
        transaction that revokes: another server may have revoked an admin token meanwhile."""
        token = await token_rows.revoke(self.db, token_id, actor)
        self._tokens = {h: i for h, i in self._tokens.items() if i.id != token_id}
        await self.drop_stale_token_file()
        return token

    async def drop_stale_token_file(self) -> None:
        """``admin.token`` never holds a token that no longer works here (revoked, unknown)."""
        if self.token_file is not None and await asyncio.to_thread(
            drop_admin_token, self.token_file, self._tokens.__contains__
        ):
            log.warning(
                "removed %s: the token in it is revoked (`modelport admin reset-token` "
                "makes a new one)",
                self.token_file,
            )

    def new_model_key(self, model: str) -> tuple[str, str]:
        """A fresh access key for a model: (secret, hash); `remember_key` once it is stored."""
        secret = new_secret(KEY_PREFIX)
        return secret, hash_secret(secret)

    def remember_key(self, model: str, key_hash: str) -> None:
        self.forget_model(model)
        self._keys[key_hash] = model

    def forget_model(self, model: str) -> None:
        self._keys = {h: m for h, m in self._keys.items() if m != model}

    async def flush_usage(self) -> None:
        used, self._used = self._used, {}
        try:
            await token_rows.touch(self.db, used)
        except BaseException:  # (a full disk): kept for the next flush, newer uses first
            self._used = {**used, **self._used}
            raise


def identity_of(connection: ASGIConnection) -> Identity:
    """Who the permission guard found the request to be. A request it let through without one (a
    public route) is nobody: asking is auth.missing, never someone with rights."""
    identity = connection.scope.get("identity")
    if not isinstance(identity, Identity):
        raise AuthMissing()
    return identity
