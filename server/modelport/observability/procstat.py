"""CPU seconds and resident memory of a process from /proc (in memory: cheap, never a disk wait)."""

from __future__ import annotations

import os

__all__ = ["cpu_seconds", "resident_bytes"]

try:
    _TICKS = os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
    _TICKS = 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` in seconds; None when it is gone or unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)
    except (IndexError, ValueError):
        return None


def resident_bytes(pid: int) -> int | None:
    """VmRSS of ``pid`` in bytes; None when it is gone or unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
