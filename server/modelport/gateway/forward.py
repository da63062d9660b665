"""Predictions for a model this server hosts no replica of, sent on to a server that does.

Servers sharing a registry each run the replicas assigned to them (serving/placement.py); the
others forward: the same request (path, query, body, the caller's ``Content-Type``, ``Accept``,
``Authorization`` and ``X-Request-Id``) to the prediction path of a hosting server at its
advertised address, with ``X-Modelport-Forwarded`` naming this server — a request carrying it is
never forwarded again (no loops: it is answered where it lands). The answer goes back as the
host sent it, its headers kept (but hop-by-hop ones, and Date: this server's own). A host that
cannot be reached (refused, or no connection within CONNECT_TIMEOUT_S) or answers 503 is skipped
for the next one; none left: 503 model.unavailable naming the model.

The client is this module's own, on the event loop's streams (uvloop's in the server): per host
a pool of keep-alive connections (at most ``max_connections`` open, at most ``max_idle`` of them
idle), one write per request, the answer parsed by httptools (content-length, chunked, or up to
the connection's end). A pooled connection is checked before it is written to: one the host has
closed meanwhile (its end seen, even if the loop has not read it yet) is dropped and the request
goes on a fresh connection, since it cannot have been sent. A request once written is never sent
again, to this host or another (a prediction is not always idempotent): a host that goes away or
does not answer within ``timeout_s`` after it was sent gives 503 model.unavailable saying so.
(httpx did this before: +2.4 ms p50 a forwarded prediction, and 0.03× the direct req/s at 16
clients, against +0.35 ms and 0.35-0.44× with this client: scripts/bench/forwarding.py.)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import select
import ssl
from collections import deque
from urllib.parse import urlsplit

import httptools

from modelport.errors import ModelUnavailable
from modelport.serving.balancer import expire

log = logging.getLogger("modelport.gateway")

FORWARDED = b"x-modelport-forwarded"
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
    }
)
# not passed back from the host's answer: hop-by-hop ones, and those this server's answer has
# of its own (uvicorn's Date; a Server header if one is set)
_NOT_KEPT = _HOP | {b"date", b"server"}
_PASSED = frozenset({b"content-type", b"accept", b"authorization", b"x-request-id"})
CONNECT_TIMEOUT_S = 2.0

Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, Headers, bytes]


def forwarded(headers: Headers) -> bool:
    """Whether the request came from another server of the registry already."""
    return any(key == FORWARDED for key, _ in headers)


class Unreachable(Exception):
    """No connection to the host: the request was not sent (the next host may take it)."""


class NoAnswer(Exception):
    """The request was sent and no whole answer came back (the connection ended, the answer was
    not HTTP, or none within the timeout): it may have run there, so it is not sent again."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a host: one request at a time, its answer parsed by httptools
    (the parser calls the ``on_*`` methods)."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.headers: Headers = []
        self.chunks: list[bytes] = []
        self.open = True  # until the connection is lost or given up
        self.until_eof = False  # the answer has no length: it ends with the connection
        self.keep = False  # the last answer left the connection usable for the next request

    # asyncio's side
    # a stream protocol is given a Transport (uvloop's is not a subclass of asyncio's)
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing asked: a host does not talk first
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(NoAnswer(f"its answer is not HTTP ({exc})"))

    def eof_received(self) -> bool:
        return False  # the transport closes itself: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.pool.forget(self)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.until_eof and exc is None:
            self.waiter = None
            waiter.set_result(self._answer())
            return
        why = f"{type(exc).__name__}: {exc}" if exc else "it closed the connection"
        self._fail(NoAnswer(f"no answer after the request was sent ({why})"))

    # httptools' side
    def on_message_begin(self) -> None:
        if self.waiter is None:  # an answer nobody asked for: not to be used again
            self.open = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        names = {name for name, _ in self.headers}
        status = self.parser.get_status_code()
        self.until_eof = (
            b"content-length" not in names
            and b"transfer-encoding" not in names
            and status >= 200
            and status not in (204, 304)
        )

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            self.headers, self.chunks = [], []
            return
        self.keep = self.parser.should_keep_alive()
        self.waiter = None
        waiter.set_result(self._answer())
        self.headers, self.chunks = [], []

    # the pool's side
    def usable(self) -> bool:
        """Whether this idle connection can take a request: still open, and nothing waiting to
        be read on it (an idle connection that is readable has been closed by the host, or sent
        something unasked: either way it is dropped, and a request on it would be lost)."""
        if not self.open or self.transport is None or self.transport.is_closing():
            return False
        if self.fd >= 0:
            try:
                readable, _, _ = select.select([self.fd], [], [], 0)
            except (OSError, ValueError):
                return False
            if readable:
                return False
        return True

    async def request(self, data: bytes, timeout_s: float) -> Answer:
        """Write one request and wait for its answer (NoAnswer if none comes in time)."""
        assert self.transport is not None
        loop = self.pool.loop
        waiter: asyncio.Future[Answer] = loop.create_future()
        self.waiter, self.headers, self.chunks = waiter, [], []
        self.until_eof = self.keep = False
        timer = loop.call_later(timeout_s, self._timed_out, waiter, timeout_s)
        self.transport.write(data)
        try:
            return await waiter
        finally:
            timer.cancel()

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()

    def _answer(self) -> Answer:
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self.parser.get_status_code(), self.headers, body

    def _timed_out(self, waiter: asyncio.Future[Answer], timeout_s: float) -> None:
        if waiter is self.waiter and not waiter.done():
            self._fail(NoAnswer(f"no answer within {timeout_s:g} s"))

    def _fail(self, exc: NoAnswer) -> None:
        waiter, self.waiter = self.waiter, None
        self.open = False
        if self.transport is not None:
            self.transport.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class _Pool:
    """The connections to one host: at most ``limit`` open (a request past that waits for one
    to be free), the most recently used idle one taken first, at most ``max_idle`` kept idle."""

    def __init__(self, url: str, limit: int, max_idle: int, connect_timeout_s: float) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.hostname = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/").encode("latin-1")
        self.host_line = b"host: " + parts.netloc.encode("latin-1") + b"\r\n"
        self.loop = asyncio.get_running_loop()
        self.limit = limit
        self.in_use = 0  # connections taken by requests (each holds one until answered)
        self.waiting: deque[asyncio.Future[None]] = deque()  # requests past the limit, in order
        self.idle: deque[_Connection] = deque()
        self.max_idle = max_idle
        self.connect_timeout_s = connect_timeout_s
        self.busy: set[_Connection] = set()
        self._tls: ssl.SSLContext | None = ssl.create_default_context() if self.https else None

    async def send(self, head: bytes, rest: bytes, body: bytes, timeout_s: float) -> Answer:
        """One request (``head`` the path and query, ``rest`` the headers after Host, ending
        with the empty line) on a pooled connection or a new one."""
        data = b"".join((b"POST ", self.prefix, head, b" HTTP/1.1\r\n", self.host_line, rest, body))
        if self.in_use < self.limit:
            self.in_use += 1
        else:
            await self._wait(timeout_s)
        try:
            conn = self._idle()
            if conn is None:  # none idle, or the one there was closed by the host: a fresh one
                conn = await self._connect()
            self.busy.add(conn)
            try:
                answer = await conn.request(data, timeout_s)
            except BaseException:
                conn.close()
                raise
            finally:
                self.busy.discard(conn)
            if conn.keep and conn.open and len(self.idle) < self.max_idle:
                self.idle.append(conn)
            else:
                conn.close()
            return answer
        finally:
            self._release()

    # Futures and timers only, no asyncio.timeout/wait_for (they need a Task, and the server's
    # fast lane runs a prediction's coroutine without one: gateway/http.py).
    async def _wait(self, timeout_s: float) -> None:
        """Every connection is taken: wait for one to be handed over, within the timeout (the
        request is not sent meanwhile, so the next host may take it)."""
        turn: asyncio.Future[None] = self.loop.create_future()
        self.waiting.append(turn)
        timer = self.loop.call_later(timeout_s, expire, turn)
        try:
            await turn
        except TimeoutError:
            raise Unreachable(f"all {self.limit} connections busy for {timeout_s:g} s") from None
        except BaseException:  # cancelled: a connection handed over meanwhile goes on
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._release()
            raise
        finally:
            timer.cancel()

    def _release(self) -> None:
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the connection taken is handed over: in_use unchanged
                return
        self.in_use -= 1

    def _idle(self) -> _Connection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()  # closed by the host meanwhile: never written to
        return None

    async def _connect(self) -> _Connection:
        connecting = asyncio.ensure_future(
            self.loop.create_connection(
                lambda: _Connection(self),
                self.hostname,
                self.port,
                ssl=self._tls,
                server_hostname=self.hostname if self._tls else None,
            )
        )
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            connecting.cancel()

        timer = self.loop.call_later(self.connect_timeout_s, expire)
        try:
            _, conn = await connecting
        except asyncio.CancelledError:
            if expired:
                raise Unreachable(f"no connection within {self.connect_timeout_s:g} s") from None
            connecting.cancel()  # the request itself was cancelled
            raise
        except OSError as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc.strerror or exc}") from None
        finally:
            timer.cancel()
        return conn

    def forget(self, conn: _Connection) -> None:
        """A connection lost: out of the idle ones (a busy one is given up by its request)."""
        if conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        for conn in [*self.idle, *self.busy]:
            conn.close()
        self.idle.clear()


class Forwarder:
    """One pool of connections per host; ``hosts`` (model → the advertised addresses of the other
    servers hosting it) is the deployer's, kept current by it."""

    def __init__(
        self,
        node: str,
        hosts: dict[str, list[str]],
        timeout_s: float = 330.0,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        max_connections: int = 256,
        max_idle: int = 64,
    ) -> None:
        self.node = node.encode()
        self.hosts = hosts
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_connections, self.max_idle = max_connections, max_idle
        self._turn = itertools.count()
        self._pools: dict[str, _Pool] = {}

    def can(self, model: str) -> bool:
        return bool(self.hosts.get(model))

    async def send(
        self, model: str, path: str, query: bytes, headers: Headers, body: bytes
    ) -> tuple[int, Headers, bytes]:
        hosts = self.hosts.get(model) or []
        if not hosts:
            raise ModelUnavailable(f"No server hosts a replica of model '{model}' now.")
        start = next(self._turn) % len(hosts)
        head = path.encode("latin-1") + (b"?" + query if query else b"")
        lines = [b"%s: %s\r\n" % (k, v) for k, v in headers if k in _PASSED]
        lines.append(b"%s: %s\r\ncontent-length: %d\r\n\r\n" % (FORWARDED, self.node, len(body)))
        rest = b"".join(lines)
        last = ""
        for host in hosts[start:] + hosts[:start]:
            pool = self._pools.get(host) or self._pool(host)
            try:
                status, got, out = await pool.send(head, rest, body, self.timeout_s)
            except Unreachable as exc:
                last = f"{host}: {exc}"
                log.warning("forwarding a prediction of %s to %s failed: %s", model, host, exc)
                continue
            except NoAnswer as exc:
                log.warning("a prediction of %s forwarded to %s: %s", model, host, exc)
                raise ModelUnavailable(
                    f"The server hosting model '{model}' ({host}) gave no answer: {exc}; "
                    "it was not sent again, since it may have run there."
                ) from None
            if status == 503 and host is not hosts[start - 1]:
                last = f"{host}: 503"
                continue
            kept = [(k, v) for k, v in got if k not in _NOT_KEPT]
            kept.append((b"content-length", b"%d" % len(out)))
            return status, kept, out
        raise ModelUnavailable(
            f"No server hosting model '{model}' answered ({last}); try again shortly."
        )

    def _pool(self, host: str) -> _Pool:
        pool = self._pools[host] = _Pool(
            host, self.max_connections, self.max_idle, self.connect_timeout_s
        )
        return pool

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        await asyncio.sleep(0)  # the transports' close callbacks run
