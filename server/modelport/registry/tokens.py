"""Token rows: issued, listed, revoked, touched; the secret itself is never stored."""

from __future__ import annotations

import msgspec

from modelport.clock import now_iso
from modelport.errors import Conflict, TokenNotFound
from modelport.registry import audit
from modelport.registry.db import Database
from modelport.registry.paging import next_cursor
from modelport.registry.records import Page, Token
from modelport.registry.rows import TokenRow, load, load_all


def to_token(r: TokenRow) -> Token:
    return Token(
        id=r.id,
        name=r.name,
        role=r.role,
        models=r.models,
        created_at=r.created_at,
        expires_at=r.expires_at,
        last_used_at=r.last_used_at,
        revoked_at=r.revoked_at,
    )


async def _by_id(db: Database, token_id: str) -> TokenRow:
    return load(TokenRow, await db.found("SELECT * FROM tokens WHERE id = ?", (token_id,)))


async def insert(
    db: Database,
    *,
    token_id: str,
    name: str,
    role: str,
    models: list[str],
    secret_hash: str,
    expires_at: str | None,
    actor: str,
) -> Token:
    async with db.write() as tx:
        await tx.execute(
            "INSERT INTO tokens (id, name, role, models, hash, created_by, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                token_id,
                name,
                role,
                msgspec.json.encode(models).decode(),
                secret_hash,
                actor,
                now_iso(),
                expires_at,
            ),
        )
        await audit.record(
            tx,
            actor,
            "token.create",
            target=token_id,
            detail={"name": name, "role": role, "models": models},
        )
        await tx.notify("tokens")
    return to_token(await _by_id(db, token_id))


async def list_tokens(
    db: Database, *, limit: int, cursor: str | None, include_revoked: bool = False
) -> Page[Token]:
    revoked = "" if include_revoked else "AND revoked_at IS NULL"
    rows = load_all(
        TokenRow,
        await db.all(
            f"SELECT * FROM tokens WHERE id > ? {revoked} ORDER BY id LIMIT ?",
            (cursor or "", limit + 1),
        ),
    )
    nxt = next_cursor(rows, limit, "id")
    return Page([to_token(r) for r in rows], nxt)


LAST_ADMIN = (
    "This is the last admin token that works: revoking it would lock "
    "everyone out of the API. Create another admin token first."
)


async def revoke(db: Database, token_id: str, actor: str) -> Token:
    """Revoke an active token: TokenNotFound if there is none by that id (or another revoked it
    first), Conflict if it is the last admin token that works. One transaction, holding the
    tokens' lock: two servers revoking the last two admin tokens at once cannot both succeed."""
    now = now_iso()
    async with db.write() as tx:
        await tx.hold("tokens")
        active = await tx.one(
            "SELECT * FROM tokens WHERE id = ? AND revoked_at IS NULL", (token_id,)
        )
        if active is None:
            raise TokenNotFound(f"No active token with id '{token_id}'.")
        found = load(TokenRow, active)
        if found.role == "admin" and (found.expires_at is None or found.expires_at > now):
            others = await tx.value(
                "SELECT count(*) FROM tokens WHERE role = 'admin' AND revoked_at IS NULL"
                " AND (expires_at IS NULL OR expires_at > ?) AND id != ?",
                (now, token_id),
            )
            if not others:
                raise Conflict(LAST_ADMIN)
        await tx.execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, token_id)
        )
        await tx.notify("tokens")
        await audit.record(tx, actor, "token.revoke", target=token_id, detail={"name": found.name})
    return to_token(await _by_id(db, token_id))


async def active_rows(db: Database) -> list[TokenRow]:
    return load_all(TokenRow, await db.all("SELECT * FROM tokens WHERE revoked_at IS NULL"))


async def touch(db: Database, used: dict[str, str]) -> None:
    """Write the batched last-used times (token id → time)."""
    if used:
        async with db.write() as tx:
            await tx.execute_many(
                "UPDATE tokens SET last_used_at = ? WHERE id = ?",
                [(at, token_id) for token_id, at in used.items()],
            )


async def count(db: Database) -> int:
    n: int = await db.value("SELECT COUNT(*) FROM tokens")
    return n
