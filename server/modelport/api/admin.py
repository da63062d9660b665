"""Store maintenance while the server runs (admin): stats, verify, garbage collection."""

from __future__ import annotations

import asyncio
from typing import Annotated

import msgspec
from litestar import Request, get, post
from litestar.params import QueryParameter

from modelport.api.common import BuilderDep, DbDep, SettingsDep, StoreDep, who
from modelport.builder.projects import Folder
from modelport.registry import audit
from modelport.registry.builds import in_use
from modelport.upkeep import GcDone, collect, verify


class StoreStatus(msgspec.Struct):
    objects: int
    bytes: int


class VerifyResult(msgspec.Struct):
    objects: int
    corrupt: list[dict]
    missing: list[str]
    projects: int = 0  # project folders re-hashed
    tampered: list[Folder] = []  # those found changed, with a file added or missing, or a mode


@get("/api/v1/store", opt={"perm": "admin"}, tags=["store"])
async def store_status(store: StoreDep) -> StoreStatus:
    """How many objects the artifact store holds, and their bytes on disk."""
    stats = await asyncio.to_thread(store.stats)
    return StoreStatus(stats.objects, stats.bytes)


@post("/api/v1/store/verify", opt={"perm": "admin"}, tags=["store"], status_code=200)
async def store_verify(
    request: Request,
    db: DbDep,
    store: StoreDep,
    builder: BuilderDep,
    repair: Annotated[bool, QueryParameter(required=False)] = False,
) -> VerifyResult:
    """Re-hash every object and every project folder; list the corrupt objects, those builds
    refer to but are missing, and the tampered project folders (`?repair=true` restores them)."""
    found = await asyncio.to_thread(
        verify, store, builder.projects, await in_use(db), repair=repair
    )
    if repair and found.tampered:
        async with db.write() as conn:
            await audit.record(
                conn,
                who(request).actor,
                "store.repair",
                detail={"folders": [t.digest for t in found.tampered if t.repaired]},
            )
    return VerifyResult(
        found.objects,
        [msgspec.structs.asdict(p) for p in found.corrupt],
        found.missing,
        found.projects,
        found.tampered,
    )


@post("/api/v1/store/gc", opt={"perm": "admin"}, tags=["store"], status_code=200)
async def store_gc(request: Request, db: DbDep, store: StoreDep, settings: SettingsDep) -> GcDone:
    """Remove objects no build refers to, the project folders, environments and checked-out
    files of builds that are gone, and the temp files of uploads and builds that died; never what
    a build or upload in progress is writing (an hour's grace; its temps are held)."""
    done = await asyncio.to_thread(collect, store, settings.data_dir, await in_use(db))
    async with db.write() as conn:
        await audit.record(
            conn, who(request).actor, "store.gc", detail=msgspec.structs.asdict(done)
        )
    return done
