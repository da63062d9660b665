"""A real worker subprocess against an asyncio Unix socket server in the test."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import msgspec
import pytest
from modelport.runtime.protocol import (
    Boot,
    Call,
    Failure,
    FrameReader,
    FrameTooLarge,
    Ping,
    Pong,
    ProtocolError,
    Ready,
    Result,
    encode_frame,
    read_frame,
    recv_frame,
    send_frame,
)

MODEL = """
import asyncio, os, sys, time
from modelport import track_metric

print("loading weights", flush=True)

def add(a: float, b: float = 1.0) -> float:
    print(f"adding {a} and {b}")
    track_metric("a_plus_one", a + 1)
    track_metric("count", 1)
    if a < 0:
        raise ValueError("boom")
    return a + b

def cloudera(args):
    return {"echo": args, "pid": os.getpid()}

def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds

async def aslow(seconds: float) -> dict:
    await asyncio.sleep(seconds)
    track_metric("slept", seconds)
    return {"slept": seconds}

def big(n: int) -> str:
    return "x" * n

def exits(code: int, hard: bool):
    if hard:
        os._exit(code)
    sys.exit(code)
"""


class Worker:
    """One worker process and the server end of its socket."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: object,
    ) -> None:
        self.proc, self.reader, self.writer, self.first = proc, reader, writer, first
        self.next_id = 0

    async def call(
        self,
        body: object,
        *,
        content_type: str = "json",
        accept: str = "json",
        raw: bytes | None = None,
    ) -> Result | Failure:
        self.next_id += 1
        await self.send(
            Call(
                self.next_id,
                raw if raw is not None else encode(body, content_type),
                content_type,
                accept,
                f"req-{self.next_id}",
            )
        )
        msg = await asyncio.wait_for(read_frame(self.reader), 30)
        assert isinstance(msg, (Result, Failure)) and msg.id == self.next_id, msg
        return msg

    async def send(self, msg: object) -> None:
        self.writer.write(encode_frame(msg))
        await self.writer.drain()

    async def close(self) -> tuple[int, str, str]:
        self.writer.close()
        out, err = await asyncio.wait_for(self.proc.communicate(), 30)
        return self.proc.returncode, out.decode(), err.decode()


def encode(body: object, content_type: str) -> bytes:
    return msgspec.msgpack.encode(body) if content_type == "msgpack" else msgspec.json.encode(body)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "model.py").write_text(textwrap.dedent(MODEL))
    return tmp_path


@pytest.fixture
def sock_dir():
    path = tempfile.mkdtemp(prefix="mpw-", dir="/tmp")  # AF_UNIX paths must stay short
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


async def start(project: Path, entry: str, sock_dir: Path, *extra: str) -> Worker:
    path = str(sock_dir / "w.sock")
    conns: asyncio.Queue = asyncio.Queue()
    server = await asyncio.start_unix_server(lambda r, w: conns.put_nowait((r, w)), path=path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-u",
        "-m",
        "modelport.runtime.worker",
        "--project",
        str(project),
        "--entry",
        entry,
        "--socket",
        path,
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        reader, writer = await asyncio.wait_for(conns.get(), 30)
    finally:
        server.close()
    first = await asyncio.wait_for(read_frame(reader), 30)
    return Worker(proc, reader, writer, first)


def run(coro):
    return asyncio.run(coro)


def test_ready_then_json_and_msgpack_calls(model_dir, sock_dir):
    async def go():
        w = await start(model_dir, "model.py:add", sock_dir)
        assert isinstance(w.first, Ready)
        assert (w.first.form, w.first.is_async, w.first.pid) == ("params", False, w.proc.pid)
        res = await w.call({"a": 2})
        assert isinstance(res, Result)
        assert res.body == b"3.0"
        assert res.metrics == {"a_plus_one": 3.0, "count": 1.0}
        res = await w.call({"a": 2, "b": 5}, content_type="msgpack", accept="msgpack")
        assert msgspec.msgpack.decode(res.body) == 7.0
        res = await w.call({"a": 1}, content_type="msgpack", accept="json")
        assert res.body == b"2.0"
        rc, out, _ = await w.close()
        assert rc == 0
        assert "loading weights" in out and "adding 2.0 and 5.0" in out

    run(go())


def test_failures(model_dir, sock_dir):
    async def go():
        w = await start(model_dir, "model.py:add", sock_dir)
        res = await w.call({"a": "x"})
        assert res == Failure(
            res.id, 422, "request.invalid", "Expected `float`, got `str` - at `$.a`", "a"
        )
        res = await w.call({"b": 1})
        assert (res.status, res.code, res.field) == (422, "request.invalid", "a")
        res = await w.call({"a": 1, "c": 2})
        assert (res.status, res.code, res.field) == (422, "request.invalid", "c")
        res = await w.call(None, raw=b"{nope")
        assert (res.status, res.code) == (400, "request.malformed")
        res = await w.call([1, 2])
        assert (res.status, res.code) == (400, "request.malformed")
        res = await w.call(None, raw=b"\xc1", content_type="msgpack")
        assert (res.status, res.code) == (400, "request.malformed")
        res = await w.call({"a": -1})
        assert (res.status, res.code, res.message, res.field) == (
            500,
            "model.error",
            "ValueError: boom",
            None,
        )
        res = await w.call({"a": 1})  # still serving after errors
        assert isinstance(res, Result) and res.body == b"2.0"
        rc, _, err = await w.close()
        assert rc == 0
        assert "Traceback" in err and "ValueError: boom" in err  # the traceback stays in the log

    run(go())


def test_cloudera_dict_form_and_ping(model_dir, sock_dir):
    async def go():
        w = await start(model_dir, "model.py:cloudera", sock_dir)
        assert w.first.form == "dict"
        res = await w.call({"x": [1, 2], "y": {"z": None}})
        assert json.loads(res.body) == {"echo": {"x": [1, 2], "y": {"z": None}}, "pid": w.proc.pid}
        await w.send(Ping(99))
        pong = await asyncio.wait_for(read_frame(w.reader), 10)
        assert isinstance(pong, Pong) and pong.id == 99
        assert pong.served == 1 and pong.in_flight == 0 and pong.rss_kb > 1000
        assert (await w.close())[0] == 0

    run(go())


def test_async_function_with_metrics(model_dir, sock_dir):
    async def go():
        w = await start(model_dir, "model.py:aslow", sock_dir)
        assert w.first.is_async is True
        res = await w.call({"seconds": 0.01})
        assert json.loads(res.body) == {"slept": 0.01} and res.metrics == {"slept": 0.01}
        assert (await w.close())[0] == 0

    run(go())


def test_import_failure_sends_boot_and_exits_3(tmp_path, sock_dir):
    (tmp_path / "model.py").write_text("import not_a_real_dependency_xyz\n")

    async def go():
        w = await start(tmp_path, "model.py:predict", sock_dir)
        assert w.first == Boot("ModuleNotFoundError: No module named 'not_a_real_dependency_xyz'")
        rc, _, err = await w.close()
        assert rc == 3 and "Traceback" in err

    run(go())


def test_missing_function_is_a_boot_failure(model_dir, sock_dir):
    async def go():
        w = await start(model_dir, "model.py:nope", sock_dir)
        assert isinstance(w.first, Boot) and w.first.error.startswith("EntryError: ")
        assert (await w.close())[0] == 3

    run(go())


def test_socket_close_stops_the_worker(model_dir, sock_dir):
    async def go():
        w = await start(model_dir, "model.py:add", sock_dir)
        assert isinstance(w.first, Ready)
        w.writer.close()
        assert await asyncio.wait_for(w.proc.wait(), 10) == 0

    run(go())


@pytest.mark.parametrize("entry", ["model.py:slow", "model.py:aslow"])
def test_concurrency_runs_calls_in_parallel(model_dir, sock_dir, entry):
    async def go():
        w = await start(model_dir, entry, sock_dir, "--max-concurrency", "4")
        started = time.monotonic()
        for i in range(4):
            await w.send(Call(i + 1, b'{"seconds": 0.5}', "json", "json", f"r{i}"))
        results = [await asyncio.wait_for(read_frame(w.reader), 10) for _ in range(4)]
        elapsed = time.monotonic() - started
        assert sorted(r.id for r in results) == [1, 2, 3, 4]
        assert all(isinstance(r, Result) for r in results)
        assert elapsed < 1.5, elapsed  # serially it would take 2 s
        assert (await w.close())[0] == 0

    run(go())


def test_ping_is_answered_while_threaded_calls_run(model_dir, sock_dir):
    async def go():
        w = await start(model_dir, "model.py:slow", sock_dir, "--max-concurrency", "2")
        await w.send(Call(1, b'{"seconds": 0.5}'))
        await asyncio.sleep(0.1)
        await w.send(Ping(2))
        pong = await asyncio.wait_for(read_frame(w.reader), 0.3)
        assert isinstance(pong, Pong) and (pong.id, pong.in_flight, pong.served) == (2, 1, 0)
        res = await asyncio.wait_for(read_frame(w.reader), 10)
        assert isinstance(res, Result) and res.id == 1
        assert (await w.close())[0] == 0

    run(go())


def test_max_concurrency_one_serialises(model_dir, sock_dir):
    async def go():
        w = await start(model_dir, "model.py:slow", sock_dir)
        started = time.monotonic()
        for i in range(3):
            await w.send(Call(i + 1, b'{"seconds": 0.2}'))
        results = [await asyncio.wait_for(read_frame(w.reader), 10) for _ in range(3)]
        assert [r.id for r in results] == [1, 2, 3]
        assert time.monotonic() - started >= 0.6
        assert (await w.close())[0] == 0

    run(go())


def test_sigterm_finishes_in_flight_calls_then_exits(model_dir, sock_dir):
    async def go():
        w = await start(model_dir, "model.py:slow", sock_dir, "--max-concurrency", "2")
        await w.send(Call(1, b'{"seconds": 0.5}'))
        await asyncio.sleep(0.2)
        w.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        await w.send(Call(2, b'{"seconds": 0}'))  # arrives while draining
        msgs = [await asyncio.wait_for(read_frame(w.reader), 10) for _ in range(2)]
        by_id = {m.id: m for m in msgs}
        assert isinstance(by_id[1], Result) and by_id[1].body == b"0.5"
        assert (by_id[2].status, by_id[2].code) == (503, "model.unavailable")
        assert await asyncio.wait_for(read_frame(w.reader), 10) is None  # it closed the socket
        assert await asyncio.wait_for(w.proc.wait(), 10) == 0

    run(go())


def test_sys_exit_is_a_model_error_but_os_exit_a_crash(model_dir, sock_dir):
    async def go():
        w = await start(model_dir, "model.py:exits", sock_dir)
        res = await w.call({"code": 7, "hard": False})
        assert (res.status, res.code, res.message) == (500, "model.error", "SystemExit: 7")
        await w.send(Call(2, b'{"code": 7, "hard": true}'))
        assert await asyncio.wait_for(read_frame(w.reader), 10) is None
        assert await asyncio.wait_for(w.proc.wait(), 10) == 7

    run(go())


def test_standard_asyncio_loop(model_dir, sock_dir):
    """Model environments without uvloop serve on the standard loop, threads and drain included."""

    async def go():
        w = await start(
            model_dir, "model.py:slow", sock_dir, "--loop", "asyncio", "--max-concurrency", "2"
        )
        started = time.monotonic()
        await w.send(Call(1, b'{"seconds": 0.4}'))
        await w.send(Call(2, b'{"seconds": 0.4}'))
        await asyncio.sleep(0.1)
        w.proc.send_signal(signal.SIGTERM)
        msgs = [await asyncio.wait_for(read_frame(w.reader), 10) for _ in range(2)]
        assert sorted(m.body for m in msgs) == [b"0.4", b"0.4"]
        assert time.monotonic() - started < 0.75
        assert await asyncio.wait_for(w.proc.wait(), 10) == 0
        w2 = await start(model_dir, "model.py:add", sock_dir, "--loop", "asyncio")
        assert (await w2.call({"a": 1})).body == b"2.0"
        assert (await w2.close())[0] == 0

    run(go())


def test_inherited_fd(model_dir):
    """`--fd N`: the server hands the worker one end of a socketpair."""
    import subprocess

    ours, theirs = socket.socketpair()
    with ours:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-u",
                "-m",
                "modelport.runtime.worker",
                "--project",
                str(model_dir),
                "--entry",
                "model.py:add",
                "--fd",
                str(theirs.fileno()),
            ],
            pass_fds=[theirs.fileno()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        theirs.close()
        ours.settimeout(30)
        assert isinstance(recv_frame(ours), Ready)
        send_frame(ours, Call(5, b'{"a": 40, "b": 2}'))
        res = recv_frame(ours)
        assert (res.id, res.body, res.metrics) == (5, b"42.0", {"a_plus_one": 41.0, "count": 1.0})
    assert proc.wait(10) == 0
    proc.stdout.close()
    proc.stderr.close()


def test_cannot_connect_exits_4(model_dir, sock_dir):
    import subprocess

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelport.runtime.worker",
            "--project",
            str(model_dir),
            "--entry",
            "model.py:add",
            "--socket",
            str(sock_dir / "absent.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 4 and "cannot connect" in proc.stderr


# --- framing -------------------------------------------------------------------------------------


def test_frame_reader_reassembles_split_and_batched_frames():
    msgs = [Call(i, os.urandom(i * 50), "msgpack", "json", f"r{i}") for i in range(1, 6)]
    stream = b"".join(bytes(encode_frame(m)) for m in msgs)
    for chunk in (1, 3, 7, 64, len(stream)):
        reader = FrameReader()
        got = []
        for i in range(0, len(stream), chunk):
            got += reader.feed(stream[i : i + chunk])
        assert got == msgs and reader.pending == 0


def test_frame_reader_rejects_garbage():
    with pytest.raises(ProtocolError):
        FrameReader().feed(b"\x00\x00\x00\x02\xc1\xc1")
    with pytest.raises(ProtocolError):
        FrameReader().feed(b"\xff\xff\xff\xff")


def test_frame_reader_refuses_a_frame_over_its_limit_from_the_prefix():
    before = bytes(encode_frame(Ping(1)))
    reader = FrameReader(limit=1000)
    with pytest.raises(FrameTooLarge) as caught:  # only the prefix of the long frame came
        reader.feed(before + (1001).to_bytes(4, "big"))
    assert (caught.value.size, caught.value.limit) == (1001, 1000)
    assert caught.value.messages == [Ping(1)]  # the frames before it are kept
    assert FrameReader(limit=1000).feed(bytes(encode_frame(Call(1, b"x" * 900)))) != []


def test_answers_over_the_response_cap_are_a_model_error(model_dir, sock_dir):
    async def go():
        w = await start(model_dir, "model.py:big", sock_dir, "--max-result-bytes", "1000")
        assert isinstance(w.first, Ready)
        ok = await w.call({"n": 900})
        assert isinstance(ok, Result) and len(ok.body) == 902
        over = await w.call({"n": 5000})
        assert isinstance(over, Failure) and (over.status, over.code) == (500, "model.error")
        assert "5002 bytes" in over.message and "MODELPORT_MAX_RESPONSE_MB" in over.message
        assert isinstance(await w.call({"n": 1}), Result)  # it keeps serving
        await w.close()

    run(go())


def test_a_call_over_the_workers_read_limit_closes_the_connection(model_dir, sock_dir):
    async def go():
        w = await start(model_dir, "model.py:big", sock_dir, "--max-call-bytes", "2000")
        assert isinstance(await w.call({"n": 1}), Result)
        await w.send(Call(9, b'{"n": 1, "pad": "' + b"y" * 5000 + b'"}'))
        assert await asyncio.wait_for(read_frame(w.reader), 30) is None  # closed, not read
        code, _, err = await w.close()
        assert code == 0 and "exceeds the limit of 2000" in err

    run(go())


def test_frame_layout():
    frame = bytes(encode_frame(Ping(7)))
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert msgspec.msgpack.decode(frame[4:]) == ["Ping", 7]
