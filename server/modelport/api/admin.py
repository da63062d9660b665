"""Store maintenance while the server runs (admin): stats, verify, garbage collection."""

from __future__ import annotations

import asyncio
from typing import Annotated

import msgspec
from litestar import Request, get, post
from litestar.params import QueryParameter

from modelport.api.common import BuilderDep, DbDep, MonitorDep, SettingsDep, StoreDep, who
from modelport.builder.projects import Folder
from modelport.registry import audit
from modelport.registry import captures as capture_rows
from modelport.registry import replays as report_rows
from modelport.registry.builds import in_use
from modelport.upkeep import GcDone, collect, verify


class StoreStatus(msgspec.Struct):
    objects: int
    bytes: int
    # in the registry, counted apart since they may hold personal data (capture_retention_days)
    captures: int = 0
    capture_bytes: int = 0
    replay_reports: int = 0
    replay_report_bytes: int = 0


class VerifyResult(msgspec.Struct):
    objects: int
    corrupt: list[dict]
    missing: list[str]
    projects: int = 0  # project folders re-hashed
    tampered: list[Folder] = []  # those found changed, with a file added or missing, or a mode


@get("/api/v1/store", opt={"perm": "admin"}, tags=["store"])
async def store_status(db: DbDep, monitor: MonitorDep, store: StoreDep) -> StoreStatus:
    """How many objects the artifact store holds and their bytes on disk; the captured requests
    and replay reports the registry holds, and their bytes."""
    stats = await asyncio.to_thread(store.stats)
    await monitor.flush_pending()
    captures, capture_bytes = await capture_rows.stats(db)
    reports, report_bytes = await report_rows.stats(db)
    return StoreStatus(stats.objects, stats.bytes, captures, capture_bytes, reports, report_bytes)


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
