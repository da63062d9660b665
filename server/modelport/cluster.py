"""Several servers on one registry: each keeps what it serves in memory and learns of another
server's changes from the registry (PostgreSQL LISTEN/NOTIFY), with a full reload every
``reconcile_s`` as the safety net.

Every write that changes what a server keeps in memory notifies a topic in its transaction
(`Tx.notify`): ``models`` (the gateway's table of models, their access keys), ``tokens``,
``deployments`` (what serves). A server hears every topic, its own included, and reloads that
part from the registry: a reload reads what is committed, so whichever order notifications come
in, the last reload leaves the server as the registry is. Topics heard while a reload runs are
taken together by the next. On SQLite (one server) nothing is heard and nothing runs here.

One server at a time is the controller: it holds a session advisory lock on a connection of its
own (`Database.lead`), takes a new term in the registry when it gets it, and settles what a
server that is gone left half-way (`Deployer.settle`), every write of it checking the term
(`servers.Fenced`: another server leads now, this one stops acting). Every server writes a
heartbeat each HEARTBEAT_S with the address others forward predictions to; a server not seen for
LIVE_S is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from modelport.auth import Auth
from modelport.clock import now_iso
from modelport.models import Models
from modelport.registry import servers
from modelport.registry.db import Database, RegistryUnreachable
from modelport.serving.deployer import Deployer

log = logging.getLogger("modelport.cluster")

TOPICS = ("models", "tokens", "deployments")
HEARTBEAT_S = 1.0
LIVE_S = 5.0  # a server not seen for this long is gone: its half-way rollouts are settled


class Cluster:
    """The listener, the reloads it asks for and the periodic full reload."""

    def __init__(
        self,
        db: Database,
        auth: Auth,
        models: Models,
        deployer: Deployer,
        *,
        node: str,
        address: str,
        reconcile_s: float = 10.0,
    ) -> None:
        self.db, self.reconcile_s = db, reconcile_s
        self.node, self.address, self.deployer = node, address, deployer
        self.term: int | None = None  # while this server is the controller
        self.started_at = now_iso()
        self.started: dict[str, str] = {}  # live server → when it started
        self._reloads: dict[str, Callable[[], Awaitable[None]]] = {
            "models": models.reload,
            "tokens": auth.load,
            "deployments": deployer.follow,
        }
        self._due: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.reloaded_at = 0.0  # time.monotonic() of the last full reload (tests, health)

    @property
    def shared(self) -> bool:
        return self.db.dialect == "postgresql"

    async def join(self) -> None:
        """Before this server serves: its heartbeat written and the live servers read, so that
        its first placement counts the others (SQLite: nothing)."""
        if self.shared:
            await servers.heartbeat(self.db, self.node, self.address, self.started_at)
            await self._seen()

    async def _seen(self) -> None:
        """The live servers as the registry has them; a change re-places the replicas."""
        found = await servers.live(self.db, LIVE_S)
        self.started = {r["node"]: r["started_at"] for r in found}
        nodes = {r["node"]: r["address"] for r in found}
        if nodes != self.deployer.nodes:
            if self.deployer.nodes:
                log.info("servers now: %s", ", ".join(sorted(nodes)) or "none")
            self.deployer.nodes = nodes
            self._due.add("deployments")
            self._wake.set()

    def start(self) -> None:
        if not self.shared or self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self.db.listen(self.heard, self.everything)),
            asyncio.create_task(self._reload_loop()),
            asyncio.create_task(self._periodic()),
            asyncio.create_task(self._heartbeats()),
            asyncio.create_task(self.db.lead("controller", self._leading)),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.shared:
            with contextlib.suppress(Exception):  # no longer a forwarding target, at once
                await servers.leave(self.db, self.node)

    async def _leading(self, held: bool) -> None:
        if not held:
            if self.term is not None:
                log.warning("%s is no longer the controller (term %d)", self.node, self.term)
            self.term = None
            return
        while self.term is None:
            try:
                self.term = await servers.take_lead(self.db, self.node)
            except RegistryUnreachable:
                await asyncio.sleep(HEARTBEAT_S)
        log.info("%s is the controller (term %d)", self.node, self.term)

    async def _heartbeats(self) -> None:
        said = ""
        while True:
            try:
                await servers.heartbeat(self.db, self.node, self.address, self.started_at)
                await self._seen()
                term = self.term
                if term is not None:
                    settled = await self.deployer.settle(term, self.started)
                    if settled:
                        log.info("settled %d deployments left half-way by a gone server", settled)
                said = ""
            except servers.Fenced as exc:
                log.warning("%s stops acting as the controller: %s", self.node, exc)
                self.term = None
            except RegistryUnreachable as exc:
                if str(exc) != said:
                    said = str(exc)
                    log.warning("heartbeat: %s", exc)
            except Exception:
                log.exception("the heartbeat failed")
            await asyncio.sleep(HEARTBEAT_S)

    def heard(self, topic: str) -> None:
        if topic in self._reloads:
            self._due.add(topic)
            self._wake.set()

    def everything(self) -> None:
        """Listening (again): what was notified before is not known, so reload it all."""
        self._due.update(TOPICS)
        self._wake.set()

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_s)
            self.everything()

    async def _reload_loop(self) -> None:
        said = ""
        while True:
            await self._wake.wait()
            self._wake.clear()
            due, self._due = self._due, set()
            for topic in TOPICS:
                if topic not in due:
                    continue
                try:
                    await self._reloads[topic]()
                    said = ""
                except RegistryUnreachable as exc:
                    self._due.add(topic)  # once the registry is back (the listener reconnects)
                    if str(exc) != said:
                        said = str(exc)
                        log.warning("could not reload %s: %s", topic, exc)
                except Exception:
                    log.exception("reloading %s failed", topic)
            if due >= set(TOPICS):
                self.reloaded_at = time.monotonic()
