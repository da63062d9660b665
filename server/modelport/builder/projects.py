"""Build project folders, where replicas run: made read-only from the store, checked against the
build's file list before each replica starts, and restored from the store when tampered with.

``projects/<build digest>`` holds hard links into ``files/`` (one checkout per object and mode),
files 0444 (0555 when executable) and folders 0555. A folder found changed, with a file added or
missing, is made again beside it from the store, checked, and swapped in with one atomic rename
(RENAME_EXCHANGE); the tampered one is kept aside as ``.tampered-…`` for gc to remove after its
grace, since replicas started from it may still be running.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from modelport.builder.integrity import Tampered, Trust, check, seal
from modelport.builder.snapshot import checkout_path, materialize
from modelport.scratch import scratch_dir
from modelport.store import manifest as mf
from modelport.store.contract import ContentStore
from modelport.store.objects import StoreError

__all__ = ["Folder", "Projects", "RestoreFailed", "Tampered"]

log = logging.getLogger("modelport.projects")


class RestoreFailed(Exception):
    """A project folder that the store cannot make (again); ``str()`` says which file and why."""


class Folder(msgspec.Struct):
    """One project folder `verify` found wrong: what, and whether it was put right."""

    digest: str  # the build digest: the folder is projects/<its hex>
    folder: str
    files: list[Tampered]
    repaired: bool = False


def describe(tampered: list[Tampered], limit: int = 10) -> str:
    """``predict.py changed, extra.py added`` (the first ``limit``, then how many more)."""
    words = [f"{t.path or 'the folder itself'} {t.problem}" for t in tampered[:limit]]
    if len(tampered) > limit:
        words.append(f"and {len(tampered) - limit} more")
    return ", ".join(words)


class Projects:
    """The project folders of one data dir. Thread-safe: one maker or restorer per folder."""

    def __init__(self, store: ContentStore, data_dir: Path) -> None:
        self.store = store
        self.root, self.files_dir = data_dir / "projects", data_dir / "files"
        self.trust = Trust()
        self._known: dict[str, list[mf.FileEntry]] = {}  # build digest → its files
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._inflight: dict[str, asyncio.Future] = {}

    def path(self, digest: str) -> Path:
        return self.root / digest.removeprefix("sha256:")

    def _lock(self, digest: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(digest, threading.Lock())

    # -- making and checking (blocking) -------------------------------------------------------

    def prepare(self, digest: str, files: list[mf.FileEntry]) -> Path:
        """The build's folder, made when missing (not checked: each replica's start checks it)."""
        self._known[digest] = files
        with self._lock(digest):
            return self._make(digest, files) or self.path(digest)

    def _make(self, digest: str, files: list[mf.FileEntry]) -> Path | None:
        """Make the folder if there is none; None when there was one. Hold the folder's lock."""
        target = self.path(digest)
        if os.path.lexists(target):
            return None
        with self._staged(digest, files) as staging:
            os.rename(staging, target)
        return target

    def ensure(self, digest: str, files: list[mf.FileEntry]) -> tuple[Path, list[str]]:
        """The build's folder, made when missing, else checked and restored when tampered with;
        with what to tell the replica's log (nothing when all was well). RestoreFailed when the
        store cannot make it."""
        self._known[digest] = files
        target = self.path(digest)
        with self._lock(digest):
            if self._make(digest, files) is not None:
                return target, []
            checked = check(target, files, self.trust, fix_modes=True)
            if checked.modes:
                log.info(
                    "project folder %s: put back the read-only modes of %s",
                    target,
                    ", ".join(p or "." for p in checked.modes[:10]),
                )
            if not checked.tampered:
                return target, []
            what = describe(checked.tampered)
            try:
                self._restore(digest, target, files)
            except RestoreFailed as exc:
                log.error(
                    "project folder %s was tampered with (%s) and cannot be restored: %s",
                    target,
                    what,
                    exc,
                )
                raise RestoreFailed(
                    f"The project folder {target} was tampered with ({what}) "
                    f"and the store cannot restore it: {exc}"
                ) from None
            log.warning(
                "project folder %s was tampered with (%s): restored from the store", target, what
            )
            return target, [f"project folder tampered with ({what}): restored from the store"]

    @contextlib.contextmanager
    def _staged(self, digest: str, files: list[mf.FileEntry]) -> Iterator[Path]:
        """A checked, read-only copy of the folder under a temporary name (held, and removed
        after the block unless renamed meanwhile). A checked-out file that is wrong (tampered
        with through another project's link to it) is checked out again from the store, once."""
        by_path = {e.path: e for e in files}
        for _ in range(2):
            with scratch_dir(self.root, ".tmp-") as staging:
                try:
                    materialize(self.store, mf.Snapshot(files), staging, self.files_dir)
                    seal(staging)
                    checked = check(staging, files, self.trust, fix_modes=True)
                except StoreError as exc:
                    raise RestoreFailed(str(exc)) from None
                if not checked.tampered:
                    yield staging
                    return
            for t in checked.tampered:
                if (entry := by_path.get(t.path)) is not None:
                    checkout_path(self.files_dir, entry.digest, entry.mode).unlink(missing_ok=True)
        raise RestoreFailed(
            f"a copy from the store does not match build {digest[:19]}: "
            f"{describe(checked.tampered)}"
        )

    def _restore(self, digest: str, target: Path, files: list[mf.FileEntry]) -> None:
        """A fresh folder in place of ``target`` in one rename; the old one kept aside."""
        aside = self.root / f".tampered-{digest.removeprefix('sha256:')[:12]}-{time.time_ns()}"
        with self._staged(digest, files) as staging:
            exchange(staging, target)
            os.rename(staging, aside)  # the old folder, now at the staging name
        os.utime(aside)  # gc's grace counts from now: replicas started from it may still run

    def verify(
        self, builds: dict[str, list[mf.FileEntry]], repair: bool = False
    ) -> tuple[int, list[Folder]]:
        """Hash every project folder in full (no Trust) against its build's files: how many were
        checked, and those found wrong; ``repair`` restores them (and fixes modes)."""
        checked_count, found = 0, []
        for digest, files in sorted(builds.items()):
            target = self.path(digest)
            if not os.path.lexists(target):
                continue  # made at the build's first deployment
            checked_count += 1
            with self._lock(digest):
                result = check(target, files, None, fix_modes=repair)
                problems = result.tampered + [Tampered(p, "mode") for p in result.modes]
                if not problems:
                    continue
                folder = Folder(digest, str(target), problems)
                if repair:
                    try:
                        if result.tampered:
                            self._restore(digest, target, files)
                            log.warning(
                                "store verify: project folder %s was tampered with (%s): restored",
                                target,
                                describe(result.tampered),
                            )
                        folder.repaired = True
                    except (RestoreFailed, OSError) as exc:
                        log.error(
                            "store verify: project folder %s cannot be restored: %s", target, exc
                        )
                found.append(folder)
        return checked_count, found

    def files_of(self, manifest_digest: str) -> list[mf.FileEntry] | None:
        """A build's files, from its manifest in the store (None when the store lacks it)."""
        try:
            return mf.decode(self.store.read_bytes(manifest_digest)).content.files
        except (StoreError, ValueError, msgspec.DecodeError):
            return None

    # -- before a replica starts (async) ------------------------------------------------------

    async def before_start(self, digest: str) -> list[str]:
        """Check (and restore) the folder of a build this server made or checked before; the
        replicas of a group starting together share one check. What to tell the replica's log."""
        files = self._known.get(digest)
        if files is None:
            return []
        fut = self._inflight.get(digest)
        if fut is None or fut.done():
            fut = self._inflight[digest] = asyncio.ensure_future(
                asyncio.to_thread(self.ensure, digest, files)
            )

            def forget(done: asyncio.Future) -> None:
                if self._inflight.get(digest) is done:
                    del self._inflight[digest]

            fut.add_done_callback(forget)
        _, notes = await asyncio.shield(fut)
        return notes


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Callable[..., int] | None
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
except (OSError, AttributeError):  # not glibc ≥ 2.28 (or not Linux)
    _renameat2 = None


def exchange(a: Path, b: Path) -> None:
    """Swap two folders' names atomically (Linux renameat2); elsewhere, two renames."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(a), None, str(b))
    held = b.with_name(b.name + f".old-{time.time_ns()}")
    os.rename(b, held)
    os.rename(a, b)
    os.rename(held, a)
