"""The local artifact store: zstd-compressed objects named by the sha256 of their content, as
files under one folder (the default backend of the ContentStore interface, store/contract.py)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from modelport.store import maintenance as _gc
from modelport.store.contract import ContentStore, GcResult, Problem, StoreStats
from modelport.store.objects import (
    LEVEL,
    ObjectMissing,
    ObjectReader,
    PutResult,
    Writer,
    fsync_dir,
    parse_digest,
    read_header,
)

__all__ = ["LocalStore"]


class LocalStore(ContentStore):
    """Objects at `<root>/objects/<2 hex>/<62 hex>` (read-only files, each a valid .zst); temp
    files in `<root>/tmp/`; what verify quarantines in `<root>/quarantine/`.

    An object's mtime is its age for gc: a put that finds it already stored touches it.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        level: int = LEVEL,
        threads: int | None = None,
        tmp_grace_s: float = _gc.TMP_GRACE_S,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.objects, self.tmp = self.root / "objects", self.root / "tmp"
        self.quarantine = self.root / "quarantine"
        self.level, self.tmp_grace_s = level, tmp_grace_s
        # threads=1 already moves compression off the hashing thread (2x on 2 cores); 2 helps more
        # where there are more cores, without taking every core from the replicas.
        self.threads = threads if threads is not None else min(2, os.cpu_count() or 1)
        self.tmp.mkdir(parents=True, exist_ok=True)
        if not (self.objects / "ff").is_dir():
            for i in range(256):
                (self.objects / f"{i:02x}").mkdir(parents=True, exist_ok=True)
            fsync_dir(self.objects)
        self.clean_temp(tmp_grace_s)  # temp files of writers killed mid-put

    # -- names ---------------------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        """Where the object lives (whether or not it exists): this backend's own file, for its
        tests and tools (`zstd -d` reads it); callers of the interface never need it."""
        hexd = parse_digest(digest)
        return self.objects / hexd[:2] / hexd[2:]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        hexd = parse_digest(digest)
        with self._open_raw(hexd) as f:
            return read_header(f, hexd, Path(f.name))

    def digests(self) -> Iterator[str]:
        return (hexd for hexd, _ in _gc.iter_objects(self.objects))

    # -- put -----------------------------------------------------------------------------------
    def writer(self) -> Writer:
        return Writer(self.tmp, self._install, level=self.level, threads=self.threads)

    def _install(self, tmp: Path, hexd: str, size: int, stored: int) -> PutResult:
        """Rename a complete, fsynced temp file to its name, unless that object already exists."""
        final = self.objects / hexd[:2] / hexd[2:]
        with self.leases.installing(hexd):
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
        hexd = parse_digest(digest)
        return ObjectReader(hexd, self._open_raw(hexd))

    # -- maintenance (store/maintenance.py) ----------------------------------------------------
    def verify(self, quarantine: bool = False) -> list[Problem]:
        return _gc.verify(self, quarantine)

    def gc(self, live: Iterable[str], grace_s: float = 3600) -> GcResult:
        return _gc.collect(self, live, grace_s)

    def stats(self) -> StoreStats:
        return _gc.stats(self)

    def clean_temp(self, max_age_s: float) -> int:
        return _gc.clean_temp(self.tmp, max_age_s)
