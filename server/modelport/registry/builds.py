"""Build rows: numbered per model, queued → building → built | failed, and the objects they hold."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from modelport.clock import now_iso
from modelport.errors import BuildNotFound
from modelport.registry import audit
from modelport.registry.db import Database, Tx
from modelport.registry.paging import next_cursor
from modelport.registry.records import Build, Page
from modelport.registry.rows import BuildCount, BuildRow, load, load_all

_json = msgspec.json.encode


def to_build(r: BuildRow, model: str) -> Build:
    return Build(
        model=model,
        number=r.number,
        status=r.status,
        digest=r.digest,
        entrypoint=r.entrypoint,
        python=r.python,
        message=r.message,
        labels=r.labels,
        created_by=r.created_by,
        created_at=r.created_at,
        finished_at=r.finished_at,
        error=r.error,
        input_schema=r.input_schema,
        output_schema=r.output_schema,
        example_input=r.example_input,
        example_output=r.example_output,
        size_bytes=r.size_bytes,
        new_bytes=r.new_bytes,
        git_commit=r.git_commit,
        requirements=r.requirements,
    )


class NewBuild(msgspec.Struct, kw_only=True):
    entrypoint: str
    python: str
    requirements: str | None
    message: str = ""
    labels: dict[str, str] = {}
    example_input: Any = None
    example_output: Any = None
    git_commit: str | None = None
    snapshot: str
    size_bytes: int
    new_bytes: int
    objects: list[str]


async def create(
    db: Database, model_id: int, model: str, actor: str, new: NewBuild, *, status: str = "queued"
) -> BuildRow:
    """Record a build with the next number; its snapshot's objects are referenced at once."""
    async with db.write() as tx:
        number = await tx.value(
            "UPDATE models SET next_build = next_build + 1 WHERE id = ?"
            " RETURNING next_build - 1 AS number",
            (model_id,),
        )
        if number is None:
            raise LookupError(f"no model {model_id}")
        build_id = await tx.insert(
            "INSERT INTO builds (model_id, number, status, entrypoint, python, requirements,"
            " message, labels, created_by, created_at, example_input, example_output, git_commit,"
            " snapshot, size_bytes, new_bytes) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " RETURNING id",
            (
                model_id,
                number,
                status,
                new.entrypoint,
                new.python,
                new.requirements,
                new.message,
                _json(new.labels).decode(),
                actor,
                now_iso(),
                None if new.example_input is None else _json(new.example_input).decode(),
                None if new.example_output is None else _json(new.example_output).decode(),
                new.git_commit,
                new.snapshot,
                new.size_bytes,
                new.new_bytes,
            ),
        )
        await _reference(tx, build_id, new.objects)
        await audit.record(
            tx,
            actor,
            "build.create",
            model=model,
            target=str(number),
            detail={"entrypoint": new.entrypoint, "message": new.message},
        )
    return await by_id(db, build_id)


async def by_id(db: Database, build_id: int) -> BuildRow:
    """A build known to exist (one just written, or a deployment's); LookupError if not."""
    return load(BuildRow, await db.found("SELECT * FROM builds WHERE id = ?", (build_id,)))


async def with_model(db: Database, build_id: int) -> tuple[str, BuildRow] | None:
    """A build and its model's name, or None."""
    found = await db.one(
        "SELECT b.*, m.name AS model FROM builds b JOIN models m ON m.id = b.model_id"
        " WHERE b.id = ?",
        (build_id,),
    )
    return None if found is None else (found["model"], load(BuildRow, found))


async def status_of(db: Database, build_id: int) -> str | None:
    status: str | None = await db.value("SELECT status FROM builds WHERE id = ?", (build_id,))
    return status


async def counts(db: Database) -> list[BuildCount]:
    """How many builds each model has in each status."""
    rows = await db.all(
        "SELECT m.name AS model, b.status AS status, count(*) AS n FROM builds b"
        " JOIN models m ON m.id = b.model_id GROUP BY m.name, b.status"
    )
    return load_all(BuildCount, rows)


async def row(db: Database, model_id: int, number: int, model: str = "") -> BuildRow:
    """Build ``number`` of a model; BuildNotFound (naming ``model``) if there is none."""
    found = await db.one(
        "SELECT * FROM builds WHERE model_id = ? AND number = ?", (model_id, number)
    )
    if found is None:
        raise BuildNotFound(f"Model '{model}' has no build #{number}.")
    return load(BuildRow, found)


async def list_builds(
    db: Database, model_id: int, model: str, *, limit: int, cursor: int | None
) -> Page[Build]:
    rows = load_all(
        BuildRow,
        await db.all(
            "SELECT * FROM builds WHERE model_id = ? AND number < ? ORDER BY number DESC LIMIT ?",
            (model_id, cursor if cursor is not None else 2**62, limit + 1),
        ),
    )
    nxt = next_cursor(rows, limit, "number")
    return Page([to_build(r, model) for r in rows], nxt)


async def set_building(db: Database, build_id: int) -> None:
    async with db.write() as tx:
        await tx.execute(
            "UPDATE builds SET status = 'building', started_at = ?, error = NULL WHERE id = ?",
            (now_iso(), build_id),
        )


async def finish(
    db: Database,
    build_id: int,
    *,
    model: str,
    number: int,
    fields: dict[str, Any],
    objects: Iterable[str] = (),
) -> None:
    """Mark a build built or failed with what it learnt, and reference its new objects."""
    encoded = {
        k: (_json(v).decode() if isinstance(v, (dict, list)) else v) for k, v in fields.items()
    }
    sets = ", ".join(f"{k} = ?" for k in encoded)
    async with db.write() as tx:
        await tx.execute(
            f"UPDATE builds SET {sets}, finished_at = ? WHERE id = ?",
            (*encoded.values(), now_iso(), build_id),
        )
        await _reference(tx, build_id, objects)
        await audit.record(
            tx,
            "system",
            f"build.{fields.get('status', 'finish')}",
            model=model,
            target=str(number),
            detail={"error": fields.get("error")} if fields.get("error") else {},
        )


async def _reference(tx: Tx, build_id: int, digests: Iterable[str]) -> None:
    """The build refers to these store objects (gc keeps them); a digest named twice, once."""
    await tx.execute_many(
        "INSERT INTO build_objects (build_id, digest) VALUES (?, ?) ON CONFLICT DO NOTHING",
        [(build_id, d) for d in digests],
    )


async def unfinished(db: Database) -> list[tuple[str, BuildRow]]:
    """The builds queued or building, oldest first, each with its model's name."""
    rows = await db.all(
        "SELECT b.*, m.name AS model FROM builds b JOIN models m ON m.id = b.model_id"
        " WHERE b.status IN ('queued', 'building') ORDER BY b.id"
    )
    return [(r["model"], load(BuildRow, r)) for r in rows]


OBJECTS = "SELECT DISTINCT digest FROM build_objects"
FOLDER_DIGESTS = "SELECT digest, lock_digest FROM builds"
BUILT_MANIFESTS = (
    "SELECT DISTINCT digest, manifest FROM builds WHERE status = 'built'"
    " AND digest IS NOT NULL AND manifest IS NOT NULL"
)


class InUse(msgspec.Struct, frozen=True):
    """What the builds on record need kept: gc removes the rest of the store and the folders,
    verify checks these."""

    objects: frozenset[str]  # store digests a build refers to
    projects: frozenset[str]  # build digests (their project folders)
    envs: frozenset[str]  # lock digests (their environments)
    manifests: dict[str, str]  # build digest → its manifest's store digest, for built builds


def _in_use(
    objects: Iterable[str | None],
    folders: Iterable[tuple[str | None, str | None]],
    manifests: Iterable[tuple[str, str]],
) -> InUse:
    pairs = list(folders)
    return InUse(
        frozenset(d for d in objects if d),
        frozenset(p for p, _ in pairs if p),
        frozenset(e for _, e in pairs if e),
        dict(manifests),
    )


async def in_use(db: Database) -> InUse:
    """What the registry's builds need kept, read by the running server."""
    objects = await db.all(OBJECTS)
    folders = await db.all(FOLDER_DIGESTS)
    manifests = await db.all(BUILT_MANIFESTS)
    return _in_use(
        [r["digest"] for r in objects],
        [(r["digest"], r["lock_digest"]) for r in folders],
        [(r["digest"], r["manifest"]) for r in manifests],
    )


def in_use_read_only(database_url: str | None, path: Path) -> InUse:
    """``in_use`` read from the registry itself, read-only (the CLI: a server may run on it
    meanwhile); nothing when there is no SQLite file yet. Blocking."""
    from modelport.registry.backends import registry

    if not database_url and not path.exists():
        return _in_use((), (), ())

    async def read() -> InUse:
        db = await registry(database_url, path, read_only=True).open()
        try:
            return await in_use(db)
        finally:
            await db.close()

    return asyncio.run(read())
