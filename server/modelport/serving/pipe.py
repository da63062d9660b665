"""The server's end of a replica's connection: calls multiplexed over one byte stream.

A ``Pipe`` speaks ``runtime/protocol.py`` frames over whatever connected stream asyncio gives it:
the socketpair of a replica process on this machine (``serving/replica.py``), or a TCP
connection to a replica elsewhere. It knows nothing of processes. Its contract:

- ``pipe.protocol`` is an asyncio protocol factory, one protocol per connection:
  ``await loop.create_unix_connection(pipe.protocol, sock=sock)``, ``loop.create_connection(
  pipe.protocol, host, port, ssl=…)``, or ``await pipe.open(sock)`` for any connected stream
  socket. A new connection replaces the one before (whose calls out then fail as crashed).
- ``await pipe.first``: the peer's first message, ``Ready`` or ``Boot``; ``await pipe.closed``:
  the connection ended.
- ``await pipe.call(...)``: one ``Call`` out, its ``Result`` or ``Failure`` back. A call alone
  leaves at once; those of one loop iteration while others are out, in one write. Raises
  NotSent when the call never left (safe to send elsewhere), ModelTimeout past its timeout,
  ModelBusy when it sat queued past ``start_by``, ModelCrashed (or ModelFailed, after an answer
  over the cap) when the connection ended with it.
- ``pipe.ping(now)`` sends a Ping; ``heard`` is when the peer last sent anything, ``ping_at``
  when the last Ping left, ``rss_kb`` what its last Pong said; ``pipe.listen(callback)`` calls
  ``callback()`` once, at the next message heard (a late replica answering again).
- What the owner of the peer (a process wrapper, a remote host's agent) is told:
  ``on_fault(reason)``: the peer must be ended and replaced (a call ran past its timeout, an
  answer over the response cap); ``on_broken()``: a write failed, the connection takes no more
  calls (it closes soon); ``on_closed()``: the connection ended and every call that was out has
  failed. ``ending(reason)`` tells the pipe why the owner is ending the peer, for the calls that
  fail with it.

Deadlines: an inline peer (a sync function, one call at a time, in order) holds calls queued
behind the running one, all watched by one timer (the running call's timeout and the queued
ones' ``start_by``); otherwise each call has its own timeout timer.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from modelport.errors import ModelBusy, ModelCrashed, ModelFailed, ModelTimeout
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

from .poller import Poller

__all__ = ["NotSent", "Pipe"]

MiB = 1024 * 1024


class NotSent(Exception):
    """The call never reached the replica (it was gone first): safe to send elsewhere."""


class _Framing(MessageProtocol):
    """One connection's frames, handed to its pipe (events of a replaced connection are not)."""

    def __init__(self, pipe: Pipe, max_frame: int) -> None:
        super().__init__(max_frame)
        self.pipe = pipe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.pipe._conn is self:
            self.pipe.transport = self.transport

    def message_received(self, msg: Message) -> None:
        if self.pipe._conn is self:
            self.pipe._message(msg)

    def protocol_error(self, exc: ProtocolError) -> None:
        if isinstance(exc, FrameTooLarge) and self.pipe._conn is self:
            self.pipe._too_large(exc.size)
        super().protocol_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pipe._conn is self:
            self.pipe._lost()


def _ignore(*_: Any) -> None:
    pass


class Pipe:
    """Calls to one replica over one connection at a time (see the module's contract)."""

    def __init__(
        self,
        peer: str,
        *,
        max_response_bytes: int,
        poller: Poller | None = None,
        on_fault: Callable[[str], None] = _ignore,
        on_broken: Callable[[], None] = _ignore,
        on_closed: Callable[[], None] = _ignore,
        ended: str = "its connection closed",
    ) -> None:
        self.peer = peer  # the replica's id, in error messages
        self.max_response_bytes = max_response_bytes
        self.poller = poller or Poller(0)
        self.on_fault, self.on_broken, self.on_closed = on_fault, on_broken, on_closed
        self._ended = ended  # why calls out fail when the connection ends and no reason was given
        self.transport: asyncio.Transport | None = None
        self._conn: _Framing | None = None
        # Inline: a sync function with max_concurrency 1 runs calls one at a time, in order. Such
        # a replica may hold more calls queued in its pipe (balancer.depth_for), so that it never
        # waits for the next one; only the oldest pending call has started, so when the
        # connection ends the others are NotSent.
        self.inline = False
        self.turns = 1  # ready replicas in the rotation (the balancer's): see Call.turns
        self.in_flight = self.served = self.failed = 0
        self.service_s = 0.0  # moving average of how long a call runs (as the replica timed it)
        self.rss_kb = 0
        self.heard = 0.0  # time.monotonic() when it last sent anything
        self.ping_at = 0.0  # when the last Ping went out
        self._pings = 0
        self._seq = 0
        self._pending: dict[int, asyncio.Future[Result | Failure]] = {}
        self._outbox: list[bytearray] = []  # frames of this loop iteration's calls: one write
        self._unsent: set[int] = set()  # their ids: a connection lost before the write
        # Inline calls' deadlines, watched by one timer (none per call): the running call's
        # timeout (_head_deadline) and the queued calls' start_by, checked when it fires.
        self._order: deque[tuple[int, float]] = deque()  # (call id, start_by), oldest first
        self._head_deadline = 0.0  # time.monotonic() when the running call times out
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_at = 0.0
        self._timers: dict[int, asyncio.TimerHandle] = {}  # not inline: a timeout per call
        self._timeout = 30.0
        self._reason: str | None = None  # why the owner ends the peer (ending)
        self._refused: str | None = None  # why the calls out fail as model.error (_too_large)
        self._on_heard: Callable[[], None] | None = None
        self.first: asyncio.Future[Ready | Boot] | None = None
        self.closed: asyncio.Future[None] | None = None

    # -- connections ------------------------------------------------------------------------------

    def protocol(self) -> asyncio.Protocol:
        """A protocol for a new connection (an asyncio protocol factory); a connection still
        attached is aborted, its calls out failed."""
        if self._conn is not None:
            transport = self.transport
            self._lost()
            if transport is not None:
                transport.abort()
        self._loop = loop = asyncio.get_running_loop()
        self.first, self.closed = loop.create_future(), loop.create_future()
        self._reason = self._refused = self._on_heard = None
        self.inline, self.heard, self.ping_at = False, time.monotonic(), 0.0
        # An answer's frame is refused from its length prefix past the response cap: a replica
        # can make the server hold no more than that.
        self._conn = conn = _Framing(self, self.max_response_bytes + FRAME_OVERHEAD)
        return conn

    async def open(self, sock: socket.socket, ssl: ssl_module.SSLContext | None = None) -> None:
        """Speak over ``sock``, a connected stream socket (Unix or TCP; over TLS with ``ssl``,
        its handshake done here: the context says whom it trusts, no host name is checked)."""
        loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            await loop.create_unix_connection(self.protocol, sock=sock)
        elif ssl is not None:
            await loop.create_connection(self.protocol, sock=sock, ssl=ssl, server_hostname="")
        else:
            await loop.create_connection(self.protocol, sock=sock)

    @property
    def connected(self) -> bool:
        transport = self.transport
        return transport is not None and not transport.is_closing()

    def ending(self, reason: str) -> None:
        """The owner is ending the peer for ``reason`` (the first one given counts): the calls
        out fail with it when the connection ends."""
        if self._reason is None:
            self._reason = reason

    def abort(self) -> None:
        """End the connection now (→ the calls out fail as crashed, on_closed)."""
        if self.transport is not None:
            self.transport.abort()

    def listen(self, callback: Callable[[], None]) -> None:
        """``callback()`` once, when the peer next sends anything."""
        self._on_heard = callback

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
        """Send one Call; see the module's contract for what it raises."""
        transport = self.transport
        if transport is None or transport.is_closing():
            # Closing (an EOF read, its end not yet handled): it takes no more calls, so that
            # the balancer's retry, which does not yield, does not pick it again at once.
            if transport is not None:
                self.on_broken()
            raise NotSent(self.peer)
        self._seq += 1
        cid = self._seq
        poller = self.poller
        alone = poller.sent(self._loop)
        frame = encode_frame(
            Call(cid, body, content_type, accept, request_id, start_by, alone, self.turns)
        )
        only = not self.in_flight and not self._outbox
        fut: asyncio.Future[Result | Failure] = self._loop.create_future()
        self._pending[cid] = fut
        self.in_flight += 1
        if only:  # the only call out: it leaves now, not an iteration later
            transport.write(frame)
            if transport.is_closing():  # the write failed: the peer never saw it (as _flush)
                self._unsent.add(cid)
                self.on_broken()
        else:  # others are out: this iteration's calls leave in one write
            if not self._outbox:
                self._loop.call_soon(self._flush)
            self._outbox.append(frame)
            self._unsent.add(cid)
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
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # _lost fails the unsent calls with NotSent: they are retried elsewhere
        transport.write(b"".join(out) if len(out) > 1 else out[0])
        if transport.is_closing():  # the write failed: the peer is gone, and never saw these
            self.on_broken()
            return
        self._unsent.clear()

    # Any: dispatched on type(msg) kept in a local (the hot path), which mypy does not follow
    def _message(self, msg: Any) -> None:
        kind = type(msg)
        self.heard = time.monotonic()
        if self._on_heard is not None:
            callback, self._on_heard = self._on_heard, None
            callback()
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
        elif (kind is Ready or kind is Boot) and self.first is not None and not self.first.done():
            self.first.set_result(msg)

    def ping(self, now: float) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self._pings += 1
            self.ping_at = now
            transport.write(encode_frame(Ping(self._pings)))

    # -- deadlines --------------------------------------------------------------------------------

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
            self._timed_out(self._pending.pop(head, None), self._timeout)
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
            self._timed_out(fut, timeout)

    def _timed_out(self, fut: asyncio.Future[Result | Failure] | None, timeout: float) -> None:
        if fut is not None and not fut.done():
            fut.set_exception(
                ModelTimeout(
                    f"The function ran past timeout_s={timeout:g}s; "
                    f"replica {self.peer} is recycled."
                )
            )
        self.on_fault(f"a call ran past timeout_s={timeout:g}s")

    # -- the end of a connection ------------------------------------------------------------------

    def _too_large(self, size: int) -> None:
        """It sent a frame longer than the response cap allows: nothing of the frame is read,
        the peer is to be replaced, and the calls it was running fail as the model's error (those
        queued behind the running one, inline, were never started: they go elsewhere)."""
        cap = self.max_response_bytes
        what = (
            f"it sent an answer of {size} bytes, over the response cap of "
            f"{cap / MiB:g} MiB (MODELPORT_MAX_RESPONSE_MB)"
        )
        self._refused = f"The model's answer was refused: {what}; replica {self.peer} is recycled."
        self.on_fault(f"killed: {what}")

    def _lost(self) -> None:
        """The connection ended: fail every call out, then tell the owner."""
        self._conn = None
        self.transport = None
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        reason = self._reason or self._ended
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
                fut.set_exception(NotSent(self.peer))
            elif self._refused is not None:
                fut.set_exception(ModelFailed(self._refused))
            else:
                fut.set_exception(
                    ModelCrashed(f"Replica {self.peer} died while handling the request: {reason}.")
                )
        self.on_closed()
