"""Our replica runtime, copied out of the server's package to a folder a model's env imports.

Only `modelport/__init__.py` and `modelport/runtime/` go there (standard library + msgspec), so a
model's interpreter can run `python -m modelport.runtime.worker` and `from modelport import
track_metric` without seeing the server's dependencies. `replica_env` is the environment such a
process (a replica, a build's inspect step) is started with.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import modelport

PACKAGE = Path(modelport.__file__).parent


def _sources() -> list[Path]:
    runtime = sorted(p for p in (PACKAGE / "runtime").iterdir() if p.suffix in (".py", ".R"))
    return [PACKAGE / "__init__.py", *runtime]


def runtime_dir(data_dir: Path) -> Path:
    """Where this version of the runtime's code lives under the data dir (nothing written)."""
    h = hashlib.sha256()
    for src in _sources():
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    return data_dir / "runtime" / h.hexdigest()[:16]


def ensure_runtime(data_dir: Path) -> Path:
    """The folder to put on a replica's PYTHONPATH; made once per version of the runtime's code."""
    target = runtime_dir(data_dir)
    if (target / "modelport" / "runtime").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    (staging / "modelport" / "runtime").mkdir(parents=True)
    for src in _sources():
        rel = src.relative_to(PACKAGE)
        shutil.copyfile(src, staging / "modelport" / rel)
    try:
        os.rename(staging, target)
    except OSError:  # another process made it first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def replica_env(runtime_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A scrubbed environment for code of a model's: no server secrets, only what it needs."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(extra or {})
    env["PYTHONPATH"] = str(runtime_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def r_env(rscript: str, r_libs: list[str]) -> dict[str, str]:
    """What an R function's worker is told: the Rscript to start, its library (first on R's
    path; the machine's own libraries follow, as Renviron names them)."""
    if not rscript:
        return {}
    env = {"MODELPORT_RSCRIPT": rscript, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    if r_libs:
        env["R_LIBS"] = os.pathsep.join(r_libs)
    return env
