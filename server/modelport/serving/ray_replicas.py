"""Replicas placed on a Ray cluster (MODELPORT_REPLICAS=ray://head:port).

Each replica is one Ray actor (``serving/ray_host.py``) created with the deployment's resources
(``num_cpus``, ``num_gpus``, ``memory``, custom ``resources``), ``max_restarts=0`` (modelport's
restart policy decides, as for local replicas) and a placement: ``spread`` (Ray's SPREAD: the
replicas of a deployment on different nodes) or ``pack`` (on the node of the group's other
replicas while it has room). The actor makes the build ready on its node from the shared store
and starts the ordinary worker on a TCP port of the node; the server connects to that port
itself and speaks the same frames as over a local socketpair (``serving/pipe.py``), the
connection opened by a ``Hello`` with the replica's secret. Ray's RPC is used to place, watch
(the actor's ``wait``) and end a replica, and to fetch what it prints; never for a call.

A replica whose actor dies — its node lost, or partitioned past Ray's health checks — ends as a
crash (its calls out fail as crashed; those never sent go to another replica) and is replaced by
the restart policy, on whichever node has room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.clock import now_iso
from modelport.runtime.protocol import FRAME_OVERHEAD, Boot, Hello, Ready, encode_frame
from modelport.runtime_home import r_env

from . import procs
from .backends import BackendUnavailable, ReplicaBackend
from .config import GroupSpec
from .lateness import Punctuality
from .replica import BootFailed, Replica

if TYPE_CHECKING:
    from .group import ReplicaGroup

__all__ = ["RayBackend", "RayReplica", "replica_tls"]

log = logging.getLogger("modelport.serving")

MiB = 1024 * 1024
NAMESPACE = "modelport"
LOGS_EVERY_S = 1.0  # how often a replica's output is fetched from its node
RPC_GRACE_S = 10.0  # an actor call past its own time + this: the actor is taken as gone
JOIN_TIMEOUT_S = 120.0  # joining the cluster at the server's start
PLACE_AGAIN_S = 1.0  # an actor that died while starting (its node lost): placed again after this
DEAD_NODE_S = 10.0  # an actor dead: how long Ray may take to say its node is dead too
UNREACHABLE_S = 30.0  # an actor unreachable this long, its node still alive: taken as lost


def replica_tls(name: str) -> tuple[bytes, ssl.SSLContext]:
    """A new key and self-signed certificate for one replica start (PEM: the certificate, then
    the key, handed to the worker with its secret), and the client context that trusts only
    that certificate (TLS 1.3; no host name to check: the certificate itself is the identity).
    A model that reads its own replica's key learns nothing it could use elsewhere."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"modelport replica {name}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=10))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    ctx.load_verify_locations(cadata=cert_pem.decode())
    return cert_pem + key_pem, ctx


class RayBackend(ReplicaBackend):
    """Places replicas on the Ray cluster whose head is at ``address``; the server joins it as a
    driver at start. The nodes read builds from the same store as this server: its S3 bucket
    (``store_url``), or, with a local store, ``store_root`` as the nodes see it (a shared
    mount, or one machine)."""

    name = "ray"

    def __init__(
        self, address: str, *, store_root: Path, store_url: str | None, tls: bool = False
    ) -> None:
        self.address, self.store_root, self.store_url = address, store_root, store_url
        self.tls = tls  # the link to each worker in TLS (MODELPORT_REPLICA_TLS)
        self.host_class: Any = None

    async def open(self) -> None:
        await asyncio.wait_for(asyncio.to_thread(self._join), JOIN_TIMEOUT_S)

    def _join(self) -> None:
        host, _, port = self.address.rpartition(":")
        try:  # Ray itself retries an unreachable head for minutes: say so at once instead
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise BackendUnavailable(
                f"MODELPORT_REPLICAS: the Ray head at {self.address} cannot be reached: {exc}"
            ) from None
        import ray

        from .ray_host import ReplicaHost

        ray.init(
            address=self.address,
            namespace=NAMESPACE,
            log_to_driver=False,
            ignore_reinit_error=True,
            configure_logging=False,
        )
        self.host_class = ray.remote(ReplicaHost)

    async def close(self) -> None:
        import ray

        await asyncio.to_thread(ray.shutdown)

    def replica(self, group: ReplicaGroup, rid: str, slot: int) -> Replica:
        spec, t = group.spec, group.tuning
        return RayReplica(
            self,
            group,
            rid=rid,
            slot=slot,
            build=spec.build,
            argv=[],
            cwd=spec.project,
            env={**spec.env, **r_env(spec.rscript, spec.r_libs)},
            logs_dir=group.logs_dir,
            memory_mb=spec.memory_mb,
            tuning=t,
            on_exit=group._exited,
            on_late=group._late,
            max_concurrency=max(1, spec.max_concurrency),
            poller=group.poller,
            boot_timeout_s=t.boot_timeout_s or spec.boot_timeout_s,
        )

    def options(self, spec: GroupSpec, siblings: list[str]) -> dict[str, Any]:
        """The actor's resources and placement."""
        opts: dict[str, Any] = {
            "num_cpus": spec.cpus,
            "num_gpus": spec.gpus,
            "max_restarts": 0,
            "max_task_retries": 0,
            "max_concurrency": 8,  # wait() waits while logs(), kill() and stop() answer
        }
        if spec.resources:
            opts["resources"] = dict(spec.resources)
        if spec.memory_mb:
            opts["memory"] = spec.memory_mb * MiB
        if spec.placement == "pack" and siblings:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(siblings[0], soft=True)
        elif spec.placement != "pack":
            opts["scheduling_strategy"] = "SPREAD"
        return opts


def _node_alive(node_id: str) -> bool | None:
    """Whether Ray's control store takes the node as alive (None: it cannot say)."""
    try:
        import ray

        for node in ray.nodes():  # type: ignore[no-untyped-call]
            if node.get("NodeID") == node_id:
                return bool(node.get("Alive"))
    except Exception:
        return None
    return False


class RayReplica(Replica):
    """A replica whose worker runs on a Ray node, started by its actor; calls over TCP."""

    def __init__(self, backend: RayBackend, group: ReplicaGroup, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backend, self.group = backend, group
        self.node = "ray"  # the node's address, once placed
        self.node_id = ""
        self._actor: Any = None
        self._hard_kill: asyncio.TimerHandle | None = None
        self._ending: set[asyncio.Future[None]] = set()

    # -- lifecycle --------------------------------------------------------------------------------

    def _job(self, secret: str, tls_pem: bytes | None = None) -> dict[str, Any]:
        spec, t = self.group.spec, self.tuning
        return {
            "rid": self.id,
            "manifest": spec.manifest,
            "store_root": str(self.backend.store_root),
            "store_url": self.backend.store_url,
            "worker_args": [
                "--max-concurrency",
                str(max(1, spec.max_concurrency)),
                "--busy-poll-us",
                str(t.busy_poll_us),
                "--max-call-bytes",
                str(spec.max_body_bytes + FRAME_OVERHEAD),
                "--max-result-bytes",
                str(t.max_response_bytes),
                *(["--tls"] if tls_pem else []),
            ],
            "env": self.env,
            "memory_mb": spec.memory_mb,
            "rss_interval_s": t.rss_interval_s,
            "secret": secret,
            "tls_pem": tls_pem,  # this start's certificate and key, after the secret on stdin
            # The server's sandbox (what GET /api/v1/health lists; [] when off): the node confines
            # the worker as a local replica is, and starts nothing if its kernel has less.
            "sandbox": self._protections(),
            "network": spec.network,
        }

    def _protections(self) -> list[str]:
        sandbox = self.group.sandbox
        return list(sandbox.protections) if sandbox is not None and sandbox.enabled else []

    async def spawn(self) -> None:
        """Place the actor, let it start the worker on its node, connect, wait for Ready."""
        self._loop = loop = asyncio.get_running_loop()
        self.state, self.accepting, self._booted = "starting", False, False
        self._stopping, self._kill_reason, self._recycle = False, None, False
        self._exited = None
        self.started_at = now_iso()
        self._marker = f"--- modelport: replica {self.id} starting at {self.started_at} ---"
        t = self.tuning
        out_fd, err_fd = await asyncio.to_thread(self._open_logs, t.log_max_bytes, t.log_keep_bytes)
        os.close(out_fd)  # the worker's output comes from its node: _fetch_logs appends it
        os.close(err_fd)
        began = time.monotonic()
        deadline = began + self.boot_timeout_s
        siblings = [
            r.node_id
            for r in self.group.replicas
            if isinstance(r, RayReplica) and r is not self and r.node_id and r.state == "ready"
        ]
        secret = secrets.token_hex(32)
        tls_pem, tls = replica_tls(self.id) if self.backend.tls else (None, None)
        try:
            placed = await asyncio.wait_for(
                self._place(secret, siblings, tls_pem), self.boot_timeout_s
            )
        except BaseException as exc:
            await self._fetch_logs()
            await self._end_actor()
            self.state = "crashed"
            if not isinstance(exc, Exception):
                raise
            if isinstance(exc, TimeoutError):
                reason = (
                    f"not placed on the Ray cluster within boot_timeout_s={self.boot_timeout_s:g}s "
                    f"(no node with {self._wants()} free?)"
                )
            else:
                reason = f"could not be placed on the Ray cluster: {_first_line(exc)}"
            procs.append_line(self.stderr_path, f"--- modelport: {reason} ---\n")
            raise BootFailed(reason) from None
        self.pid, self.node, self.node_id = placed["pid"], placed["host"], placed["node"]
        self._started = time.monotonic()
        log.info(
            "replica %s placed on Ray node %s (%s), worker pid %s, port %s (environment %s%s)",
            self.id,
            self.node,
            self.node_id[:12],
            self.pid,
            placed["port"],
            "reused" if placed["cached"] else "made",
            "; TLS" if tls is not None else "",
        )
        self._exited = asyncio.create_task(self._wait_exit_ray())
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            await asyncio.wait_for(
                loop.sock_connect(sock, (placed["host"], placed["port"])),
                max(1.0, deadline - time.monotonic()),
            )
            hello = encode_frame(Hello(secret.encode(), time.monotonic()))
            if tls is None:
                await loop.sock_sendall(sock, hello)
                await self.pipe.open(sock)
            else:  # TLS first, then the Hello inside it
                await self.pipe.open(sock, ssl=tls)
                assert self.pipe.transport is not None
                self.pipe.transport.write(hello)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            sock.close()
            reason = f"its port {placed['host']}:{placed['port']} could not be reached: {exc}"
            await self._boot_failed(reason)
        pipe = self.pipe
        assert pipe.first is not None and pipe.closed is not None
        either: set[asyncio.Future[Any]] = {pipe.first, self._exited}
        await asyncio.wait(
            either,
            timeout=max(0.0, deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self._exited.done() and not pipe.first.done():
            closing: set[asyncio.Future[Any]] = {pipe.first, pipe.closed}
            await asyncio.wait(closing, timeout=1.0)
        first = pipe.first.result() if pipe.first.done() else None
        if type(first) is Ready and not self._exited.done():
            pipe.inline = self.max_concurrency == 1 and not first.is_async
            pipe.heard = time.monotonic()
            self.state, self.accepting, self._booted = "ready", True, True
            self.late, self.punctuality = False, Punctuality()
            self._monitor = asyncio.create_task(self._watch())
            return
        if type(first) is Boot:
            reason = first.error
            await asyncio.wait({self._exited}, timeout=2.0)
        elif self._exited.done():
            tail = await asyncio.to_thread(procs.tail_text, self.stderr_path, 2000, self._marker)
            reason = f"{self._exit_reason or 'ended'} before it was ready" + (
                f":\n{tail}" if tail else ""
            )
        else:
            reason = f"not ready within boot_timeout_s={self.boot_timeout_s:g}s"
        await self._boot_failed(reason)

    async def _place(
        self, secret: str, siblings: list[str], tls_pem: bytes | None = None
    ) -> dict[str, Any]:
        """A new actor, started: placed again when its node dies under it meanwhile (a node
        lost before Ray noticed); an error of the build's own (RayTaskError) is not retried."""
        import ray

        while True:
            self._actor = self.backend.host_class.options(
                **self.backend.options(self.group.spec, siblings)
            ).remote()
            try:
                job = self._job(secret, tls_pem)
                placed: dict[str, Any] = await self._actor.start.remote(job)
                return placed
            except ray.exceptions.RayActorError as exc:
                note = f"its actor died while starting ({_first_line(exc)}); placing it again"
                log.warning("replica %s: %s", self.id, note)
                procs.append_line(self.stderr_path, f"--- modelport: {note} ---\n")
                await self._end_actor()
                siblings = []
                await asyncio.sleep(PLACE_AGAIN_S)

    async def _boot_failed(self, reason: str) -> None:
        if self._exited is not None and not self._exited.done():
            self.kill(reason)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._exited), RPC_GRACE_S)
        await self._end_actor()
        self.state = "crashed"
        raise BootFailed(reason)

    def _wants(self) -> str:
        spec = self.group.spec
        parts = [f"{spec.cpus:g} CPU"]
        if spec.gpus:
            parts.append(f"{spec.gpus} GPU")
        if spec.memory_mb:
            parts.append(f"{spec.memory_mb} MB")
        parts += [f"{v:g} {k}" for k, v in sorted(spec.resources.items())]
        return ", ".join(parts)

    _exit_reason: str | None = None

    async def _wait_exit_ray(self) -> None:
        """The worker ended (the actor says how), or the actor is gone with its node."""
        reason = await self._outcome()
        self._exit_reason = reason
        await self._fetch_logs()
        self.accepting = False
        if self._monitor is not None:
            self._monitor.cancel()
        transport = self.pipe.transport
        if transport is not None:  # a lost node sends no FIN: end the connection here
            self._loop.call_later(0.5, self._abort, transport)
        await self._end_actor()
        if self._stopping:
            self.state = "exited"
            return
        self.state = "crashed"
        if not self._booted:
            return  # spawn() reports it
        if not reason.startswith("lost:"):  # a lost node says more than the kill it led to
            reason = self._kill_reason or reason
        log.warning("replica %s (node %s, pid %s) %s", self.id, self.node, self.pid, reason)
        self.on_exit(self, reason, self._recycle)

    def _end_soon(self) -> None:
        task = asyncio.ensure_future(self._end_actor())
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _outcome(self) -> str:
        """How the worker ended: the actor's word, or, when the actor is unreachable or dead,
        whether Ray takes its node as gone (it takes a few seconds to mark a node dead). Once
        the worker's connection has closed, the node is looked at every second meanwhile: a
        lost node's actor may not answer at all."""
        import ray

        unreachable_since = 0.0
        while True:
            waiting = asyncio.wrap_future(self._actor.wait.remote().future())
            while not waiting.done():
                await asyncio.wait({waiting}, timeout=1.0)
                closed = self.pipe.closed
                if (
                    not waiting.done()
                    and self._booted
                    and closed is not None
                    and closed.done()
                    and await asyncio.to_thread(_node_alive, self.node_id) is False
                ):
                    waiting.cancel()
                    return self._lost()
            try:
                done = waiting.result()
                return str(done["reason"])
            except ray.exceptions.ActorUnavailableError as exc:
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if await asyncio.to_thread(_node_alive, self.node_id) is False:
                    return self._lost()
                if now - unreachable_since > UNREACHABLE_S:
                    return f"lost: its Ray actor is unreachable ({_first_line(exc)})"
                await asyncio.sleep(1.0)
            except Exception as exc:
                for _ in range(int(DEAD_NODE_S)):  # dead: with its node? Ray says so soon
                    if await asyncio.to_thread(_node_alive, self.node_id) is False:
                        return self._lost()
                    await asyncio.sleep(1.0)
                return f"lost: its Ray actor died ({_first_line(exc)})"

    def _lost(self) -> str:
        return f"lost: its Ray node {self.node} ({self.node_id[:12]}) is gone"

    async def _end_actor(self) -> None:
        """Free the actor's resources on the cluster (the worker dies with it)."""
        actor, self._actor = self._actor, None
        if self._hard_kill is not None:
            self._hard_kill.cancel()
            self._hard_kill = None
        if actor is not None:
            import ray

            with contextlib.suppress(Exception):
                await asyncio.to_thread(ray.kill, actor, no_restart=True)

    async def _fetch_logs(self) -> None:
        """What the worker printed on its node, appended to this replica's log files here."""
        actor = self._actor
        if actor is None:
            return
        try:
            out, err = await asyncio.wait_for(actor.logs.remote(), RPC_GRACE_S)
        except Exception:
            return
        if out or err:
            await asyncio.to_thread(self._append, out, err)

    def _append(self, out: bytes, err: bytes) -> None:
        for path, data in ((self.stdout_path, out), (self.stderr_path, err)):
            if data:
                with open(path, "ab") as f:
                    f.write(data)

    async def _watch(self) -> None:
        """Liveness pings, the output fetched from the node, log size (memory is the node's)."""
        t = self.tuning
        tick = min(LOGS_EVERY_S, t.ping_interval_s)
        next_ping = next_trim = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now >= next_ping:
                next_ping = now + t.ping_interval_s
                if self.pipe.in_flight == 0 and now - self.pipe.heard > t.ping_timeout_s:
                    self.kill(f"killed: no answer to pings for {t.ping_timeout_s:g}s", recycle=True)
                    return
                self.pipe.ping(now)
            await self._fetch_logs()
            if now >= next_trim:
                next_trim = now + t.log_check_s
                for path in (self.stdout_path, self.stderr_path):
                    await asyncio.to_thread(procs.trim_log, path, t.log_max_bytes, t.log_keep_bytes)

    def _closed(self) -> None:
        """The TCP connection ended: the worker is ending, or cannot serve (ended in a moment)."""
        self.accepting = False
        if self._booted and not self._stopping:
            self.state = "crashed"
            exited = self._exited
            if exited is not None and not exited.done():
                self._loop.call_later(1.0, self._unreachable, exited)

    def _unreachable(self, exited: asyncio.Future[None]) -> None:
        if exited is self._exited and not exited.done() and not self._stopping:
            self.kill("killed: its connection to the server closed")

    def kill(self, reason: str, *, recycle: bool = False) -> None:
        """End the worker now (through its actor; the actor itself if that does not answer)."""
        actor = self._actor
        if actor is None or self._exited is None or self._exited.done():
            if actor is not None and self._exited is None:  # still being placed
                self._kill_reason = self._kill_reason or reason
                self._end_soon()
            return
        self.accepting = False
        if self._kill_reason is None:
            self._kill_reason, self._recycle = reason, recycle
            self.pipe.ending(reason)
            log.warning("replica %s (node %s, pid %s): %s", self.id, self.node, self.pid, reason)
            procs.append_line(self.stderr_path, f"--- modelport: {reason} ---\n")
        with contextlib.suppress(Exception):
            actor.kill.remote(reason)
        if self._hard_kill is None:
            self._hard_kill = self._loop.call_later(RPC_GRACE_S, self._end_soon)

    async def stop(self, grace: float) -> None:
        """SIGTERM on the node (the worker finishes its calls) → ``grace`` → SIGKILL; the actor
        is then ended."""
        self._stopping, self.accepting = True, False
        actor, exited = self._actor, self._exited
        if actor is None:
            self.state = "exited"
            return
        if exited is None:
            await self._end_actor()
            self.state = "exited"
            return
        if not exited.done():
            self.state = "draining"
            with contextlib.suppress(Exception):
                await asyncio.wait_for(actor.stop.remote(grace), grace + RPC_GRACE_S)
            try:
                await asyncio.wait_for(asyncio.shield(exited), RPC_GRACE_S)
            except TimeoutError:
                await self._end_actor()
                await asyncio.shield(exited)
        self.state = "exited"


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)  # a RayTaskError: the error raised on the node
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
