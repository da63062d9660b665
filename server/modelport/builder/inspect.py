"""Run the runtime's signature reader inside a build's environment, never in the server's interpreter."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import msgspec

INSPECT_TIMEOUT_S = 600


class InspectFailed(Exception):
    def __init__(self, stage: str, error: str):
        super().__init__(f"{stage}: {error}")
        self.stage, self.error = stage, error


def replica_env(runtime_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A scrubbed environment for code of a model's: no server secrets, only what it needs."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(extra or {})
    env["PYTHONPATH"] = str(runtime_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


async def inspect_build(
    python: Path, project: Path, entry: str, runtime_dir: Path, example_input: Any, log
) -> dict:
    """The entry's form, schemas and (given an example input) its example output, or InspectFailed."""
    args = [str(python), "-m", "modelport.runtime.inspect", "--project", str(project),
            "--entry", entry]
    if example_input is not None:
        args += ["--example-input", msgspec.json.encode(example_input).decode()]
    log(f"$ python -m modelport.runtime.inspect --entry {entry}")
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=project, env=replica_env(runtime_dir), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), INSPECT_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise InspectFailed("import", f"the entry module took over {INSPECT_TIMEOUT_S}s") from None
    if err.strip():
        log(err.decode(errors="replace").rstrip())
    try:
        result = msgspec.json.decode(out.strip().splitlines()[-1]) if out.strip() else None
    except (msgspec.DecodeError, IndexError):
        result = None
    if not isinstance(result, dict):
        raise InspectFailed("import", f"the inspector exited {proc.returncode} without an answer")
    if not result.get("ok"):
        raise InspectFailed(result.get("stage", "import"), result.get("error", "unknown error"))
    return result
