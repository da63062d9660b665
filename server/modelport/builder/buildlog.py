"""A build's log: timed lines, appended to a file as the build goes, readable while it grows."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path


def log_path(logs_dir: Path, model: str, number: int) -> Path:
    return logs_dir / "builds" / model / f"{number}.log"


class BuildLog:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # held open for the build's life, closed by close()
        self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def __call__(self, line: str) -> None:
        """Append a line; one the disk refuses (full) is dropped: the build's state is in the
        registry, and its failure says why."""
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        with contextlib.suppress(OSError):
            for part in str(line).rstrip("\n").split("\n"):
                self._file.write(f"{stamp} {part}\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


def _read_from(path: Path, offset: int) -> bytes:
    """What the log holds past `offset`; nothing while the file is not there yet."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


async def follow(path: Path, finished, poll_s: float = 0.2) -> AsyncIterator[bytes]:
    """Yield the log's bytes as they are written until `finished()` says the build is over."""
    offset = 0
    while True:
        done = await finished()
        chunk = await asyncio.to_thread(_read_from, path, offset)
        if chunk:
            offset += len(chunk)
            yield chunk
        if done:
            return
        await asyncio.sleep(poll_s)
