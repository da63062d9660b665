"""Store maintenance: verify, gc with grace and leases, stats, stale temp-file cleanup."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from modelport.store.objects import CHUNK, CorruptObject, ObjectMissing, parse_digest

if TYPE_CHECKING:
    from modelport.store.cas import ContentStore

TMP_GRACE_S = 600.0  # an unlocked temp file this old belongs to a dead writer


class Problem(msgspec.Struct, frozen=True):
    digest: str
    path: str
    reason: str
    quarantined_to: str | None = None


class GcResult(msgspec.Struct, frozen=True):
    removed: int  # objects deleted
    freed_bytes: int  # their size on disk
    temp_removed: int = 0  # temp files of dead writers deleted


class StoreStats(msgspec.Struct, frozen=True):
    objects: int
    bytes: int  # on disk (compressed)


class Lease:
    """Keeps digests out of gc's reach while held, in this process.

    Every object put through the store while a lease is held joins it, whoever put it: a build
    takes a lease, puts its files, records its manifest, then releases. Across processes, gc's
    grace period is the protection.
    """

    def __init__(self, store: ContentStore, digests: set[str]) -> None:
        self._store, self.digests = store, digests

    def add(self, digest: str) -> None:
        with self._store._lock:
            self.digests.add(parse_digest(digest))

    def release(self) -> None:
        with self._store._lock:
            self._store._leases.discard(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def iter_objects(store: ContentStore) -> Iterator[tuple[str, Path]]:
    for fan in sorted(store.objects.iterdir()):
        if fan.is_dir() and len(fan.name) == 2:
            for obj in sorted(fan.iterdir()):
                if len(obj.name) == 62:
                    yield fan.name + obj.name, obj


def stats(store: ContentStore) -> StoreStats:
    count = size = 0
    for _, path in iter_objects(store):
        try:
            size += path.stat().st_size
            count += 1
        except FileNotFoundError:  # collected meanwhile
            pass
    return StoreStats(count, size)


def verify(store: ContentStore, quarantine: bool = False) -> list[Problem]:
    """Re-hash every object; with `quarantine`, move corrupt ones to `<root>/quarantine/`."""
    problems = []
    for hexd, path in iter_objects(store):
        try:
            with store.open(hexd) as f:
                while f.read(CHUNK):
                    pass
        except ObjectMissing:  # collected meanwhile
            continue
        except CorruptObject as e:
            moved = None
            if quarantine:
                store.quarantine.mkdir(exist_ok=True)
                moved = store.quarantine / f"{hexd}.{time.time_ns()}"
                os.replace(path, moved)
            problems.append(Problem(e.digest, str(path), e.reason, str(moved) if moved else None))
    return problems


def collect(store: ContentStore, live: Iterable[str], grace_s: float) -> GcResult:
    """Delete objects not live, not leased and older than `grace_s`; then dead writers' temps."""
    keep = {parse_digest(d) for d in live}
    removed = freed = 0
    for hexd, path in iter_objects(store):
        if hexd in keep:
            continue
        with store._lock:  # a put deduplicating against this object touches it under the lock
            if any(hexd in lease.digests for lease in store._leases):
                continue
            try:
                st = path.stat()
                if time.time() - st.st_mtime < grace_s:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
        removed += 1
        freed += st.st_size
    return GcResult(removed, freed, clean_temp(store, store.tmp_grace_s))


def clean_temp(store: ContentStore, max_age_s: float) -> int:
    """Delete temp files older than `max_age_s` whose writer is gone (its flock is free)."""
    removed = 0
    now = time.time()
    for path in store.tmp.iterdir():
        try:
            if now - path.stat().st_mtime < max_age_s:
                continue
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live writer holds it
            continue
        else:
            path.unlink(missing_ok=True)
            removed += 1
        finally:
            os.close(fd)
    return removed
