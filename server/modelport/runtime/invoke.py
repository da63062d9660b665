"""One prediction: decode the body with the typed decoder, call the function, encode its output."""

from __future__ import annotations

import math
import re
import sys
import time
import traceback
from typing import Any

import msgspec

from .codec import enc_hook, json_encoder, msgpack_encoder
from .context import _METRICS
from .protocol import Call, Failure, Result
from .signature import Signature

_clock = time.perf_counter

__all__ = [
    "BUSY",
    "TOO_DEEP",
    "CallFailed",
    "Invoker",
    "error_text",
    "field_of",
    "refused",
    "within_cap",
]

_AT = re.compile(r" - at `\$(.*)`$")
_NAMED = re.compile(r"^Object (?:missing required|contains unknown) field `([^`]*)`")
_PLAIN = frozenset({int, str, bool, type(None)})  # results that cannot hold a float
# A call still queued when its start_by passed: answered 429 model.busy, not run.
BUSY = "Every replica is busy and the request waited queue_timeout_s."
TOO_DEEP = "The body is nested too deeply (arrays and objects nest at most about 900 levels deep)."


class CallFailed(Exception):
    """A call that ends in an error response: HTTP status, code, message, field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def failure(self, call_id: int) -> Failure:
        return Failure(call_id, self.status, self.code, self.message, self.field)


def error_text(exc: BaseException) -> str:
    """``ExceptionType: message`` (just the type when the message is empty), no traceback."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def field_of(message: str, at: str | None = None) -> str | None:
    """The path of the bad value in a msgspec ValidationError message, without ``$.``.

    ``Expected `float`, got `str` - at `$.features[0]``` → ``features[0]``;
    ``Object missing required field `k``` → ``k``; at the root with no name → None.
    ``at``: where the value is, when that was already cut off the message (Litestar cuts it
    and names the place its ``key``); a field the message names is below it. The one reader of
    these messages: the server imports it (the runtime imports nothing of the server).
    """
    if at is None:
        match = _AT.search(message)
        at = match.group(1) if match else ""
    path = at.removeprefix(".")
    named = _NAMED.match(message)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or None


def refused(exc: Exception, content_type: str = "json") -> CallFailed:
    """A body msgspec could not decode (``msgspec.DecodeError``, ``RecursionError`` when it nests
    too deeply) or validate (``msgspec.ValidationError``), as it is answered: 400
    request.malformed, or 422 request.invalid naming the bad field. The one mapping of a body's
    decoding errors, for a replica's calls and the gateway's own decoding alike."""
    if isinstance(exc, RecursionError):  # msgspec stops at Python's recursion limit
        return CallFailed(400, "request.malformed", TOO_DEEP)
    message = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        kind = "MessagePack" if content_type == "msgpack" else "JSON"
        return CallFailed(400, "request.malformed", f"the body is not valid {kind}: {message}")
    field = field_of(message)
    if field is None and message.startswith("Expected `object`"):
        return CallFailed(
            400, "request.malformed", f"the request body must be an object: {message}"
        )
    return CallFailed(422, "request.invalid", message, field)


class Invoker:
    """Runs calls of one analysed function; built once per replica."""

    __slots__ = ("_call", "_json", "_known", "_msgpack", "max_result", "sig")

    def __init__(self, sig: Signature, max_result: int = 0) -> None:
        self.sig = sig
        self._call = sig.call
        self._json = sig.json_decoder.decode
        self._msgpack = sig.msgpack_decoder.decode
        self._known = sig.known_fields
        self.max_result = max_result  # the server's response cap (bytes; 0: none): within_cap

    def decode(self, body: Any, content_type: str = "json") -> Any:
        """The decoded, validated input; CallFailed 400/422 otherwise."""
        try:
            value = (self._msgpack if content_type == "msgpack" else self._json)(body)
            if self._known is not None:
                _refuse_unknown(body, content_type, self._known)
            return value
        except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError is a DecodeError
            raise refused(exc, content_type) from exc

    @staticmethod
    def encode(value: Any, accept: str = "json") -> bytes:
        """The return value in the accepted format; CallFailed 500 when it cannot be encoded.

        JSON has no infinity or NaN (msgspec writes ``null``, which breaks the output's own
        schema): such a result is the model's error, naming where the number is. Only a container
        whose JSON holds ``null`` is searched; other answers pay a type check or a byte scan."""
        try:
            if accept == "msgpack":
                return msgpack_encoder.encode(value)
            out = json_encoder.encode(value)
        except Exception as exc:
            raise CallFailed(
                500, "model.error", f"{error_text(exc)} (the return value cannot be sent)"
            ) from exc
        kind = type(value)
        if kind is float:
            path = None if math.isfinite(value) else "$"
        elif kind in _PLAIN or out.find(b"null") == -1:  # (`in` on bytes is slower than find)
            return out
        else:
            path = _non_finite(value)
        if path is not None:
            raise CallFailed(
                500,
                "model.error",
                f"the result holds a number JSON cannot carry "
                f"(infinity or NaN) at {path}; MessagePack callers get it as it is",
            )
        return out

    def run(
        self, body: Any, content_type: str = "json", accept: str = "json"
    ) -> tuple[bytes, dict[str, float]]:
        """Decode → call → encode for a sync function; raises CallFailed. Async: ``run_async``."""
        args = self.decode(body, content_type)
        metrics: dict[str, float] = {}
        token = _METRICS.set(metrics)
        try:
            out = self._call(args)
        except (Exception, SystemExit) as exc:  # sys.exit() in a call is the model's error
            raise _model_error(exc) from exc
        finally:
            _METRICS.reset(token)
        return within_cap(self.encode(out, accept), self.max_result), metrics

    async def run_async(
        self, body: Any, content_type: str = "json", accept: str = "json"
    ) -> tuple[bytes, dict[str, float]]:
        args = self.decode(body, content_type)
        metrics: dict[str, float] = {}
        token = _METRICS.set(metrics)
        try:
            out = await self._call(args)
        except (Exception, SystemExit) as exc:  # sys.exit() in a call is the model's error
            raise _model_error(exc) from exc
        finally:
            _METRICS.reset(token)
        return within_cap(self.encode(out, accept), self.max_result), metrics

    def handle(self, call: Call) -> Result | Failure:
        """A Call of a synchronous function → its Result or Failure (safe to run in a thread)."""
        started = _clock()
        try:
            body, metrics = self.run(call.body, call.content_type, call.accept)
        except CallFailed as exc:
            return exc.failure(call.id)
        return Result(call.id, body, metrics, _clock() - started)

    async def handle_async(self, call: Call) -> Result | Failure:
        """A Call of an async function → its Result or Failure."""
        started = _clock()
        try:
            body, metrics = await self.run_async(call.body, call.content_type, call.accept)
        except CallFailed as exc:
            return exc.failure(call.id)
        return Result(call.id, body, metrics, _clock() - started)


def _refuse_unknown(body: Any, content_type: str, known: frozenset[str]) -> None:
    """ValidationError for a top-level key the record type does not take (msgspec ignores those
    for dataclasses, TypedDicts and attrs classes; it refuses them for the other forms)."""
    decode = msgspec.msgpack.decode if content_type == "msgpack" else msgspec.json.decode
    for key in decode(body, type=dict[str, msgspec.Raw]):
        if key not in known:
            raise msgspec.ValidationError(f"Object contains unknown field `{key}`")


def _non_finite(value: Any) -> str | None:
    """The path (``$``, ``scores[2]``, ``a.b``) of the first infinite or NaN float, else None."""
    try:
        plain = msgspec.to_builtins(value, enc_hook=enc_hook)
    except Exception:
        return None
    stack: list[tuple[Any, str]] = [(plain, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return path or "$"
        elif isinstance(item, dict):
            stack.extend(
                (v, f"{path}.{k}" if path else str(k)) for k, v in reversed(list(item.items()))
            )
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def within_cap(data: bytes, cap: int) -> bytes:
    """``data`` when it fits the server's response cap (``cap`` bytes; 0: none), else CallFailed:
    a longer answer is the model's error here, rather than a frame that the server refuses by
    recycling the replica."""
    if cap and len(data) > cap:
        raise CallFailed(
            500,
            "model.error",
            f"The answer is {len(data)} bytes, over the server's "
            f"response cap of {cap} bytes (MODELPORT_MAX_RESPONSE_MB).",
        )
    return data


def _model_error(exc: BaseException) -> CallFailed:
    # The client gets the type and text; the replica's stderr (kept as its log) gets the traceback.
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return CallFailed(500, "model.error", error_text(exc))
