"""The R side of a build: the machine's R (its version is in the digest) and its lock's text."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field

import msgspec

__all__ = ["RInfo", "RMissing", "find_r", "lock_lines"]

# Prints {"version": "4.2.2", "packages": {"name": "version", ...}} for the libraries R sees
# before any of a build's: base, recommended and the machine's site libraries (Debian's r-cran-*).
_PROBE = r"""
ip <- installed.packages(noCache = TRUE)[, c("Package", "Version"), drop = FALSE]
ip <- ip[!duplicated(ip[, "Package"]), , drop = FALSE]
q <- function(s) paste0('"', gsub('"', '\\"', s, fixed = TRUE), '"')
cat('{"version":', q(paste(R.version$major, R.version$minor, sep = ".")), ',"packages":{',
    paste0(q(ip[, "Package"]), ":", q(ip[, "Version"]), collapse = ","), "}}\n", sep = "")
"""
PROBE_TIMEOUT_S = 120


class RMissing(Exception):
    """No usable R on this machine for an R function's build."""


@dataclass
class RInfo:
    rscript: str  # the resolved path of the Rscript builds and replicas run
    version: str  # "4.2.2"
    machine: dict[str, str] = field(default_factory=dict)  # the packages R comes with here


def find_r(rscript: str) -> RInfo:
    """The R that ``rscript`` (MODELPORT_RSCRIPT, else Rscript on PATH) runs; RMissing saying
    what to do when there is none or it does not run (blocking)."""
    path = shutil.which(rscript)
    if path is None:
        raise RMissing(
            f"R is needed to build an R function, and {rscript!r} was not found: "
            "install R (Debian: apt-get install r-base-core r-cran-jsonlite) or set "
            "MODELPORT_RSCRIPT to an Rscript"
        )
    try:
        done = subprocess.run(
            [path, "--no-save", "--no-restore", "--no-site-file", "--no-init-file", "-e", _PROBE],
            capture_output=True,
            check=False,
            timeout=PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RMissing(f"R ({path}) does not run: {exc}") from None
    try:
        found = msgspec.json.decode(done.stdout.strip().splitlines()[-1])
    except (msgspec.DecodeError, IndexError):
        err = done.stderr.decode(errors="replace").strip()[-500:]
        raise RMissing(f"R ({path}) does not run: exit {done.returncode}: {err}") from None
    info = RInfo(path, found["version"], found["packages"])
    if "jsonlite" not in info.machine:
        raise RMissing(
            f"R {info.version} ({path}) has no jsonlite, which the R runtime needs: "
            "install it (Debian: apt-get install r-cran-jsonlite)"
        )
    return info


def lock_lines(info: RInfo, machine_used: list[str]) -> str:
    """The R part of a build's lock text (comment lines: uv never reads them): the R version and
    the machine's packages used as they are."""
    lines = [f"# R {info.version}"]
    lines += [f"# R machine package: {name}=={info.machine[name]}" for name in sorted(machine_used)]
    return "\n".join(lines) + "\n"
