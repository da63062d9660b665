"""The pipe client (serving/pipe.py) over real sockets, a Unix socketpair and a TCP loopback
connection, with the test as the replica at the other end (speaking runtime/protocol.py)."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from modelport.errors import ModelCrashed, ModelFailed, ModelTimeout
from modelport.runtime.protocol import (
    Call,
    Failure,
    Ping,
    Pong,
    Ready,
    Result,
    encode_frame,
    read_frame,
)
from modelport.serving.pipe import NotSent, Pipe


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


PAIRS = {"unix": socket.socketpair, "tcp": _tcp_pair}


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def sync(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 20))

    return sync


class Peer:
    """The replica's end: reads Calls, answers what the test says."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self) -> Call | Ping:
        msg = await read_frame(self.reader)
        assert isinstance(msg, Call | Ping)
        return msg

    def send(self, *msgs: object) -> None:
        for msg in msgs:
            self.writer.write(encode_frame(msg))  # type: ignore[arg-type]


async def _connect(kind: str, **events: object) -> tuple[Pipe, Peer, list[str]]:
    seen: list[str] = []
    ours, theirs = PAIRS[kind]()
    pipe = Pipe(
        "r-1",
        max_response_bytes=1024,
        on_fault=lambda why: seen.append("fault: " + why),
        on_closed=lambda: seen.append("closed"),
        **events,  # type: ignore[arg-type]
    )
    await pipe.open(ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    peer = Peer(reader, writer)
    peer.send(Ready(pid=1, form="dict", is_async=True))
    assert await asyncio.wait_for(pipe.first, 5) == Ready(pid=1, form="dict", is_async=True)  # type: ignore[arg-type]
    return pipe, peer, seen


@pytest.mark.parametrize("kind", sorted(PAIRS))
@run
async def test_calls_are_matched_to_their_answers_by_id(kind):
    pipe, peer, seen = await _connect(kind)
    calls = [
        asyncio.ensure_future(pipe.call(b"%d" % i, "json", "json", f"q{i}", 5)) for i in range(3)
    ]
    got = [await peer.read() for _ in range(3)]
    assert [c.body for c in got] == [b"0", b"1", b"2"]
    assert [c.request_id for c in got] == ["q0", "q1", "q2"]
    # answered out of order, one of them a Failure
    peer.send(Result(got[2].id, b"two"), Failure(got[0].id, 422, "request.invalid", "no"))
    peer.send(Result(got[1].id, b"one", took=0.5))
    answers = await asyncio.gather(*calls)
    assert [type(a).__name__ for a in answers] == ["Failure", "Result", "Result"]
    assert answers[1].body == b"one" and answers[2].body == b"two"
    assert (pipe.in_flight, pipe.served, pipe.failed) == (0, 3, 0)
    assert pipe.service_s > 0
    pipe.ping(1.0)
    assert isinstance(await peer.read(), Ping)
    peer.send(Pong(1, served=3, in_flight=0, rss_kb=777))
    heard = asyncio.get_running_loop().create_future()
    pipe.listen(lambda: heard.set_result(True))
    assert await asyncio.wait_for(heard, 5) and pipe.rss_kb == 777
    assert seen == []
    peer.writer.close()
    await asyncio.wait_for(pipe.closed, 5)
    assert seen == ["closed"] and not pipe.connected


@pytest.mark.parametrize("kind", sorted(PAIRS))
@run
async def test_the_calls_out_fail_when_the_connection_ends(kind):
    pipe, peer, seen = await _connect(kind)
    call = asyncio.ensure_future(pipe.call(b"{}", "json", "json", "q", 5))
    await peer.read()
    pipe.ending("killed: for the test")
    peer.writer.close()
    with pytest.raises(ModelCrashed, match=r"Replica r-1 died .*: killed: for the test"):
        await call
    assert seen == ["closed"] and pipe.failed == 1
    with pytest.raises(NotSent):  # nothing to send it on: the caller may send it elsewhere
        await pipe.call(b"{}", "json", "json", "q", 5)


@run
async def test_an_answer_over_the_cap_is_refused_from_its_length():
    pipe, peer, seen = await _connect("unix", on_broken=lambda: None)
    call = asyncio.ensure_future(pipe.call(b"{}", "json", "json", "q", 5))
    got = await peer.read()
    peer.send(Result(got.id, b"x" * (2 << 20)))
    await asyncio.wait_for(pipe.closed, 5)  # the pipe aborted the connection itself
    with pytest.raises(ModelFailed, match=r"of 2097[0-9]+ bytes, over the response cap"):
        await call
    assert seen[0].startswith("fault: killed: it sent an answer of") and seen[1] == "closed"


@run
async def test_a_call_past_its_timeout_fails_and_the_owner_is_told():
    pipe, _peer, seen = await _connect("unix")
    with pytest.raises(ModelTimeout, match=r"timeout_s=0\.05s; replica r-1 is recycled"):
        await pipe.call(b"{}", "json", "json", "q", 0.05)
    assert seen == ["fault: a call ran past timeout_s=0.05s"]


@run
async def test_a_new_connection_replaces_the_one_before():
    pipe, peer, _seen = await _connect("unix")
    call = asyncio.ensure_future(pipe.call(b"{}", "json", "json", "q", 5))
    await peer.read()
    ours, theirs = socket.socketpair()
    await pipe.open(ours)
    with pytest.raises(ModelCrashed):
        await call
    reader, writer = await asyncio.open_connection(sock=theirs)
    second = Peer(reader, writer)
    answer = asyncio.ensure_future(pipe.call(b"[]", "json", "json", "q2", 5))
    got = await second.read()
    second.send(Result(got.id, b"fine"))
    assert (await answer).body == b"fine"
    second.writer.close()
    peer.writer.close()
