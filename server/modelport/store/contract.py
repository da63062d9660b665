"""The artifact store as its callers see it: the ContentStore interface, whichever backend holds
the objects (local files: store/cas.py).

Every backend names an object `sha256:<hex>` of its uncompressed content, keeps it in the format
of store/objects.py (a size header, then zstd frames), and verifies it on every read: an
ObjectReader raises CorruptObject at EOF unless the content hashes to its name. Callers never
reach a backend's files: a stored file reaches a local path through `copy_to` (the builder's
checked-out files, hard-linked into project folders, and the wheels an environment installs
from are such copies), so no caller needs the store's own file.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import msgspec

from modelport.store.leases import Lease, LeaseTable
from modelport.store.objects import (
    CHUNK,
    WRITEBACK,
    ObjectReader,
    PutResult,
    Writer,
    start_writeback,
)

__all__ = ["ContentStore", "GcResult", "Problem", "StoreStats"]


class Problem(msgspec.Struct, frozen=True):
    digest: str
    path: str  # where the corrupt object is (a file, or an s3:// URL)
    reason: str
    quarantined_to: str | None = None


class GcResult(msgspec.Struct, frozen=True):
    removed: int  # objects deleted
    freed_bytes: int  # their size on disk
    temp_removed: int = 0  # temp files of dead writers deleted


class StoreStats(msgspec.Struct, frozen=True):
    objects: int
    bytes: int  # stored (compressed)


class ContentStore(ABC):
    """Content-addressed objects. Thread-safe: any number of concurrent puts and reads, and one
    gc/verify at a time. Blocking; each call has an async form run in a worker thread.

    A backend implements writer, has, size, open, digests, verify, gc, stats and clean_temp;
    puts, reads, copies, leases and the async forms are the same for all and live here.
    """

    def __init__(self) -> None:
        self.leases = LeaseTable()  # gc skips what they hold; every put joins them

    # -- what a backend implements -------------------------------------------------------------
    @abstractmethod
    def writer(self) -> Writer:
        """A streaming writer; its commit() names the object and installs it in this store."""

    @abstractmethod
    def has(self, digest: str) -> bool: ...

    @abstractmethod
    def size(self, digest: str) -> int:
        """Uncompressed size, from the object's header; ObjectMissing when absent."""

    @abstractmethod
    def open(self, digest: str) -> ObjectReader:
        """A binary stream of the content; raises CorruptObject at EOF unless it hashes right,
        ObjectMissing when absent."""

    @abstractmethod
    def digests(self) -> Iterator[str]:
        """The bare hex digest of every stored object, in order (the list of the store)."""

    @abstractmethod
    def verify(self, quarantine: bool = False) -> list[Problem]:
        """Re-hash every object; with `quarantine`, move the corrupt ones out of the store."""

    @abstractmethod
    def gc(self, live: Iterable[str], grace_s: float = 3600) -> GcResult:
        """Delete objects not in `live`, held by no lease and older than `grace_s` (a put that
        finds its object already stored makes it young again); then dead writers' temps."""

    @abstractmethod
    def stats(self) -> StoreStats: ...

    @abstractmethod
    def clean_temp(self, max_age_s: float) -> int:
        """Delete temp files older than `max_age_s` whose writer is gone; how many."""

    # -- the same for every backend ------------------------------------------------------------
    def put_stream(self, fileobj: BinaryIO | io.RawIOBase) -> PutResult:
        """Store everything `fileobj.read()` yields, reading CHUNK bytes at a time."""
        with self.writer() as w:
            if hasattr(fileobj, "readinto"):  # one reused buffer, no allocation per chunk
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                while n := fileobj.readinto(buf):
                    w.write(view[:n])
            else:
                while chunk := fileobj.read(CHUNK):
                    w.write(chunk)
            return w.commit()

    def put_file(self, path: str | os.PathLike[str]) -> PutResult:
        with open(path, "rb", buffering=0) as f:
            return self.put_stream(f)

    def put_bytes(self, data: bytes | bytearray | memoryview) -> PutResult:
        with self.writer() as w:
            w.write(data)
            return w.commit()

    def read_bytes(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def copy_to(self, digest: str, dst: str | os.PathLike[str], mode: int = 0o644) -> int:
        """Write the content to `dst` via a temp file beside it, renamed only once verified."""
        dst = Path(dst)
        with self.open(digest) as src:
            fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
            fcntl.flock(fd, fcntl.LOCK_EX)  # a sweep of dead writers' temps leaves it alone
            try:
                with open(fd, "wb") as out:
                    written_back = 0
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        if (pos := out.tell()) - written_back >= WRITEBACK:
                            start_writeback(fd, written_back)
                            written_back = pos
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp, mode)
                os.replace(tmp, dst)
            except BaseException:
                os.unlink(tmp)
                raise
            return src.size

    def lease(self, digests: Iterable[str] = ()) -> Lease:
        """Hold `digests`, and everything put while held, out of gc's reach until released."""
        return self.leases.lease(digests)

    # -- async: the same calls in a worker thread, so the event loop never waits on I/O --------
    async def aput_file(self, path: str | os.PathLike[str]) -> PutResult:
        return await asyncio.to_thread(self.put_file, path)

    async def aput_bytes(self, data: bytes) -> PutResult:
        return await asyncio.to_thread(self.put_bytes, data)

    async def aput_stream(self, fileobj: BinaryIO | io.RawIOBase) -> PutResult:
        return await asyncio.to_thread(self.put_stream, fileobj)

    async def aread_bytes(self, digest: str) -> bytes:
        return await asyncio.to_thread(self.read_bytes, digest)

    async def acopy_to(self, digest: str, dst: str | os.PathLike[str], mode: int = 0o644) -> int:
        return await asyncio.to_thread(self.copy_to, digest, dst, mode)

    async def averify(self, quarantine: bool = False) -> list[Problem]:
        return await asyncio.to_thread(self.verify, quarantine)

    async def agc(self, live: Iterable[str], grace_s: float = 3600) -> GcResult:
        return await asyncio.to_thread(self.gc, live, grace_s)

    async def astats(self) -> StoreStats:
        return await asyncio.to_thread(self.stats)
