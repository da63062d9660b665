"""Runtime micro-benchmarks: a Call's round trip over the socket, and the in-process hot path.

Run with: .venv/bin/python -m pytest tests/bench/test_runtime_bench.py --benchmark-only
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from modelport.runtime.invoke import Invoker
from modelport.runtime.protocol import (
    Call,
    FrameReader,
    Ready,
    Result,
    encode_frame,
    recv_frame,
    send_frame,
)
from modelport.runtime.signature import analyze, load_entry

MODEL = "def predict(a: float, b: float) -> float:\n    return a + b\n"
BODY = b'{"a": 1.5, "b": 2}'


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "model.py").write_text(MODEL)
    return tmp_path


@pytest.fixture(params=["uvloop", "asyncio"])
def worker_sock(request, model_dir: Path):
    """A worker on one end of a socketpair (``--fd``); we keep the other end, blocking."""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "modelport.runtime.worker",
            "--project",
            str(model_dir),
            "--entry",
            "model.py:predict",
            "--fd",
            str(theirs.fileno()),
            "--loop",
            request.param,
        ],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    ours.settimeout(30)
    assert isinstance(recv_frame(ours), Ready)
    yield ours
    ours.close()
    proc.wait(10)


def test_round_trip(benchmark, worker_sock):
    call = Call(1, BODY, "json", "json", "bench")

    def round_trip():
        send_frame(worker_sock, call)
        return recv_frame(worker_sock)

    res = benchmark(round_trip)
    assert isinstance(res, Result) and res.body == b"3.5"


def test_in_process_decode_call_encode(benchmark, model_dir, monkeypatch):
    monkeypatch.chdir(model_dir)
    monkeypatch.setattr(sys, "path", list(sys.path))
    invoker = Invoker(analyze(load_entry(model_dir, "model.py:predict")))
    call = Call(1, BODY, "json", "json", "bench")
    res = benchmark(lambda: encode_frame(invoker.handle(call)))
    reader = FrameReader()
    (msg,) = reader.feed(bytes(res))
    assert isinstance(msg, Result) and msg.body == b"3.5"


def test_frame_encode_decode(benchmark):
    frame = bytes(encode_frame(Call(1, BODY, "json", "json", "bench")))
    reader = FrameReader()
    call = Call(1, BODY, "json", "json", "bench")
    out = benchmark(lambda: reader.feed(encode_frame(call)))
    assert out[0].body == BODY and len(frame) > len(BODY)
