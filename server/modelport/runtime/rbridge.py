"""An R function as a replica's callable: an R child (worker.R) on two pipes, calls validated here.

Base R cannot speak on the server's socketpair nor decode msgpack, so the Python worker keeps the
server's side (frames, pings, drain) and relays each call to R on inherited pipes. The body is
decoded with the typed decoder of the function's schema before R sees it, so a missing or
mistyped field is a 422 naming it and R (which evaluates lazily) is never called with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Union

import msgspec

from .invoke import CallFailed, Invoker
from .protocol import Call, Failure, Result
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
    """The R child of one replica (or inspect step): started, described, then called one call at
    a time. ``sig`` and ``handle`` are what the worker uses of an Invoker."""

    def __init__(self, project: str, entry: str, max_result: int = 0) -> None:
        file, sep, func = entry.rpartition(":")
        if not sep or not file.endswith(".R") or not func:
            raise EntryError(f"entrypoint {entry!r} is not of the form path/to/file.R:function")
        rel = Path(file)
        if rel.is_absolute() or ".." in rel.parts:
            raise EntryError(f"entrypoint {entry!r}: the file must be a path inside the project")
        self.max_result = max_result
        self._buf = bytearray()
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
        self._json_decode = msgspec.json.decode
        self._msgpack = msgspec.msgpack.encode

    def _recv(self) -> tuple[bytes, bytes]:
        """One frame from R: (kind, payload); (b"", b"") when R's end closed. Reads what the
        pipe holds (a frame in one read, usually), keeping the rest for the next frame."""
        buf, fd = self._buf, self._from_r
        while len(buf) < 8:
            data = os.read(fd, 65536)
            if not data:
                return b"", b""
            buf += data
        end = 8 + int(buf[:8], 16)
        while len(buf) < end:
            data = os.read(fd, max(65536, end - len(buf)))
            if not data:
                return b"", b""
            buf += data
        frame = bytes(buf[8:end])
        del buf[:end]
        return frame[:1], frame[1:]

    def _ended(self, when: str) -> str:
        try:
            code = self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            return f"R stopped answering {when}"
        what = f"exited with status {code}" if code >= 0 else f"was killed by signal {-code}"
        return f"R {what} {when}"

    def call(
        self,
        body: bytes,
        content_type: str = "json",
        accept: str = "json",
    ) -> tuple[bytes, dict[str, float]]:
        """Validate → R → the answer in the accepted encoding; raises CallFailed. R ending
        mid-call ends this process: the server answers 502 and starts another replica."""
        self._decode(body, content_type)  # 400/422 here, before R is called
        if content_type == "msgpack":
            body = msgspec.json.encode(msgspec.msgpack.decode(body))
        self._write_all(b"%08x" % len(body) + body)
        metrics: dict[str, float] = {}
        while True:
            kind, payload = self._recv()
            if kind == b"R":
                break
            if kind == b"M":
                metrics.update(self._json_decode(payload))
            elif kind == b"E":
                raise CallFailed(500, "model.error", payload.decode(errors="replace"))
            else:
                self._died(self._ended("while handling a request"))
        try:
            value = self._json_decode(payload)
        except msgspec.DecodeError as exc:
            raise CallFailed(
                500, "model.error", f"the R function's answer is not valid JSON: {exc}"
            ) from None
        out = self._msgpack(value) if accept == "msgpack" else payload
        if self.max_result and len(out) > self.max_result:
            raise CallFailed(
                500,
                "model.error",
                f"The answer is {len(out)} bytes, over the "
                f"server's response cap of {self.max_result} bytes "
                "(MODELPORT_MAX_RESPONSE_MB).",
            )
        return out, metrics

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._to_r, view)
            except BrokenPipeError:
                self._died(self._ended("while handling a request"))
            view = view[n:]

    @staticmethod
    def _died(reason: str) -> None:
        print(f"modelport worker: {reason}", file=sys.stderr, flush=True)
        os._exit(1)

    def handle(self, call: Call) -> Result | Failure:
        started = _clock()
        try:
            body, metrics = self.call(call.body, call.content_type, call.accept)
        except CallFailed as exc:
            return exc.failure(call.id)
        return Result(call.id, body, metrics, _clock() - started)

    def child_rss_kb(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
        except (OSError, ValueError, IndexError):
            return 0

    def close(self, timeout: float = 10.0) -> int | None:
        """Drain: close R's input (it ends after the call it runs) and wait for it."""
        try:
            os.close(self._to_r)
        except OSError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
