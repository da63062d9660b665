"""create_app(settings): opens the registry, the store and the rest in order, and wires the routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from modelport import __version__
from modelport.api.audit import audit_log
from modelport.api.builds import BuildsController, import_build
from modelport.api.health import health
from modelport.api.models import ModelsController
from modelport.api.tokens import TokensController
from modelport.builder.pipeline import Builder
from modelport.runtime_home import ensure_runtime
from modelport.auth import Auth, permission_guard
from modelport.datadir import DataDirLock, prepare, write_admin_token
from modelport.errors import handle_exception
from modelport.registry.db import Database
from modelport.registry.tokens import count as token_count
from modelport.settings import Settings
from modelport.store.cas import ContentStore

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


async def _flush_usage_forever(auth: Auth, every_s: float = 5.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        with contextlib.suppress(Exception):
            await auth.flush_usage()


def create_app(settings: Settings, *, lock: DataDirLock | None = None) -> Litestar:
    state = State({"settings": settings})

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        prepare(settings)
        held = lock or DataDirLock(settings.lock_path).acquire()
        db = await Database(settings.registry_path).open()
        auth = Auth(db)
        await auth.load()
        store = ContentStore(settings.store_dir)
        builder = Builder(settings, db, store, ensure_runtime(settings.data_dir))
        app.state.update(db=db, auth=auth, store=store, builder=builder)
        app.state.admin_token = await first_start(auth, settings)
        await builder.start()
        flusher = asyncio.create_task(_flush_usage_forever(auth))
        try:
            yield
        finally:
            flusher.cancel()
            await builder.stop()
            await auth.flush_usage()
            await db.close()
            if lock is None:
                held.release()

    return Litestar(
        route_handlers=[health, audit_log, ModelsController, TokensController, BuildsController,
                        import_build],
        guards=[permission_guard],
        exception_handlers={Exception: handle_exception},
        lifespan=[lifespan],
        state=state,
        cors_config=CORSConfig(allow_origins=settings.cors_origins) if settings.cors_origins else None,
        openapi_config=OpenAPIConfig(
            title="modelport management API", version=__version__, path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
            openapi_router=Router("/schema", route_handlers=[], opt={"perm": "public"}),
        ),
        logging_config=None,
        debug=False,
    )
