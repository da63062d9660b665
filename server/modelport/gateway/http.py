"""uvicorn's httptools protocol, with the prediction routes answered in one write.

uvicorn still parses (httptools), keeps connections alive, pipelines, applies flow control and
timeouts. For `POST /models/{name}/predict` and `POST /model` the request's cycle runs the gateway
directly (no proxy-headers middleware) with a `send` that gathers the status line, the headers and
the body into a single `transport.write`, instead of uvicorn's per-header validation and two
writes. The gateway only ever sends its own well-formed headers, so nothing is lost.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from modelport.gateway.predict import Gateway

log = logging.getLogger("modelport.gateway")

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CLOSE = b"connection: close\r\n"


def is_prediction(method: str, path: str) -> bool:
    if method != "POST":
        return False
    if path == "/model":
        return True
    return path[:8] == "/models/" and path[-8:] == "/predict" and "/" not in path[8:-8]


class PredictionProtocol(HttpToolsProtocol):
    """Set `gateway` on the class (or a subclass) before uvicorn starts."""

    gateway: Gateway | None = None

    def _start_asgi_task(self, cycle: RequestResponseCycle, app) -> None:
        scope = cycle.scope
        if self.gateway is not None and is_prediction(scope["method"], scope["path"]):
            task = self.loop.create_task(_serve(cycle, self.gateway))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
            return
        super()._start_asgi_task(cycle, app)


async def _serve(cycle: RequestResponseCycle, gateway: Gateway) -> None:
    head: list[bytes] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            head.append(_STATUS_LINES.get(message["status"]) or
                        f"HTTP/1.1 {message['status']} \r\n".encode())
            for name, value in cycle.default_headers:
                head.extend((name, b": ", value, b"\r\n"))
            for name, value in message["headers"]:
                if name == b"connection" and value == b"close":
                    cycle.keep_alive = False
                    continue
                head.extend((name, b": ", value, b"\r\n"))
            if not cycle.keep_alive:
                head.append(_CLOSE)
            head.append(b"\r\n")
            cycle.response_started = True
            return
        if cycle.response_complete or cycle.disconnected:
            return
        head.append(message.get("body", b""))
        cycle.transport.write(b"".join(head))
        if not message.get("more_body", False):
            cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                cycle.transport.close()
            cycle.on_response()

    try:
        await gateway(cycle.scope, cycle.receive, send)
    except BaseException:
        log.exception("prediction failed in the HTTP layer")
        if not cycle.response_started and not cycle.disconnected:
            body = b'{"error":{"code":"internal","message":"Internal server error."}}'
            cycle.transport.write(_STATUS_LINES[500] + b"content-type: application/json\r\n"
                                  b"content-length: " + str(len(body)).encode() + b"\r\n"
                                  + _CLOSE + b"\r\n" + body)
        cycle.transport.close()
        cycle.response_complete = True
        cycle.message_event.set()
