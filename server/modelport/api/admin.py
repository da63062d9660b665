"""Store maintenance while the server runs (admin): stats, verify, garbage collection."""

from __future__ import annotations

import asyncio
from typing import Annotated

import msgspec
from litestar import Request, get, post
from litestar.params import QueryParameter

from modelport.api.common import BuilderDep, DbDep, SettingsDep, StoreDep, who
from modelport.builder.projects import Folder, Projects
from modelport.builder.prune import live_hex, prune
from modelport.registry import audit
from modelport.registry.builds import built_manifests, folder_digests, object_digests
from modelport.scratch import sweep

SWEEP_GRACE_S = 60.0  # a temp a moment old may not be held yet


class StoreStatus(msgspec.Struct):
    objects: int
    bytes: int


class VerifyResult(msgspec.Struct):
    objects: int
    corrupt: list[dict]
    missing: list[str]
    projects: int = 0  # project folders re-hashed
    tampered: list[Folder] = []  # those found changed, with a file added or missing, or a mode


def project_files(projects: Projects, manifests: dict[str, str]) -> dict:
    """Build digest → its files, for the builds whose manifest the store still has (blocking)."""
    found = {}
    for digest, manifest in manifests.items():
        files = projects.files_of(manifest)
        if files is not None:
            found[digest] = files
    return found


class GcDone(msgspec.Struct):
    removed: int  # store objects
    freed_bytes: int  # by all of it
    folders_removed: int = 0  # project folders and environments no build names
    files_removed: int = 0  # checked-out files no project links to
    temp_removed: int = 0  # temp files and folders of uploads and builds that died mid-way


@get("/api/v1/store", opt={"perm": "admin"}, tags=["store"])
async def store_status(store: StoreDep) -> StoreStatus:
    """How many objects the artifact store holds, and their bytes on disk."""
    stats = await asyncio.to_thread(store.stats)
    return StoreStatus(stats.objects, stats.bytes)


@post("/api/v1/store/verify", opt={"perm": "admin"}, tags=["store"], status_code=200)
async def store_verify(
    request: Request, db: DbDep, store: StoreDep, builder: BuilderDep,
    repair: Annotated[bool, QueryParameter(required=False)] = False,
) -> VerifyResult:
    """Re-hash every object and every project folder; list the corrupt objects, those builds
    refer to but are missing, and the tampered project folders (`?repair=true` restores them)."""
    problems = await asyncio.to_thread(store.verify)
    live = await object_digests(db)
    missing = sorted(d for d in live if not store.has(d))
    stats = await asyncio.to_thread(store.stats)
    projects = builder.projects
    files = await asyncio.to_thread(project_files, projects, await built_manifests(db))
    checked, tampered = await asyncio.to_thread(projects.verify, files, repair)
    if repair and tampered:
        async with db.write() as conn:
            await audit.record(conn, who(request).actor, "store.repair", detail={
                "folders": [t.digest for t in tampered if t.repaired]})
    return VerifyResult(stats.objects, [msgspec.structs.asdict(p) for p in problems], missing,
                        checked, tampered)


@post("/api/v1/store/gc", opt={"perm": "admin"}, tags=["store"], status_code=200)
async def store_gc(request: Request, db: DbDep, store: StoreDep,
                   settings: SettingsDep) -> GcDone:
    """Remove objects no build refers to, the project folders, environments and checked-out
    files of builds that are gone, and the temp files of uploads and builds that died; never what
    a build or upload in progress is writing (an hour's grace; its temps are held)."""
    live = await object_digests(db)
    result = await asyncio.to_thread(store.gc, live)
    projects, envs = await folder_digests(db)
    pruned = await asyncio.to_thread(prune, settings.data_dir, live_hex(projects), live_hex(envs))
    swept = await asyncio.to_thread(sweep, settings.data_dir, SWEEP_GRACE_S)
    done = GcDone(result.removed, result.freed_bytes + pruned.freed_bytes + swept.freed_bytes,
                  pruned.folders, pruned.files, result.temp_removed + swept.removed)
    async with db.write() as conn:
        await audit.record(conn, who(request).actor, "store.gc",
                           detail=msgspec.structs.asdict(done))
    return done
