"""Folders no build needs any more: project checkouts, environments, and checked-out files.

Every build's project folder (``projects/<build digest>``) and environment (``envs/<lock
digest>``) stay as long as a build record names them; a deleted model's builds free theirs. A
checked-out file (``files/<digest>-<mode>``) is hard-linked into the projects that hold it: once
only the cache itself links to it, no project does. Anything younger than ``grace_s`` is kept,
since a build may be making it (its staging folders too), and a folder in use by a replica
belongs to a build that exists (a serving model cannot be deleted).
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from pathlib import Path

import msgspec

from modelport.scratch import remove_tree, unique_bytes

__all__ = ["Pruned", "prune"]


class Pruned(msgspec.Struct, frozen=True):
    folders: int  # project and environment folders removed
    files: int  # checked-out files no project links to any more
    freed_bytes: int


def prune(
    data_dir: Path, live_projects: set[str], live_envs: set[str], grace_s: float = 3600.0
) -> Pruned:
    """Remove what no build names (blocking). ``live_*`` hold the digests' hex (no prefix)."""
    cutoff = time.time() - grace_s
    folders = files = freed = 0
    for root, live in ((data_dir / "projects", live_projects), (data_dir / "envs", live_envs)):
        for entry in _entries(root):
            key = entry.name.lstrip(".").removesuffix(".lock")  # an environment's lock file
            if key in live or entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
            if not entry.is_dir(follow_symlinks=False):
                _remove_lock_file(entry.path)
                continue
            freed += unique_bytes(Path(entry.path))
            remove_tree(Path(entry.path))
            folders += 1
    for entry in _entries(data_dir / "files"):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_mtime <= cutoff:
            os.unlink(entry.path)
            files += 1
            freed += st.st_size
    return Pruned(folders, files, freed)


def live_hex(digests) -> set[str]:
    return {d.removeprefix("sha256:") for d in digests if d}


def _entries(root: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(root) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _remove_lock_file(path: str) -> None:
    """Unlink a lock file nobody holds (a build making that environment holds it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # held
    else:
        os.unlink(path)
    finally:
        os.close(fd)
