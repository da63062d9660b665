"""Content-addressed object store: zstd-compressed objects named by the sha256 of their content."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from modelport.store import maintenance as _gc
from modelport.store.maintenance import GcResult, Lease, Problem, StoreStats
from modelport.store.objects import (
    CHUNK,
    LEVEL,
    WRITEBACK,
    CorruptObject,
    ObjectMissing,
    ObjectReader,
    PutResult,
    StoreError,
    Writer,
    fsync_dir,
    parse_digest,
    read_header,
    start_writeback,
)

__all__ = [
    "ContentStore",
    "CorruptObject",
    "GcResult",
    "Lease",
    "ObjectMissing",
    "ObjectReader",
    "Problem",
    "PutResult",
    "StoreError",
    "StoreStats",
    "Writer",
    "parse_digest",
]


class ContentStore:
    """Objects at `<root>/objects/<2 hex>/<62 hex>`; temp files in `<root>/tmp/`.

    Thread-safe: any number of concurrent puts, reads and one gc/verify at a time.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        level: int = LEVEL,
        threads: int | None = None,
        tmp_grace_s: float = _gc.TMP_GRACE_S,
    ) -> None:
        self.root = Path(root)
        self.objects, self.tmp = self.root / "objects", self.root / "tmp"
        self.quarantine = self.root / "quarantine"
        self.level, self.tmp_grace_s = level, tmp_grace_s
        # threads=1 already moves compression off the hashing thread (2x on 2 cores); 2 helps more
        # where there are more cores, without taking every core from the replicas.
        self.threads = threads if threads is not None else min(2, os.cpu_count() or 1)
        self._lock = threading.Lock()  # guards leases, install (dedupe/rename) and gc's unlink
        self._leases: set[Lease] = set()
        self.tmp.mkdir(parents=True, exist_ok=True)
        if not (self.objects / "ff").is_dir():
            for i in range(256):
                (self.objects / f"{i:02x}").mkdir(parents=True, exist_ok=True)
            fsync_dir(self.objects)
        _gc.clean_temp(self, tmp_grace_s)  # temp files of writers killed mid-put

    # -- names ---------------------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        """Where the object lives (whether or not it exists)."""
        hexd = parse_digest(digest)
        return self.objects / hexd[:2] / hexd[2:]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        """Uncompressed size, from the object's header."""
        hexd = parse_digest(digest)
        with self._open_raw(hexd) as f:
            return read_header(f, hexd, Path(f.name))

    # -- put -----------------------------------------------------------------------------------
    def writer(self) -> Writer:
        return Writer(self)

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

    def _install(self, tmp: Path, hexd: str, size: int, stored: int) -> PutResult:
        """Rename a complete, fsynced temp file to its name, unless that object already exists."""
        final = self.objects / hexd[:2] / hexd[2:]
        with self._lock:
            for lease in self._leases:
                lease.digests.add(hexd)
            try:
                os.utime(final)  # dedupe hit: a fresh mtime lets gc's grace protect it too
            except PermissionError:  # another user's object: leases still protect it
                pass
            except FileNotFoundError:
                os.chmod(tmp, 0o444)  # before the rename: an object is never visible writable
                os.replace(tmp, final)
                fsync_dir(final.parent)
                return PutResult(f"sha256:{hexd}", size, stored, stored)
            existing = final.stat().st_size
        tmp.unlink()
        return PutResult(f"sha256:{hexd}", size, existing, 0)

    # -- read ----------------------------------------------------------------------------------
    def _open_raw(self, hexd: str) -> BinaryIO:
        try:
            return open(self.objects / hexd[:2] / hexd[2:], "rb")
        except FileNotFoundError:
            raise ObjectMissing(hexd) from None

    def open(self, digest: str) -> ObjectReader:
        """A binary stream of the content; raises CorruptObject at EOF unless it hashes right."""
        hexd = parse_digest(digest)
        return ObjectReader(hexd, self._open_raw(hexd))

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

    # -- maintenance (store/maintenance.py) -------------------------------------------------------------
    def lease(self, digests: Iterable[str] = ()) -> Lease:
        """Hold `digests`, and everything put while held, out of gc's reach until released."""
        lease = Lease(self, {parse_digest(d) for d in digests})
        with self._lock:
            self._leases.add(lease)
        return lease

    def verify(self, quarantine: bool = False) -> list[Problem]:
        return _gc.verify(self, quarantine)

    def gc(self, live: Iterable[str], grace_s: float = 3600) -> GcResult:
        return _gc.collect(self, live, grace_s)

    def stats(self) -> StoreStats:
        return _gc.stats(self)

    # -- async: the same calls in a worker thread, so the event loop never waits on disk ----------
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
