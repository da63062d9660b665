"""Process plumbing for replicas: bounded log files, resident memory, exit statuses, signals."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

__all__ = [
    "append_line",
    "describe_exit",
    "kill_group",
    "log_paths",
    "open_log",
    "read_tail",
    "rss_kb",
    "tail_text",
    "tree_rss_kb",
    "trim_log",
]

# A trim empties the file before it writes the kept tail back: readers in this process take the
# lock so that they never see it in between (the replica itself keeps appending meanwhile).
_trimming = threading.Lock()

try:
    _PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
    _PAGE_KB = 4


def log_paths(logs_dir: Path, replica_id: str) -> tuple[Path, Path]:
    """``<logs_dir>/replicas/<id>.stdout`` and ``.stderr``."""
    folder = logs_dir / "replicas"
    return folder / f"{replica_id}.stdout", folder / f"{replica_id}.stderr"


def open_log(path: Path, header: str, max_bytes: int, keep_bytes: int) -> int:
    """An O_APPEND descriptor for a replica's stream (the child writes to it directly), after
    trimming the file and writing ``header``. Blocking: call it from a thread."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    trim_log(path, max_bytes, keep_bytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, header.encode())
    return fd


def trim_log(path: Path, max_bytes: int, keep_bytes: int) -> bool:
    """Past ``max_bytes``, keep only the last ``keep_bytes`` (in place: the writer appends with
    O_APPEND, so it carries on at the new end). Blocking: call it from a thread."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= max_bytes:
        return False
    with open(path, "rb") as f:
        f.seek(max(0, size - keep_bytes))
        tail = f.read(keep_bytes)
    cut = tail.find(b"\n")
    if 0 <= cut < len(tail) - 1:
        tail = tail[cut + 1 :]  # start at a line boundary
    note = f"--- modelport: log truncated, {size - len(tail)} earlier bytes dropped ---\n"
    with _trimming:
        os.truncate(path, 0)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, note.encode() + tail)
        finally:
            os.close(fd)
    return True


def read_tail(path: Path, max_bytes: int) -> bytes:
    """The last ``max_bytes`` of a log file, never caught half-way through a trim. Blocking."""
    with _trimming, open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - max_bytes))
        return f.read()


def tail_text(path: Path, max_bytes: int = 4096, after: str | None = None) -> str:
    """The end of a log file as text (from the last ``after`` marker when given). Blocking."""
    try:
        data = read_tail(path, max_bytes).decode(errors="replace")
    except OSError:
        return ""
    if after and after in data:
        data = data[data.rindex(after) :].partition("\n")[2]
    return data.strip()


def rss_kb(pid: int) -> int:
    """Resident memory of a process in KiB from /proc (0 when unknown). /proc is in memory: this
    does not wait on a disk, so it is called on the event loop."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and its direct children (an R function's worker and its R
    process) in KiB; the process alone where the kernel does not list children."""
    total = rss_kb(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            children = f.read().split()
    except OSError:
        return total
    return total + sum(rss_kb(int(child)) for child in children)


def describe_exit(returncode: int) -> str:
    """gunicorn-style: ``exited with code 1``, ``killed by SIGKILL (perhaps out of memory?)``."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    text = f"killed by {name}"
    if -returncode == signal.SIGKILL:
        text += " (perhaps out of memory?)"
    return text


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a replica's whole session (it is started with start_new_session, so pgid == pid).
    Only call it while the leader is not yet reaped, so the id cannot have been reused."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def append_line(path: Path, line: str) -> None:
    """One short line (a kill reason) to a log; small enough to write from the event loop."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def kill_leftovers(pgid: int) -> None:
    """After a replica's worker was reaped: SIGKILL what is left of its process group (children
    the model started). The group's id stays taken while it has members; without members this
    is a no-op. Never a plain kill(pid): that pid may already belong to another process."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
