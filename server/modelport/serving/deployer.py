"""Deployments: rolling deploys, scale, stop, restart, rollback, and bringing them back on restart.

The registry says what should serve; the supervisor makes it so. One operation per model at a
time; a deployment whose build cannot start leaves the one before it serving, and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from modelport.builder import deps
from modelport.builder.compat import compare
from modelport.builder.pipeline import Builder
from modelport.builder.projects import RestoreFailed
from modelport.errors import (
    BuildNotReady,
    CandidateExists,
    CandidateNone,
    ModelNotDeployed,
    ReplayMismatch,
    RequestInvalid,
    ScaleFailed,
    SchemaBreaking,
)
from modelport.registry import builds as build_rows
from modelport.registry import deployments as rows
from modelport.registry.db import Database
from modelport.registry.records import DeploymentSettings, Guard, Traffic
from modelport.registry.rows import BuildRow, DeploymentRow, ModelRow, NamedDeploymentRow
from modelport.registry.sealed import Sealer
from modelport.registry.states import EventKind
from modelport.runtime.rbridge import is_r_entry
from modelport.serving.config import GroupEvent, GroupSpec
from modelport.serving.placement import shares
from modelport.serving.supervisor import GroupFailed, Interrupted, ReplicaGroup, Supervisor
from modelport.serving.traffic import Guard as LiveGuard
from modelport.store import manifest as mf

log = logging.getLogger("modelport.deployer")

# promote --if-replay-matches: (model, report id, the candidate's row) → None, or the 409
# replay.mismatch error (set by the replay service)
ReplayGate = Callable[[ModelRow, int | None, DeploymentRow], Awaitable[None]]
GUARD_CHECK_S = 0.5  # how often each candidate's guard is looked at
GUARD_MIN_REQUESTS = 5  # the fewest answers of the window before the guard judges
SHARES_CHECK_S = 0.1  # how often a rollout looks again at the other servers' reports

# The replica group's events a deployment's history records, as the kinds they are recorded as.
RECORDED_GROUP_EVENTS: dict[GroupEvent, EventKind] = {
    "group.failed": "group.failed",
    "replica.crashed": "replica.crashed",
}


class ShareFailed(Exception):
    """Another server's share of a rollout (or a restart) could not start, or was not reported
    ready within the deployment's boot_timeout_s; ``str()`` names the server and why."""


class Deployer:
    def __init__(self, db: Database, builder: Builder, supervisor: Supervisor, sealer: Sealer):
        self.db, self.builder, self.supervisor, self.sealer = db, builder, supervisor, sealer
        self.store, self.settings = builder.store, builder.settings
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: set[asyncio.Task[None]] = set()
        # A stop or a newer deployment does not wait for a rollout that has not served yet: the
        # ones waiting for the model's lock are given up, the one holding it is interrupted.
        self._waiting: defaultdict[str, set[int]] = defaultdict(set)  # model → deployment ids
        self._holding: dict[str, int] = {}  # model → the deployment whose rollout holds the lock
        self._given_up: dict[int, str] = {}  # deployment id → why
        self._following: set[str] = set()  # models being brought in line with the registry
        # Servers sharing the registry (set by cluster.py): the live ones' names and addresses;
        # empty: this server alone runs every replica. ``forwarder`` learns each model's hosts.
        self.nodes: dict[str, str] = {}
        self.hosts: dict[str, list[str]] = {}  # model → other servers running some (forward)
        # model → (deployment id, group): another server's rollout, started here ahead, unrouted
        self._ahead: dict[str, tuple[int, ReplicaGroup]] = {}
        self.replay_gate: ReplayGate | None = None
        self._guarding: asyncio.Task[None] | None = None
        self._starting_ahead: dict[str, tuple[int, asyncio.Task[None]]] = {}  # booting so
        # model → the candidate whose replicas this server is starting (added here, or another
        # server's, followed); candidates that could not start here (not tried again)
        self._cand_starting: dict[str, int] = {}
        self._cand_failed: set[int] = set()
        # restarts: the deployments this server restarts itself; deployment id → the restart
        # (its restarting event's time) another server asked for that this one renewed
        self._restarting: set[int] = set()
        self._renewed: dict[int, str] = {}
        self._heard: set[asyncio.Event] = set()  # rollouts waiting for other servers' reports

    # -- what the API asks for -------------------------------------------------------------------

    async def deploy(
        self,
        model: ModelRow,
        build_number: int,
        settings: DeploymentSettings,
        actor: str,
        reason: str | None = None,
        allow_breaking: bool = False,
    ) -> DeploymentRow:
        """Record a pending deployment and roll it out in the background."""
        build = await self._startable(model, build_number, settings)
        note = await self._schema_gate(model, build, allow_breaking)
        row = await rows.create(
            self.db,
            model_id=model.id,
            model=model.name,
            build_id=build.id,
            build_number=build_number,
            settings=settings,
            actor=actor,
            sealer=self.sealer,
            reason=reason,
            schema_note=note,
            node=self.settings.node,
        )
        await self._give_up(model.name, f"replaced by deployment {row.id} before it served")
        self._waiting[model.name].add(row.id)
        self._spawn(self._roll_out(model.name, row, build, actor))
        return row

    async def _startable(
        self, model: ModelRow, build_number: int, settings: DeploymentSettings
    ) -> BuildRow:
        """The build, when replicas of it can start with these settings: 409 build.not_ready
        unless it is built; 422 for an R function asked to run more than one call at a time."""
        build = await build_rows.row(self.db, model.id, build_number, model.name)
        if build.status != "built":
            raise BuildNotReady(f"Build #{build_number} is {build.status}, not built.")
        if is_r_entry(build.entrypoint) and settings.max_concurrency > 1:
            raise RequestInvalid(
                "An R replica runs one call at a time: max_concurrency must be 1 "
                "for an R function (add replicas to serve more at once).",
                field="max_concurrency",
            )
        return build

    # -- a candidate beside the current deployment (canary, shadow) ------------------------------

    async def add_candidate(
        self,
        model: ModelRow,
        build_number: int,
        settings: DeploymentSettings,
        actor: str,
        traffic: Traffic,
        guard: Guard | None = None,
        allow_breaking: bool = False,
    ) -> DeploymentRow:
        """Record a candidate beside the current deployment and start its replicas in the
        background; the primary keeps serving. 409 candidate.exists when it has one."""
        build = await self._startable(model, build_number, settings)
        current = await self._current(model)
        if current.status != "deployed":
            raise ModelNotDeployed(
                f"Model '{model.name}' has no deployment serving yet ({current.status}): "
                "a candidate goes beside one that serves."
            )
        existing = await rows.candidate(self.db, current.id)
        if existing is not None:
            raise CandidateExists(
                f"Deployment {current.id} has a candidate already: build "
                f"#{existing.build_number} (deployment {existing.id}). Promote or abort it "
                "first."
            )
        note = await self._schema_gate(model, build, allow_breaking)
        self._cand_starting[model.name] = -1  # this server starts it (not `follow`)
        try:
            row = await rows.create(
                self.db,
                model_id=model.id,
                model=model.name,
                build_id=build.id,
                build_number=build_number,
                settings=settings,
                actor=actor,
                sealer=self.sealer,
                reason=f"{'shadow' if traffic.mode == 'shadow' else 'canary'} of deployment "
                f"{current.id} (build #{current.build_number})",
                schema_note=note,
                candidate_of=current.id,
                traffic=traffic,
                guard=guard,
            )
        except BaseException:
            self._cand_starting.pop(model.name, None)
            raise
        self._cand_starting[model.name] = row.id
        self._spawn(self._start_candidate(model.name, current, row, build))
        self._guard_on()
        return row

    async def _start_candidate(
        self, name: str, primary: DeploymentRow, row: DeploymentRow, build: BuildRow
    ) -> None:
        try:
            spec = await self.spec_for(name, row, build)
            group = await self.supervisor.start_group(spec)
        except Interrupted:
            self._cand_starting.pop(name, None)
            return  # aborted while starting: recorded by the abort
        except Exception as exc:
            self._cand_starting.pop(name, None)
            why = _why(exc)
            await rows.candidate_event(
                self.db,
                primary.id,
                row.id,
                "failed",
                primary_kind="candidate.failed",
                detail={"build": row.build_number, "error": why},
                reason=why,
            )
            return
        try:
            await self._attach(name, primary, row.id, group)
        finally:
            self._cand_starting.pop(name, None)

    async def _attach(
        self,
        name: str,
        primary: DeploymentRow,
        candidate_id: int,
        group: ReplicaGroup,
        record: bool = True,
    ) -> None:
        """A started candidate group takes its share, if it is still the candidate of what
        serves; else it drains. ``record``: its candidate.ready event is written (by the server
        that added it; not by one that follows it)."""
        row = await rows.by_id(self.db, primary.model_id, candidate_id)
        serving = self.supervisor.group(name)
        if (
            row is None
            or row.status != "candidate"
            or serving is None
            or serving.spec.deployment_id != str(primary.id)
            or serving.traffic is not None
        ):
            await self.supervisor.retire(group, 0)
            return
        self.supervisor.attach(
            group,
            mode=row.traffic_mode or "split",
            percent=row.candidate_percent,
            sticky_header=row.sticky_header,
            guard=_live_guard(rows.guard_of(row)),
        )
        if not record:
            return
        await rows.candidate_event(
            self.db,
            primary.id,
            candidate_id,
            "candidate.ready",
            detail={"build": row.build_number, "replicas": row.replicas},
        )

    async def _candidate_of(self, model: ModelRow) -> tuple[DeploymentRow, DeploymentRow]:
        current = await self._current(model)
        cand = await rows.candidate(self.db, current.id)
        if cand is None:
            raise CandidateNone(
                f"Model '{model.name}' has no candidate: deploy one with canary_percent "
                "or shadow (CLI --canary P, --shadow)."
            )
        return current, cand

    async def set_traffic(self, model: ModelRow, percent: float, actor: str) -> DeploymentRow:
        """Move the split: the candidate's share (a shadow's: the share of requests copied)."""
        current, cand = await self._candidate_of(model)
        await rows.traffic_changed(
            self.db,
            current.id,
            cand.id,
            percent,
            actor=actor,
            detail={"build": cand.build_number, "from": cand.candidate_percent},
            audited=("deployment.traffic", model.name),
        )
        group = self.supervisor.group(model.name)
        if group is not None and group.traffic is not None:
            group.traffic.set_percent(percent)
            group.traffic.candidate_window().clear()
        return current

    async def promote(
        self, model: ModelRow, actor: str, if_replay_matches: int | None = None
    ) -> DeploymentRow:
        """The candidate takes all the traffic (the registry says so first, in one write), then
        the old primary drains: no failed request."""
        current, cand = await self._candidate_of(model)
        if self.replay_gate is not None:  # (a deployment's require_replay too)
            await self.replay_gate(model, if_replay_matches, cand)
        elif if_replay_matches is not None:
            raise ReplayMismatch(f"No replay report {if_replay_matches} to check the promotion by.")
        async with self._locks[model.name]:
            if self.supervisor.candidate(model.name) is None:
                raise CandidateNone(
                    f"Build #{cand.build_number} (deployment {cand.id}) is still starting: "
                    "promote it once it serves its share."
                )
            try:
                await rows.promoted(
                    self.db,
                    current.id,
                    cand.id,
                    actor=actor,
                    detail={
                        "build": cand.build_number,
                        "from_build": current.build_number,
                        "if_replay_matches": if_replay_matches,
                    },
                )
            except rows.Superseded as exc:
                raise CandidateNone(str(exc)) from None
            await self.supervisor.promote(model.name, drain_timeout=current.timeout_s)
        return await self._by_id(model, cand.id)

    async def abort(self, model: ModelRow, actor: str, reason: str | None = None) -> DeploymentRow:
        """The candidate stops: its share goes back to the primary at once, its replicas drain."""
        current, cand = await self._candidate_of(model)
        why = reason or f"aborted by {actor}"
        await rows.candidate_event(
            self.db,
            current.id,
            cand.id,
            "aborted",
            actor=actor,
            detail={"build": cand.build_number, "reason": why},
            primary_kind="traffic",
            reason=why,
            audited=("deployment.abort", model.name),
        )
        if not await self.supervisor.abort(model.name, drain_timeout=cand.timeout_s):
            self.supervisor.interrupt(model.name, why, deployment_id=str(cand.id))
        return current

    def live_traffic(self, model: str) -> dict[str, Any] | None:
        group = self.supervisor.group(model)
        traffic = group.traffic if group is not None else None
        if traffic is None:
            return None
        window = traffic.guard.window_s if traffic.guard is not None else 60.0
        return traffic.live(window)

    def _guard_on(self) -> None:
        if self._guarding is None or self._guarding.done():
            self._guarding = asyncio.ensure_future(self._guard_loop())
            self._tasks.add(self._guarding)
            self._guarding.add_done_callback(self._tasks.discard)

    async def _guard_loop(self) -> None:
        """Every candidate with a guard: broken over its window, its percent goes to 0."""
        while True:
            await asyncio.sleep(GUARD_CHECK_S)
            for group in list(self.supervisor.active.values()):
                traffic = group.traffic
                if traffic is None or traffic.guard is None or traffic.percent <= 0:
                    continue
                try:
                    await self._check_guard(group)
                except Exception:
                    log.exception("the guard of %s could not be checked", group.spec.model)

    async def _check_guard(self, group: ReplicaGroup) -> None:
        traffic = group.traffic
        assert traffic is not None and traffic.guard is not None
        guard = traffic.guard
        # a call in flight for longer than max_p99_ms counts as one that took that long: a
        # hanging candidate is judged before its calls time out
        late = traffic.late(guard.max_p99_ms / 1000) if guard.max_p99_ms is not None else []
        figures = traffic.candidate_window().summary(guard.window_s, late=late)
        if figures["requests"] < GUARD_MIN_REQUESTS:
            return
        why = None
        if guard.max_error_rate is not None and figures["error_rate"] > guard.max_error_rate:
            why = (
                f"error rate {figures['error_rate']:.4g} over {figures['requests']} requests "
                f"broke max_error_rate {guard.max_error_rate:g}"
            )
        elif guard.max_p99_ms is not None and (figures["p99_ms"] or 0) > guard.max_p99_ms:
            why = f"p99 {figures['p99_ms']:g} ms broke max_p99_ms {guard.max_p99_ms:g}"
            if late:
                why += f" ({len(late)} calls in flight longer than that counted)"
        if why is None:
            return
        before = traffic.percent
        traffic.set_percent(0)
        traffic.candidate_window().clear()
        try:
            primary_id = int(group.spec.deployment_id)
            candidate_id = int(traffic.group.spec.deployment_id)
        except ValueError:
            return
        log.warning("model %s: the candidate's guard tripped: %s", group.spec.model, why)
        await rows.traffic_changed(
            self.db,
            primary_id,
            candidate_id,
            0.0,
            kind="guard.tripped",
            actor=None,
            detail={
                "build": traffic.group.spec.build,
                "from": before,
                "why": why,
                **{k: figures[k] for k in ("requests", "errors", "error_rate", "p99_ms")},
            },
        )

    async def _schema_gate(
        self, model: ModelRow, build: BuildRow, allow_breaking: bool
    ) -> str | None:
        """Refuse a build whose input schema would turn away requests the build serving now
        takes (409 schema.breaking naming the fields), unless allowed; else a one-line note of
        what changed, or None."""
        base = await rows.last_served_build(self.db, model.id)
        if base is None or base.number == build.number:
            return None
        verdict = compare(
            base.input_schema,
            build.input_schema,
        )
        if verdict.breaking and not allow_breaking:
            raise SchemaBreaking(
                f"Build #{build.number}'s input schema is not compatible with build "
                f"#{base.number}'s, whose callers would be refused: {verdict.summary()}. "
                "Send allow_breaking: true (CLI --allow-breaking) to deploy it anyway."
            )
        if verdict.breaking:
            return (
                f"input schema not compatible with build #{base.number}'s (allowed): "
                f"{verdict.summary()}"
            )
        if verdict.compatible:
            return (
                f"input schema compatible with build #{base.number}'s: "
                f"{verdict.summary(verdict.compatible)}"
            )
        return None

    async def rollback(
        self, model: ModelRow, to_build: int | None, actor: str, allow_breaking: bool = False
    ) -> DeploymentRow:
        """The build before the current deployment's (or ``to_build``), with its settings; from
        a stopped model, the build before the last deployment's, with that one's settings."""
        current = await rows.current(self.db, model.id) or await rows.latest(self.db, model.id)
        if current is None:
            raise ModelNotDeployed(f"Model '{model.name}' has no deployment.")
        if to_build is None:
            to_build = await rows.previous_build(
                self.db, model.id, current.id, current.build_number
            )
            if to_build is None:
                raise RequestInvalid(
                    "No earlier build has served this model; name one with to_build.",
                    field="to_build",
                )
        settings = self.settings_of(current)
        return await self.deploy(
            model,
            to_build,
            settings,
            actor,
            reason=f"rollback from #{current.build_number} to #{to_build}",
            allow_breaking=allow_breaking,
        )

    async def scale(self, model: ModelRow, replicas: int, actor: str) -> DeploymentRow:
        current = await self._current(model)
        async with self._locks[model.name]:
            group = self.supervisor.group(model.name)
            if group is not None:
                try:
                    await group.scale(replicas)
                except GroupFailed as exc:
                    await rows.transition(
                        self.db,
                        current.id,
                        "scale_failed",
                        actor=actor,
                        detail={"to": replicas, "error": str(exc)},
                    )
                    raise ScaleFailed(f"Scaling to {replicas} replicas failed: {exc}") from None
            await rows.transition(
                self.db,
                current.id,
                "scaled",
                actor=actor,
                detail={"from": current.replicas, "to": replicas},
                replicas=replicas,
                audited=("deployment.scale", model.name),
            )
        return await self._by_id(model, current.id)

    async def stop(self, model: ModelRow, actor: str) -> DeploymentRow:
        """At once: a deployment still starting is interrupted (its replicas killed), those
        waiting to start are given up; then the one serving drains (in-flight calls finish)."""
        current = await self._current(model)
        await self._give_up(model.name, f"stopped by {actor} before it served")
        async with self._locks[model.name]:
            serving = await rows.current(self.db, model.id)
            if serving is None:  # it was only starting
                await self.supervisor.stop(model.name)
                await rows.audited(
                    self.db,
                    actor,
                    "deployment.stop",
                    model.name,
                    current.id,
                    {"build": current.build_number},
                )
                return await self._by_id(model, current.id)
            await rows.transition(
                self.db,
                serving.id,
                "stopping",
                actor=actor,
                detail={"build": serving.build_number},
                audited=("deployment.stop", model.name),
            )
            cand = await rows.candidate(self.db, serving.id)
            if cand is not None:  # it stops with its deployment (its group drains with it)
                await rows.candidate_event(
                    self.db,
                    serving.id,
                    cand.id,
                    "aborted",
                    actor=actor,
                    detail={"build": cand.build_number, "reason": f"stopped by {actor}"},
                    primary_kind="traffic",
                    reason=f"stopped with deployment {serving.id}",
                )
                self.supervisor.interrupt(model.name, "stopped", deployment_id=str(cand.id))
            await self.supervisor.stop(model.name, drain_timeout=serving.timeout_s)
            await rows.transition(
                self.db,
                serving.id,
                "stopped",
                actor=actor,
                reason=f"stopped by {actor}",
            )
        return await self._by_id(model, current.id)

    async def restart(self, model: ModelRow, actor: str) -> DeploymentRow:
        """New replicas of the same deployment; ready before the old ones drain."""
        current = await self._current(model)
        build = await build_rows.row(self.db, model.id, current.build_number, model.name)
        self._restarting.add(current.id)  # (not renewed again by `follow` when it hears it)
        try:
            asked = await rows.transition(
                self.db,
                current.id,
                "restarting",
                actor=actor,
                detail={"build": current.build_number},
                audited=("deployment.restart", model.name),
            )
        except BaseException:
            self._restarting.discard(current.id)
            raise
        self._spawn(self._roll_out(model.name, current, build, actor, restart=asked))
        return current

    # -- the work --------------------------------------------------------------------------------

    async def _roll_out(
        self,
        name: str,
        row: DeploymentRow,
        build: BuildRow,
        actor: str,
        restart: str | None = None,
    ) -> None:
        """A deployment rolled out here (or, with ``restart``: the restart asked then, a
        restart of the one serving)."""
        try:
            await self._roll_out_locked(name, row, build, actor, restart)
        finally:
            if restart is not None:
                self._restarting.discard(row.id)

    async def _roll_out_locked(
        self, name: str, row: DeploymentRow, build: BuildRow, actor: str, restart: str | None
    ) -> None:
        async with self._locks[name], self._turn(name, row.id):
            if row.id in self._given_up:  # stopped or replaced while it waited: recorded
                return
            if restart is None:
                await rows.transition(self.db, row.id, "deploying", actor=actor)
            switched = False

            async def record_switch() -> None:
                """The new group is ready and about to take the traffic: once every other
                server's share is ready too, the registry says so first, in one write
                (deployed, and what it replaces stopped), so that whenever the server dies, a
                restart brings back what clients were last served."""
                nonlocal switched
                await self._shares_ready(name, row)
                try:
                    await rows.switched(
                        self.db, row.id, actor=actor, detail={"replicas": spec.replicas}
                    )
                except rows.Superseded as exc:  # another server's newer deployment serves
                    raise Interrupted(str(exc)) from None
                switched = True

            try:
                spec = await self.spec_for(name, row, build)
                self._go_on(row.id)
                await self.supervisor.deploy(
                    spec,
                    drain_timeout=row.timeout_s,
                    on_switch=None if restart is not None else record_switch,
                )
                if restart is not None:
                    await self._shares_ready(name, row, restart)
            except Interrupted as exc:
                await self._interrupted(row, str(exc), restart is not None)
                return
            except (ShareFailed, GroupFailed, RestoreFailed, deps.DependencyError, OSError) as exc:
                if not switched:
                    await self._failed(row, str(exc), restart is not None)
                return
            except Exception as exc:
                log.exception("deployment %s of %s failed", row.id, name)
                if not switched:
                    await self._failed(row, f"internal error: {exc!r}", restart is not None)
                return
            if restart is not None:
                await rows.transition(self.db, row.id, "restarted", actor=actor)

    async def _shares_ready(
        self, name: str, row: DeploymentRow, restart: str | None = None
    ) -> None:
        """Before the switch (with ``restart``: before `restarted`), every other live server
        with a share of the deployment has reported that share ready (server.ready; of this
        restart, server.restarted). A report notifies, and this server's `follow` wakes the
        wait; it looks again at least each SHARES_CHECK_S anyway: the live servers change, and
        a server gone no longer counts (its share moves by placement). Alone (SQLite, or the
        only live server): at once. ShareFailed naming the server when one reports its
        failure, or has not reported within the deployment's boot_timeout_s; Interrupted when
        the rollout was given up meanwhile (here, or by another server)."""
        deadline = time.monotonic() + row.boot_timeout_s
        heard = asyncio.Event()  # set by `follow` (a report notifies): looked at again at once
        self._heard.add(heard)
        try:
            while not await self._shares_reported(name, row, restart, deadline):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(heard.wait(), SHARES_CHECK_S)
                heard.clear()
        finally:
            self._heard.discard(heard)

    async def _shares_reported(
        self,
        name: str,
        row: DeploymentRow,
        restart: str | None,
        deadline: float,
    ) -> bool:
        """True once every other server with a share reported it ready (`_shares_ready`)."""
        kinds: tuple[EventKind, EventKind] = (
            ("server.restarted", "server.restart_failed")
            if restart
            else ("server.ready", "server.failed")
        )
        failed = kinds[1]
        still: tuple[str, ...] = ("deployed",) if restart else ("pending", "deploying")
        placed = shares(name, row.replicas, row.placement, list(self.nodes))
        others = {n: c for n, c in placed.items() if c and n != self.settings.node}
        if not others:
            return True
        if restart is None:
            self._go_on(row.id)
        now = await rows.by_id(self.db, row.model_id, row.id)
        if now is None or now.status not in still:
            raise Interrupted(f"deployment {row.id} is {now.status if now else 'gone'} meanwhile")
        last = {
            event.detail.get("server"): event
            for event in await rows.events_of(self.db, row.id, kinds)
            if event.detail.get("restart") == restart
        }
        waiting = []
        for node, count in sorted(others.items()):
            event = last.get(node)
            if event is not None and event.kind == failed:
                raise ShareFailed(
                    f"server {node} could not {'renew' if restart else 'start'} its share "
                    f"({_replicas(event.detail.get('replicas', count))}): "
                    f"{event.detail.get('error')}"
                )
            if event is None or event.detail.get("replicas") != count:
                waiting.append(f"server {node} ({_replicas(count)})")
        if not waiting:
            return True
        if time.monotonic() >= deadline:
            raise ShareFailed(
                f"{', '.join(waiting)} did not report its share ready within "
                f"boot_timeout_s ({row.boot_timeout_s:g} s)"
            )
        return False

    async def _report(
        self, row: DeploymentRow, kind: EventKind, replicas: int, **detail: Any
    ) -> None:
        """This server's share of another server's rollout or restart, in the deployment's
        history (what that server waits for)."""
        try:
            await rows.transition(
                self.db,
                row.id,
                kind,
                detail={"server": self.settings.node, "replicas": replicas, **detail},
            )
        except Exception:
            log.exception("could not report %s of deployment %s", kind, row.id)

    @contextlib.asynccontextmanager
    async def _turn(self, name: str, deployment_id: int) -> AsyncIterator[None]:
        """Deployment ``deployment_id`` holds the model's lock (for ``_give_up``)."""
        self._waiting[name].discard(deployment_id)
        self._holding[name] = deployment_id
        try:
            yield
        finally:
            del self._holding[name]
            self._given_up.pop(deployment_id, None)

    def _go_on(self, deployment_id: int) -> None:
        """Interrupted when the deployment was given up while its replicas were being prepared."""
        why = self._given_up.get(deployment_id)
        if why is not None:
            raise Interrupted(why)

    async def _give_up(self, name: str, why: str) -> None:
        """The model's deployments that have not served yet make way (for a stop, a newer
        deployment): those waiting for the lock are stopped now; the one holding it is
        interrupted — its replicas killed, booting or not — and records that itself."""
        for deployment_id in sorted(self._waiting[name]):
            if deployment_id not in self._given_up:
                self._given_up[deployment_id] = why
                await rows.transition(
                    self.db,
                    deployment_id,
                    "interrupted",
                    reason=why,
                    detail={"reason": why},
                )
        holding = self._holding.get(name)
        if holding is not None and holding not in self._given_up:
            self._given_up[holding] = why
            self.supervisor.interrupt(name, why)

    async def _interrupted(self, row: DeploymentRow, why: str, restart: bool) -> None:
        if restart:  # the running replicas keep serving (until the stop that interrupted it)
            await rows.transition(self.db, row.id, "restart_interrupted", detail={"reason": why})
            return
        await rows.transition(
            self.db,
            row.id,
            "interrupted",
            reason=why,
            detail={"reason": why},
        )

    async def _failed(self, row: DeploymentRow, reason: str, restart: bool) -> None:
        if restart:  # the running replicas keep serving
            await rows.transition(self.db, row.id, "restart_failed", detail={"error": reason})
            return
        await rows.transition(
            self.db,
            row.id,
            "failed",
            reason=reason,
            detail={"error": reason},
        )

    async def spec_for(self, name: str, row: DeploymentRow, build: BuildRow) -> GroupSpec:
        """Everything a replica needs on disk, from the store alone (no package index)."""
        if build.manifest is None:
            raise BuildNotReady(f"Build #{build.number} is {build.status}, not built.")
        manifest = mf.decode(await asyncio.to_thread(self.store.read_bytes, build.manifest))
        python = await self.environment(manifest)
        r_libs: list[str] = []
        if manifest.derived.r is not None:  # an R function's packages: its library, once
            library = await self.builder.r_library(manifest.derived.r, lambda line: None)
            r_libs = [str(library)] if library else []
        project = await asyncio.to_thread(
            self.builder.projects.prepare, manifest.digest, manifest.content.files
        )
        return GroupSpec(
            model=name,
            build=build.number,
            python=str(python),
            project=str(project),
            entry=manifest.content.entrypoint,
            digest=manifest.digest,
            manifest=build.manifest,
            deployment_id=str(row.id),
            **{  # of the deployment's replicas, those that run on this server
                **msgspec.structs.asdict(self.settings_of(row)),
                "replicas": self.share(name, row.replicas, row.placement),
            },
            rscript=self.settings.rscript if is_r_entry(manifest.content.entrypoint) else "",
            r_libs=r_libs,
        )

    async def environment(self, manifest: mf.Manifest) -> Path:
        derived = manifest.derived
        lock = deps.Lock(
            python=manifest.content.python,
            text=manifest.content.lock,
            packages=[
                deps.LockedPackage(w.name, w.version, w.filename, w.digest.removeprefix("sha256:"))
                for w in derived.wheels
            ],
            digest=derived.lock_digest,
        )
        return await self.builder.environment(lock, derived.wheels, lambda line: None)

    # -- startup and hooks -----------------------------------------------------------------------

    async def restore(self) -> None:
        """Serve again what served before the server stopped; settle what was half-way. On a
        registry other live servers share, this server only serves what is deployed (`follow`):
        what was half-way is the controller's to settle (`settle`), once its server is gone."""
        if set(self.nodes) - {self.settings.node}:  # other servers live: theirs to finish
            await self.follow()
            return
        latest: dict[str, NamedDeploymentRow] = {}
        candidates: list[NamedDeploymentRow] = []
        for row in await rows.to_restore(self.db):
            if row.status == "candidate":
                candidates.append(row)
            elif row.status == "deployed":
                previous = latest.get(row.model)
                if previous is not None:
                    await rows.transition(
                        self.db,
                        previous.id,
                        "replaced",
                        reason=f"replaced by deployment {row.id}",
                    )
                latest[row.model] = row
            elif row.status == "stopping":
                await rows.transition(
                    self.db,
                    row.id,
                    "stopped",
                    reason="stopped (the server restarted while stopping)",
                )
            else:  # it never took traffic: a deployment takes it in the write that says so
                await rows.transition(
                    self.db,
                    row.id,
                    "interrupted",
                    at_restart=True,
                    reason="interrupted by a server restart before it took traffic",
                )
        # model → its candidate, started again with the primary
        kept: dict[str, NamedDeploymentRow] = {}
        for cand in candidates:
            primary = latest.get(cand.model)
            if primary is None or primary.id != cand.candidate_of:
                await rows.transition(
                    self.db,
                    cand.id,
                    "interrupted",
                    at_restart=True,
                    reason="its deployment does not serve after the server restarted",
                )
            else:
                kept[cand.model] = cand
        for name, row in latest.items():
            build = await build_rows.by_id(self.db, row.build_id)
            await rows.transition(
                self.db, row.id, "restoring", detail={"reason": "server restarted"}
            )
            self._spawn(self._restore_one(name, row, build, kept.get(name)))
        if kept:
            self._guard_on()

    async def _restore_one(
        self, name: str, row: DeploymentRow, build: BuildRow, candidate: DeploymentRow | None = None
    ) -> None:
        async with self._locks[name], self._turn(name, row.id):
            try:
                spec = await self.spec_for(name, row, build)
                self._go_on(row.id)
                if candidate is not None:  # both start at once; the split serves when both do
                    cbuild = await build_rows.by_id(self.db, candidate.build_id)
                    cspec = await self.spec_for(name, candidate, cbuild)
                    started = await asyncio.gather(
                        self.supervisor.deploy(spec, drain_timeout=row.timeout_s),
                        self.supervisor.start_group(cspec),
                        return_exceptions=True,
                    )
                    if isinstance(started[0], BaseException):
                        if isinstance(started[1], ReplicaGroup):
                            await self.supervisor.retire(started[1], 0)
                        raise started[0]
                    await rows.transition(self.db, row.id, "restored")
                    if isinstance(started[1], ReplicaGroup):
                        await self._attach(name, row, candidate.id, started[1])
                    else:
                        why = f"could not be restored: {started[1]}"
                        await rows.candidate_event(
                            self.db,
                            row.id,
                            candidate.id,
                            "failed",
                            primary_kind="candidate.failed",
                            detail={"build": candidate.build_number, "error": why},
                            reason=why,
                        )
                    return
                await self.supervisor.deploy(spec, drain_timeout=row.timeout_s)
                await rows.transition(self.db, row.id, "restored")
            except Interrupted as exc:
                await self._interrupted(row, str(exc), False)
            except Exception as exc:
                await rows.transition(
                    self.db,
                    row.id,
                    "failed",
                    reason=f"could not be restored: {exc}",
                )

    async def settle(self, term: int, live: dict[str, str]) -> int:
        """The controller's part (one server at a time, in its ``term``): the deployments left
        half-way by a server that is gone (not in ``live``: node → when it started; or made
        before that server's restart; this one's own that it is not rolling out) are settled:
        one that never served is interrupted (the one before it still serves), one stopping is
        stopped. Each write checks the term
        (servers.Fenced once another server leads). The number settled."""
        busy = set(self._holding.values()) | {i for ids in self._waiting.values() for i in ids}
        settled = 0
        for row in await rows.to_restore(self.db):
            node = row.node
            if row.status in ("deployed", "candidate") or row.id in busy:
                continue
            if node in live and node != self.settings.node and row.created_at >= live[node]:
                continue  # its server is rolling it out (not one of its life before a restart)
            ours = node == self.settings.node
            if row.status == "stopping":
                await rows.transition(
                    self.db,
                    row.id,
                    "stopped",
                    reason="stopped (the server restarted while stopping)"
                    if ours
                    else f"stopped (server {node} stopped while stopping it)",
                    term=term,
                )
            else:
                await rows.transition(
                    self.db,
                    row.id,
                    "interrupted",
                    at_restart=True,
                    reason="interrupted by a server restart before it took traffic"
                    if ours
                    else f"interrupted: server {node}, which rolled it out, is gone",
                    term=term,
                )
            settled += 1
        return settled

    # -- what another server changed ----------------------------------------------------------

    async def follow(self) -> None:
        """Serve here what the registry says is deployed (another server deployed, rolled back,
        scaled or stopped a model): each model whose group here differs is brought in line,
        one model at a time under its lock (after any operation of this server's on it). A
        deployment another server is rolling out is started here meanwhile, unrouted, so that
        it takes the traffic here as soon as the registry says it took it there."""
        for heard in self._heard:
            heard.set()
        want = {row.model: row for row in await rows.deployed(self.db)}
        starting = {row.model: row for row in await rows.deployed(self.db, status="deploying")}
        self._hosts(want)
        mine = set(self._holding.values())
        for name, (deployment_id, group) in list(self._ahead.items()):
            ahead = starting.get(name)
            moved = (  # its share here changed meanwhile (a server came or went): again
                ahead is not None
                and ahead.id == deployment_id
                and len(group.replicas) != self.share(name, ahead.replicas, ahead.placement)
            )
            if moved or deployment_id not in (_id_of(ahead), _id_of(want.get(name))):
                del self._ahead[name]  # failed, stopped or replaced there
                self._spawn(self.supervisor.retire(group))
        for name, (deployment_id, _task) in list(self._starting_ahead.items()):
            if deployment_id not in (
                _id_of(starting.get(name)),
                _id_of(want.get(name)),
            ):
                self.supervisor.interrupt(name, "the rollout was given up on its server")
        for name, ahead in starting.items():
            if ahead.id in mine or name in self._starting_ahead or name in self._ahead:
                continue
            task = asyncio.create_task(self._start_ahead(name, ahead))
            self._starting_ahead[name] = (ahead.id, task)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for name in sorted(set(want) | set(self.supervisor.active)):
            row = want.get(name)
            if self._same(self.supervisor.group(name), row) or name in self._following:
                continue
            self._following.add(name)
            self._spawn(self._follow_one(name))
        self._follow_restarts(await rows.restarts(self.db), want)
        self._follow_candidates(
            {row.model: row for row in await rows.deployed(self.db, status="candidate")}, want
        )

    def _follow_restarts(self, asked: dict[int, str], want: dict[str, NamedDeploymentRow]) -> None:
        """A restart asked on another server (deployment id → when): this server's share of
        the deployment is renewed too, once, and reported (what that server waits for)."""
        self._renewed = {i: at for i, at in self._renewed.items() if asked.get(i) == at}
        for name, row in want.items():
            at, group = asked.get(row.id), self.supervisor.group(name)
            if (
                at is None
                or self._renewed.get(row.id) == at
                or row.id in self._restarting
                or group is None
                or group.spec.deployment_id != str(row.id)
                or not group.replicas
            ):
                continue
            self._renewed[row.id] = at
            self._spawn(self._renew(name, row, at))

    async def _renew(self, name: str, row: NamedDeploymentRow, asked: str) -> None:
        """New replicas of this server's share, ready before the old ones drain (as `restart`
        does on the server asked), then reported: server.restarted, or server.restart_failed
        (the replicas before keep serving)."""
        replicas = 0
        try:
            async with self._locks[name]:
                group = self.supervisor.group(name)
                if group is None or group.spec.deployment_id != str(row.id):
                    return  # replaced or stopped meanwhile
                build = await build_rows.by_id(self.db, row.build_id)
                spec = await self.spec_for(name, row, build)
                replicas = spec.replicas
                log.info("%s: restarted on another server: renewing its replicas here", name)
                await self.supervisor.deploy(spec, drain_timeout=row.timeout_s)
        except Interrupted:
            return
        except Exception as exc:
            log.warning("could not renew %s's replicas here: %s", name, exc)
            await self._report(
                row, "server.restart_failed", replicas, restart=asked, error=_why(exc)
            )
            return
        await self._report(row, "server.restarted", replicas, restart=asked)

    def _follow_candidates(
        self, cands: dict[str, NamedDeploymentRow], want: dict[str, NamedDeploymentRow]
    ) -> None:
        """Candidates as the registry has them (another server added, moved, promoted or
        aborted one): a candidate of the deployment serving here is started here (its share of
        replicas) and attached with its mode, percent and sticky header; a moved split is
        applied (no I/O); one that is no longer a candidate drains (promoted: `_follow_one`)."""
        with_traffic = {n for n, g in self.supervisor.active.items() if g.traffic is not None}
        for name in sorted(set(cands) | with_traffic | set(self._cand_starting)):
            cand, group = cands.get(name), self.supervisor.group(name)
            traffic = group.traffic if group is not None else None
            if traffic is not None:
                ours = traffic.group.spec.deployment_id
                if cand is not None and str(cand.id) == ours:
                    if traffic.percent != cand.candidate_percent:
                        traffic.set_percent(cand.candidate_percent)
                        traffic.candidate_window().clear()
                    continue
                served = want.get(name)
                if served is not None and str(served.id) == ours:
                    continue  # promoted: `_follow_one` makes it the primary here
                self._spawn(self._drop_candidate(name, traffic.group))
                continue
            starting = self._cand_starting.get(name)
            if starting is not None:
                if starting >= 0 and (cand is None or cand.id != starting):
                    self.supervisor.interrupt(
                        name, "the candidate was ended", deployment_id=str(starting)
                    )
                continue
            if (
                cand is None
                or cand.id in self._cand_failed
                or group is None
                or group.spec.deployment_id != str(cand.candidate_of)
                or not group.replicas  # this server forwards the model's requests
                or self.share(name, cand.replicas, cand.placement) == 0
            ):
                continue
            self._cand_starting[name] = cand.id
            self._spawn(self._follow_candidate(name, cand))

    async def _follow_candidate(self, name: str, cand: NamedDeploymentRow) -> None:
        """Another server's candidate: its replicas started here, then attached beside the
        primary as the registry has it then (no event written: the adding server's)."""
        try:
            try:
                build = await build_rows.by_id(self.db, cand.build_id)
                spec = await self.spec_for(name, cand, build)
                log.info("%s: starting candidate %d (build #%d) here", name, cand.id, build.number)
                group = await self.supervisor.start_group(spec)
            except Interrupted:
                return
            except Exception as exc:
                log.warning("could not start %s's candidate %d here: %s", name, cand.id, exc)
                self._cand_failed.add(cand.id)
                return
            async with self._locks[name]:
                primary = await rows.by_id(self.db, cand.model_id, cand.candidate_of or 0)
                if primary is None:
                    await self.supervisor.retire(group, 0)
                    return
                await self._attach(name, primary, cand.id, group, record=False)
            self._guard_on()
        except Exception:
            log.exception("could not follow %s's candidate %d", name, cand.id)
        finally:
            self._cand_starting.pop(name, None)

    async def _drop_candidate(self, name: str, candidate: ReplicaGroup) -> None:
        """A candidate ended on another server (aborted, stopped, replaced) drains here."""
        async with self._locks[name]:
            group = self.supervisor.group(name)
            if group is not None and group.traffic is not None and group.traffic.group is candidate:
                log.info(
                    "%s: candidate %s ended: it drains here", name, candidate.spec.deployment_id
                )
                await self.supervisor.abort(name, drain_timeout=candidate.spec.timeout_s)

    def share(self, name: str, replicas: int, placement: str) -> int:
        """How many of a deployment's replicas run here (serving/placement.py)."""
        if self.settings.node not in self.nodes:  # alone (SQLite), or not yet seen: all
            return replicas
        return shares(name, replicas, placement, list(self.nodes))[self.settings.node]

    def _hosts(self, want: dict[str, NamedDeploymentRow]) -> None:
        """The forwarder's table: model → the addresses of the other servers running some."""
        hosts: dict[str, list[str]] = {}
        for name, row in want.items():
            placed = shares(name, row.replicas, row.placement, list(self.nodes))
            hosts[name] = [
                self.nodes[node]
                for node, count in placed.items()
                if count and node != self.settings.node
            ]
        self.hosts.clear()  # in place: the gateway's forwarder reads this dict
        self.hosts.update(hosts)

    def _same(self, group: ReplicaGroup | None, row: NamedDeploymentRow | None) -> bool:
        if group is None or row is None:
            return group is None and row is None
        here = self.share(row.model, row.replicas, row.placement)
        return group.spec.deployment_id == str(row.id) and len(group.replicas) == here

    async def _start_ahead(self, name: str, row: DeploymentRow) -> None:
        """Not under the model's lock (a boot may take minutes, and the rollout may be given up
        there meanwhile: `follow` interrupts it then). A share of replicas is reported, ready
        (server.ready) or not (server.failed): the rolling-out server switches on that."""
        here = self.share(name, row.replicas, row.placement)
        try:
            build = await build_rows.by_id(self.db, row.build_id)
            spec = await self.spec_for(name, row, build)
            here = spec.replicas
            log.info("%s: starting deployment %d here ahead", name, row.id)
            group = await self.supervisor.start_group(spec)
        except Interrupted:
            self._spawn(self._follow_again())  # a newer one may be waiting for this one's turn
            return
        except Exception as exc:
            log.warning("could not start %s's deployment %s here ahead: %s", name, row.id, exc)
            if here:
                await self._report(row, "server.failed", here, error=_why(exc))
            return
        finally:
            self._starting_ahead.pop(name, None)
        active = self.supervisor.group(name)
        if active is not None and active.spec.deployment_id == str(row.id):
            await self.supervisor.retire(group)  # it serves here already
            return
        self._ahead[name] = (row.id, group)
        if here:
            await self._report(row, "server.ready", here)
        await self.follow()  # it may have taken the traffic there meanwhile

    async def _follow_one(self, name: str) -> None:
        placed = False  # a new primary serves here
        try:
            async with self._locks[name]:
                found = await rows.deployed(self.db, name)
                row = found[0] if found else None
                group = self.supervisor.group(name)
                if self._same(group, row):
                    return
                if row is None:
                    if group is not None and group.state != "starting":
                        log.info("%s was stopped on another server: stopping it here", name)
                        await self.supervisor.stop(name, drain_timeout=group.spec.timeout_s)
                elif group is not None and group.spec.deployment_id == str(row.id):
                    here = self.share(name, row.replicas, row.placement)
                    log.info("%s: %d of its %d replicas run here", name, here, row.replicas)
                    await group.scale(here)
                else:
                    log.info(
                        "%s: deployment %d (build #%d) took the traffic on another server",
                        name,
                        row.id,
                        row.build_number,
                    )
                    traffic = group.traffic if group is not None else None
                    if traffic is not None and traffic.group.spec.deployment_id == str(row.id):
                        log.info("%s: its candidate was promoted: it serves everything", name)
                        promoted = traffic.group
                        await self.supervisor.promote(
                            name, drain_timeout=traffic.primary.spec.timeout_s
                        )
                        here = self.share(name, row.replicas, row.placement)
                        if len(promoted.replicas) != here:
                            await promoted.scale(here)
                        return
                    pending = self._starting_ahead.get(name)
                    if pending is not None and pending[0] == row.id:
                        await asyncio.wait([pending[1]])  # its boot is under way: use it
                    ahead = self._ahead.pop(name, None)
                    if ahead is not None and ahead[0] == row.id and ahead[1].state == "running":
                        log.info("%s: the group started ahead takes the traffic", name)
                        old = self.supervisor.activate(ahead[1])
                        placed = True
                        if old is not None:
                            await self.supervisor.retire(old, row.timeout_s)
                        return
                    if ahead is not None:
                        await self.supervisor.retire(ahead[1])
                    build = await build_rows.by_id(self.db, row.build_id)
                    spec = await self.spec_for(name, row, build)
                    await self.supervisor.deploy(spec, drain_timeout=row.timeout_s)
                    placed = True
        except Exception:
            log.exception("could not serve here what the registry says %s serves", name)
        finally:
            self._following.discard(name)
        if placed:  # a candidate of it may be waiting for it (added meanwhile, or restored)
            self._spawn(self._follow_again())

    async def _follow_again(self) -> None:
        try:
            await self.follow()
        except Exception:
            log.exception("could not follow the registry")

    async def on_change(
        self, group: ReplicaGroup, event: GroupEvent, detail: dict[str, Any]
    ) -> None:
        """Supervisor hook: what a user needs in the deployment's history."""
        kind = RECORDED_GROUP_EVENTS.get(event)
        if kind is None:
            return
        try:
            deployment_id = int(group.spec.deployment_id)
        except ValueError:
            return
        await rows.transition(self.db, deployment_id, kind, detail=detail)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- helpers ---------------------------------------------------------------------------------

    async def _by_id(self, model: ModelRow, deployment_id: int) -> DeploymentRow:
        """A deployment row just written; LookupError if it is gone (its model deleted)."""
        row = await rows.by_id(self.db, model.id, deployment_id)
        if row is None:
            raise LookupError(f"deployment {deployment_id} of {model.name!r} is gone")
        return row

    async def _current(self, model: ModelRow) -> DeploymentRow:
        current = await rows.current(self.db, model.id)
        if current is None:
            name = model.name
            if await rows.latest(self.db, model.id) is not None:
                raise ModelNotDeployed(
                    f"Model '{name}' is stopped: nothing to change. Serve it again with a "
                    f"deployment (`modelport deploy {name} --build N`) or a rollback."
                )
            raise ModelNotDeployed(f"Model '{name}' has no deployment.")
        return current

    def settings_of(self, row: DeploymentRow) -> DeploymentSettings:
        """What a deployment was created with, its env in clear."""
        return rows.settings_of(row, self.sealer)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _live_guard(guard: Guard | None) -> LiveGuard | None:
    if guard is None or (guard.max_error_rate is None and guard.max_p99_ms is None):
        return None
    return LiveGuard(guard.max_error_rate, guard.max_p99_ms, guard.window_s)


def _id_of(row: DeploymentRow | None) -> int | None:
    return None if row is None else row.id


def _why(exc: Exception) -> str:
    """A start's failure as a user reads it: the boot error, else what went wrong."""
    return str(exc) if isinstance(exc, GroupFailed | RestoreFailed | OSError) else repr(exc)


def _replicas(count: int) -> str:
    return f"{count} replica{'s' if count != 1 else ''}"
