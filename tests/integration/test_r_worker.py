"""A real worker relaying to a real R process (Rscript + jsonlite), against a socket in the test:
calls queued in R's pipe, answered in order; R's arguments as jsonlite would make them."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import msgspec
import pytest
from modelport.runtime.protocol import Call, Failure, Ready, Result, encode_frame, read_frame

from tests.integration.test_worker import Worker, run, sock_dir, start

__all__ = ["sock_dir"]  # the fixture, used by name

MODEL_R = r"""
#' @param n integer
count <- function(n, note = "") {
  if (n < 0) stop("a negative count: ", n)
  cat("ran ", n, " ", note, "\n", sep = "")
  track_metric("twice", 2 * n)
  n
}

# The arguments as they came, against jsonlite's reading of the JSON text in args$json.
same <- function(args) {
  text <- args$json
  args$json <- NULL
  want <- jsonlite::parse_json(text, simplifyVector = TRUE)
  list(same = identical(args, want), classes = vapply(args, function(v) class(v)[[1L]], ""))
}

nap <- function(s, note = "") {
  cat("nap ", note, "\n", sep = "")
  Sys.sleep(s)
  s
}

bye <- function(args) if (isTRUE(args$die)) quit(save = "no", status = 1L) else "alive"
"""


@pytest.fixture
def r_project(tmp_path: Path) -> Path:
    (tmp_path / "model.R").write_text(MODEL_R)
    return tmp_path


def call(cid: int, body: object, *, start_by: float = 0.0, msgpack: bool = False) -> bytearray:
    kind = "msgpack" if msgpack else "json"
    data = msgspec.msgpack.encode(body) if msgpack else msgspec.json.encode(body)
    return encode_frame(Call(cid, data, kind, kind, f"r{cid}", start_by))


async def answers(w: Worker, n: int) -> list[Result | Failure]:
    return [await asyncio.wait_for(read_frame(w.reader), 30) for _ in range(n)]


def test_calls_queued_in_rs_pipe_are_answered_in_order(r_project, sock_dir):
    async def go():
        w = await start(r_project, "model.R:count", sock_dir)
        assert isinstance(w.first, Ready) and w.first.form == "params"
        bodies = [{"n": 1}, {"n": 2}, {"n": "x"}, {"n": -1}, {"zz": 1}, {"n": 5}]
        w.writer.write(b"".join(call(i + 1, b) for i, b in enumerate(bodies)))  # one write
        w.writer.write(call(7, {"n": 7, "note": "é"}, msgpack=True))
        got = await answers(w, 7)
        assert [m.id for m in got] == [1, 2, 3, 4, 5, 6, 7]
        assert [type(m).__name__ for m in got] == ["Result"] * 2 + ["Failure"] * 3 + ["Result"] * 2
        assert (got[0].body, got[0].metrics) == (b"1", {"twice": 2.0})
        assert (got[2].status, got[2].field) == (422, "n")  # refused here, answered in its turn
        assert (got[3].status, got[3].code) == (500, "model.error")
        assert got[3].message == "a negative count: -1"
        assert (got[4].status, got[4].field) == (422, "zz")
        assert got[5].body == b"5" and got[5].metrics == {"twice": 10.0}
        assert msgspec.msgpack.decode(got[6].body) == 7
        assert all(m.took > 0 for m in got if isinstance(m, Result))
        rc, out, err = await w.close()
        assert rc == 0
        assert out.splitlines() == ["ran 1 ", "ran 2 ", "ran 5 ", "ran 7 é"]
        assert "a negative count: -1" in err

    run(go())


BODIES = [
    {"a": 1, "b": 1.0, "c": 1e2, "d": 3000000000, "e": -2147483648, "f": 2147483647},
    {"g": None, "h": {}, "i": 'é\n\t"q"', "j": True, "k": {"x": 1, "y": {"z": "w"}}, "": 5},
    {"big": 12345678901234567890, "neg": -0.0, "nul": "a\u0000b", "int64": -(2**62)},
    {"x": [1, 2, 3], "rows": [{"a": 1}, {"a": 2}], "m": [[1, 2], [3, 4]], "s": ["a", None]},
    {},
]


@pytest.mark.parametrize("msgpack", [False, True])
def test_rs_arguments_are_what_jsonlite_makes_of_the_json(r_project, sock_dir, msgpack):
    async def go():
        w = await start(r_project, "model.R:same", sock_dir)
        for i, body in enumerate(BODIES):  # (a NUL, which R's strings cannot hold: jsonlite's)
            text = json.dumps(body)
            w.writer.write(call(i + 1, {**body, "json": text}, msgpack=msgpack))
            (got,) = await answers(w, 1)
            assert isinstance(got, Result), got
            decode = msgspec.msgpack.decode if msgpack else msgspec.json.decode
            assert decode(got.body)["same"] is True, (body, got.body)
        assert (await w.close())[0] == 0

    run(go())


def test_a_call_queued_past_its_start_by_is_answered_429_and_not_run(r_project, sock_dir):
    async def go():
        w = await start(r_project, "model.R:nap", sock_dir)
        soon = time.monotonic() + 0.2
        w.writer.write(
            call(1, {"s": 0.6, "note": "first"})
            + call(2, {"s": 0, "note": "late"}, start_by=soon)
            + call(3, {"s": 0, "note": "patient"}, start_by=time.monotonic() + 30)
        )
        first, late, patient = await answers(w, 3)
        assert isinstance(first, Result) and isinstance(patient, Result)
        assert (late.id, late.status, late.code) == (2, 429, "model.busy")
        rc, out, _ = await w.close()
        assert rc == 0 and out.splitlines() == ["nap first", "nap patient"]

    run(go())


def test_r_ending_mid_queue_ends_the_worker_after_the_answers_before(r_project, sock_dir):
    async def go():
        w = await start(r_project, "model.R:bye", sock_dir)
        w.writer.write(call(1, {"die": False}) + call(2, {"die": True}) + call(3, {"die": False}))
        (alive,) = await answers(w, 1)
        assert isinstance(alive, Result) and alive.body == b'"alive"'
        assert await asyncio.wait_for(read_frame(w.reader), 30) is None  # nothing for 2 and 3
        rc, _, err = await w.close()
        assert rc == 1 and "R exited with status 1 while handling a request" in err

    run(go())


def test_sigterm_drains_the_calls_r_holds(r_project, sock_dir):
    async def go():
        w = await start(r_project, "model.R:nap", sock_dir)
        w.writer.write(b"".join(call(i, {"s": 0.2, "note": str(i)}) for i in (1, 2, 3)))
        await asyncio.sleep(0.1)
        w.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        w.writer.write(call(4, {"s": 0}))  # arrives while draining
        got = {m.id: m for m in await answers(w, 4)}
        assert all(isinstance(got[i], Result) for i in (1, 2, 3))
        assert (got[4].status, got[4].code) == (503, "model.unavailable")
        assert await asyncio.wait_for(read_frame(w.reader), 10) is None
        rc, out, _ = await w.close()
        assert rc == 0 and out.splitlines() == ["nap 1", "nap 2", "nap 3"]

    run(go())
