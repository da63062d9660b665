"""create_app(settings): the services in order, the routes, and the gateway before predictions."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from modelport import __version__
from modelport.api.admin import store_gc, store_status, store_verify
from modelport.api.audit import audit_log
from modelport.api.builds import BuildsController, import_build
from modelport.api.common import strict_booleans
from modelport.api.deployments import DeploymentsController
from modelport.api.health import health, model_ready, r_check, whoami
from modelport.api.metrics import MonitoringController, prometheus
from modelport.api.model_openapi import model_openapi
from modelport.api.models import ModelsController
from modelport.api.openapi import COMPONENTS, StructSchema, docs_page, finish_routes
from modelport.api.replays import ReplaysController
from modelport.api.spa import spa_routes
from modelport.api.tokens import TokensController
from modelport.auth import Auth
from modelport.builder.pipeline import Builder
from modelport.builder.service import Builds
from modelport.cluster import Cluster
from modelport.datadir import TOKENS_CHANGED, DataDirLock, prepare, tighten, write_admin_token
from modelport.errors import disk_full, handle_exception
from modelport.gateway.forward import Forwarder
from modelport.gateway.predict import Gateway
from modelport.gateway.routes import Routes
from modelport.models import Models
from modelport.observability.monitor import Monitor
from modelport.registry import deployments as deployment_rows
from modelport.registry.backends import registry
from modelport.registry.db import RegistryUnreachable
from modelport.registry.records import DEPLOYMENT_DEFAULTS
from modelport.registry.sealed import Sealer
from modelport.registry.tokens import count as token_count
from modelport.replay.gate import promotion_gate
from modelport.replay.runner import Replays
from modelport.runtime_home import ensure_runtime, runtime_dir
from modelport.sandboxing import Sandbox
from modelport.scratch import sweep
from modelport.serving.backends import LocalBackend, ReplicaBackend
from modelport.serving.config import GroupEvent, Tuning
from modelport.serving.deployer import Deployer
from modelport.serving.ray_replicas import RayBackend
from modelport.serving.supervisor import ReplicaGroup, Supervisor
from modelport.settings import Settings
from modelport.store.archive import ArchiveLimits
from modelport.store.backends import open_store
from modelport.store.contract import ContentStore

log = logging.getLogger("modelport")


async def first_start(auth: Auth, settings: Settings) -> str | None:
    """On a registry with no token at all: an admin token, printed once and written 0600."""
    if await token_count(auth.db):
        return None
    _, secret = await auth.issue_token(
        name="admin", role="admin", expires_in_days=None, models=[], actor="system"
    )
    write_admin_token(settings.admin_token_path, secret)
    print(
        f"\n  First start: an admin token was created. It is shown this once:\n\n    {secret}\n\n"
        f"  It is also in {settings.admin_token_path} (mode 0600), where the CLI finds it.\n",
        flush=True,
    )
    return secret


def clean_leftovers(settings: Settings, store: ContentStore) -> None:
    """What a server killed mid-way left: partial uploads, build folders, store temps. Nothing
    else runs on the data dir yet (its lock is ours), so every temp is a dead writer's."""
    swept = sweep(settings.data_dir)
    temps = swept.removed + store.clean_temp(0)
    if temps:
        log.info(
            "removed %d temp files and folders (%.1f MB) left by a server that stopped mid-way",
            temps,
            swept.freed_bytes / 1e6,
        )


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


async def _every(seconds: float, job) -> None:
    said = ""  # a full disk or an unreachable registry is said once while it lasts, not every run
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
            said = ""
        except Exception as exc:
            why = (
                "the disk is full"
                if disk_full(exc)
                else "the registry is unreachable"
                if isinstance(exc, RegistryUnreachable)
                else ""
            )
            if not why:
                log.exception("periodic job %s failed", getattr(job, "__name__", job))
            elif why != said:
                said = why
                log.warning(
                    "periodic job %s: %s (%s); it runs again every %g s",
                    getattr(job, "__name__", job),
                    why,
                    exc,
                    seconds,
                )


def sealer_of(settings: Settings) -> Sealer:
    """The sealer of env values: the data dir's secret.key (made at the first start), or the
    shared key MODELPORT_SECRET_KEY_FILE names (which must be there). Blocking."""
    return Sealer.for_data_dir(settings.secret_key_path, create=settings.secret_key_file is None)


async def ready(settings: Settings) -> None:
    """What a server checks before it starts, each refusal one line (RegistryTooNew,
    RegistryUnreachable, SealError): the registry opened and migrated, and its env values
    sealed with this server's key."""
    db = await registry(settings.database_url, settings.registry_path).open()
    try:
        await deployment_rows.check_key(db, await asyncio.to_thread(sealer_of, settings))
    finally:
        await db.close()


class Services:
    """Everything the server runs, built without I/O; `open` and `close` do the work, in order.

    Handlers are given these by name and type (`db: Database`, `deployer: Deployer`: see
    `dependencies`); nothing else reaches them through the app's state.
    """

    # Made by `open`, in this order; no request is served before it has run.
    store: ContentStore
    builder: Builder
    builds: Builds
    sealer: Sealer
    deployer: Deployer
    cluster: Cluster
    replays: Replays
    admin_token: str | None  # the first start's admin token (None after): tests read it

    def __init__(self, settings: Settings, lock: DataDirLock | None = None):
        self.settings, self._lock = settings, lock
        self.db = registry(settings.database_url, settings.registry_path)
        self.auth = Auth(self.db, settings.admin_token_path)
        self.sandbox = Sandbox(settings.data_dir, enabled=settings.sandbox)
        backend: ReplicaBackend = LocalBackend(settings.node)
        if settings.replicas:  # MODELPORT_REPLICAS=ray://head:port
            backend = RayBackend(
                settings.replicas,
                store_root=settings.store_dir,
                store_url=settings.store_url,
                tls=settings.replica_tls,
            )
        self.supervisor = Supervisor(
            runtime_dir=runtime_dir(settings.data_dir),
            logs_dir=settings.logs_dir,
            on_change=self._on_change,
            prepare=self._prepare,
            tuning=Tuning(
                busy_poll_us=settings.busy_poll_us,
                max_response_bytes=settings.max_response_mb * 1024 * 1024,
            ),
            sandbox=self.sandbox,
            backend=backend,
        )
        self.routes = Routes(self.supervisor)
        self.monitor = Monitor(
            self.db,
            self.supervisor,
            self.routes,
            capture_keep_s=settings.capture_retention_days * 86_400.0,
        )
        self.supervisor.on_shadow = self.monitor.recorder.on_shadow  # a shadow's pairs
        self.models = Models(self.db, self.auth, self.routes, self.monitor.recorder)
        self._jobs: list[asyncio.Task] = []
        # Several servers on one registry: predictions of a model whose replicas run elsewhere
        # are forwarded to those servers (the deployer keeps `hosts`: model → their addresses)
        self.hosts: dict[str, list[str]] = {}
        self.forwarder = Forwarder(settings.node, self.hosts) if settings.database_url else None

    async def _on_change(self, group: ReplicaGroup, event: GroupEvent, detail: dict) -> None:
        if hasattr(self, "deployer"):
            await self.deployer.on_change(group, event, detail)

    async def _prepare(self, spec) -> list[str]:
        """Before each replica starts: its build's project folder checked, restored if need be."""
        return await self.builder.projects.before_start(spec.digest)

    async def open(self) -> None:
        s = self.settings
        prepare(s)
        self._held = self._lock or DataDirLock(s.lock_path).acquire()
        await self.db.open()
        await asyncio.to_thread(tighten, s.data_dir)  # the registry's -wal and -shm exist now
        await self.auth.load()
        await self.models.load()
        self.store = await asyncio.to_thread(open_store, s.store_dir, s.store_url)
        await asyncio.to_thread(clean_leftovers, s, self.store)
        runtime = await asyncio.to_thread(ensure_runtime, s.data_dir)
        await asyncio.to_thread(self.sandbox.clear_tmp)
        self.sandbox.report()
        self.builder = Builder(s, self.db, self.store, runtime, self.sandbox)
        self.builds = Builds(
            self.db,
            self.store,
            self.builder,
            self.models,
            ArchiveLimits(
                max_archive_bytes=s.archive_max_bytes,
                max_total_bytes=s.archive_max_expanded_bytes,
                max_ratio=s.archive_max_ratio,
            ),
        )
        self.sealer = await asyncio.to_thread(sealer_of, s)
        await deployment_rows.check_key(self.db, self.sealer)
        sealed = await deployment_rows.seal_clear_env(self.db, self.sealer)
        if sealed:
            log.info("sealed the env values of %d deployments written before sealing", sealed)
        self.deployer = Deployer(self.db, self.builder, self.supervisor, self.sealer)
        self.deployer.replay_gate = promotion_gate(self.db)  # promote --if-replay-matches
        self.replays = Replays(self.db, self.supervisor, self.deployer, self.monitor, node=s.node)
        await self.replays.open()
        self.admin_token = await first_start(self.auth, s)
        await self.auth.drop_stale_token_file()
        await self.builder.start()
        await self.supervisor.backend.open()  # a Ray cluster: joined as a driver
        log.info("replicas run on: %s", (s.replicas and f"ray://{s.replicas}") or "local")
        self.deployer.hosts = self.hosts
        self.cluster = Cluster(
            self.db,
            self.auth,
            self.models,
            self.deployer,
            node=s.node,
            address=s.advertise_url or s.url,
            reconcile_s=s.reconcile_s,
        )
        await self.cluster.join()
        await self.deployer.restore()
        self.cluster.start()
        self._tokens_seen = await asyncio.to_thread(_mtime, s.run_dir / TOKENS_CHANGED)
        self._jobs = [
            asyncio.create_task(_every(5.0, self.auth.flush_usage)),
            asyncio.create_task(_every(1.0, self._tokens_changed)),
            asyncio.create_task(self.monitor.run()),
        ]
        # What start-up made (the app, its routes, the libraries) lives as long as the server: out
        # of the collector's sight, a full collection no longer walks it (a pause in predictions).
        gc.collect()
        gc.freeze()

    async def _tokens_changed(self) -> None:
        """`modelport admin reset-token` wrote the registry from outside: take its token in."""
        seen = await asyncio.to_thread(_mtime, self.settings.run_dir / TOKENS_CHANGED)
        if seen != self._tokens_seen:
            self._tokens_seen = seen
            await self.auth.load()
            log.info("tokens reloaded: they were changed from the data dir (admin reset-token)")

    async def close(self) -> None:
        for job in self._jobs:
            job.cancel()
        if hasattr(self, "cluster"):
            await self.cluster.close()
        if self.forwarder is not None:
            await self.forwarder.close()
        if hasattr(self, "replays"):
            await self.replays.close()
        if hasattr(self, "deployer"):
            await self.deployer.close()
        await self.supervisor.shutdown(drain_timeout=10.0)
        with contextlib.suppress(Exception):
            await self.supervisor.backend.close()
        if hasattr(self, "builder"):
            await self.builder.stop()
        with contextlib.suppress(Exception):
            await self.auth.flush_usage()
        if self._jobs:  # opened: what was counted since the last flush is kept
            try:
                await self.monitor.flush(final=True)
            except Exception:
                log.exception("the last monitoring flush failed")
        await self.db.close()
        if self._lock is None and hasattr(self, "_held"):
            self._held.release()


def dependencies(services: Services) -> dict[str, Provide]:
    """What a handler may name among its parameters: the server's services, the same objects
    for every request (those `open` makes are read when the request comes)."""
    provided: dict[str, Callable[[], object]] = {
        "settings": lambda: services.settings,
        "db": lambda: services.db,
        "auth": lambda: services.auth,
        "models": lambda: services.models,
        "routes": lambda: services.routes,
        "sandbox": lambda: services.sandbox,
        "supervisor": lambda: services.supervisor,
        "monitor": lambda: services.monitor,
        "store": lambda: services.store,
        "builder": lambda: services.builder,
        "builds": lambda: services.builds,
        "deployer": lambda: services.deployer,
        "replays": lambda: services.replays,
    }
    return {name: Provide(get, sync_to_thread=False) for name, get in provided.items()}


def create_app(settings: Settings, *, lock: DataDirLock | None = None) -> Litestar:
    """The management app (Litestar); `create_asgi` puts the prediction gateway in front of it."""
    services = Services(settings, lock)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        try:
            await services.open()
            r_check.ask(settings.rscript)  # health names the R version: ask R now, once
            yield
        finally:
            await services.close()

    app = Litestar(
        route_handlers=[
            health,
            model_ready,
            whoami,
            model_openapi,
            audit_log,
            ModelsController,
            TokensController,
            BuildsController,
            import_build,
            DeploymentsController,
            ReplaysController,
            store_status,
            store_verify,
            store_gc,
            prometheus,
            MonitoringController,
            *spa_routes,
        ],
        guards=[services.auth.permission_guard, strict_booleans],
        dependencies=dependencies(services),
        exception_handlers={Exception: handle_exception},
        lifespan=[lifespan],
        state=State({"settings": settings}),
        cors_config=CORSConfig(allow_origins=settings.cors_origins)
        if settings.cors_origins
        else None,
        openapi_config=OpenAPIConfig(
            title="modelport management API",
            version=__version__,
            path="/schema",
            render_plugins=[docs_page()],
            components=COMPONENTS,
            openapi_router=Router(
                "/schema", route_handlers=[], opt={"perm": "public"}, include_in_schema=False
            ),
        ),
        plugins=[StructSchema()],
        logging_config=None,
        debug=False,
    )
    finish_routes(app)
    app.state.services = services
    return app


def create_asgi(settings: Settings, *, lock: DataDirLock | None = None) -> Gateway:
    """What `modelport serve` runs: predictions on the lean path, everything else to Litestar."""
    app = create_app(settings, lock=lock)
    services: Services = app.state.services
    return Gateway(
        app,
        services.routes,
        services.auth,
        default_max_body_mb=DEPLOYMENT_DEFAULTS.max_body_mb,  # a model not deployed
        on_result=services.monitor.on_result if settings.metrics else None,
        poller=services.supervisor.poller,
        forwarder=services.forwarder,
    )
