"""One replica on a Ray node: the Ray actor that places it (``serving/ray_replicas.py`` creates
it). It only places: it makes the build ready on its node from the shared store
(``serving/materialise.py``), starts the ordinary replica worker on a TCP port of the node
(``--listen-fd``, the replica's secret on its stdin), reports ``host:port``, watches the
worker's resident memory, and holds what the worker prints until the server fetches it. The
server talks to the worker directly over that TCP port; no call goes through Ray.

This module runs in the Ray worker processes of every node (modelport installed there, as for
any Ray application's code); ``ray`` is imported only inside the actor's methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from modelport.runtime_home import replica_env
from modelport.sandboxing import Sandbox, replica_policy
from modelport.store.backends import open_store

from . import procs
from .materialise import NodeBuild, materialise

__all__ = ["NODE_DIR_ENV", "ReplicaHost", "node_dir"]

NODE_DIR_ENV = "MODELPORT_NODE_DIR"
LOG_KEEP = 4 * 1024 * 1024  # bytes of a stream held on the node for the server, the newest


def node_dir(ip: str) -> Path:
    """Where a node keeps the builds it made ready: $MODELPORT_NODE_DIR (else ~/.cache/modelport
    /nodes), one folder per node address (two nodes on one machine keep their own)."""
    base = os.environ.get(NODE_DIR_ENV) or str(Path.home() / ".cache" / "modelport" / "nodes")
    return Path(base) / ip


class _Stream:
    """What a worker's stdout or stderr printed and the server has not fetched: the newest
    LOG_KEEP bytes, with a note of how much was dropped before them."""

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = self.dropped = 0

    def add(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        while self.size > LOG_KEEP and len(self.chunks) > 1:
            gone = self.chunks.popleft()
            self.size -= len(gone)
            self.dropped += len(gone)

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        if self.dropped:
            note = f"--- modelport: {self.dropped} bytes dropped on the node before these ---\n"
            out = note.encode() + out
        self.chunks.clear()
        self.size = self.dropped = 0
        return out


class ReplicaHost:
    """The Ray actor of one replica (an async actor: ``wait`` waits while the others answer)."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.out, self.err = _Stream(), _Stream()
        self.reason: str | None = None  # why this side killed it (memory over the limit, asked)
        self.rss_kb = 0
        self._done: asyncio.Future[dict[str, Any]] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.tmp: Path | None = (
            None  # the worker's private temp dir (sandboxed), removed at its end
        )

    def _note(self, line: str) -> None:
        self.err.add(f"--- modelport: {line} ---\n".encode())

    async def start(self, job: dict[str, Any]) -> dict[str, Any]:
        """Make the build ready, start the worker listening on this node; its address."""
        import ray

        ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        node = ray.get_runtime_context().get_node_id()
        here = node_dir(ip)
        began = time.monotonic()
        self._note(f"placed on Ray node {node} ({ip})")
        url = job.get("store_url")
        root = here / "store" if url else Path(job["store_root"])
        store = await asyncio.to_thread(open_store, root, url)
        built = await asyncio.to_thread(materialise, store, here, job["manifest"], self._note)
        self._note(
            ("environment reused" if built.cached else "environment made")
            + f", ready to start in {time.monotonic() - began:.2f}s"
        )
        argv = [
            built.python,
            "-u",
            "-m",
            "modelport.runtime.worker",
            "--project",
            built.project,
            "--entry",
            built.entry,
            *job["worker_args"],
        ]
        env = replica_env(Path(built.runtime), job["env"])
        if job.get("sandbox"):
            argv, env = await asyncio.to_thread(self._confined, here, built, job, argv, env)
        listener = socket.create_server((ip, 0))
        port = listener.getsockname()[1]
        argv += ["--listen-fd", str(listener.fileno())]
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=built.project,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(listener.fileno(),),
                start_new_session=True,
            )
        finally:
            listener.close()
        assert self.proc.stdin is not None
        # The secret, then (TLS) this start's certificate and key: never in argv or environ
        self.proc.stdin.write(job["secret"].encode() + b"\n" + (job.get("tls_pem") or b""))
        with contextlib.suppress(OSError):
            await self.proc.stdin.drain()
        self.proc.stdin.close()
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._tasks = [
            asyncio.create_task(self._read(self.proc.stdout, self.out)),
            asyncio.create_task(self._read(self.proc.stderr, self.err)),
        ]
        self._tasks.append(asyncio.create_task(self._reap(self.proc, list(self._tasks))))
        if job.get("memory_mb"):
            self._tasks.append(
                asyncio.create_task(
                    self._watch(self.proc, job["memory_mb"] * 1024, job.get("rss_interval_s", 0.5))
                )
            )
        return {
            "host": ip,
            "port": port,
            "node": node,
            "pid": self.proc.pid,
            "cached": built.cached,
            "python": sys.version.split()[0],
        }

    def _confined(
        self,
        here: Path,
        built: NodeBuild,
        job: dict[str, Any],
        argv: list[str],
        env: dict[str, str],
    ) -> tuple[list[str], dict[str, str]]:
        """The worker's command line and environment confined as a local replica is (the same
        launcher and policy: it reads the system, its interpreter and environment, the runtime
        and its own project folder on this node; it writes only its private temp dir; no
        network but its listening socket with ``network: false``). The server's sandbox lists
        ``job["sandbox"]`` (GET /api/v1/health): a node whose kernel lacks one of them starts
        nothing, so what the server says holds for every replica (blocking)."""
        sandbox = Sandbox(here)
        missing = [p for p in job["sandbox"] if p not in sandbox.protections]
        if missing:
            have = ", ".join(sandbox.protections) or "none"
            raise RuntimeError(
                f"this node's kernel lacks {', '.join(missing)} of the server's sandbox "
                f"(it has {have}): the replica would run less confined than GET /api/v1/health "
                "says"
            )
        self.tmp = tmp = sandbox.fresh_tmp(job["rid"])
        runtime = Path(built.runtime)
        policy = replica_policy(
            python=built.python,
            project=Path(built.project),
            runtime_dir=runtime,
            tmp=tmp,
            network=job.get("network", True),
        )
        self._note(f"sandbox: {', '.join(sandbox.protections)} on this node")
        confined = sandbox.command(built.python, policy, argv, runtime_dir=runtime)
        return confined, {**env, "TMPDIR": str(tmp), "HOME": str(tmp)}

    async def _read(self, stream: asyncio.StreamReader | None, into: _Stream) -> None:
        if stream is None:
            return
        while data := await stream.read(65536):
            into.add(data)

    async def _reap(
        self, proc: asyncio.subprocess.Process, readers: list[asyncio.Task[Any]]
    ) -> None:
        code = await proc.wait()
        procs.kill_leftovers(proc.pid)
        if self.tmp is not None:
            await asyncio.to_thread(shutil.rmtree, self.tmp, True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*readers), 2.0)
        assert self._done is not None
        self._done.set_result({"code": code, "reason": self.reason or procs.describe_exit(code)})

    async def _watch(self, proc: asyncio.subprocess.Process, limit_kb: int, every: float) -> None:
        """The memory limit, on the node: the worker and its children over it are killed."""
        while proc.returncode is None:
            await asyncio.sleep(every)
            self.rss_kb = rss = procs.tree_rss_kb(proc.pid)
            if rss > limit_kb and proc.returncode is None:
                self.kill(
                    f"killed: resident memory {rss // 1024} MiB is over memory_mb="
                    f"{limit_kb // 1024}"
                )
                return

    async def wait(self) -> dict[str, Any]:
        """Once the worker has ended: its exit code and why (the last of its output fetched)."""
        assert self._done is not None
        return await asyncio.shield(self._done)

    def logs(self) -> tuple[bytes, bytes]:
        """What the worker printed since the last fetch: (stdout, stderr)."""
        return self.out.take(), self.err.take()

    def kill(self, reason: str) -> None:
        """SIGKILL the worker's session now, noting why."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if self.reason is None:
            self.reason = reason
            self._note(reason)
        procs.kill_group(proc.pid, signal.SIGKILL)

    async def stop(self, grace: float) -> dict[str, Any] | None:
        """SIGTERM (the worker finishes its calls in flight) → ``grace`` → SIGKILL → reaped."""
        proc = self.proc
        if proc is None or self._done is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._done), grace)
            except TimeoutError:
                procs.kill_group(proc.pid, signal.SIGKILL)
        return await asyncio.shield(self._done)
