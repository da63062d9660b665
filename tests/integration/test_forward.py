"""The forwarding client (gateway/forward.py) against real HTTP hosts on loopback ports: each host
is a server on its own thread and event loop that answers as a modelport host would, or as a
failing one does (refusing, answering 503, closing an idle connection, hanging up after the
request, never answering, answering garbage), and records what reached it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httptools
import pytest
import uvloop
from modelport.errors import ModelUnavailable
from modelport.gateway.forward import FORWARDED, Forwarder

BODY = b'{"a": 2, "b": 3}'
ANSWER = b"5.0"


class Request:
    """What a host received: the request line's target, its headers (names lower-case), body."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def answer(status: int = 200, body: bytes = ANSWER, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 %d X\r\n" % status, b"content-type: application/json\r\n", *extra]
    return b"".join([*head, b"content-length: %d\r\n\r\n" % len(body), body])


OK = answer(200, ANSWER, b"x-replica-id: r1\r\n", b"keep-alive: timeout=5\r\n", b"date: today\r\n")

# How a host answers one request: (bytes to write or None, then close the connection?,
# seconds to wait before writing)
Reply = tuple[bytes | None, bool, float]
REPLIES: dict[str, Reply] = {
    "ok": (OK, False, 0.0),
    "chunked": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-replica-id: r2\r\n\r\n"
        b"2\r\n5.\r\n1\r\n0\r\n0\r\n\r\n",
        False,
        0.0,
    ),
    "until-eof": (b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + ANSWER, True, 0.0),
    "unavailable": (
        answer(503, b'{"error":{"code":"model.unavailable","message":"draining"}}'),
        False,
        0.0,
    ),
    "closes-idle": (OK, True, 0.0),  # answers as keep-alive, then closes the connection at once
    "hangs-up": (None, True, 0.0),  # reads the request, closes without an answer
    "silent": (None, False, 60.0),  # reads the request, never answers
    "garbage": (b"SMTP ready\r\n\r\n", False, 0.0),
    "slow": (OK, False, 0.2),
}


class Host:
    """An HTTP server on 127.0.0.1 on a thread of its own, answering every request with
    ``REPLIES[mode]``; it counts connections (open now, the most at once) and keeps requests."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.requests: list[Request] = []
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.loop = uvloop.new_event_loop()
        self.server: asyncio.Server | None = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self, ready: threading.Event) -> None:
        async def start() -> None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                request = Request()
                parser = httptools.HttpRequestParser(request)
                while not request.done:
                    data = await reader.read(65536)
                    if not data:
                        return
                    parser.feed_data(data)
                self.requests.append(request)
                data, close, wait = REPLIES[self.mode]
                if wait:
                    await asyncio.sleep(wait)
                if data is not None:
                    writer.write(data)
                    await writer.drain()
                if close:
                    return
        finally:
            self.open -= 1
            writer.close()

    def stop(self) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def hosts() -> Iterator[Callable[[str], Host]]:
    made: list[Host] = []

    def make(mode: str = "ok") -> Host:
        made.append(Host(mode))
        return made[-1]

    yield make
    for host in made:
        host.stop()


def refused_url() -> str:
    """An address on which nothing listens (connections refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


HEADERS = [
    (b"host", b"front:80"),
    (b"content-type", b"application/json"),
    (b"accept", b"application/json"),
    (b"authorization", b"Bearer mp_key"),
    (b"x-request-id", b"req-1"),
    (b"cookie", b"a=b"),
    (b"connection", b"keep-alive"),
    (b"x-custom", b"not passed"),
]


def run(make_forwarder: Callable[[], Forwarder], work: Callable) -> object:
    """``work(forwarder)`` on a uvloop (as in the server), the forwarder closed after."""

    async def main() -> object:
        fwd = make_forwarder()
        try:
            return await work(fwd)
        finally:
            await fwd.close()

    return uvloop.run(main())


def forward(fwd: Forwarder, model: str = "m", body: bytes = BODY, query: bytes = b""):
    return fwd.send(model, f"/models/{model}/predict", query, HEADERS, body)


def test_an_answer_comes_back_as_the_host_gave_it_and_connections_are_kept_alive(hosts):
    host = hosts("ok")

    async def work(fwd: Forwarder):
        return [await forward(fwd, query=b"x=1") for _ in range(5)]

    answers = run(lambda: Forwarder("a", {"m": [host.url]}), work)
    for status, headers, body in answers:
        assert (status, body) == (200, ANSWER)
        assert headers == [
            (b"content-type", b"application/json"),
            (b"x-replica-id", b"r1"),
            (b"content-length", b"3"),  # hop-by-hop ones (keep-alive) and date dropped
        ]
    assert host.connections == 1  # five requests on one kept-alive connection
    seen = host.requests[0]
    assert seen.url == b"/models/m/predict?x=1" and seen.body == BODY
    assert seen.headers == {
        b"host": f"127.0.0.1:{host.port}".encode(),
        b"content-type": b"application/json",
        b"accept": b"application/json",
        b"authorization": b"Bearer mp_key",
        b"x-request-id": b"req-1",
        FORWARDED: b"a",  # the loop header: the host answers it itself
        b"content-length": str(len(BODY)).encode(),
    }  # and nothing else of the caller's (cookie, connection, x-custom)


@pytest.mark.parametrize("mode", ["chunked", "until-eof"])
def test_a_chunked_answer_or_one_up_to_the_connections_end_comes_back_whole(hosts, mode):
    host = hosts(mode)

    async def work(fwd: Forwarder):
        return [await forward(fwd) for _ in range(3)]

    for status, headers, body in run(lambda: Forwarder("a", {"m": [host.url]}), work):
        assert (status, body) == (200, ANSWER)
        assert (b"content-length", b"3") in headers
        assert not {b"transfer-encoding", b"connection"} & {k for k, _ in headers}
    assert host.connections == (1 if mode == "chunked" else 3)


def test_a_large_body_goes_and_comes_whole(hosts):
    host = hosts("ok")
    big = b"[" + b"1," * 600_000 + b"1]"

    async def work(fwd: Forwarder):
        return await forward(fwd, body=big)

    status, _, _ = run(lambda: Forwarder("a", {"m": [host.url]}), work)
    assert status == 200 and host.requests[0].body == big


def test_a_host_that_refuses_or_answers_503_is_skipped_for_the_next(hosts):
    good, draining, dead = hosts("ok"), hosts("unavailable"), refused_url()

    async def work(fwd: Forwarder):
        return [await forward(fwd) for _ in range(6)]  # each host first in turn

    answers = run(lambda: Forwarder("a", {"m": [dead, draining.url, good.url]}), work)
    assert [a[0] for a in answers] == [200] * 6
    assert len(good.requests) == 6
    assert len(draining.requests) == 4  # asked when first or second in turn, then skipped


def test_the_last_hosts_503_is_the_answer_and_none_reachable_is_503_model_unavailable(hosts):
    draining = hosts("unavailable")
    dead = [refused_url(), refused_url()]

    async def work(fwd: Forwarder):
        status, _, body = await forward(fwd, "one")
        with pytest.raises(ModelUnavailable) as refused:
            await forward(fwd, "two")
        with pytest.raises(ModelUnavailable) as unknown:
            await forward(fwd, "three")
        return status, body, str(refused.value), str(unknown.value)

    status, body, refused, unknown = run(
        lambda: Forwarder("a", {"one": [draining.url], "two": dead}), work
    )
    assert status == 503 and b"model.unavailable" in body  # the host's own 503, as it gave it
    assert "'two'" in refused and "ConnectionRefusedError" in refused
    assert "'three'" in unknown and "No server hosts" in unknown


def test_a_host_that_does_not_accept_within_the_connect_timeout_is_skipped(hosts):
    """A listening socket whose backlog is full: the kernel drops the connection attempts."""
    good = hosts("ok")
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    address = stuck.getsockname()
    fillers = []
    for _ in range(4):  # fill the accept queue; later SYNs go unanswered
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(address)
        fillers.append(s)
    time.sleep(0.2)
    try:

        async def work(fwd: Forwarder):
            return await forward(fwd)

        status, _, _ = run(
            lambda: Forwarder(
                "a", {"m": [f"http://127.0.0.1:{address[1]}", good.url]}, connect_timeout_s=0.3
            ),
            work,
        )
        assert status == 200 and len(good.requests) == 1
    finally:
        for s in [*fillers, stuck]:
            s.close()


@pytest.mark.parametrize("loop_busy", [True, False])
def test_a_pooled_connection_the_host_closed_is_replaced_by_a_fresh_one(hosts, loop_busy):
    """The host closes each connection right after its answer (as a host's keep-alive timeout
    does): the next request goes on a fresh connection, whether or not the client's loop has
    read the close yet (busy: it has not), and each request reaches the host exactly once."""
    host = hosts("closes-idle")

    async def work(fwd: Forwarder):
        got = []
        for _ in range(3):
            got.append(await forward(fwd))
            if loop_busy:
                time.sleep(0.1)  # noqa: ASYNC251 (meant: the host's close comes while this loop sleeps)
            else:
                await asyncio.sleep(0.1)
        return got

    answers = run(lambda: Forwarder("a", {"m": [host.url]}), work)
    assert [a[0] for a in answers] == [200, 200, 200]
    assert len(host.requests) == 3 and host.connections == 3


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("hangs-up", "it closed the connection"),
        ("silent", "no answer within 0.5 s"),
        ("garbage", "not HTTP"),
    ],
)
def test_a_request_sent_and_not_answered_is_never_sent_again(hosts, mode, why):
    """Once written, a request may have run on the host: it is not sent to it again on another
    connection, nor to the next host; the caller gets 503 model.unavailable saying why."""
    bad, good = hosts(mode), hosts("ok")

    async def work(fwd: Forwarder):
        await forward(fwd)  # first in turn: good; then bad, which takes it and fails
        with pytest.raises(ModelUnavailable) as failed:
            await forward(fwd)
        return str(failed.value)

    message = run(lambda: Forwarder("a", {"m": [good.url, bad.url]}, timeout_s=0.5), work)
    assert why in message and "not sent again" in message
    assert len(bad.requests) == 1 and len(good.requests) == 1


def test_connections_to_a_host_are_bounded_and_requests_past_the_bound_wait(hosts):
    host = hosts("slow")

    async def work(fwd: Forwarder):
        return await asyncio.gather(*(forward(fwd) for _ in range(8)))

    answers = run(lambda: Forwarder("a", {"m": [host.url]}, max_connections=3), work)
    assert [a[0] for a in answers] == [200] * 8
    assert host.most_open == 3 and host.connections == 3  # reused as they came free


def test_it_runs_without_an_asyncio_task_as_the_fast_lane_runs_a_prediction(hosts):
    """gateway/http.py drives a prediction's coroutine itself (_Step), with no Task: connecting,
    skipping a refused host and waiting for a free connection work there too."""
    from modelport.gateway.http import _Step

    slow = hosts("slow")

    async def work(fwd: Forwarder):
        loop = asyncio.get_running_loop()
        answers: list[asyncio.Future] = [loop.create_future() for _ in range(3)]

        async def predict(done: asyncio.Future) -> None:
            try:
                got = await forward(fwd)
                assert asyncio.current_task() is None
                done.set_result(got)
            except BaseException as exc:
                done.set_exception(exc)

        for done in answers:
            loop.call_soon(_Step(predict(done), loop, set()).run)  # outside any Task
        return [await done for done in answers]

    answers = run(lambda: Forwarder("a", {"m": [refused_url(), slow.url]}, max_connections=1), work)
    assert [a[0] for a in answers] == [200, 200, 200]
    assert len(slow.requests) == 3 and slow.most_open == 1
