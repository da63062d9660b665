"""The local store's maintenance: verify, gc with grace and leases, stats, stale temp cleanup."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from modelport.store.contract import GcResult, Problem, StoreStats
from modelport.store.objects import CHUNK, CorruptObject, ObjectMissing, parse_digest

if TYPE_CHECKING:
    from modelport.store.cas import LocalStore

TMP_GRACE_S = 600.0  # an unlocked temp file this old belongs to a dead writer


def iter_objects(objects: Path) -> Iterator[tuple[str, Path]]:
    """(hex digest, file) of every object under `objects/<2 hex>/<62 hex>`, in order."""
    for fan in sorted(objects.iterdir()):
        if fan.is_dir() and len(fan.name) == 2:
            for obj in sorted(fan.iterdir()):
                if len(obj.name) == 62:
                    yield fan.name + obj.name, obj


def stats(store: LocalStore) -> StoreStats:
    count = size = 0
    for _, path in iter_objects(store.objects):
        try:
            size += path.stat().st_size
            count += 1
        except FileNotFoundError:  # collected meanwhile
            pass
    return StoreStats(count, size)


def verify(store: LocalStore, quarantine: bool = False) -> list[Problem]:
    """Re-hash every object; with `quarantine`, move corrupt ones to `<root>/quarantine/`."""
    problems = []
    for hexd, path in iter_objects(store.objects):
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


def collect(store: LocalStore, live: Iterable[str], grace_s: float) -> GcResult:
    """Delete objects not live, not leased and older than `grace_s`; then dead writers' temps."""
    keep = {parse_digest(d) for d in live}
    removed = freed = 0
    for hexd, path in iter_objects(store.objects):
        if hexd in keep:
            continue
        # a put deduplicating against this object touches it inside the same lock
        with store.leases.removing(hexd) as free:
            if not free:
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
    return GcResult(removed, freed, clean_temp(store.tmp, store.tmp_grace_s))


def clean_temp(tmp: Path, max_age_s: float) -> int:
    """Delete temp files in `tmp` older than `max_age_s` whose writer is gone (flock free)."""
    removed = 0
    now = time.time()
    for path in tmp.iterdir():
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
