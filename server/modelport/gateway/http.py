"""uvicorn's httptools protocol with a fast lane for predictions.

uvicorn parses (httptools), times out idle and slow connections, and serves every other request
through ASGI as usual. `POST /models/{name}/predict` and `POST /model` skip its per-request
machinery (a scope with a copy of the app state, a cycle object, an Event, `receive` waits, header
checks by regex, two writes): the URL, headers and body are taken straight from the parser's
callbacks, the gateway runs once the body is complete, and the answer leaves in one write.
Pipelined requests keep their order: an ASGI request queues behind an unfinished prediction
(uvicorn's own pipeline), and predictions answer in the order they came.

Slow clients cannot hold connections (uvicorn times out only idle keep-alive connections): a
request's headers must arrive within HEADER_TIMEOUT_S of its first byte, and while its body is
being read, every BODY_IDLE_S window must bring some bytes; otherwise the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelport.gateway.predict import BY_KEY, Gateway
from modelport.settings import env_number

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

log = logging.getLogger("modelport.gateway")

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CLOSE = b"connection: close\r\n"
_COLON = b": "
_SLASH = ord("/")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# uvicorn's default headers (date, server) rendered once per list: (the list, its bytes)
_defaults: list[Any] = [None, b""]
_INTERNAL = b'{"error":{"code":"internal","message":"Internal server error."}}'


class _Lane(msgspec.Struct, gc=False):
    """A prediction whose body is being read: past ``cap`` bytes its chunks are counted in
    ``size``, not kept (the answer is 413). (A Struct: slots, made in C, cheaper than __init__;
    untracked by the cyclic GC: nothing it holds refers back to it.)"""

    scope: dict[str, Any]
    cap: int
    keep_alive: bool
    chunks: list[bytes] = []
    size: int = 0


class _Reply(msgspec.Struct, gc=False):
    """A prediction's place in its connection's order: ``data`` (the whole response) is None
    until it is answered."""

    data: bytes | None = None
    keep_alive: bool = False


IDLE = "idle for timeout_keep_alive"  # not slow: kept alive and unused (not logged)
HEADER_TIMEOUT_S = env_number("MODELPORT_HEADER_TIMEOUT_S", float, 0.001) or 20.0
BODY_IDLE_S = env_number("MODELPORT_BODY_IDLE_S", float, 0.001) or 30.0


class PredictionProtocol(HttpToolsProtocol):
    """Set `gateway` on the class (or a subclass) before uvicorn starts."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_idle_s = BODY_IDLE_S
    _phase = 0  # 0 between requests, 1 reading headers, 2 reading the body (for the sweeper)
    _since = 0.0  # when the phase began, or the body last made progress
    _progress = 0  # bytes received on this connection
    _seen = 0

    gateway: Gateway | None = None
    _lane: _Lane | None = None  # the prediction whose body is being read
    _answers: deque[_Reply] | None = None  # this connection's predictions, in order
    _close_after = False
    # This connection's first prediction was HTTP/1.1: kept alive as its requests ask. (One that
    # starts as HTTP/1.0 is closed after its answer, as uvicorn does.)
    _http11 = False
    _idle_since = 0.0  # keep-alive after a prediction: the sweeper closes it past the timeout

    @property
    def _answering(self) -> int:
        """Predictions of this connection not answered yet."""
        return len(self._answers) if self._answers else 0

    # a stream protocol is given a Transport (uvicorn narrows the argument, too)
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _Sweeper.watch(self)

    def data_received(self, data: bytes) -> None:
        self._progress += len(data)
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        _Sweeper.forget(self)
        super().connection_lost(exc)

    def _too_slow(self, now: float) -> str | None:
        """Why this connection is to be closed now, if it is (checked once a second)."""
        if (
            self._idle_since
            and not self._phase
            and not self._answering
            and now - self._idle_since > self.timeout_keep_alive
        ):
            return IDLE
        if self._phase == 1 and now - self._since > self.header_timeout_s:
            return f"its request headers took over {self.header_timeout_s:g}s"
        if self._phase == 2:
            if self._progress != self._seen:
                self._seen, self._since = self._progress, now
            elif now - self._since > self.body_idle_s:
                return f"its request body stalled for {self.body_idle_s:g}s"
        return None

    def on_message_begin(self) -> None:
        self._phase, self._since, self._idle_since = 1, _Sweeper.now, 0.0
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._lane = None
        # made in on_headers_complete, only for requests that go through ASGI (uvicorn, too,
        # starts with None in a field typed as a scope)
        self.scope = None  # type: ignore[assignment]

    def on_headers_complete(self) -> None:
        """A prediction starts its lane here (one function: this runs for every request)."""
        self._phase, self._since, self._seen = 2, _Sweeper.now, self._progress
        gateway, parser = self.gateway, self.parser
        if (
            gateway is not None
            and parser.get_method() == b"POST"
            and (self.cycle is None or self.cycle.response_complete)
        ):
            parsed = httptools.parse_url(self.url)
            path = parsed.path
            if path == b"/model":  # the model is known once its key is read: the largest limit
                cap = gateway.routes.max_body(gateway.default_max_body)
            elif (
                path[:8] == b"/models/"
                and path[-8:] == b"/predict"
                and _SLASH not in path[8:-8]  # (an int: `b"/" in` would first try b"/" as one)
                and len(path) > 16
            ):
                group = gateway.routes.group(path[8:-8].decode("latin-1"))
                cap = group.max_body if group is not None else gateway.default_max_body
            else:
                cap = -1
            if cap >= 0:
                if not self._http11:  # asked once per connection: httptools formats it anew
                    self._http11 = parser.get_http_version() == "1.1"  # (~2k instructions)
                scope = {
                    "type": "http",
                    "method": "POST",
                    "path": path.decode("latin-1"),
                    "query_string": parsed.query or b"",
                    "headers": self.headers,
                    "client": self.client,
                }
                # past cap, the body's bytes are counted, not kept
                self._lane = _Lane(scope, cap + 1, self._http11 and parser.should_keep_alive())
                if self.expect_100_continue:
                    self.transport.write(_CONTINUE)
                return
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        HttpToolsProtocol.on_message_begin(self)  # uvicorn's scope, then what was read so far
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        lane = self._lane
        if lane is None:
            return super().on_body(body)
        if lane.size < lane.cap:  # past the limit: counted, not kept (the answer is 413)
            lane.chunks.append(body)
        lane.size += len(body)

    def on_message_complete(self) -> None:
        self._phase = 0
        lane = self._lane
        if lane is None:
            return super().on_message_complete()
        self._lane = None
        reply = _Reply()
        if self._answers is None:
            self._answers = deque()
        self._answers.append(reply)
        _Step(self._answer(lane, reply), self.loop, self.tasks).run()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if self._answering:  # pipelined behind a prediction: wait for its answer
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))
            return
        super()._start_asgi_task(cycle, app)

    async def _answer(self, lane: _Lane, reply: _Reply) -> None:
        scope, chunks, keep_alive = lane.scope, lane.chunks, lane.keep_alive
        body = b"".join(chunks) if len(chunks) != 1 else chunks[0]
        path = scope["path"]
        head: list[bytes] = []
        gateway = self.gateway
        assert gateway is not None  # a lane starts only when there is a gateway
        outcome = None
        try:
            handled = await gateway.handle(scope, BY_KEY if path == "/model" else path[8:-8], body)
            assert handled is not None  # None only when reading the body, here already, fails
            (status, headers, out), outcome = handled
            head.append(_STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode())
            defaults = self.server_state.default_headers  # a new list each second (its date)
            if defaults is not _defaults[0]:
                _defaults[:] = defaults, b"".join(b"%s: %s\r\n" % pair for pair in defaults)
            head.append(_defaults[1])
            if status >= 400 and (b"connection", b"close") in headers:  # (a 413: body unread)
                keep_alive = False
                headers = [h for h in headers if h[0] != b"connection"]
            # "name: value" lines joined in C (a loop here was ~3k instructions a request)
            if headers:
                head.append(b"\r\n".join(map(_COLON.join, headers)))
                head.append(b"\r\n")
        except BaseException:
            log.exception("prediction failed in the HTTP layer")
            head[:] = [
                _STATUS_LINES[500],
                b"content-type: application/json\r\ncontent-length: ",
                str(len(_INTERNAL)).encode(),
                b"\r\n",
            ]
            out = _INTERNAL
            keep_alive = False
        if not keep_alive or self._close_after:
            head.append(_CLOSE)
        head.append(b"\r\n")
        head.append(out)
        reply.data, reply.keep_alive = b"".join(head), keep_alive
        self._write_answers()
        if outcome is not None and gateway.on_result is not None:  # counted once it is sent
            try:
                gateway.on_result(outcome)
            except Exception:
                log.exception("recording a prediction failed")

    def _write_answers(self) -> None:
        """Write the answers that are ready, in the order their requests came (pipelining)."""
        answers, gateway = self._answers, self.gateway
        assert gateway is not None  # answers come only from lanes, which need a gateway
        while answers and (data := answers[0].data) is not None:
            keep_alive = answers.popleft().keep_alive
            transport = self.transport
            if transport.is_closing():
                continue
            transport.write(data)
            gateway.poller.responded(self.loop)
            if keep_alive and not self._close_after:
                self._prediction_complete()
            else:
                transport.close()

    def _prediction_complete(self) -> None:
        """uvicorn's on_response_complete, without a keep-alive timer per request: the sweeper
        closes a connection idle for timeout_keep_alive."""
        self.server_state.total_requests += 1
        self.flow.resume_reading()
        if self.pipeline and not self._answering:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif not self._phase:
            self._idle_since = _Sweeper.now or self.loop.time()

    def shutdown(self) -> None:
        if self._answering:
            self._close_after = True  # the answers in progress are sent, then the connection ends
            return
        super().shutdown()


class _Step:
    """Runs one prediction's coroutine without an asyncio Task: its first part at once, inside
    the parser's callback (no loop iteration before the call leaves), then each part when the
    future it awaits is done. What the prediction path awaits are futures only (the pipe's
    answer, the balancer's queue); a bare ``yield`` (asyncio.sleep(0)) is resumed soon. In the
    server's set of tasks while it runs, so that a shutdown waits for it or cancels it."""

    __slots__ = ("_coro", "_done", "_loop", "_tasks", "_waiting")

    def __init__(
        self, coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop, tasks: set[Any]
    ) -> None:
        self._coro, self._loop, self._tasks = coro, loop, tasks
        self._waiting: asyncio.Future[Any] | None = None
        self._done = False

    def run(self, _fut: object = None, exc: BaseException | None = None) -> None:
        self._waiting = None
        try:
            yielded = self._coro.send(None) if exc is None else self._coro.throw(exc)
        except BaseException:  # StopIteration: answered (_answer catches its own errors)
            self._done = True
            self._tasks.discard(self)
            return
        if yielded is None:  # a bare yield: go on at the next iteration
            self._loop.call_soon(self.run)
        else:
            yielded._asyncio_future_blocking = False
            self._waiting = yielded
            yielded.add_done_callback(self.run)
        if not self._done:
            self._tasks.add(self)

    def cancel(self, msg: object = None) -> bool:
        """uvicorn's shutdown past its grace: end the prediction where it waits."""
        if self._done:
            return False
        waiting = self._waiting
        if waiting is not None:
            waiting.remove_done_callback(self.run)
            self._waiting = None
        self.run(exc=asyncio.CancelledError(msg))
        return True


class _Sweeper:
    """One timer for every connection: once a second, close those whose client is too slow.
    (No timer per request on the hot path.)"""

    connections: ClassVar[set[PredictionProtocol]] = set()
    handle: asyncio.TimerHandle | None = None
    now = 0.0

    @classmethod
    def watch(cls, conn: PredictionProtocol) -> None:
        cls.connections.add(conn)
        if cls.handle is None:
            cls.now = conn.loop.time()
            cls.handle = conn.loop.call_later(1.0, cls.sweep, conn.loop)

    @classmethod
    def forget(cls, conn: PredictionProtocol) -> None:
        cls.connections.discard(conn)

    @classmethod
    def sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
        cls.now = now = loop.time()
        for conn in list(cls.connections):
            why = conn._too_slow(now)
            if why is not None:
                if why is not IDLE:
                    log.info("closing a slow connection: %s", why)
                cls.connections.discard(conn)
                conn.transport.close()
        cls.handle = loop.call_later(1.0, cls.sweep, loop) if cls.connections else None
