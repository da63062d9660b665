"""Several servers on one registry: each keeps what it serves in memory and learns of another
server's changes from the registry (PostgreSQL LISTEN/NOTIFY), with a full reload every
``reconcile_s`` as the safety net.

Every write that changes what a server keeps in memory notifies a topic in its transaction
(`Tx.notify`): ``models`` (the gateway's table of models, their access keys), ``tokens``,
``deployments`` (what serves). A server hears every topic, its own included, and reloads that
part from the registry: a reload reads what is committed, so whichever order notifications come
in, the last reload leaves the server as the registry is. Topics heard while a reload runs are
taken together by the next. On SQLite (one server) nothing is heard and nothing runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from modelport.auth import Auth
from modelport.models import Models
from modelport.registry.db import Database, RegistryUnreachable
from modelport.serving.deployer import Deployer

log = logging.getLogger("modelport.cluster")

TOPICS = ("models", "tokens", "deployments")


class Cluster:
    """The listener, the reloads it asks for and the periodic full reload."""

    def __init__(
        self,
        db: Database,
        auth: Auth,
        models: Models,
        deployer: Deployer,
        *,
        reconcile_s: float = 10.0,
    ) -> None:
        self.db, self.reconcile_s = db, reconcile_s
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

    def start(self) -> None:
        if not self.shared or self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self.db.listen(self.heard, self.everything)),
            asyncio.create_task(self._reload_loop()),
            asyncio.create_task(self._periodic()),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

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
