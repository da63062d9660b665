"""Least connections over ready replicas (ties round-robin), a bounded FIFO queue, retries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from modelport.errors import ModelBusy, ModelUnavailable
from modelport.runtime.protocol import Failure, Result

from .pipe import NotSent
from .replica import Replica

__all__ = ["Balancer", "Draining", "choose"]


class _Load(Protocol):
    @property
    def in_flight(self) -> int: ...


class _Slot(Protocol):
    """What ``choose`` reads of a replica: whether it takes calls, and its pipe's load."""

    @property
    def accepting(self) -> bool: ...
    @property
    def pipe(self) -> _Load: ...


class Draining(Exception):
    """The group stopped taking requests (it is being replaced): look the route up again."""


def choose(replicas: Sequence[_Slot], max_concurrency: int, cursor: int) -> int:
    """The index of the ready replica with the fewest calls in flight (below ``max_concurrency``),
    the first such one at or after ``cursor`` on a tie; -1 when every replica is full or not ready.
    The caller moves ``cursor`` past the choice so that sequential requests rotate."""
    n = len(replicas)
    best, load = -1, max_concurrency
    for k in range(n):
        i = cursor + k
        if i >= n:
            i -= n
        r = replicas[i]
        if r.accepting and r.pipe.in_flight < load:
            best, load = i, r.pipe.in_flight
            if load == 0:
                break
    return best


def depth_for(service_s: float) -> int:
    """Calls an inline replica may hold (one running, the rest queued in its pipe), by how long
    its calls take: about QUEUED_WORK_S of work, between 2 and 32. Deep for fast calls: a call
    queued in a pipe costs the server a fraction of one waiting in the balancer, and a batch of
    them one write and one wake-up of the replica; shallow for slow ones, since a queued call is
    committed to its replica and should not wait behind long calls while another one frees up."""
    if service_s <= 0.0:
        return 8  # nothing measured yet
    return max(2, min(32, int(QUEUED_WORK_S / service_s)))


QUEUED_WORK_S = 0.002


class Balancer:
    """Routes calls of one group. ``replicas`` is the group's list (it adds and removes slots);
    ``recoverable`` says whether a replica may become ready (False while starting, failed or
    stopping: then no ready replica means 503 at once)."""

    def __init__(
        self,
        replicas: list[Replica],
        *,
        max_concurrency: int,
        timeout_s: float,
        queue_timeout_s: float,
        max_queue: int,
    ) -> None:
        self.replicas = replicas
        self.max_concurrency = max(1, max_concurrency)
        self.depth = self.max_concurrency  # calls a replica may hold; more when it is inline
        self.inline = False
        self.timeout_s = timeout_s
        self.queue_timeout_s = queue_timeout_s
        self.max_queue = max_queue
        self.recoverable = False
        self.closed = False
        self.active = 0  # calls inside call(), queued ones included
        self._cursor = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._handoff = 0  # waiters woken that have not picked yet: newcomers queue behind them
        self._idle: asyncio.Event | None = None

    async def call(
        self, body: bytes, content_type: str, accept: str, request_id: str
    ) -> tuple[Replica, Result | Failure]:
        """The replica that answered and its answer. Raises Draining, ModelBusy (429),
        ModelUnavailable (503), ModelCrashed (502) or ModelTimeout (504)."""
        if self.closed:
            raise Draining()
        self.active += 1
        start_by = time.monotonic() + self.queue_timeout_s
        try:
            attempts = 0
            replica = None if self._waiters or self._handoff else self._pick()
            while True:
                if replica is None:
                    replica = await self._wait()
                try:
                    answer = await replica.pipe.call(
                        body, content_type, accept, request_id, self.timeout_s, start_by
                    )
                    if self.inline:
                        self._deepen(depth_for(replica.pipe.service_s))
                    return replica, answer
                except NotSent:  # it died before the call reached it: try another one
                    attempts += 1
                    if attempts > len(self.replicas) + 2:
                        raise ModelUnavailable("No replica could take the request.") from None
                    replica = self._pick()
                finally:
                    self._wake(1)
        finally:
            self.active -= 1
            if self.closed and self.active == 0 and self._idle is not None:
                self._idle.set()

    def _deepen(self, depth: int) -> None:
        """An inline replica's depth follows how long its calls take. When it grows, as many
        more queued calls may start on each replica: wake them (an answer wakes only the one
        that takes its place, so the depth a group started with would stay what it holds)."""
        more = depth - self.depth
        self.depth = depth
        if more > 0 and self._waiters:
            self._wake(more * sum(1 for r in self.replicas if r.accepting))

    @property
    def queued(self) -> int:
        """Calls waiting for a free replica (for monitoring)."""
        return len(self._waiters)

    def _pick(self) -> Replica | None:
        replicas = self.replicas
        i = choose(replicas, self.depth, self._cursor)
        if i < 0:
            return None
        self._cursor = i + 1
        replica = replicas[i]
        pipe = replica.pipe
        if pipe.in_flight == 0:  # idle: sequential requests rotate over the ready ones
            turns = 0
            for r in replicas:  # (a loop: sum() of a generator costs 3.4k instructions, this 1k)
                if r.accepting:
                    turns += 1
            pipe.turns = turns or 1
        return replica

    async def _wait(self) -> Replica:
        """Queue (FIFO) until a replica frees up, up to queue_timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_timeout_s
        front = False
        while True:
            if not self.recoverable and not self._any_ready():
                raise ModelUnavailable("The deployment has no ready replica.")
            if len(self._waiters) >= self.max_queue and not front:
                raise self._busy(f"and {self.max_queue} requests are already waiting")
            fut = loop.create_future()
            if front:
                self._waiters.appendleft(fut)
            else:
                self._waiters.append(fut)
            timer = loop.call_later(max(0.0, deadline - loop.time()), expire, fut)
            try:
                await fut
            except BaseException as exc:
                if _woken(fut):  # cancelled after being woken: pass the turn on
                    self._handoff -= 1
                    self._wake(1)
                else:
                    _discard(self._waiters, fut)
                if isinstance(exc, TimeoutError):
                    raise (
                        self._busy(
                            f"and the request waited queue_timeout_s={self.queue_timeout_s:g}s"
                        )
                        if self._any_ready()
                        else ModelUnavailable("No replica became ready in time.")
                    ) from None
                raise
            finally:
                timer.cancel()
            self._handoff -= 1
            replica = self._pick()
            if replica is not None:
                return replica
            front = True  # someone else took it: keep our place at the head

    def _busy(self, why: str) -> ModelBusy:
        return ModelBusy(f"Every replica is busy {why}.", headers={"Retry-After": "1"})

    def _any_ready(self) -> bool:
        return any(r.accepting for r in self.replicas)

    def _wake(self, n: int) -> None:
        """``n`` more calls may start: wake that many waiters, first come first served."""
        waiters = self._waiters
        while n > 0 and waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                self._handoff += 1
                n -= 1

    def replica_ready(self, inline: bool = False) -> None:
        """A replica (re)started: it can take `depth` calls (one more queued when it is inline:
        it runs calls one at a time, in order, so a queued one is known not to have started)."""
        self.inline = inline and self.max_concurrency == 1
        self.depth = self.max_concurrency + (1 if self.inline else 0)
        self._wake(self.depth)

    def fail_waiters(self, exc: Exception) -> None:
        """Nothing will become ready (the group failed): the queued requests fail now."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    async def close(self, timeout: float) -> bool:
        """Take no new calls; wait (up to ``timeout``) for those accepted, queued ones included,
        to finish. True when they all did."""
        self.closed = True
        if self.active == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


def expire(fut: asyncio.Future[None]) -> None:
    """A waiter's timer: TimeoutError in ``fut`` unless it is done (call_later(…, expire, fut))."""
    if not fut.done():
        fut.set_exception(TimeoutError())


def _woken(fut: asyncio.Future[None]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _discard(waiters: deque[asyncio.Future[None]], fut: asyncio.Future[None]) -> None:
    with contextlib.suppress(ValueError):
        waiters.remove(fut)
