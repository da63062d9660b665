"""The supervisor: every replica group, and which group serves each model (switched atomically)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from modelport.sandboxing import Sandbox

from .backends import LocalBackend, ReplicaBackend
from .config import GroupSpec, ReplicaInfo, Tuning
from .group import GroupFailed, Interrupted, OnChange, Prepare, ReplicaGroup
from .poller import Poller
from .traffic import Guard, OnShadow, Traffic, TrafficMode

__all__ = ["GroupFailed", "Interrupted", "OnChange", "ReplicaGroup", "Supervisor"]


class Supervisor:
    """Every group, and ``active``: model name → the group that serves it (switched atomically,
    read by the gateway's Routes). A group's replicas never outlive the server: the worker dies
    with its parent (PDEATHSIG) and on its socket's EOF."""

    def __init__(
        self,
        *,
        runtime_dir: Path,
        logs_dir: Path,
        tuning: Tuning | None = None,
        on_change: OnChange | None = None,
        sandbox: Sandbox | None = None,
        prepare: Prepare | None = None,
        backend: ReplicaBackend | None = None,
    ) -> None:
        self.backend = backend or LocalBackend()  # where replicas run (MODELPORT_REPLICAS)
        self.runtime_dir, self.logs_dir, self.sandbox = runtime_dir, logs_dir, sandbox
        self.prepare = prepare  # before each replica start (the project folder's check)
        self.tuning = tuning or Tuning()
        self.poller = Poller(self.tuning.busy_poll_us / 1e6)  # shared by every replica
        self.on_change = on_change
        self.active: dict[str, ReplicaGroup] = {}
        self.groups: set[ReplicaGroup] = set()  # every group not yet stopped
        self.on_shadow: OnShadow | None = None  # a shadow's pairs go there (the monitor's)

    def group(self, model: str) -> ReplicaGroup | None:
        return self.active.get(model)

    def replicas(self, model: str) -> list[ReplicaInfo]:
        group = self.active.get(model)
        return [r.info() for r in group.replicas] if group else []

    async def start_group(
        self, spec: GroupSpec, *, route_while_starting: bool = False
    ) -> ReplicaGroup:
        """A started group (not routed yet); GroupFailed with the boot error otherwise. With
        ``route_while_starting`` and nothing serving the model, the model is routed to the group
        while it starts, so that predictions get 503 model.unavailable rather than 404."""
        group = ReplicaGroup(
            spec,
            runtime_dir=self.runtime_dir,
            logs_dir=self.logs_dir,
            tuning=self.tuning,
            on_change=self.on_change,
            poller=self.poller,
            sandbox=self.sandbox,
            prepare=self.prepare,
            backend=self.backend,
        )
        self.groups.add(group)
        placeholder = route_while_starting and spec.model not in self.active
        if placeholder:
            self.active[spec.model] = group
        try:
            await group.start()
        except BaseException:
            self.groups.discard(group)
            if placeholder and self.active.get(spec.model) is group:
                del self.active[spec.model]
            raise
        return group

    def activate(self, group: ReplicaGroup) -> ReplicaGroup | None:
        """Route the model to ``group`` (one dict store: atomic for the gateway); the previous
        group is returned, still running: the caller drains it (``retire``)."""
        old = self.active.get(group.spec.model)
        self.active[group.spec.model] = group
        return old if old is not group else None

    async def deploy(
        self,
        spec: GroupSpec,
        *,
        drain_timeout: float | None = None,
        on_switch: Callable[[], Awaitable[None]] | None = None,
    ) -> ReplicaGroup:
        """Zero downtime: start the new group, switch to it once ready, then drain the old one
        (this returns after the drain). On GroupFailed the old group keeps serving.
        ``on_switch`` runs when the new group is ready, just before the switch (nothing awaits
        between them); should it fail, the new group is drained and the old one keeps serving."""
        group = await self.start_group(spec, route_while_starting=True)
        if on_switch is not None:
            try:
                await on_switch()
            except BaseException:
                await self.retire(group, drain_timeout)
                raise
        old = self.activate(group)
        if old is not None:
            traffic = old.traffic
            if traffic is not None and old.spec.deployment_id == group.spec.deployment_id:
                old.traffic = None  # a restart of the primary: its candidate stays beside it
                traffic.primary, group.traffic = group, traffic
            await self.retire(old, drain_timeout)
        return group

    def interrupt(self, model: str, why: str, deployment_id: str | None = None) -> int:
        """The model's groups still starting stop starting (a stop, a newer deployment): their
        replicas are killed, and the start (``start_group``, ``deploy``) raises Interrupted(why).
        Only the group of ``deployment_id`` when given. The number of groups interrupted."""
        return sum(
            g.interrupt(why)
            for g in list(self.groups)
            if g.spec.model == model
            and (deployment_id is None or g.spec.deployment_id == deployment_id)
        )

    # -- a candidate beside the primary ----------------------------------------------------------

    def candidate(self, model: str) -> ReplicaGroup | None:
        group = self.active.get(model)
        traffic = group.traffic if group is not None else None
        return traffic.group if traffic is not None else None

    def attach(
        self,
        candidate: ReplicaGroup,
        *,
        mode: TrafficMode,
        percent: float,
        sticky_header: str | None = None,
        guard: Guard | None = None,
    ) -> Traffic | None:
        """Route a share of the model's requests (or copies of them) to a started ``candidate``
        group, beside the group serving the model; None when nothing serves it."""
        primary = self.active.get(candidate.spec.model)
        if primary is None or primary is candidate:
            return None
        primary.traffic = Traffic(
            primary,
            candidate,
            mode=mode,
            percent=percent,
            sticky_header=sticky_header,
            guard=guard,
            on_shadow=self.on_shadow,
        )
        return primary.traffic

    async def promote(self, model: str, *, drain_timeout: float | None = None) -> bool:
        """The candidate takes all the model's requests (one dict store), then the old primary
        drains (its in-flight calls finish). False when there was no candidate."""
        primary = self.active.get(model)
        traffic = primary.traffic if primary is not None else None
        if primary is None or traffic is None:
            return False
        primary.traffic = None
        self.activate(traffic.group)
        await self.retire(primary, drain_timeout)
        return True

    async def abort(self, model: str, *, drain_timeout: float | None = None) -> bool:
        """The candidate takes no more requests (one attribute store) and drains. False when
        there was none."""
        primary = self.active.get(model)
        traffic = primary.traffic if primary is not None else None
        if primary is None or traffic is None:
            return False
        primary.traffic = None
        await self.retire(traffic.group, drain_timeout)
        return True

    async def stop(self, model: str, *, drain_timeout: float | None = None) -> bool:
        """Drain the model's group (predictions get 503 meanwhile), then unroute it (404
        model.not_deployed). False when nothing was serving it."""
        group = self.active.get(model)
        if group is None:
            return False
        await self.retire(group, drain_timeout)
        return True

    async def retire(self, group: ReplicaGroup, drain_timeout: float | None = None) -> None:
        """Drain a group (and its candidate) and forget it; unroute it if it is still the
        model's route."""
        traffic, group.traffic = group.traffic, None
        try:
            if traffic is not None:
                await asyncio.gather(
                    group.drain(drain_timeout),
                    self.retire(traffic.group, drain_timeout),
                    return_exceptions=True,
                )
            else:
                await group.drain(drain_timeout)
        finally:
            self.groups.discard(group)
            if self.active.get(group.spec.model) is group:
                del self.active[group.spec.model]

    async def shutdown(self, drain_timeout: float = 10.0) -> None:
        """Server shutdown: drain every group at once."""
        await asyncio.gather(
            *(self.retire(g, drain_timeout) for g in list(self.groups)), return_exceptions=True
        )
