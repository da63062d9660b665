"""Run the runtime's signature reader in a build's environment, never in the server's process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import msgspec

from modelport.runtime.sandbox import EXIT_SANDBOX
from modelport.runtime_home import r_env, replica_env
from modelport.sandboxing import Sandbox, inspect_policy, r_paths

INSPECT_TIMEOUT_S = 600


class InspectFailed(Exception):
    def __init__(self, stage: str, error: str):
        super().__init__(f"{stage}: {error}")
        self.stage, self.error = stage, error


async def inspect_build(
    python: Path,
    project: Path,
    entry: str,
    runtime_dir: Path,
    example_input: Any,
    log,
    sandbox: Sandbox | None = None,
    tmp_name: str = "inspect",
    rscript: str = "",
    r_libs: list[str] | None = None,
) -> dict:
    """The entry's form, schemas and (given an example input) its example output, or InspectFailed.
    With the sandbox on, the model is imported confined as a replica is, with no network, a temp
    dir of its own (``<data dir>/run/tmp/<tmp_name>``), and killed with all it started when it
    ends or the server dies."""
    args = [
        str(python),
        "-m",
        "modelport.runtime.describe",
        "--project",
        str(project),
        "--entry",
        entry,
    ]
    if example_input is not None:
        args += ["--example-input", msgspec.json.encode(example_input).decode()]
    log(f"$ python -m modelport.runtime.describe --entry {entry}")
    r_libs = r_libs or []
    env, tmp = replica_env(runtime_dir, r_env(rscript, r_libs)), None
    if sandbox is not None and sandbox.enabled:
        tmp = await asyncio.to_thread(sandbox.fresh_tmp, tmp_name)
        r_read = (*r_paths(rscript), *r_libs) if rscript else ()
        policy = inspect_policy(
            python=python, project=project, runtime_dir=runtime_dir, tmp=tmp, also_read=r_read
        )
        args = sandbox.command(python, policy, args, runtime_dir=runtime_dir, supervise=True)
        env.update(TMPDIR=str(tmp), HOME=str(tmp))
    try:
        return await _run(args, project, env, log)
    finally:
        if tmp is not None:
            await asyncio.to_thread(shutil.rmtree, tmp, True)


async def _run(args: list[str], project: Path, env: dict[str, str], log) -> dict:
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=project,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), INSPECT_TIMEOUT_S)
    except BaseException as exc:  # too long, or the build was cancelled: nothing of it stays
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # its session (not reaped yet: still its id)
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise InspectFailed(
                "import", f"the entry module took over {INSPECT_TIMEOUT_S}s"
            ) from None
        raise
    return _answer(proc.returncode, out, err, log)


def _answer(returncode: int | None, out: bytes, err: bytes, log) -> dict:
    text = err.decode(errors="replace").rstrip()
    if text.strip():
        log(text)
    if returncode == EXIT_SANDBOX:
        last = text.strip().splitlines()[-1] if text.strip() else f"exit {EXIT_SANDBOX}"
        raise InspectFailed("import", f"the sandbox could not be applied ({last})")
    try:
        result = msgspec.json.decode(out.strip().splitlines()[-1]) if out.strip() else None
    except (msgspec.DecodeError, IndexError):
        result = None
    if not isinstance(result, dict):
        raise InspectFailed("import", f"the inspector exited {returncode} without an answer")
    if not result.get("ok"):
        raise InspectFailed(result.get("stage", "import"), result.get("error", "unknown error"))
    return result
