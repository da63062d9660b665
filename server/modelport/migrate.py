"""`modelport migrate`: a one-machine data dir's registry and store copied into PostgreSQL and an S3
bucket, every object's digest and every table's row count verified; a run stopped half-way is
resumed by running it again.

Objects go first (what the rows refer to is there before the rows are), each read from the local
store (verified as it is read), put into the bucket (named by the digest of what was sent), then
every object re-hashed as the bucket holds it. Rows go next, table by table in the order their
references need (registry/transfer.py), ids kept.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from modelport.registry.backends import registry
from modelport.registry.transfer import Copied, copy_all
from modelport.settings import Settings
from modelport.store.backends import open_store
from modelport.store.contract import ContentStore, Problem
from modelport.store.objects import PutResult

__all__ = ["Migrated", "ObjectsCopied", "copy_objects", "migrate"]

WORKERS = 4  # objects in flight at once


class ObjectsCopied(msgspec.Struct):
    source: int  # objects in the local store
    copied: int  # put into the target by this run
    present: int  # already there (a resumed run, or the same content from elsewhere)
    verified: int  # objects re-hashed in the target afterwards
    problems: list[Problem]  # corrupt in the target
    missing: list[str]  # in the source, not in the target afterwards

    @property
    def ok(self) -> bool:
        return not self.problems and not self.missing


class Migrated(msgspec.Struct):
    objects: ObjectsCopied | None  # None: no --store
    tables: list[Copied] | None  # None: no --to

    @property
    def ok(self) -> bool:
        return self.objects is None or self.objects.ok


class ObjectMismatch(RuntimeError):
    """An object arrived in the target under another digest than it was read by."""


def copy_objects(
    source: ContentStore,
    target: ContentStore,
    on_object: Callable[[str, PutResult | None], None] = lambda d, r: None,
) -> ObjectsCopied:
    """Every object of ``source`` the target lacks, put there; then the target verified: each of
    its objects re-hashed as it holds it (blocking)."""
    wanted = list(source.digests())
    present = set(target.digests())
    todo = [d for d in wanted if d not in present]

    def one(hexd: str) -> None:
        with source.open(hexd) as f:
            result = target.put_stream(f)
        if result.digest != f"sha256:{hexd}":
            raise ObjectMismatch(f"sha256:{hexd} arrived in the target as {result.digest}")
        on_object(hexd, result)

    with ThreadPoolExecutor(WORKERS) as pool:
        for _ in pool.map(one, todo):
            pass
    problems = target.verify()
    after = set(target.digests())
    missing = [f"sha256:{d}" for d in wanted if d not in after]
    return ObjectsCopied(
        len(wanted), len(todo), len(wanted) - len(todo), len(after), problems, missing
    )


async def copy_registry(
    settings: Settings, database_url: str, on_table: Callable[[Copied], None]
) -> list[Copied]:
    source = await registry(None, settings.registry_path).open()  # migrated to this version
    try:
        target = await registry(database_url, settings.registry_path).open()
        try:
            return await copy_all(source, target, on_table)
        finally:
            await target.close()
    finally:
        await source.close()


def migrate(
    settings: Settings,
    *,
    database_url: str | None,
    store_url: str | None,
    on_object: Callable[[str, PutResult | None], None] = lambda d, r: None,
    on_table: Callable[[Copied], None] = lambda c: None,
) -> Migrated:
    """The data dir's local store into ``store_url``'s bucket, then its SQLite registry into
    ``database_url``'s database (either may be None: not moved). The server must be stopped (the
    caller holds the data dir's lock). Blocking."""
    objects = None
    if store_url:
        source = open_store(settings.store_dir)
        cache = settings.uploads_dir / "migrate-cache"  # the bucket's cache for this run only
        try:
            objects = copy_objects(source, open_store(cache, store_url), on_object)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        if not objects.ok:
            return Migrated(objects, None)  # rows that refer to what the bucket lacks: not yet
    tables = None
    if database_url:
        if not Path(settings.registry_path).exists():
            raise FileNotFoundError(f"no registry in {settings.data_dir} (no server started there)")
        tables = asyncio.run(copy_registry(settings, database_url, on_table))
    return Migrated(objects, tables)
