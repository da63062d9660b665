"""One replica slot: its worker process on a private socketpair, and the multiplexed pipe client."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from modelport.clock import now_iso
from modelport.errors import ModelBusy, ModelCrashed, ModelFailed, ModelTimeout
from modelport.registry.records import ReplicaState
from modelport.runtime.protocol import (
    FRAME_OVERHEAD,
    Boot,
    Call,
    Failure,
    FrameTooLarge,
    Message,
    MessageProtocol,
    Ping,
    Pong,
    ProtocolError,
    Ready,
    Result,
    encode_frame,
)

from . import procs
from .config import ReplicaInfo, Tuning
from .lateness import Punctuality
from .poller import Poller

__all__ = ["BootFailed", "NotSent", "Replica", "replica_id"]

log = logging.getLogger("modelport.serving")
MiB = 1024 * 1024


class NotSent(Exception):
    """The call never reached the replica (it was gone first): safe to send elsewhere."""


class BootFailed(Exception):
    """The replica never became ready; ``str()`` is the reason (the import error, or stderr)."""


def replica_id(model: str, build: int, slot: int) -> str:
    return f"{model}-{build}-{slot}-{secrets.token_hex(2)}"


class _Pipe(MessageProtocol):
    def __init__(self, replica: Replica) -> None:
        # An answer's frame is refused from its length prefix past the response cap: a replica
        # can make the server hold no more than that (memory_mb bounds only the replica's side).
        super().__init__(replica.tuning.max_response_bytes + FRAME_OVERHEAD)
        self.replica = replica

    def message_received(self, msg: Message) -> None:
        self.replica._message(msg)

    def protocol_error(self, exc: ProtocolError) -> None:
        if isinstance(exc, FrameTooLarge):
            self.replica._too_large(exc.size)
        super().protocol_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.replica._lost()


class Replica:
    """A slot of a group. ``spawn()`` (again after a crash) starts its process; ``call()`` sends
    one Call and awaits its Result or Failure; ``on_exit(replica, reason, recycle)`` is called
    when a process that was ready ends without ``stop()``, ``on_late(replica, late)`` when it
    becomes late (see lateness) and when it answers again."""

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
        self.poller = poller or Poller(0)
        self.state: ReplicaState = "starting"
        self.accepting = False  # ready and taking calls: what the balancer looks at
        self.late = False  # owes an answer and is silent (lateness): not accepting meanwhile
        self.pid: int | None = None
        self.in_flight = self.served = self.failed = self.restarts = 0
        self.started_at: str | None = None
        self.rss_kb = 0
        self._started = 0.0
        self._proc: asyncio.subprocess.Process | None = None
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[Result | Failure]] = {}
        self.max_concurrency = max_concurrency
        self.turns = 1  # ready replicas in the rotation (the balancer's): see Call.turns
        # Inline: a sync function with max_concurrency 1 runs calls one at a time, in order. Such
        # a replica may hold more calls queued in its pipe (balancer.depth_for), so that it never
        # waits for the next one; only the oldest pending call has started, so on a crash the
        # others are NotSent.
        self.inline = False
        # Its deadlines are watched by one timer (no timer per call): the running call's timeout
        # (_head_deadline) and the queued calls' start_by, checked when the watchdog fires.
        self._order: deque[tuple[int, float]] = deque()  # (call id, start_by), oldest first
        self._head_deadline = 0.0  # time.monotonic() when the running call times out
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_at = 0.0
        self._timers: dict[int, asyncio.TimerHandle] = {}  # not inline: a timeout per call
        self._timeout = 30.0
        self.service_s = 0.0  # moving average of how long a call runs (as the replica timed it)
        self._outbox: list[bytearray] = []  # frames of this loop iteration's calls: one write
        self._unsent: set[int] = set()  # their ids: a replica lost before the write never saw them
        self._seq = 0
        self._first: asyncio.Future[Ready | Boot] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._exited: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._stopping = self._booted = False
        self._kill_reason: str | None = None
        self._recycle = False
        self._heard = 0.0  # when it last sent anything
        self._ping_at = 0.0  # when the last Ping went out
        self._pings = 0
        self.punctuality = Punctuality()
        self._marker = ""
        self._refused: str | None = None  # why the calls it holds fail as model.error (_lost)

    # -- the hot path -----------------------------------------------------------------------------

    async def call(
        self,
        body: bytes,
        content_type: str,
        accept: str,
        request_id: str,
        timeout: float,
        start_by: float = 0.0,
    ) -> Result | Failure:
        """Send one Call; NotSent when it could not be written, ModelCrashed when the replica died
        with it, ModelTimeout past ``timeout`` seconds (the replica is then recycled)."""
        transport = self._transport
        if not self.accepting or transport is None or transport.is_closing():
            raise NotSent(self.id)
        self._seq += 1
        cid = self._seq
        if not self._outbox:
            self._loop.call_soon(self._flush)
        poller = self.poller
        alone = poller.sent(self._loop)
        self._outbox.append(
            encode_frame(
                Call(cid, body, content_type, accept, request_id, start_by, alone, self.turns)
            )
        )
        self._unsent.add(cid)
        fut: asyncio.Future[Result | Failure] = self._loop.create_future()
        self._pending[cid] = fut
        self.in_flight += 1
        self._timeout = timeout
        if self.inline:
            order = self._order
            order.append((cid, start_by))
            if len(order) == 1:  # the head: it starts now; a queued one when it is the head
                self._head_deadline = deadline = time.monotonic() + timeout
                self._arm(deadline)
            elif start_by:  # queued behind another call: it must start by start_by
                self._arm(start_by)
        else:
            self._timers[cid] = self._loop.call_later(timeout, self._expire, cid, timeout)
        try:
            msg = await fut
        except NotSent:
            self._pending.pop(cid, None)
            raise
        except BaseException:
            self.failed += 1
            self._pending.pop(cid, None)
            self._unsent.discard(cid)
            raise
        finally:
            poller.answered()
            if not self.inline:
                timer = self._timers.pop(cid, None)
                if timer is not None:
                    timer.cancel()
            self.in_flight -= 1
        self.served += 1
        if type(msg) is Failure and msg.status >= 500:
            self.failed += 1
        return msg

    def _flush(self) -> None:
        """Write every Call queued in this loop iteration at once."""
        out, self._outbox = self._outbox, []
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # _lost fails the unsent calls with NotSent: they are retried elsewhere
        transport.write(b"".join(out) if len(out) > 1 else out[0])
        if transport.is_closing():  # the write failed: the peer is gone, and never saw these
            self.accepting = False
            return
        self._unsent.clear()

    # Any: dispatched on type(msg) kept in a local (the hot path), which mypy does not follow
    def _message(self, msg: Any) -> None:
        kind = type(msg)
        self._heard = time.monotonic()
        if self.late:
            self._back()
        if kind is Result or kind is Failure:
            if kind is Result and msg.took:
                self.service_s += (msg.took - self.service_s) * 0.1
            order = self._order
            if order and order[0][0] == msg.id:
                order.popleft()
                if order:  # the queued call starts now: its clock too
                    self._head_deadline = deadline = time.monotonic() + self._timeout
                    self._arm(deadline)
            fut = self._pending.pop(msg.id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif kind is Pong:
            self.rss_kb = msg.rss_kb
        elif (kind is Ready or kind is Boot) and self._first is not None and not self._first.done():
            self._first.set_result(msg)

    def check_late(self, now: float) -> None:
        """The group's periodic look (lateness.CHECK_S): a replica that owes an answer (a call, a
        Ping) and has been silent past its allowance is late, and not chosen until it answers."""
        if self.state != "ready" or self._stopping or self._kill_reason is not None:
            return
        verdict = self.punctuality.check(
            now,
            owes=self.in_flight > 0 or self._ping_at > self._heard,
            heard=self._heard,
            service_s=self.service_s,
            can_probe=not self.inline,
        )
        if verdict == "probe":
            self._ping(now)
        elif verdict == "late" and not self.late:
            self.late, self.accepting = True, False
            log.warning(
                "replica %s (pid %s): late: silent for %.1fs with %d call(s) in flight "
                "(calls take %.3gs); not chosen until it answers",
                self.id,
                self.pid,
                now - max(self._heard, self.punctuality.owed_since or 0.0),
                self.in_flight,
                self.service_s,
            )
            if self.on_late is not None:
                self.on_late(self, True)

    def _back(self) -> None:
        """A late replica sent something: it is chosen again (unless it is going away)."""
        self.late = False
        if self.state == "ready" and not self._stopping and self._kill_reason is None:
            self.accepting = True
        log.info("replica %s (pid %s) answers again: chosen again", self.id, self.pid)
        if self.on_late is not None:
            self.on_late(self, False)

    def _ping(self, now: float) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            self._pings += 1
            self._ping_at = now
            transport.write(encode_frame(Ping(self._pings)))

    def _arm(self, when: float) -> None:
        """Make sure the watchdog fires by ``when`` (time.monotonic())."""
        if self._watchdog is None or when < self._watch_at:
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._watch_at = when
            self._watchdog = self._loop.call_later(max(0.0, when - time.monotonic()), self._check)

    def _check(self) -> None:
        """The watchdog: time out the running call, refuse the queued ones past their start_by,
        and wait for the next deadline."""
        self._watchdog = None
        order = self._order
        if not order:
            return
        now = time.monotonic()
        head = order[0][0]
        if now >= self._head_deadline:  # (recycled even if its caller went away: it is stuck)
            timeout = self._timeout
            fut = self._pending.pop(head, None)
            if fut is not None and not fut.done():
                fut.set_exception(
                    ModelTimeout(
                        f"The function ran past timeout_s={timeout:g}s; "
                        f"replica {self.id} is recycled."
                    )
                )
            self.kill(f"a call ran past timeout_s={timeout:g}s", recycle=True)
            return
        following = 0.0
        for cid, start_by in list(order)[1:]:
            if start_by and cid in self._pending:
                if start_by <= now:
                    self._not_started(cid)
                elif not following or start_by < following:
                    following = start_by
        self._arm(min(self._head_deadline, following) if following else self._head_deadline)

    def _not_started(self, cid: int) -> None:
        """A call queued in the pipe did not start by its deadline: 429 now (the replica will
        answer it 429 too, without running it)."""
        fut = self._pending.pop(cid, None)
        if fut is not None and not fut.done():
            fut.set_exception(
                ModelBusy(
                    "Every replica is busy and the request waited queue_timeout_s.",
                    headers={"Retry-After": "1"},
                )
            )

    def _expire(self, cid: int, timeout: float) -> None:
        fut = self._pending.pop(cid, None)
        if fut is not None and not fut.done():
            fut.set_exception(
                ModelTimeout(
                    f"The function ran past timeout_s={timeout:g}s; replica {self.id} is recycled."
                )
            )
            self.kill(f"a call ran past timeout_s={timeout:g}s", recycle=True)

    def _lost(self) -> None:
        self.accepting = False
        if self._booted and not self._stopping:
            self.state = "crashed"
        if self._closed is not None and not self._closed.done():  # None: never started
            self._closed.set_result(None)
        self._transport = None
        reason = self._kill_reason or "its process ended"
        pending, self._pending = self._pending, {}
        unsent, self._unsent = self._unsent, set()
        if self.inline and self._order:  # queued behind the call that was running: never started
            unsent.update(cid for cid, _ in list(self._order)[1:])
        self._order.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._outbox = []
        for cid, fut in pending.items():
            if fut.done():
                continue
            if cid in unsent:  # never written: the balancer tries another replica
                fut.set_exception(NotSent(self.id))
            elif self._refused is not None:
                fut.set_exception(ModelFailed(self._refused))
            else:
                fut.set_exception(
                    ModelCrashed(f"Replica {self.id} died while handling the request: {reason}.")
                )
        proc = self._proc
        if self._booted and not self._stopping and proc is not None and proc.returncode is None:
            # Usually the process is dying and about to be reaped; if it is not, it cannot serve.
            self._loop.call_later(1.0, self._orphaned, proc)

    def _too_large(self, size: int) -> None:
        """It sent a frame longer than the response cap allows: recycled, nothing of the frame
        read; the calls it was running fail as the model's error (those queued behind the running
        one, inline, were never started: they go to another replica)."""
        cap = self.tuning.max_response_bytes
        what = (
            f"it sent an answer of {size} bytes, over the response cap of "
            f"{cap / MiB:g} MiB (MODELPORT_MAX_RESPONSE_MB)"
        )
        self._refused = f"The model's answer was refused: {what}; replica {self.id} is recycled."
        self.kill(f"killed: {what}", recycle=True)

    def _abort(self, transport: asyncio.Transport) -> None:
        if transport is self._transport:
            transport.abort()  # → _lost: pending calls fail as crashed

    def _orphaned(self, proc: asyncio.subprocess.Process) -> None:
        if proc is self._proc and proc.returncode is None and not self._stopping:
            self.kill("killed: its pipe to the server closed")

    # -- lifecycle --------------------------------------------------------------------------------

    async def spawn(self) -> None:
        """Start the process and wait for Ready; BootFailed with the reason otherwise."""
        self._loop = asyncio.get_running_loop()
        self.state, self.accepting, self._booted = "starting", False, False
        self._stopping, self._kill_reason, self._recycle = False, None, False
        self._refused, self._exited = None, None
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
        self._first = self._loop.create_future()
        self._closed = self._loop.create_future()
        self._transport, _ = await self._loop.create_unix_connection(lambda: _Pipe(self), sock=ours)
        self._exited = asyncio.create_task(self._wait_exit(self._proc))
        either: set[asyncio.Future[Any]] = {self._first, self._exited}
        await asyncio.wait(either, timeout=self.boot_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if self._exited.done() and not self._first.done():  # read what it sent before exiting
            closing: set[asyncio.Future[Any]] = {self._first, self._closed}
            await asyncio.wait(closing, timeout=1.0)
        first = self._first.result() if self._first.done() else None
        if type(first) is Ready and not self._exited.done():
            self.inline = self.max_concurrency == 1 and not first.is_async
            self.state, self.accepting, self._booted = "ready", True, True
            self._heard = time.monotonic()
            self.late, self._ping_at, self.punctuality = False, 0.0, Punctuality()
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
        if self._transport is not None:  # the EOF normally comes first; a forked child of the
            self._loop.call_later(0.5, self._abort, self._transport)  # model's may hold the socket
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
                if self.in_flight == 0 and now - self._heard > t.ping_timeout_s:
                    self.kill(f"killed: no answer to pings for {t.ping_timeout_s:g}s", recycle=True)
                    return
                self._ping(now)
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
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
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
        )
