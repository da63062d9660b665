"""One object: its on-disk format, the streaming writer and the verifying reader."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import io
import os
import re
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import msgspec
import zstandard

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

CHUNK = 1 << 20  # read/write granularity; memory stays O(CHUNK) whatever the object size
WRITEBACK = 32 << 20  # start writeback of a large object each time this much more is written
SMALL = 1 << 20  # objects up to this size are compressed in one shot at SMALL_LEVEL
SMALL_LEVEL = 3  # ~10% smaller than level 1 on code/text; speed is irrelevant at this size
# Large objects, measured on 1 GB: float32 weights shrink 7.4% at levels 1-3 alike, level 1 is
# fastest. Random bytes cost zstd ~1 CPU-s/GB at any level for nothing, so a large object whose
# first MiB shrinks by less than 3% is written as raw zstd blocks instead (a plain copy).
LEVEL = 1
INCOMPRESSIBLE = 0.97
# Every object starts with a zstd *skippable frame* holding its uncompressed size, so an object
# is still a valid .zst file (`zstd -d` skips the frame) and size() costs one 16-byte read.
HEADER = struct.Struct("<IIQ")  # magic, payload length (8), uncompressed size
MAGIC = 0x184D2A5D
_HEX = re.compile(r"[0-9a-f]{64}")


class StoreError(Exception):
    """Base of the store's errors."""


class ObjectMissing(StoreError):
    def __init__(self, digest: str) -> None:
        super().__init__(f"object sha256:{digest} is not in the store")
        self.digest = f"sha256:{digest}"


class CorruptObject(StoreError):
    def __init__(self, digest: str, path: Path | str, reason: str) -> None:
        super().__init__(f"object sha256:{digest} at {path} is corrupt: {reason}")
        self.digest, self.path, self.reason = f"sha256:{digest}", path, reason


class StoreUnreachable(StoreError):
    """The store's service did not answer (a remote store: its server is down or unreachable)."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"the artifact store at {where} cannot be reached: {detail}")
        self.where, self.detail = where, detail


class PutResult(msgspec.Struct, frozen=True):
    digest: str  # "sha256:<hex>" of the uncompressed bytes
    size: int  # uncompressed bytes
    stored_bytes: int  # the object's size on disk
    new_bytes: int  # bytes this put added to the store; 0 when the content was already there


def parse_digest(digest: str) -> str:
    """`sha256:<hex>` or bare hex → the bare lowercase hex; ValueError otherwise."""
    hexd = (digest[7:] if digest.startswith("sha256:") else digest).lower()
    if not _HEX.fullmatch(hexd):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexd


def start_writeback(fd: int, since: int) -> None:
    """Have the kernel start writing what was written from `since` on, without waiting: the final
    fsync then has little left, and a 5 GB object does not fill the page cache."""
    if hasattr(os, "posix_fadvise"):  # Linux: DONTNEED starts writeback, drops pages already clean
        os.posix_fadvise(fd, max(0, since - CHUNK), 0, os.POSIX_FADV_DONTNEED)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Install(Protocol):
    """How a store takes a finished object: called once by Writer.commit() with the complete,
    fsynced, closed temp file, the sha256 hex of its content, its uncompressed size and its size
    as stored. It must consume the temp file (rename or remove it) and return the PutResult."""

    def __call__(self, tmp: Path, hexd: str, size: int, stored: int) -> PutResult: ...


class Writer:
    """Streams bytes into a locked temp file in `tmp_dir` while hashing; commit() names the
    object and hands the file to `install`.

    Use as a context manager: leaving the block without commit() discards everything.
    """

    def __init__(self, tmp_dir: Path, install: Install, *, level: int, threads: int) -> None:
        self._install, self._level, self._threads = install, level, threads
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="put-")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # tells clean_temp this writer is alive
        self._tmp, self._f = Path(name), open(fd, "wb")  # noqa: SIM115 (closed by commit/abort)
        self._f.write(bytes(HEADER.size))  # filled in by commit()
        self._hash, self._size = hashlib.sha256(), 0
        self._buf = bytearray()  # until SMALL is exceeded; emptied once streaming
        self._z: zstandard.ZstdCompressionWriter | RawFrame | None = None
        self._done, self._written_back = False, 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise ValueError("writer is closed")
        view = memoryview(data).cast("B")
        n = len(view)
        self._hash.update(view)
        self._size += n
        if self._z is None:
            room = SMALL - len(self._buf)
            self._buf += view[:room]
            if n <= room:
                return n
            self._z = self._open_frame()  # a large object: from here on, stream
            self._z.write(self._buf)
            self._buf, view = bytearray(), view[room:]
        self._z.write(view)
        if (pos := self._f.tell()) - self._written_back >= WRITEBACK:
            start_writeback(self._f.fileno(), self._written_back)
            self._written_back = pos
        return n

    def _open_frame(self) -> zstandard.ZstdCompressionWriter | RawFrame:
        """zstd, unless the first SMALL bytes (the buffer) do not compress."""
        probe = zstandard.ZstdCompressor(level=self._level).compress(self._buf)
        if len(probe) > INCOMPRESSIBLE * len(self._buf):
            return RawFrame(self._f)
        cctx = zstandard.ZstdCompressor(level=self._level, threads=self._threads)
        return cctx.stream_writer(self._f, closefd=False)

    def commit(self) -> PutResult:
        if self._done:
            raise ValueError("writer is closed")
        self._done = True
        try:
            if self._z is None:
                self._f.write(zstandard.ZstdCompressor(level=SMALL_LEVEL).compress(self._buf))
            else:
                self._z.close()  # ends the frame; the file stays open
            self._f.flush()
            stored = self._f.tell()
            os.pwrite(self._f.fileno(), HEADER.pack(MAGIC, 8, self._size), 0)
            if (on_disk := os.fstat(self._f.fileno()).st_size) != stored:
                raise OSError(f"short write to {self._tmp}: {on_disk} of {stored} bytes")
            os.fsync(self._f.fileno())
            self._f.close()
            return self._install(self._tmp, self._hash.hexdigest(), self._size, stored)
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._discard()

    def _discard(self) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    async def awrite(self, data: bytes) -> int:
        return await asyncio.to_thread(self.write, data)

    async def acommit(self) -> PutResult:
        return await asyncio.to_thread(self.commit)

    async def aabort(self) -> None:
        await asyncio.to_thread(self.abort)


class RawFrame:
    """A zstd frame of raw (stored) blocks: any zstd decoder reads it, and writing costs a copy."""

    BLOCK = 1 << 17  # the largest block zstd allows

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        f.write(b"\x28\xb5\x2f\xfd\x00\x38")  # magic; no size or checksum; 128 KiB window

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        for i in range(0, len(view), self.BLOCK):
            block = view[i : i + self.BLOCK]
            self._f.write((len(block) << 3).to_bytes(3, "little"))  # raw block, not the last
            self._f.write(block)

    def close(self) -> None:
        self._f.write(b"\x01\x00\x00")  # an empty last block ends the frame


def read_header(f: BinaryIO, hexd: str, path: Path | str) -> int:
    header = f.read(HEADER.size)
    if len(header) != HEADER.size:
        raise CorruptObject(hexd, path, "shorter than its header")
    magic, length, size = HEADER.unpack(header)
    if magic != MAGIC or length != 8:
        raise CorruptObject(hexd, path, "bad header")
    return int(size)


class ObjectReader(io.RawIOBase):
    """Decompresses and re-hashes while read; at EOF raises CorruptObject unless all matches.

    A wrong content is also raised as the last of the `size` bytes its header says is read (a
    caller copying exactly `size` bytes gets the verdict); a caller that stops earlier gets none.
    `raw` is the stored object from its first byte; `where` names it in errors (default: its
    file's name); `on_corrupt` is called once it is found corrupt (a cache drops its copy).
    """

    def __init__(
        self,
        hexd: str,
        raw: BinaryIO,
        *,
        where: str | None = None,
        on_corrupt: Callable[[], None] | None = None,
    ) -> None:
        self.digest, self._raw, self._z = f"sha256:{hexd}", raw, None
        self.path: Path | str = where if where is not None else Path(raw.name)
        self._on_corrupt = on_corrupt
        self._hexd, self._hash, self._got = hexd, hashlib.sha256(), 0
        try:
            self.size = read_header(raw, hexd, self.path)  # uncompressed size it must have
            self._z = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK)
        except BaseException as exc:
            raw.close()
            if isinstance(exc, CorruptObject) and on_corrupt is not None:
                on_corrupt()
            raise
        self._error: CorruptObject | None = None
        self._verified = False

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            return self.readall()
        if self._error:
            raise self._error
        if self._verified or n == 0:
            return b""
        assert self._z is not None  # set by __init__, which raised otherwise
        try:
            data = self._z.read(n)
        except zstandard.ZstdError as e:
            raise self._fail(f"zstd data is corrupt ({e})") from None
        if data:
            self._hash.update(data)
            self._got += len(data)
            if self._got > self.size:
                raise self._fail(f"longer than the {self.size} bytes its header says")
            if self._got == self.size and (actual := self._hash.hexdigest()) != self._hexd:
                # the verdict with the last byte: a caller that reads exactly `size` bytes (a
                # tar member's copy) never asks for EOF, and must not get wrong bytes unnoticed
                raise self._fail(f"content hashes to sha256:{actual}")
            return data
        if self._got != self.size:
            raise self._fail(f"ends after {self._got} of the {self.size} bytes its header says")
        if (actual := self._hash.hexdigest()) != self._hexd:
            raise self._fail(f"content hashes to sha256:{actual}")
        self._verified = True
        return b""

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def readinto(self, buf: WriteableBuffer) -> int:
        view = memoryview(buf).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _fail(self, reason: str) -> CorruptObject:
        self._error = CorruptObject(self._hexd, self.path, reason)
        if self._on_corrupt is not None:
            self._on_corrupt()
        return self._error

    def close(self) -> None:
        if self._z is not None:
            self._z.close()
        self._raw.close()
        super().close()
