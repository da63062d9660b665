"""The data dir: its folders, and the lock that keeps a second server off it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from modelport.settings import Settings


class DataDirBusy(RuntimeError):
    pass


class DataDirLock:
    """An exclusive flock on <data dir>/server.lock, held for the life of the process."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> "DataDirLock":
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


def prepare(settings: Settings) -> None:
    """Create the data dir and its folders (private: the registry and tokens live here)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for folder in (settings.store_dir, settings.envs_dir, settings.logs_dir, settings.run_dir):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)


def write_admin_token(path: Path, secret: str) -> None:
    """Write the first admin token where the CLI on this machine finds it: mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    os.chmod(path, 0o600)
