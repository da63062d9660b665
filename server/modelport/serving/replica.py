"""One replica slot: its worker process on a private socketpair (spawn, watch, exit, kill, stop,
logs); the calls go over its pipe (``serving/pipe.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from modelport.clock import now_iso
from modelport.registry.records import ReplicaState
from modelport.runtime.protocol import Boot, Ready

from . import procs
from .config import ReplicaInfo, Tuning
from .lateness import Punctuality
from .pipe import NotSent, Pipe
from .poller import Poller

__all__ = ["BootFailed", "NotSent", "Replica", "replica_id"]

log = logging.getLogger("modelport.serving")


class BootFailed(Exception):
    """The replica never became ready; ``str()`` is the reason (the import error, or stderr)."""


def replica_id(model: str, build: int, slot: int) -> str:
    return f"{model}-{build}-{slot}-{secrets.token_hex(2)}"


class Replica:
    """A slot of a group. ``spawn()`` (again after a crash) starts its process and connects its
    ``pipe`` (one per slot, reconnected at each start), which carries the calls: ``pipe.call()``
    sends one and awaits its Result or Failure. ``on_exit(replica, reason, recycle)`` is called
    when a process that was ready ends without ``stop()``, ``on_late(replica, late)`` when it
    becomes late (see lateness) and when it answers again; ``kill()`` and ``stop()`` end it."""

    def __init__(
        self,
        *,
        rid: str,
        slot: int,
        build: int,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        logs_dir: Path,
        memory_mb: int | None,
        tuning: Tuning,
        on_exit: Callable[[Replica, str, bool], None],
        max_concurrency: int = 1,
        poller: Poller | None = None,
        boot_timeout_s: float = 300.0,
        tmp_dir: Path | None = None,
        prepare: Callable[[], Awaitable[list[str]]] | None = None,
        on_late: Callable[[Replica, bool], None] | None = None,
    ) -> None:
        self.id, self.slot, self.build = rid, slot, build
        self.tmp_dir = tmp_dir  # private (the sandbox's): made empty at each start, then removed
        self.prepare = prepare  # before each start: check the project folder (lines for the log)
        self.id_bytes = rid.encode()
        self.argv, self.cwd, self.env, self.tuning = argv, cwd, env, tuning
        self.memory_kb = memory_mb * 1024 if memory_mb else 0
        self.boot_timeout_s = boot_timeout_s
        self.stdout_path, self.stderr_path = procs.log_paths(logs_dir, rid)
        self.on_exit, self.on_late = on_exit, on_late
        self.pipe = Pipe(
            rid,
            max_response_bytes=tuning.max_response_bytes,
            poller=poller,
            on_fault=self._fault,
            on_broken=self._broken,
            on_closed=self._closed,
            ended="its process ended",
        )
        self.state: ReplicaState = "starting"
        self.accepting = False  # ready and taking calls: what the balancer looks at
        self.late = False  # owes an answer and is silent (lateness): not accepting meanwhile
        self.pid: int | None = None
        self.restarts = 0
        self.started_at: str | None = None
        self.max_concurrency = max_concurrency
        self.node = "local"  # where it runs (the replica shape's node): its backend names it
        self._started = 0.0
        self._proc: asyncio.subprocess.Process | None = None
        self._exited: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._stopping = self._booted = False
        self._kill_reason: str | None = None
        self._recycle = False
        self.punctuality = Punctuality()
        self._marker = ""

    # -- the pipe's counts (the balancer, on the hot path, reads replica.pipe itself) -------------

    @property
    def in_flight(self) -> int:
        return self.pipe.in_flight

    @property
    def served(self) -> int:
        return self.pipe.served

    @property
    def failed(self) -> int:
        return self.pipe.failed

    @property
    def inline(self) -> bool:
        return self.pipe.inline

    # -- the pipe's events ------------------------------------------------------------------------

    def _fault(self, reason: str) -> None:
        """A call ran past its timeout, or an answer over the cap: recycled."""
        self.kill(reason, recycle=True)

    def _broken(self) -> None:
        self.accepting = False

    def _closed(self) -> None:
        self.accepting = False
        if self._booted and not self._stopping:
            self.state = "crashed"
        proc = self._proc
        if self._booted and not self._stopping and proc is not None and proc.returncode is None:
            # Usually the process is dying and about to be reaped; if it is not, it cannot serve.
            self._loop.call_later(1.0, self._orphaned, proc)

    def _orphaned(self, proc: asyncio.subprocess.Process) -> None:
        if proc is self._proc and proc.returncode is None and not self._stopping:
            self.kill("killed: its pipe to the server closed")

    def _abort(self, transport: asyncio.Transport) -> None:
        if transport is self.pipe.transport:
            self.pipe.abort()  # → the pipe's calls out fail as crashed

    # -- lateness ---------------------------------------------------------------------------------

    def check_late(self, now: float) -> None:
        """The group's periodic look (lateness.CHECK_S): a replica that owes an answer (a call, a
        Ping) and has been silent past its allowance is late, and not chosen until it answers."""
        if self.state != "ready" or self._stopping or self._kill_reason is not None:
            return
        pipe = self.pipe
        verdict = self.punctuality.check(
            now,
            owes=pipe.in_flight > 0 or pipe.ping_at > pipe.heard,
            heard=pipe.heard,
            service_s=pipe.service_s,
            can_probe=not pipe.inline,
        )
        if verdict == "probe":
            pipe.ping(now)
        elif verdict == "late" and not self.late:
            self.late, self.accepting = True, False
            pipe.listen(self._back)
            log.warning(
                "replica %s (pid %s): late: silent for %.1fs with %d call(s) in flight "
                "(calls take %.3gs); not chosen until it answers",
                self.id,
                self.pid,
                now - max(pipe.heard, self.punctuality.owed_since or 0.0),
                pipe.in_flight,
                pipe.service_s,
            )
            if self.on_late is not None:
                self.on_late(self, True)

    def _back(self) -> None:
        """A late replica sent something: it is chosen again (unless it is going away)."""
        if not self.late:
            return
        self.late = False
        if self.state == "ready" and not self._stopping and self._kill_reason is None:
            self.accepting = True
        log.info("replica %s (pid %s) answers again: chosen again", self.id, self.pid)
        if self.on_late is not None:
            self.on_late(self, False)

    # -- lifecycle --------------------------------------------------------------------------------

    async def spawn(self) -> None:
        """Start the process and wait for Ready; BootFailed with the reason otherwise."""
        self._loop = asyncio.get_running_loop()
        self.state, self.accepting, self._booted = "starting", False, False
        self._stopping, self._kill_reason, self._recycle = False, None, False
        self._exited = None
        self.started_at = now_iso()
        self._marker = f"--- modelport: replica {self.id} starting at {self.started_at} ---"
        t = self.tuning
        out_fd, err_fd = await asyncio.to_thread(self._open_logs, t.log_max_bytes, t.log_keep_bytes)
        try:
            notes = await self.prepare() if self.prepare is not None else []
        except BaseException as exc:  # the folder it would run in cannot be made right
            if isinstance(exc, Exception):
                reason = str(exc) or repr(exc)
                os.write(err_fd, f"--- modelport: {reason} ---\n".encode())
            os.close(out_fd)
            os.close(err_fd)
            if not isinstance(exc, Exception):  # cancelled (stopped meanwhile)
                raise
            self.state = "crashed"
            raise BootFailed(reason) from None
        for note in notes:
            os.write(err_fd, f"--- modelport: {note} ---\n".encode())
        ours, theirs = socket.socketpair()
        try:
            argv = [*self.argv, "--fd", str(theirs.fileno())]
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self.cwd,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_fd,
                stderr=err_fd,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(out_fd)
            os.close(err_fd)
        self.pid = self._proc.pid
        self._started = time.monotonic()
        pipe = self.pipe
        await pipe.open(ours)
        assert pipe.first is not None and pipe.closed is not None  # made for this connection
        self._exited = asyncio.create_task(self._wait_exit(self._proc))
        either: set[asyncio.Future[Any]] = {pipe.first, self._exited}
        await asyncio.wait(either, timeout=self.boot_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if self._exited.done() and not pipe.first.done():  # read what it sent before exiting
            closing: set[asyncio.Future[Any]] = {pipe.first, pipe.closed}
            await asyncio.wait(closing, timeout=1.0)
        first = pipe.first.result() if pipe.first.done() else None
        if type(first) is Ready and not self._exited.done():
            pipe.inline = self.max_concurrency == 1 and not first.is_async
            pipe.heard = time.monotonic()
            self.state, self.accepting, self._booted = "ready", True, True
            self.late, self.punctuality = False, Punctuality()
            self._monitor = asyncio.create_task(self._watch())
            return
        if type(first) is Boot:
            reason = first.error
        elif self._exited.done():
            tail = await asyncio.to_thread(procs.tail_text, self.stderr_path, 2000, self._marker)
            code = self._proc.returncode
            assert code is not None  # _exited is done: the process was waited for
            reason = f"{procs.describe_exit(code)} before it was ready" + (
                f":\n{tail}" if tail else ""
            )
        else:
            reason = f"not ready within boot_timeout_s={self.boot_timeout_s:g}s"
        if type(first) is Boot:  # it exits by itself (code 3) once its stderr is flushed
            await asyncio.wait({self._exited}, timeout=2.0)
        if self._proc.returncode is None:
            self.kill(reason)
        await asyncio.shield(self._exited)
        self.state = "crashed"
        raise BootFailed(reason)

    def _open_logs(self, max_bytes: int, keep_bytes: int) -> tuple[int, int]:
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.tmp_dir.mkdir(mode=0o700)
        header = self._marker + "\n"
        out = procs.open_log(self.stdout_path, header, max_bytes, keep_bytes)
        try:
            return out, procs.open_log(self.stderr_path, header, max_bytes, keep_bytes)
        except BaseException:
            os.close(out)
            raise

    async def _wait_exit(self, proc: asyncio.subprocess.Process) -> None:
        returncode = await proc.wait()
        procs.kill_leftovers(proc.pid)  # processes the model started die with its replica
        self.accepting = False
        if self._monitor is not None:
            self._monitor.cancel()
        transport = self.pipe.transport
        if transport is not None:  # the EOF normally comes first; a forked child of the model's
            self._loop.call_later(0.5, self._abort, transport)  # may hold the socket
        if self.tmp_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self.tmp_dir, True)
        if self._stopping:
            self.state = "exited"
            return
        self.state = "crashed"
        if not self._booted:
            return  # died while booting: spawn() reports it
        reason = self._kill_reason or procs.describe_exit(returncode)
        log.warning("replica %s (pid %s) %s", self.id, proc.pid, reason)
        self.on_exit(self, reason, self._recycle)

    async def _watch(self) -> None:
        """Memory limit, liveness pings and log size, while the process runs."""
        t = self.tuning
        tick = min(t.rss_interval_s, t.ping_interval_s) if self.memory_kb else t.ping_interval_s
        next_ping = next_logs = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            pid, now = self.pid, time.monotonic()
            if self.memory_kb and pid:
                rss = procs.tree_rss_kb(pid)
                if rss > self.memory_kb:
                    self.kill(
                        f"killed: resident memory {rss // 1024} MiB is over memory_mb="
                        f"{self.memory_kb // 1024}"
                    )
                    return
            if now >= next_ping:
                next_ping = now + t.ping_interval_s
                if self.pipe.in_flight == 0 and now - self.pipe.heard > t.ping_timeout_s:
                    self.kill(f"killed: no answer to pings for {t.ping_timeout_s:g}s", recycle=True)
                    return
                self.pipe.ping(now)
            if now >= next_logs:
                next_logs = now + t.log_check_s
                for path in (self.stdout_path, self.stderr_path):
                    await asyncio.to_thread(procs.trim_log, path, t.log_max_bytes, t.log_keep_bytes)

    def kill(self, reason: str, *, recycle: bool = False) -> None:
        """SIGKILL the replica's session now, noting why (in its stderr log and the server log)."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        self.accepting = False
        if self._kill_reason is None:
            self._kill_reason, self._recycle = reason, recycle
            self.pipe.ending(reason)
            log.warning("replica %s (pid %s): %s", self.id, proc.pid, reason)
            procs.append_line(self.stderr_path, f"--- modelport: {reason} ---\n")
        procs.kill_group(proc.pid, signal.SIGKILL)

    async def stop(self, grace: float) -> None:
        """SIGTERM (the worker finishes its in-flight calls) → ``grace`` → SIGKILL → reaped."""
        self._stopping, self.accepting = True, False
        proc, exited = self._proc, self._exited
        if proc is None:
            self.state = "exited"
            return
        if exited is None:  # spawn() was cancelled before it watched the process: reap it here
            procs.kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
            self.state = "exited"
            return
        if proc.returncode is None:
            self.state = "draining"
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), grace)
            except TimeoutError:
                procs.kill_group(proc.pid, signal.SIGKILL)
        await asyncio.shield(exited)
        self.state = "exited"

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._started if self._started else 0.0

    def info(self) -> ReplicaInfo:
        return ReplicaInfo(
            self.id,
            self.build,
            self.state,
            self.pid,
            self.in_flight,
            self.served,
            self.failed,
            self.restarts,
            self.started_at,
            self.late,
            self.node,
        )
