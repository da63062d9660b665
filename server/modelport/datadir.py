"""The data dir: its folders, their modes, and the lock that keeps a second server off it."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from modelport.settings import Settings


class DataDirBusy(RuntimeError):
    pass


class DataDirLock:
    """An exclusive flock on <data dir>/server.lock, held for the life of the process."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusy(
                f"Another modelport server (pid {holder}) is already using {self.path.parent}. "
                "Stop it, or start this one with another --data-dir."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


UMASK = 0o077  # what the server creates is its own user's only (replicas inherit it too)

# Folders whose every file the server writes and nobody else may read: fixed to 0700/0600 all the
# way down. The others (the store's objects, project folders, environments) are read-only by
# design and keep their modes, out of any other user's reach under the data dir's 0700.
PRIVATE_TREES = ("logs", "run", "uploads")


def prepare(settings: Settings) -> None:
    """Create the data dir and its folders, private whatever modes they had (see `tighten`)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for folder in (
        settings.store_dir,
        settings.envs_dir,
        settings.logs_dir,
        settings.run_dir,
        settings.uploads_dir,
    ):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    tighten(settings.data_dir)


def tighten(data_dir: Path) -> int:
    """Dirs 0700, files 0600: the data dir, everything directly in it (the registry and its
    -wal/-shm, admin.token, secret.key, server.lock) and the private trees; returns how many
    modes changed. Run at every start (and once the registry is open, for its -wal and -shm): a
    copied or restored data dir may come back 0755/0644, readable by every user of the machine."""
    changed = _chmod(data_dir, 0o700)
    with os.scandir(data_dir) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                changed += _chmod(Path(entry.path), 0o700)
                if entry.name in PRIVATE_TREES:
                    changed += _tighten_tree(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                changed += _chmod(Path(entry.path), 0o600)
    return changed


def _tighten_tree(root: Path) -> int:
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            changed += _chmod(Path(dirpath, name), 0o700)
        for name in filenames:
            changed += _chmod(Path(dirpath, name), 0o600)
    return changed


def _chmod(path: Path, mode: int) -> int:
    """chmod unless it has that mode already; never through a link (a model that could write
    a link there must not get the server to chmod what it points at). 1 when it changed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:  # removed meanwhile (a temp file gone)
        return 0
    except OSError:  # a link (ELOOP), or a file its owner made unreadable
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) == mode:
            return 0
        os.chmod(path, mode)
        return 1
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) == mode:
            return 0
        os.fchmod(fd, mode)
        return 1
    finally:
        os.close(fd)


def write_admin_token(path: Path, secret: str) -> None:
    """Write an admin token where the CLI on this machine finds it (the first one, or one made by
    `modelport admin reset-token`): mode 0600 from the first byte, replacing the file whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def drop_admin_token(path: Path, keep) -> bool:
    """Remove ``admin.token`` unless ``keep(sha256 of the token in it)``: the file never holds a
    revoked token (revoking it, or a server finding one there at start, removes it)."""
    import hashlib

    try:
        secret = path.read_text().strip()
    except OSError:
        return False
    if secret and keep(hashlib.sha256(secret.encode()).hexdigest()):
        return False
    path.unlink(missing_ok=True)
    return True


TOKENS_CHANGED = "tokens.changed"  # in run/: touched when tokens change outside the server
