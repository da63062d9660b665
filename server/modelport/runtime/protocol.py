"""The server↔replica wire protocol: a 4-byte big-endian length + a msgpack union of Structs."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Sequence
from typing import Optional, Union

import msgspec

__all__ = [
    "MAX_FRAME",
    "Boot",
    "Call",
    "Failure",
    "FrameReader",
    "FrameTooLarge",
    "Hello",
    "Message",
    "MessageProtocol",
    "Ping",
    "Pong",
    "ProtocolError",
    "Ready",
    "Result",
    "decode_payload",
    "encode_frame",
    "read_frame",
    "recv_frame",
    "send_frame",
]

# Struct field types are spelled with typing.Optional/Union on purpose: msgspec evaluates them
# at run time, and a model's environment may run a Python (3.9) older than `X | None`.


class Call(msgspec.Struct, tag=True, array_like=True, gc=False):
    """Server → replica: call the function with ``body`` (encoded as ``content_type``)."""

    id: int
    body: bytes
    content_type: str = "json"  # "json" | "msgpack"
    accept: str = "json"  # encoding of Result.body: "json" | "msgpack"
    request_id: str = ""
    # time.monotonic() by which the call must start (0: no limit). CLOCK_MONOTONIC is one clock
    # for every process on the machine: a call still queued past it is answered 429, not run.
    start_by: float = 0.0
    # The server has no other call out: after answering, the replica may poll for the next one
    # (modelport.runtime.busy_poll). Under load it must not: the CPU is needed for the work.
    poll: bool = False
    # With ``poll``: this replica's next call is expected after this many calls (the ready
    # replicas that sequential requests rotate over), so its wait spans that many hand-offs.
    turns: int = 1


class Ping(msgspec.Struct, tag=True, array_like=True, gc=False):
    """Server → replica: liveness probe, answered by Pong with the same id."""

    id: int


class Result(msgspec.Struct, tag=True, array_like=True, gc=False):
    """Replica → server: the return value, already encoded as the Call's ``accept``."""

    id: int
    body: bytes
    metrics: dict[str, float] = {}
    took: float = 0.0  # seconds the call ran in the replica (decode, function, encode)


class Failure(msgspec.Struct, tag=True, array_like=True, gc=False):
    """Replica → server: the call failed; its HTTP status and error code (docs/api.md)."""

    id: int
    # 400 request.malformed | 422 request.invalid | 500 model.error | 503 model.unavailable
    status: int
    code: str
    message: str
    field: Optional[str] = None  # noqa: UP045


class Pong(msgspec.Struct, tag=True, array_like=True, gc=False):
    """Replica → server: answer to Ping."""

    id: int
    served: int  # calls answered (Result or Failure) since start
    in_flight: int
    rss_kb: int


class Ready(msgspec.Struct, tag=True, array_like=True, gc=False):
    """Replica → server, once: the module imported and the signature is understood."""

    pid: int
    form: str  # "dict" | "params" | "struct"
    is_async: bool


class Boot(msgspec.Struct, tag=True, array_like=True, gc=False):
    """Replica → server, once, instead of Ready: the import failed; the worker then exits 3."""

    error: str  # "ExceptionType: message"


class Hello(msgspec.Struct, tag=True, array_like=True, gc=False):
    """Server → replica, first on a TCP connection (a replica on another node): the replica's
    secret, without which the connection is closed, and the server's time.monotonic() as it
    sent this, by which the replica turns each Call's ``start_by`` into its own clock."""

    secret: bytes
    clock: float = 0.0


Message = Union[Call, Ping, Result, Failure, Pong, Ready, Boot, Hello]  # noqa: UP007

HEADER = 4
MAX_FRAME = 1 << 30  # a length beyond this is a corrupt stream, not a big body
# What a frame carries besides its body (tag, id, encodings, request id, metrics): a reader
# bounded to a body size allows this much more.
FRAME_OVERHEAD = 1 << 20

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)
_pack_len = struct.Struct(">I").pack_into
_unpack_len = struct.Struct(">I").unpack_from


class ProtocolError(Exception):
    """The byte stream is not a sequence of valid frames."""

    # FrameReader.feed: the complete messages before the bad frame (set on the instance)
    messages: list = []  # noqa: RUF012 (never mutated: replaced)


class FrameTooLarge(ProtocolError):
    """A length prefix over the reader's limit, seen before any of the frame is buffered."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit}")
        self.size, self.limit = size, limit


def encode_frame(msg: Message) -> bytearray:
    """One frame: the length prefix and the msgpack payload, in one buffer (no concatenation)."""
    buf = bytearray(HEADER)
    _encoder.encode_into(msg, buf, HEADER)
    _pack_len(buf, 0, len(buf) - HEADER)
    return buf


def decode_payload(payload: bytes | bytearray | memoryview) -> Message:
    """Decode a frame's payload (without its length prefix)."""
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"bad frame: {exc}") from None


class FrameReader:
    """Sans-I/O frame parser: ``feed`` the bytes as they arrive, get the complete messages back.
    A frame longer than ``limit`` bytes is refused from its length prefix, so that a peer can
    make this side hold at most ``limit`` bytes of it."""

    __slots__ = ("_buf", "limit")

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.limit = limit

    def feed(self, data: bytes | bytearray) -> list[Message]:
        """The messages completed by ``data``; ProtocolError (its ``messages``: those before
        the bad frame) when the stream is broken."""
        buf = self._buf
        if buf:
            buf += data
            data = buf
        out: list[Message] = []
        end = len(data)
        pos = 0
        limit = self.limit
        with memoryview(data) as view:
            try:
                while end - pos >= HEADER:
                    (size,) = _unpack_len(data, pos)
                    if size > limit:
                        raise FrameTooLarge(size, limit)
                    stop = pos + HEADER + size
                    if stop > end:
                        break
                    out.append(decode_payload(view[pos + HEADER : stop]))
                    pos = stop
            except ProtocolError as exc:
                exc.messages = out
                raise
            if data is buf:
                del_prefix = pos
            else:
                del_prefix = -1
                if pos < end:
                    buf += view[pos:]
        if del_prefix > 0:
            del buf[:del_prefix]
        return out

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buf)


class MessageProtocol(asyncio.Protocol):
    """An asyncio protocol speaking frames: override ``message_received``; ``send`` writes one."""

    transport: asyncio.Transport | None = None

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._frames = FrameReader(max_frame)
        self._gathered: list[bytes | bytearray] | None = (
            None  # frames sent while one read is dispatched
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        error = None
        try:
            messages = self._frames.feed(data)
        except ProtocolError as exc:  # the frames before the bad one are handled first
            messages, error = exc.messages, exc
        # Frames sent while these messages are handled leave in one write: under load a read
        # holds many calls, and one syscall (one wake-up of the peer) answers them all.
        gathered: list[bytes | bytearray] = []
        self._gathered = gathered
        try:
            for msg in messages:
                self.message_received(msg)
        finally:
            self._gathered = None
            if gathered and self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"".join(gathered) if len(gathered) > 1 else gathered[0])
        if error is not None:
            self.protocol_error(error)

    def message_received(self, msg: Message) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def protocol_error(self, exc: ProtocolError) -> None:
        """The peer sent garbage: the stream cannot be resynchronised, so close it."""
        if self.transport is not None:
            self.transport.abort()

    def send(self, msg: Message) -> None:
        if self._gathered is not None:
            self._gathered.append(encode_frame(msg))
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(msg))

    def send_all(self, msgs: Sequence[Message]) -> None:
        """Several messages, in one write."""
        if self._gathered is not None:
            self._gathered.extend(map(encode_frame, msgs))
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(map(encode_frame, msgs)))


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> Message | None:
    """Read one message from a StreamReader; None at a clean end of stream."""
    try:
        header = await reader.readexactly(HEADER)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("stream ended inside a frame header") from None
        return None
    (size,) = _unpack_len(header)
    if size > limit:
        raise FrameTooLarge(size, limit)
    try:
        payload = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ProtocolError("stream ended inside a frame") from None
    return decode_payload(payload)


def send_frame(sock: socket.socket, msg: Message) -> None:
    """Blocking: write one message."""
    sock.sendall(encode_frame(msg))


def recv_frame(sock: socket.socket, limit: int = MAX_FRAME) -> Message | None:
    """Blocking: read one message; None at a clean end of stream."""
    header = _recv_exactly(sock, HEADER, at_start=True)
    if header is None:
        return None
    (size,) = _unpack_len(header)
    if size > limit:
        raise FrameTooLarge(size, limit)
    payload = _recv_exactly(sock, size, at_start=False)
    assert payload is not None
    return decode_payload(payload)


def _recv_exactly(sock: socket.socket, size: int, *, at_start: bool) -> bytearray | None:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            if got == 0 and at_start:
                return None
            raise ProtocolError("stream ended inside a frame")
        got += n
    return buf
