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
import os
import logging
from http import HTTPStatus

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelport.gateway.predict import Gateway

log = logging.getLogger("modelport.gateway")

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CLOSE = b"connection: close\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_DISCONNECT = {"type": "http.disconnect"}
_INTERNAL = (b'{"error":{"code":"internal","message":"Internal server error."}}')


def is_prediction(method: str, path: str) -> bool:
    return method == "POST" and _is_prediction_path(path.encode("latin-1"))


def _is_prediction_path(path: bytes) -> bool:
    if path == b"/model":
        return True
    return path[:8] == b"/models/" and path[-8:] == b"/predict" and b"/" not in path[8:-8] \
        and len(path) > 16


HEADER_TIMEOUT_S = float(os.environ.get("MODELPORT_HEADER_TIMEOUT_S", 20))
BODY_IDLE_S = float(os.environ.get("MODELPORT_BODY_IDLE_S", 30))


class PredictionProtocol(HttpToolsProtocol):
    """Set `gateway` on the class (or a subclass) before uvicorn starts."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_idle_s = BODY_IDLE_S
    _reading: asyncio.TimerHandle | None = None  # the slow-client watchdog of the request
    _progress = 0  # bytes received while a request is being read
    _seen = 0

    gateway: Gateway | None = None
    _lane: list | None = None  # [scope, body chunks, size, cap, keep_alive] of a prediction
    _answering = 0  # predictions of this connection not answered yet
    _tail: asyncio.Future | None = None  # written when the latest prediction's answer is out
    _close_after = False

    def data_received(self, data: bytes) -> None:
        self._progress += len(data)
        super().data_received(data)

    def _watch(self, delay: float, check) -> None:
        if self._reading is not None:
            self._reading.cancel()
        self._seen = self._progress
        self._reading = self.loop.call_later(delay, check)

    def _headers_too_slow(self) -> None:
        self._reading = None
        log.info("closing a connection whose request headers took over %ss", self.header_timeout_s)
        self.transport.close()

    def _body_check(self) -> None:
        self._reading = None
        if self._progress == self._seen:
            log.info("closing a connection whose request body stalled for %ss", self.body_idle_s)
            self.transport.close()
            return
        self._watch(self.body_idle_s, self._body_check)

    def _stop_watch(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watch()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._watch(self.header_timeout_s, self._headers_too_slow)
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._lane = None
        self.scope = None  # made in on_headers_complete, only for requests that go through ASGI

    def on_headers_complete(self) -> None:
        self._watch(self.body_idle_s, self._body_check)
        if self.gateway is not None and self.parser.get_method() == b"POST" and \
                (self.cycle is None or self.cycle.response_complete):
            parsed = httptools.parse_url(self.url)
            if _is_prediction_path(parsed.path):
                self._start_lane(parsed)
                return
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        HttpToolsProtocol.on_message_begin(self)  # uvicorn's scope, then what was read so far
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers
        super().on_headers_complete()

    def _start_lane(self, parsed) -> None:
        keep_alive = self.parser.get_http_version() == "1.1" and self.parser.should_keep_alive()
        scope = {"type": "http", "method": "POST", "path": parsed.path.decode("latin-1"),
                 "query_string": parsed.query or b"", "headers": self.headers}
        cap = self.gateway.routes.max_body(self.gateway.default_max_body) + 1
        self._lane = [scope, [], 0, cap, keep_alive]
        if self.expect_100_continue:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        lane = self._lane
        if lane is None:
            return super().on_body(body)
        if lane[2] < lane[3]:  # past the largest limit: counted, not kept (the answer is 413)
            lane[1].append(body)
        lane[2] += len(body)

    def on_message_complete(self) -> None:
        self._stop_watch()
        lane = self._lane
        if lane is None:
            return super().on_message_complete()
        self._lane = None
        self._answering += 1
        previous, self._tail = self._tail, self.loop.create_future()
        task = self.loop.create_task(self._answer(lane, previous, self._tail))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _start_asgi_task(self, cycle, app) -> None:
        if self._answering:  # pipelined behind a prediction: wait for its answer
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))
            return
        super()._start_asgi_task(cycle, app)

    async def _answer(self, lane: list, previous: asyncio.Future | None,
                      done: asyncio.Future) -> None:
        scope, chunks, size, _, keep_alive = lane
        body = b"".join(chunks) if len(chunks) != 1 else chunks[0]
        head: list[bytes] = []
        out: list[bytes] = []
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if sent:
                return _DISCONNECT
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            nonlocal keep_alive
            if message["type"] == "http.response.start":
                head.append(_STATUS_LINES.get(message["status"]) or
                            f"HTTP/1.1 {message['status']} \r\n".encode())
                for name, value in self.server_state.default_headers:
                    head.extend((name, b": ", value, b"\r\n"))
                for name, value in message["headers"]:
                    if name == b"connection" and value == b"close":
                        keep_alive = False
                        continue
                    head.extend((name, b": ", value, b"\r\n"))
            else:
                out.append(message.get("body", b""))

        try:
            await self.gateway(scope, receive, send)
        except BaseException:
            log.exception("prediction failed in the HTTP layer")
            head[:] = [_STATUS_LINES[500], b"content-type: application/json\r\ncontent-length: ",
                       str(len(_INTERNAL)).encode(), b"\r\n"]
            out[:] = [_INTERNAL]
            keep_alive = False
        if not keep_alive or self._close_after:
            head.append(_CLOSE)
        head.append(b"\r\n")
        head.extend(out)
        if previous is not None and not previous.done():
            await previous  # an earlier pipelined prediction answers first
        self._answering -= 1
        transport = self.transport
        if not transport.is_closing():
            transport.write(b"".join(head))
            if keep_alive and not self._close_after:
                self.on_response_complete()
            else:
                transport.close()
        if not done.done():
            done.set_result(None)

    def shutdown(self) -> None:
        if self._answering:
            self._close_after = True  # the answers in progress are sent, then the connection ends
            return
        super().shutdown()
