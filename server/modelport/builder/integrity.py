"""A project folder against its build's file list: what was changed, added or removed, and modes.

`compare` is the pure rule (given what a walk found and a content verdict per file); `check`
walks a folder on disk and hashes. Hashing a project of code and a small model costs well under
a millisecond per file; a large file (weights) may instead be vouched for by `Trust`: a record,
in this process's memory only, of the stat it had when this process last hashed it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from modelport.store.manifest import FileEntry

DIR_MODE = 0o555  # a project folder and every folder in it: nobody writes there
LARGE = 64 << 20  # a file this big costs ~60 ms to hash here (1.1 GB/s): Trust may vouch for it
RACY_NS = 2_000_000_000  # a stat younger than this when hashed is not trusted (see Trust)
CHUNK = 1 << 20


def file_mode(entry: FileEntry) -> int:
    """The mode a project's copy of a file has: the upload's, read-only."""
    return entry.mode & 0o555


class Tampered(msgspec.Struct, frozen=True):
    path: str  # relative to the project folder; "" for the folder itself
    problem: str  # changed | added | missing | mode


class Checked(msgspec.Struct):
    tampered: list[Tampered]  # content: changed, added or missing (the folder must be restored)
    modes: list[str]  # paths whose content is right but mode is not (fixed in place if asked)


def compare(
    files: Iterable[FileEntry],
    found: dict[str, os.stat_result],
    same_content: Callable[[FileEntry, os.stat_result], bool],
) -> Checked:
    """The verdict on a folder whose walk found ``found`` (relative path → lstat, "" the folder
    itself). ``same_content`` is asked only for a regular file of the right size."""
    left = dict(found)
    tampered: list[Tampered] = []
    modes: list[str] = []
    dirs = {""}
    for entry in files:
        parts = entry.path.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        st = left.pop(entry.path, None)
        if st is None:
            tampered.append(Tampered(entry.path, "missing"))
        elif (
            not stat.S_ISREG(st.st_mode) or st.st_size != entry.size or not same_content(entry, st)
        ):
            tampered.append(Tampered(entry.path, "changed"))
        elif stat.S_IMODE(st.st_mode) != file_mode(entry):
            modes.append(entry.path)
    for path in sorted(left):
        st = left[path]
        if path in dirs and stat.S_ISDIR(st.st_mode):
            if stat.S_IMODE(st.st_mode) != DIR_MODE:
                modes.append(path)
        else:
            tampered.append(Tampered(path, "added"))
    return Checked(sorted(tampered, key=lambda t: t.path), sorted(modes))


def walk(folder: Path) -> dict[str, os.stat_result]:
    """Every entry under ``folder`` (links not followed) by relative path; "" is the folder."""
    found = {"": os.lstat(folder)}
    todo = [""]
    while todo:
        rel = todo.pop()
        with os.scandir(folder / rel if rel else folder) as entries:
            for e in entries:
                path = f"{rel}/{e.name}" if rel else e.name
                st = found[path] = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    todo.append(path)
    return found


def sha256_file(path: Path, size: int = CHUNK) -> str:
    """``sha256:<hex>`` of the file; one read when it is ``size`` bytes, up to CHUNK."""
    with open(path, "rb", buffering=0) as f:
        if size < CHUNK:
            data = f.read(size + 1)
            if len(data) <= size:  # it is as small as its stat said
                return "sha256:" + hashlib.sha256(data).hexdigest()
            h = hashlib.sha256(data)
        else:
            h = hashlib.sha256()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return "sha256:" + h.hexdigest()


class Trust:
    """Large files this process hashed, by inode, with the stat they had then.

    A file is vouched for while its device, inode, size, mode, mtime and ctime are the ones
    recorded. ctime cannot be set from user space: a rewrite in place changes it even when the
    mtime is put back (``touch -r``), a replacement changes the inode, a chmod changes it too.
    A record is kept only when the file's ctime was over RACY_NS older than the hash's start,
    so that a write in the same clock tick as the hash cannot go unseen (git's "racy" rule).
    Not covered: a process that already holds the file open for writing through a shared
    mapping, whose later stores may not touch ctime until the page is written back; without
    the replica sandbox that takes write access to the file, which a model has only if it can
    chmod the file (the server's own user) or is root. `store verify` always hashes in full.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[int, int], tuple] = {}

    @staticmethod
    def _key(st: os.stat_result) -> tuple[int, int]:
        return st.st_dev, st.st_ino

    @staticmethod
    def _sig(st: os.stat_result, digest: str) -> tuple:
        return st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns, digest

    def vouches(self, st: os.stat_result, digest: str) -> bool:
        with self._lock:
            return self._seen.get(self._key(st)) == self._sig(st, digest)

    def hashed(self, st: os.stat_result, started_ns: int, digest: str) -> None:
        """``st`` was the file's stat before a hash (begun at ``started_ns``) found ``digest``."""
        with self._lock:
            if st.st_ctime_ns < started_ns - RACY_NS:
                self._seen[self._key(st)] = self._sig(st, digest)
            else:
                self._seen.pop(self._key(st), None)


def check(
    folder: Path, files: list[FileEntry], trust: Trust | None = None, *, fix_modes: bool = False
) -> Checked:
    """Walk and hash ``folder`` against ``files`` (blocking). ``trust`` may vouch for large
    files; ``fix_modes`` puts right the modes of entries whose content is right."""

    def same_content(entry: FileEntry, st: os.stat_result) -> bool:
        if trust is not None and st.st_size >= LARGE and trust.vouches(st, entry.digest):
            return True
        started = time.time_ns()
        path = folder / entry.path
        try:
            digest = sha256_file(path, st.st_size)
            after = os.lstat(path)
        except OSError:  # unreadable, or gone meanwhile
            return False
        if (after.st_ino, after.st_ctime_ns, after.st_size) != (
            st.st_ino,
            st.st_ctime_ns,
            st.st_size,
        ):
            return False  # it changed while it was read
        if trust is not None and st.st_size >= LARGE and digest == entry.digest:
            trust.hashed(st, started, digest)
        return digest == entry.digest

    try:
        found = walk(folder)
    except FileNotFoundError:
        return Checked([Tampered("", "missing")], [])
    if not stat.S_ISDIR(found[""].st_mode):
        return Checked([Tampered("", "changed")], [])
    checked = compare(files, found, same_content)
    if fix_modes and checked.modes:
        by_path = {e.path: e for e in files}
        for path in reversed(checked.modes):  # deepest first: a parent made read-only last
            entry = by_path.get(path)
            os.chmod(folder / path if path else folder, file_mode(entry) if entry else DIR_MODE)
    return checked


def seal(folder: Path) -> None:
    """Every folder under ``folder``, and itself, read-only (files are made read-only already)."""
    for dirpath, _, _ in os.walk(folder, topdown=False):
        os.chmod(dirpath, DIR_MODE)
