"""An R function as a replica's callable: an R child (worker.R) on two pipes, calls validated here.

Base R cannot speak on the server's socketpair nor decode msgpack, so the Python worker keeps the
server's side (frames, pings, drain) and relays each call to R on inherited pipes. The body is
decoded with the typed decoder of the function's schema before R sees it, so a missing or
mistyped field is a 422 naming it and R (which evaluates lazily) is never called with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Union

import msgspec

from .invoke import BUSY, CallFailed, Invoker, within_cap
from .protocol import Call, Failure, Result
from .rserial import Unfit, call_frame, text_frame
from .signature import EntryError, Signature, _camel, _default

__all__ = ["RBootError", "RFunction", "is_r_entry", "r_signature", "rscript"]

_clock = time.perf_counter
_IGNORED = (signal.SIGTERM, signal.SIGINT)
WORKER_R = Path(__file__).with_name("worker.R")

# The types of `#' @param name type` lines (as worker.R names them) and what the decoder takes.
_LIST = Union[dict[str, Any], list[Any]]  # noqa: UP007 - evaluated at run time on old Pythons
TYPES: dict[str, Any] = {
    "number": float,
    "integer": int,
    "string": str,
    "boolean": bool,
    "list": _LIST,
    "rows": list[dict[str, Any]],
    "any": Any,
}


class RBootError(Exception):
    """The R side could not start: the file does not source, the function is missing, no R."""


def is_r_entry(entry: str) -> bool:
    return entry.rpartition(":")[0].endswith(".R")


def rscript() -> str:
    """The Rscript to run: MODELPORT_RSCRIPT, else the one on PATH."""
    return os.environ.get("MODELPORT_RSCRIPT") or "Rscript"


def _type(name: str | None) -> Any:
    if name is None:
        return Any
    if name.endswith("[]"):
        return list[TYPES.get(name[:-2], Any)]  # type: ignore[misc]
    return TYPES.get(name, Any)


def _named(name: str, doc: str | None) -> Any:
    """A stand-in callable carrying the R function's name and doc (Signature describes it)."""

    def stand_in() -> None:  # pragma: no cover - never called: R runs the function
        raise RuntimeError("an R function runs in R")

    stand_in.__qualname__ = stand_in.__name__ = name
    stand_in.__doc__ = doc
    return stand_in


def r_signature(described: dict[str, Any]) -> Signature:
    """The Signature of an R function as worker.R describes it: form, params (name, type,
    required, default as JSON text), return type, doc."""
    func = _named(described["function"], described.get("doc"))
    output = _type(described.get("return_type"))
    params = described["params"]
    if described["form"] == "dict":
        return Signature(func, "dict", False, dict[str, Any], output, None)  # type: ignore[arg-type]
    fields: list[Any] = []
    opaque = []  # defaults R computes (an expression): optional, with no default in the schema
    defaults = {}  # a list default is behind a factory, which msgspec's schema leaves out
    for p in params:
        tp = _type(p.get("type"))
        if p["required"]:
            fields.append((p["name"], tp))
        elif p.get("default") is not None:
            defaults[p["name"]] = value = msgspec.json.decode(p["default"])
            fields.append((p["name"], tp, _default(value)))
        else:
            fields.append((p["name"], tp, None))
            opaque.append(p["name"])
    input_type = msgspec.defstruct(
        _camel(described["function"].replace(".", "_")) + "Input",
        fields,
        forbid_unknown_fields=True,
        kw_only=True,
    )
    sig = Signature(func, "params", False, input_type, output, None)  # type: ignore[arg-type]
    props = sig.input_schema.get("properties") or {}
    for name in opaque:
        props.get(name, {}).pop("default", None)
    for name, value in defaults.items():
        props.get(name, {}).setdefault("default", value)
    return sig


class RFunction:
    """The R child of one replica (or inspect step): started and described, then called.

    A replica's worker relays: ``start`` on its event loop, then ``submit`` each Call. Calls are
    written to R as they come (those of one read of the server's socket in one write), so that R
    finds the next one in its pipe when it answers one instead of waiting for this process; R
    runs them one at a time, in order, and answers each as it finishes. Answers go back in the
    order of the calls (the server times the oldest one as the running one). The inspect step
    calls ``call``, which blocks."""

    def __init__(self, project: str, entry: str, max_result: int = 0) -> None:
        file, sep, func = entry.rpartition(":")
        if not sep or not file.endswith(".R") or not func:
            raise EntryError(f"entrypoint {entry!r} is not of the form path/to/file.R:function")
        rel = Path(file)
        if rel.is_absolute() or ".." in rel.parts:
            raise EntryError(f"entrypoint {entry!r}: the file must be a path inside the project")
        self.max_result = max_result
        self._buf = bytearray()
        self._got: deque[tuple[bytes, bytes]] = deque()  # frames read, not yet taken (_recv)
        to_r, self._to_r = os.pipe()
        self._from_r, from_r = os.pipe()
        env = dict(os.environ, LANG="C.UTF-8", LC_ALL="C.UTF-8")
        argv = [
            rscript(),
            "--no-save",
            "--no-restore",
            "--no-site-file",
            "--no-init-file",
            str(WORKER_R),
            str(Path(project).resolve()),
            file,
            func,
            str(to_r),
            str(from_r),
        ]
        # R would die at once on SIGTERM, mid-call: it starts with SIGTERM ignored (an ignored
        # signal stays ignored across exec) and the worker drains it by closing its input.
        before = [(sig, signal.signal(sig, signal.SIG_IGN)) for sig in _IGNORED]
        try:
            self.proc = subprocess.Popen(
                argv, cwd=project, env=env, stdin=subprocess.DEVNULL, pass_fds=(to_r, from_r)
            )
        except OSError as exc:
            for fd in (to_r, from_r, self._to_r, self._from_r):
                os.close(fd)
            raise RBootError(
                f"cannot run R ({argv[0]}): {exc.strerror or exc}; install R "
                "(Debian: r-base-core r-cran-jsonlite) or set MODELPORT_RSCRIPT"
            ) from None
        finally:
            for sig, handler in before:
                signal.signal(sig, handler)
        os.close(to_r)
        os.close(from_r)
        kind, payload = self._recv()
        if kind == b"Y":
            self.described = msgspec.json.decode(payload)
        elif kind == b"B":
            raise RBootError(payload.decode(errors="replace"))
        else:
            raise RBootError(self._ended("before it was ready"))
        self.sig = r_signature(self.described)
        self._decode = Invoker(self.sig).decode
        self._dict = self.sig.form == "dict"
        self._json_decode = msgspec.json.decode
        self._msgpack = msgspec.msgpack.encode
        # The relay's state (start): the calls R holds or whose answer waits for theirs, oldest
        # first, as [call id, accept, a Failure already known (None: R answers it)]; what R is
        # yet to be sent; the running call's metrics and since when R runs it.
        self._queue: deque[list[Any]] = deque()
        self._out = bytearray()
        self._metrics: dict[str, float] = {}
        self._since = 0.0
        self._answer: Callable[[list[Result | Failure]], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writing = False
        self._chunk = [memoryview(bytearray(65536))]

    # -- the frames --------------------------------------------------------------------------------

    def _frame(self, body: bytes, content_type: str, start_by: float) -> bytes:
        """A call for R, validated here first (CallFailed 400/422): its arguments and the
        wall-clock time by which it must start (0: none; R's clock is the wall clock) in R's
        serialization (rserial), or as JSON text for jsonlite where that cannot hold them."""
        value = self._decode(body, content_type)  # 400/422 here, before R is called
        by = time.time() + (start_by - time.monotonic()) if start_by else 0.0
        msgpack = content_type == "msgpack"
        if not self._dict:  # the decoded value is the function's Struct: the body as it came
            value = (msgspec.msgpack.decode if msgpack else msgspec.json.decode)(body)
        try:
            return call_frame(by, value)
        except Unfit:
            return text_frame(by, msgspec.json.encode(value) if msgpack else body)

    def _frames(self) -> list[tuple[bytes, bytes]]:
        """The complete frames from R in the buffer, as (kind, payload); the rest is kept."""
        buf = self._buf
        out = []
        pos, size = 0, len(buf)
        while size - pos >= 8:
            end = pos + 8 + int(buf[pos : pos + 8], 16)
            if end > size:
                break
            out.append((bytes(buf[pos + 8 : pos + 9]), bytes(buf[pos + 9 : end])))
            pos = end
        if pos:
            del buf[:pos]
        return out

    def _encoded(self, payload: bytes, accept: str) -> bytes:
        """R's answer (JSON) in the accepted encoding; CallFailed when it is not valid JSON or
        longer than the server's response cap."""
        try:
            value = self._json_decode(payload)
        except msgspec.DecodeError as exc:
            raise CallFailed(
                500, "model.error", f"the R function's answer is not valid JSON: {exc}"
            ) from None
        return within_cap(self._msgpack(value) if accept == "msgpack" else payload, self.max_result)

    # -- blocking: one call at a time (the inspect step) -------------------------------------------

    def _recv(self) -> tuple[bytes, bytes]:
        """One frame from R: (kind, payload); (b"", b"") when R's end closed."""
        got = self._got
        while not got:
            data = os.read(self._from_r, 65536)
            if not data:
                return b"", b""
            self._buf += data
            got.extend(self._frames())
        return got.popleft()

    def call(
        self,
        body: bytes,
        content_type: str = "json",
        accept: str = "json",
    ) -> tuple[bytes, dict[str, float]]:
        """Validate → R → the answer in the accepted encoding; raises CallFailed. R ending
        mid-call ends this process: the server answers 502 and starts another replica."""
        self._write_all(self._frame(body, content_type, 0.0))
        metrics: dict[str, float] = {}
        while True:
            kind, payload = self._recv()
            if kind == b"R":
                return self._encoded(payload, accept), metrics
            if kind == b"M":
                metrics.update(self._json_decode(payload))
            elif kind == b"E":
                raise CallFailed(500, "model.error", payload.decode(errors="replace"))
            else:
                self._died(self._ended("while handling a request"))

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._to_r, view)
            except BrokenPipeError:
                self._died(self._ended("while handling a request"))
            view = view[n:]

    # -- the relay: calls as they come, answers in order -------------------------------------------

    def start(
        self, loop: asyncio.AbstractEventLoop, answer: Callable[[list[Result | Failure]], None]
    ) -> None:
        """Relay on ``loop``: the answers of submitted calls go to ``answer``, in the calls'
        order, those that R sends in one write together."""
        self._answer = answer
        self._loop = loop
        os.set_blocking(self._to_r, False)
        os.set_blocking(self._from_r, False)
        loop.add_reader(self._from_r, self._readable)

    @property
    def pending(self) -> int:
        """Calls submitted and not answered yet."""
        return len(self._queue)

    def submit(self, call: Call) -> None:
        """A Call for R: validated (a bad one is answered after those before it), then sent."""
        queue = self._queue
        try:  # (a call that finds R idle starts now: no start_by for R to check)
            frame = self._frame(call.body, call.content_type, call.start_by if queue else 0.0)
        except CallFailed as exc:
            if queue:
                queue.append([call.id, call.accept, exc.failure(call.id)])
            else:
                self._answer([exc.failure(call.id)])  # type: ignore[misc]
            return
        if not queue:
            self._since = _clock()
        queue.append([call.id, call.accept, None])
        self._out += frame

    def flush(self) -> None:
        """Send R the calls submitted since the last flush, in one write (the worker flushes
        after each read of the server's socket)."""
        out = self._out
        if not out or self._writing:
            return
        try:
            n = os.write(self._to_r, out)
        except BlockingIOError:
            n = 0
        except BrokenPipeError:
            self._died(self._ended("while handling a request"))
        del out[:n]
        if out:  # R's pipe is full (a long call, or large bodies): write when it takes more
            self._writing = True
            self._loop.add_writer(self._to_r, self._more)  # type: ignore[union-attr]

    def _more(self) -> None:
        self._writing = False
        self._loop.remove_writer(self._to_r)  # type: ignore[union-attr]
        self.flush()

    def _readable(self) -> None:
        try:  # (into a buffer kept for it: a fresh large one is an mmap and munmap per read)
            n = os.readv(self._from_r, self._chunk)
        except BlockingIOError:
            return
        if not n:
            self._died(self._ended("while handling a request" if self._queue else "while idle"))
        self._buf += self._chunk[0][:n]
        done: list[Result | Failure] = []
        queue = self._queue
        for kind, payload in self._frames():
            if kind == b"M":
                self._metrics.update(self._json_decode(payload))
                continue
            cid, accept, _ = queue.popleft()
            now = _clock()
            if kind == b"R":
                try:
                    done.append(
                        Result(
                            cid, self._encoded(payload, accept), self._metrics, now - self._since
                        )
                    )
                except CallFailed as exc:
                    done.append(exc.failure(cid))
            elif kind == b"E":
                done.append(Failure(cid, 500, "model.error", payload.decode(errors="replace")))
            elif kind == b"S":
                done.append(Failure(cid, 429, "model.busy", BUSY))
            else:
                self._died(f"R sent a frame of an unknown kind {kind!r}")
            self._metrics = {}
            self._since = now
            while queue and queue[0][2] is not None:  # refused here: answered in their turn
                done.append(queue.popleft()[2])
        if done:
            self._answer(done)  # type: ignore[misc]

    # -- the R process -----------------------------------------------------------------------------

    def _ended(self, when: str) -> str:
        try:
            code = self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            return f"R stopped answering {when}"
        what = f"exited with status {code}" if code >= 0 else f"was killed by signal {-code}"
        return f"R {what} {when}"

    @staticmethod
    def _died(reason: str) -> NoReturn:
        """R ended (or broke the stream): so does this process, and the server answers the call
        that R was running 502 and starts another replica; the calls queued behind it were never
        started, and go to another replica."""
        print(f"modelport worker: {reason}", file=sys.stderr, flush=True)
        os._exit(1)

    def child_rss_kb(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
        except (OSError, ValueError, IndexError):
            return 0

    def close(self, timeout: float = 10.0) -> int | None:
        """Drain: close R's input (it ends after the call it runs) and wait for it."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._from_r)
            self._loop.remove_writer(self._to_r)
        with contextlib.suppress(OSError):
            os.close(self._to_r)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
