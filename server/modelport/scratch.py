"""Temp files and folders under the data dir: held (flock) in use, swept once their writer is gone.

An upload streams to `uploads/`, a build works in `.build-*` and `.wheels-*`, stages its project
in `projects/.tmp-*` and its environment in `envs/.tmp-*`; a SIGKILLed server leaves them all
behind (hundreds of MB). Each is made by `scratch_dir` / `scratch_file`, which hold an exclusive
flock on it for as long as it is in use: a sweep removes only what nobody holds. At start (and in
`modelport gc` on a stopped server) nothing can be in use, since the data dir's lock keeps a
second server off it; the running server's gc gives young entries a grace, for the moment
between a temp's creation and its lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

__all__ = ["SCRATCH", "Swept", "remove_tree", "scratch_dir", "scratch_file", "sweep"]

# (folder under the data dir, the names of its temps); what a writer killed mid-way leaves.
SCRATCH = (
    ("uploads", "*"),  # uploads and exports streaming (builder/upload.py, api/builds.py)
    (".", ".build-*"),  # a build's work folder: the lock, downloaded wheels (builder/pipeline.py)
    (".", ".wheels-*"),  # the stored wheels copied out for an environment's install
    ("projects", ".tmp-*"),  # a project folder being staged
    ("envs", ".tmp-*"),  # an environment being installed (held by envs/.<digest>.lock)
    ("files", ".*.tmp"),  # a checked-out object being decompressed (store/contract.py copy_to)
    ("wheels", ".incoming-*"),  # a wheel being downloaded into the cache
    ("wheels/.work", "sdist-*"),  # a wheel being built from its sdist
    ("runtime", ".tmp-*"),  # the runtime's code being copied out (at start only)
)


class Swept(msgspec.Struct, frozen=True):
    removed: int  # temp files and folders
    freed_bytes: int


def _lock(path: Path) -> int:
    """An fd on `path` with an exclusive flock on it (folders too: flock works on their fd)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@contextlib.contextmanager
def scratch_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new temp folder under `parent`, held while the block runs and removed after it (it may
    have been renamed into place meanwhile: then there is nothing left to remove)."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    fd = _lock(path)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            remove_tree(path)
        os.close(fd)


def scratch_file(parent: Path, prefix: str) -> tuple[int, Path]:
    """A new temp file under `parent`, open for writing and held by the returned fd: closing
    that fd (after unlinking the file, or renaming it) is the caller's."""
    parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=parent, prefix=prefix)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd, Path(name)


def sweep(data_dir: Path, grace_s: float = 0.0) -> Swept:
    """Remove every temp under the data dir that nobody holds and is older than `grace_s`
    (blocking). With the data dir's lock held and nothing started yet, `grace_s=0` is safe."""
    removed = freed = 0
    cutoff = time.time() - grace_s
    for folder, pattern in SCRATCH:
        root = data_dir / folder
        try:
            entries = sorted(root.glob(pattern))
        except OSError:
            continue
        for path in entries:
            try:
                if os.lstat(path).st_mtime > cutoff:
                    continue
            except OSError:  # gone meanwhile
                continue
            try:
                fd: int | None = os.open(_holder(root, folder, path), os.O_RDONLY)
            except OSError:  # an environment's lock file that never was
                fd = None
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a live writer holds it
                    os.close(fd)
                    continue
            try:
                size = unique_bytes(path)
                remove_tree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            except FileNotFoundError:
                continue
            finally:
                if fd is not None:
                    os.close(fd)
            removed += 1
            freed += size
    return Swept(removed, freed)


def _holder(root: Path, folder: str, path: Path) -> Path:
    """What a live writer of `path` holds a lock on: the path itself, but for an environment
    being installed, whose folder uv makes: its digest's lock file (builder/deps.py)."""
    if folder == "envs":  # .tmp-<digest hex>-<pid>
        return root / f".{path.name.removeprefix('.tmp-').rsplit('-', 1)[0]}.lock"
    return path


def unique_bytes(path: Path) -> int:
    """Bytes on disk of the files only this path links to (what removing it frees)."""
    if not path.is_dir() or path.is_symlink():
        st = os.lstat(path)
        return st.st_size if st.st_nlink == 1 else 0
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                total += st.st_size
    return total


def remove_tree(folder: Path) -> None:
    """rmtree, making read-only folders writable on the way (environments and projects are)."""

    def retry(func, path, _exc) -> None:
        parent = os.path.dirname(path)
        os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR | stat.S_IXUSR | stat.S_IRUSR)
        func(path)

    shutil.rmtree(folder, onerror=retry)
