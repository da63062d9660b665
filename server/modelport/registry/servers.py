"""The servers sharing a registry (a heartbeat each, with the address another server forwards
predictions to) and the controller's term: the one server that reconciles deployments takes a
new term when it becomes leader, and each of its writes checks the term is still its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from modelport.clock import iso, now_iso
from modelport.registry.db import Database, Row, Tx

CONTROLLER = "controller"


class Fenced(RuntimeError):
    """Another server took the controller's role (a newer term): this one must stop acting."""


def _ago(seconds: float) -> str:
    return iso(datetime.now(UTC) - timedelta(seconds=seconds))


async def heartbeat(db: Database, node: str, address: str, started_at: str) -> None:
    async with db.write() as tx:
        await tx.execute(
            "INSERT INTO servers (node, address, started_at, seen_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (node) DO UPDATE SET address = excluded.address,"
            " started_at = excluded.started_at, seen_at = excluded.seen_at",
            (node, address, started_at, now_iso()),
        )


async def leave(db: Database, node: str) -> None:
    """A server stopping cleanly: no longer a forwarding target, at once."""
    async with db.write() as tx:
        await tx.execute("DELETE FROM servers WHERE node = ?", (node,))


async def live(db: Database, within_s: float) -> list[Row]:
    """The servers seen in the last ``within_s`` seconds, by name."""
    return await db.all("SELECT * FROM servers WHERE seen_at >= ? ORDER BY node", (_ago(within_s),))


async def take_lead(db: Database, node: str) -> int:
    """This server leads from now on: its term (one more than the last leader's)."""
    async with db.write() as tx:
        await tx.hold("leadership")
        term: int = await tx.value(
            "INSERT INTO leadership (name, term, node, since) VALUES (?, 1, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET term = leadership.term + 1,"
            " node = excluded.node, since = excluded.since RETURNING term",
            (CONTROLLER, node, now_iso()),
        )
    return term


async def check_term(tx: Tx, term: int) -> None:
    """In a controller's write: Fenced unless ``term`` is still the newest."""
    await tx.hold("leadership")
    newest = await tx.value("SELECT term FROM leadership WHERE name = ?", (CONTROLLER,))
    if newest != term:
        raise Fenced(f"term {term} is over: another server leads (term {newest})")


async def leader(db: Database) -> Row | None:
    return await db.one("SELECT * FROM leadership WHERE name = ?", (CONTROLLER,))
