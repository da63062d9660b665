"""A replica group: the replicas of one deployment, their restarts, and the balancer in front."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from modelport.errors import ModelUnavailable
from modelport.runtime.protocol import FRAME_OVERHEAD
from modelport.runtime_home import r_env, replica_env
from modelport.sandboxing import Sandbox, r_paths, replica_policy

from .backends import LocalBackend, ReplicaBackend
from .balancer import Balancer
from .config import GroupEvent, GroupInfo, GroupSpec, GroupState, Tuning
from .lateness import CHECK_S
from .poller import Poller
from .replica import BootFailed, Replica, replica_id
from .restart_policy import RestartPolicy
from .traffic import Traffic

__all__ = ["GroupFailed", "Interrupted", "OnChange", "Prepare", "ReplicaGroup"]

log = logging.getLogger("modelport.serving")

OnChange = Callable[["ReplicaGroup", GroupEvent, dict[str, Any]], Any]  # may return an awaitable
# Before each replica start: make the folder it runs in right (lines for its log), or raise why not.
Prepare = Callable[[GroupSpec], Awaitable[list[str]]]


class GroupFailed(Exception):
    """A group could not start (or scale up); ``str()`` is the reason: the boot error text."""


class Interrupted(GroupFailed):
    """A group's start was cut short (a stop, a newer deployment); ``str()`` says by what."""


class ReplicaGroup:
    """The replicas of one deployment, their restarts, and the balancer in front of them.

    Its states are config.GroupState, the events it tells ``on_change`` config.GroupEvent."""

    def __init__(
        self,
        spec: GroupSpec,
        *,
        runtime_dir: Path,
        logs_dir: Path,
        tuning: Tuning | None = None,
        on_change: OnChange | None = None,
        policy: RestartPolicy | None = None,
        poller: Poller | None = None,
        sandbox: Sandbox | None = None,
        prepare: Prepare | None = None,
        backend: ReplicaBackend | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend or LocalBackend()  # where its replicas run (serving/backends.py)
        self.runtime_dir, self.sandbox = runtime_dir, sandbox
        self._prepare = (lambda: prepare(spec)) if prepare is not None else None
        self.poller = poller or Poller(0)
        self.tuning = t = tuning or Tuning()
        self.logs_dir = logs_dir
        self.on_change = on_change
        self.policy = policy or RestartPolicy(
            base_s=t.backoff_base_s,
            cap_s=t.backoff_cap_s,
            max_crashes=t.flap_max_crashes,
            window_s=t.flap_window_s,
            healthy_after_s=t.healthy_after_s,
        )
        self.state: GroupState = "starting"
        self.reason: str | None = None
        self.replicas: list[Replica] = []
        self.balancer = Balancer(
            self.replicas,
            max_concurrency=spec.max_concurrency,
            timeout_s=spec.timeout_s,
            queue_timeout_s=spec.queue_timeout_s,
            max_queue=spec.max_queue,
        )
        self.call = self.balancer.call  # the hot path: gateway → balancer → replica
        # A primary's candidate and how requests reach it (serving/traffic.py); None: no candidate
        self.traffic: Traffic | None = None
        # Precomputed for the gateway: response headers and the body limit.
        self.headers = [
            (b"x-model-build", str(spec.build).encode()),
            (b"x-model-digest", spec.digest.encode()),
        ]
        self.max_body = spec.max_body_bytes
        self._argv = [
            spec.python,
            "-u",
            "-m",
            "modelport.runtime.worker",
            "--project",
            spec.project,
            "--entry",
            spec.entry,
            "--max-concurrency",
            str(max(1, spec.max_concurrency)),
            "--busy-poll-us",
            str(t.busy_poll_us),
            "--max-call-bytes",
            str(spec.max_body_bytes + FRAME_OVERHEAD),
            "--max-result-bytes",
            str(t.max_response_bytes),
        ]
        self._env = replica_env(runtime_dir, {**spec.env, **r_env(spec.rscript, spec.r_libs)})
        self._stop = asyncio.Event()
        self._drained: asyncio.Future[bool] | None = None
        self._booting: asyncio.Future[None] | None = None  # start()'s replicas coming up
        self._punctual: asyncio.TimerHandle | None = None  # looks for late replicas (lateness)
        self._interrupted: str | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every replica and wait until all are ready; GroupFailed with the reason."""
        self._emit("group.starting", {"replicas": self.spec.replicas})
        fresh = self._add(self.spec.replicas)
        self._booting = asyncio.ensure_future(self._spawn_all(fresh))
        try:
            await self._booting
        except asyncio.CancelledError:
            if self._interrupted is None:  # our caller was cancelled
                raise
            self.replicas.clear()
            self.state, self.reason = "stopped", self._interrupted
            self.balancer.fail_waiters(
                ModelUnavailable(f"The deployment did not start: {self._interrupted}.")
            )
            self._emit("group.stopped", {"interrupted": self._interrupted})
            raise Interrupted(self._interrupted) from None
        except GroupFailed as exc:
            self._fail(str(exc))
            raise
        finally:
            self._booting = None
        self.state = "running"
        self.balancer.recoverable = True
        self._look_for_late()
        self._emit("group.ready", {"replicas": len(self.replicas)})

    def interrupt(self, why: str) -> bool:
        """Stop starting now: the replicas are killed, booting or not, and ``start()`` raises
        Interrupted(why) once they are reaped. False when the group is not starting."""
        if self._booting is None or self._booting.done() or self._interrupted is not None:
            return False
        self._interrupted = why
        log.warning(
            "model %s build %s: start interrupted: %s", self.spec.model, self.spec.build, why
        )
        self._booting.cancel()  # _spawn_all stops every replica it started before it returns
        return True

    async def scale(self, n: int) -> None:
        """Add or remove replicas (removed ones finish their calls first). GroupFailed when new
        ones cannot start; the group keeps running with the others."""
        if n < 0:
            raise ValueError("replicas must be 0 or more")
        if self.state != "running":
            raise GroupFailed(f"cannot scale a group that is {self.state}")
        before = len(self.replicas)
        if n > before:
            await self._spawn_all(self._add(n - before))
        elif n < before:
            gone = self.replicas[n:]
            del self.replicas[n:]
            for r in gone:
                self.policy.forget(r.slot)
            await asyncio.gather(*(r.stop(self.tuning.stop_grace_s) for r in gone))
        self._emit("group.scaled", {"from": before, "to": len(self.replicas)})

    async def drain(self, timeout: float | None = None) -> bool:
        """Take no new requests, let the accepted ones (queued included) finish within
        ``timeout``, then stop every replica: SIGTERM → grace → SIGKILL → reaped. True when
        every accepted request finished."""
        if self._drained is not None:  # already draining or drained: wait for the first one
            return await asyncio.shield(self._drained)
        self._drained = asyncio.get_running_loop().create_future()
        try:
            clean = await self._drain(timeout)
        except BaseException as exc:
            self._drained.set_exception(exc)
            raise
        self._drained.set_result(clean)
        return clean

    async def _drain(self, timeout: float | None) -> bool:
        self.state = "draining"
        self._stop.set()
        if self._punctual is not None:
            self._punctual.cancel()
        self._emit("group.draining", {})
        if timeout is None:
            timeout = max(self.spec.timeout_s, 30.0)
        clean = await self.balancer.close(timeout)
        for r in self.replicas:
            if r.state == "starting":
                r.kill("the group is stopping")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(r.stop(self.tuning.stop_grace_s) for r in self.replicas))
        self.balancer.fail_waiters(ModelUnavailable("The deployment is stopping."))
        self.state = "stopped"
        self._emit("group.stopped", {"clean": clean})
        return clean

    # -- replicas ---------------------------------------------------------------------------------

    def _add(self, count: int) -> list[Replica]:
        used = {r.slot for r in self.replicas}
        fresh = []
        slot = 0
        for _ in range(count):
            slot += 1
            while slot in used:
                slot += 1
            rid = replica_id(self.spec.model, self.spec.build, slot)
            fresh.append(self.backend.replica(self, rid, slot))
        self.replicas.extend(fresh)
        return fresh

    def local_replica(self, rid: str, slot: int) -> Replica:
        """A replica as a subprocess of this server (the local backend's)."""
        argv, env, tmp = self._launch(rid)
        return Replica(
            rid=rid,
            slot=slot,
            build=self.spec.build,
            argv=argv,
            cwd=self.spec.project,
            env=env,
            logs_dir=self.logs_dir,
            memory_mb=self.spec.memory_mb,
            tuning=self.tuning,
            on_exit=self._exited,
            on_late=self._late,
            max_concurrency=max(1, self.spec.max_concurrency),
            poller=self.poller,
            boot_timeout_s=self.tuning.boot_timeout_s or self.spec.boot_timeout_s,
            tmp_dir=tmp,
            prepare=self._prepare,
        )

    def _launch(self, rid: str) -> tuple[list[str], dict[str, str], Path | None]:
        """A replica's command line, environment and private temp dir: confined by the sandbox
        (its own temp dir as TMPDIR and HOME), or as they are when the sandbox is off."""
        sandbox = self.sandbox
        if sandbox is None or not sandbox.enabled:
            return self._argv, self._env, None
        spec, tmp = self.spec, sandbox.tmp_root / rid
        r_read = (*r_paths(spec.rscript), *spec.r_libs) if spec.rscript else ()
        policy = replica_policy(
            python=spec.python,
            project=Path(spec.project),
            runtime_dir=self.runtime_dir,
            tmp=tmp,
            network=spec.network,
            also_read=r_read,
        )
        argv = sandbox.command(spec.python, policy, self._argv, runtime_dir=self.runtime_dir)
        return argv, {**self._env, "TMPDIR": str(tmp), "HOME": str(tmp)}, tmp

    async def _spawn_all(self, fresh: list[Replica]) -> None:
        try:
            results = await asyncio.gather(*(r.spawn() for r in fresh), return_exceptions=True)
        except BaseException:  # cancelled: leave no process behind
            await asyncio.gather(*(r.stop(0) for r in fresh), return_exceptions=True)
            raise
        failed = [e for e in results if isinstance(e, BaseException)]
        if failed:
            await asyncio.gather(*(r.stop(self.tuning.stop_grace_s) for r in fresh))
            self.replicas[:] = [r for r in self.replicas if r not in fresh]
            boot = [e for e in failed if isinstance(e, BootFailed)]
            raise GroupFailed(str((boot or failed)[0]) or repr(failed[0]))
        for r in fresh:
            self._emit("replica.ready", {"replica": r.id, "pid": r.pid, "restarts": r.restarts})
            self.balancer.replica_ready(r.inline)

    def _look_for_late(self) -> None:
        """Every CHECK_S while the group runs: one timer for all its replicas, none per call."""
        if self.state not in ("running", "failed"):
            return
        now = time.monotonic()
        for r in self.replicas:
            r.check_late(now)
        self._punctual = asyncio.get_running_loop().call_later(CHECK_S, self._look_for_late)

    def _late(self, replica: Replica, late: bool) -> None:
        self._emit(
            "replica.late" if late else "replica.back",
            {"replica": replica.id, "pid": replica.pid, "in_flight": replica.in_flight},
        )
        if not late:  # it takes calls again: those waiting for a free replica may go to it
            self.balancer.replica_ready(replica.inline)

    def _exited(self, replica: Replica, reason: str, recycle: bool) -> None:
        if self.state not in ("running", "failed") or replica not in self.replicas:
            return
        if self.state == "failed":
            decision = None
        elif recycle:
            decision = self.policy.recycled(replica.slot)
        else:
            decision = self.policy.crashed(replica.slot, replica.uptime_s, reason)
        restart = decision is not None and decision.restart
        self._emit(
            "replica.crashed",
            {
                "replica": replica.id,
                "pid": replica.pid,
                "reason": reason,
                "restart_in_s": decision.delay if decision is not None and restart else None,
            },
        )
        if decision is not None and not restart:
            self._fail(decision.reason)
        elif decision is None and not any(r.accepting for r in self.replicas):
            self.balancer.fail_waiters(ModelUnavailable(f"The deployment failed: {self.reason}"))
        if restart:
            assert decision is not None  # restart implies a decision
            task = asyncio.create_task(self._restart(replica, decision.delay))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _restart(self, replica: Replica, delay: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
            return  # the group is stopping
        except TimeoutError:
            pass
        if self.state != "running" or replica not in self.replicas:
            return
        replica.restarts += 1
        try:
            await replica.spawn()
        except Exception as exc:
            if self.state == "running":
                self._fail(self.policy.boot_failed(replica.slot, str(exc) or repr(exc)).reason)
            return
        if self.state != "running" or replica not in self.replicas:  # stopped or scaled down
            await replica.stop(self.tuning.stop_grace_s)
            return
        self._emit(
            "replica.ready",
            {"replica": replica.id, "pid": replica.pid, "restarts": replica.restarts},
        )
        self.balancer.replica_ready(replica.inline)

    def _fail(self, reason: str) -> None:
        if self.state in ("draining", "stopped"):
            return
        log.error("model %s build %s: %s", self.spec.model, self.spec.build, reason)
        self.state, self.reason = "failed", reason
        self.balancer.recoverable = False
        if not any(r.accepting for r in self.replicas):
            self.balancer.fail_waiters(ModelUnavailable(f"The deployment failed: {reason}"))
        self._emit("group.failed", {"reason": reason})

    # -- reporting --------------------------------------------------------------------------------

    def _emit(self, event: GroupEvent, detail: dict[str, Any]) -> None:
        if self.on_change is None:
            return
        try:
            out = self.on_change(self, event, detail)
            if inspect.isawaitable(out):
                task = asyncio.ensure_future(out)
                self._tasks.add(task)
                task.add_done_callback(_log_hook_error)
                task.add_done_callback(self._tasks.discard)
        except Exception:
            log.exception("on_change hook failed for %s", event)

    def replica(self, rid: str) -> Replica | None:
        return next((r for r in self.replicas if r.id == rid), None)

    def info(self) -> GroupInfo:
        return GroupInfo(
            self.spec.model,
            self.spec.build,
            self.spec.deployment_id,
            self.state,
            self.reason,
            [r.info() for r in self.replicas],
        )


def _log_hook_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("on_change hook failed", exc_info=task.exception())
