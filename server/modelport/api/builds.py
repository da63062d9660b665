"""Builds: upload a project (→ 202 queued), list, read, log, files, diff, export and import."""

from __future__ import annotations

import asyncio
import mimetypes
import os
from pathlib import Path
from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream

from modelport.api.common import BuildsDep, Cursor, DbDep, Limit, SettingsDep, StoreDep, who
from modelport.builder import exchange
from modelport.builder.buildlog import follow, log_path
from modelport.builder.compat import compare
from modelport.builder.diff import BuildDiff, diff_dependencies, diff_files, diff_schema
from modelport.builder.service import parse_form
from modelport.builder.upload import read_upload
from modelport.errors import NotFound, RequestInvalid
from modelport.registry import builds as build_rows
from modelport.registry import models as model_rows
from modelport.registry.db import Database
from modelport.registry.paging import clamp_limit, decode_cursor
from modelport.registry.records import Build, ImportedBuild, Page
from modelport.registry.rows import BuildRow, ModelRow
from modelport.scratch import scratch_file
from modelport.settings import Settings
from modelport.store import manifest as mf
from modelport.store.contract import ContentStore

NO_LIMIT = {"request_max_body_size": None}


class FileItem(msgspec.Struct):
    path: str
    size: int
    mode: int
    digest: str


class FileList(msgspec.Struct):
    items: list[FileItem]
    next: str | None = None


async def _build_row(db: Database, name: str, number: int) -> tuple[ModelRow, BuildRow]:
    model = await model_rows.row(db, name)
    return model, await build_rows.row(db, model.id, number, name)


async def _manifest(store: ContentStore, row: BuildRow) -> mf.Manifest:
    if not row.manifest:
        raise NotFound(f"Build #{row.number} has no manifest: it is {row.status}.")
    data = await asyncio.to_thread(store.read_bytes, row.manifest)
    return mf.decode(data)


async def _upload(request: Request, settings: Settings):
    return await read_upload(
        request.headers.get("content-type", ""),
        request.stream(),
        settings.uploads_dir,
        settings.archive_max_bytes,
    )


class BuildsController(Controller):
    path = "/api/v1/models/{name:str}/builds"
    tags = ["builds"]
    opt = {"perm": "read"}

    @post("/", opt={"perm": "write", **NO_LIMIT}, status_code=202, request_max_body_size=None)
    async def create(
        self,
        request: Request,
        db: DbDep,
        builds: BuildsDep,
        settings: SettingsDep,
        name: FromPath[str],
    ) -> Build:
        """Upload a project folder (multipart: archive, entrypoint, …); the build is queued."""
        await model_rows.row(db, name)
        upload = await _upload(request, settings)
        try:
            form = parse_form(upload.fields)
            return await builds.create(name, who(request).actor, form, upload.archive)
        finally:
            upload.discard()

    @get("/")
    async def list_builds(
        self, db: DbDep, name: FromPath[str], limit: Limit = None, cursor: Cursor = None
    ) -> Page[Build]:
        """The model's builds, newest first."""
        model = await model_rows.row(db, name)
        key = decode_cursor(cursor, int)
        return await build_rows.list_builds(
            db, model.id, name, limit=clamp_limit(limit), cursor=key
        )

    @get("/{number:int}")
    async def read(self, db: DbDep, name: FromPath[str], number: FromPath[int]) -> Build:
        """One build: status, digest, schemas, examples, sizes."""
        _, row = await _build_row(db, name, number)
        return build_rows.to_build(row, name)

    @get("/{number:int}/log", media_type="text/plain")
    async def log(
        self,
        db: DbDep,
        settings: SettingsDep,
        name: FromPath[str],
        number: FromPath[int],
        follow_: Annotated[bool, QueryParameter(name="follow", required=False)] = False,
    ) -> Response:
        """The build's log; `?follow=1` streams it until the build ends."""
        _, row = await _build_row(db, name, number)
        path = log_path(settings.logs_dir, name, number)
        if not follow_:
            text = await asyncio.to_thread(path.read_bytes) if path.exists() else b""
            return Response(text, media_type="text/plain")

        async def finished() -> bool:
            status = await build_rows.status_of(db, row.id)
            return status not in ("queued", "building")

        return Stream(follow(path, finished), media_type="text/plain")

    @get("/{number:int}/manifest")
    async def manifest(
        self, db: DbDep, store: StoreDep, name: FromPath[str], number: FromPath[int]
    ) -> mf.Manifest:
        """The build's manifest: files, the lock and its wheels, entrypoint, schemas, metadata."""
        _, row = await _build_row(db, name, number)
        return await _manifest(store, row)

    @get("/{number:int}/files")
    async def files(
        self, db: DbDep, builds: BuildsDep, name: FromPath[str], number: FromPath[int]
    ) -> FileList:
        """Every file of the build's snapshot: path, size, mode, digest."""
        _, row = await _build_row(db, name, number)
        snapshot = await builds.snapshot_of(row)
        return FileList([FileItem(e.path, e.size, e.mode, e.digest) for e in snapshot.files])

    @get("/{number:int}/files/{path:path}")
    async def file(
        self,
        db: DbDep,
        builds: BuildsDep,
        name: FromPath[str],
        number: FromPath[int],
        path: FromPath[str],
    ) -> Response:
        """One file's content."""
        _, row = await _build_row(db, name, number)
        snapshot = await builds.snapshot_of(row)
        wanted = path.lstrip("/")
        entry = next((e for e in snapshot.files if e.path == wanted), None)
        if entry is None:
            raise NotFound(f"Build #{number} has no file '{wanted}'.")
        data = await asyncio.to_thread(builds.store.read_bytes, entry.digest)
        kind = mimetypes.guess_type(wanted)[0] or "application/octet-stream"
        if kind.startswith("text/") or wanted.endswith((".py", ".txt", ".md", ".toml", ".cfg")):
            kind = "text/plain"  # Litestar adds the charset (utf-8)
        return Response(data, media_type=kind)

    @get("/{number:int}/diff/{other:int}")
    async def diff(
        self,
        db: DbDep,
        builds: BuildsDep,
        name: FromPath[str],
        number: FromPath[int],
        other: FromPath[int],
    ) -> BuildDiff:
        """Files, dependencies and schemas changed from build `number` to build `other`."""
        _, a = await _build_row(db, name, number)
        _, b = await _build_row(db, name, other)
        snap_a = await builds.snapshot_of(a)
        snap_b = await builds.snapshot_of(b)
        deps_a = await _versions(builds.store, a)
        deps_b = await _versions(builds.store, b)
        schemas = [
            diff_schema("input", a.input_schema, b.input_schema),
            diff_schema("output", a.output_schema, b.output_schema),
        ]
        return BuildDiff(
            compatibility=compare(a.input_schema, b.input_schema),
            model=name,
            base=number,
            other=other,
            files=diff_files(snap_a.files, snap_b.files),
            dependencies=diff_dependencies(deps_a, deps_b),
            schemas=[s for s in schemas if s is not None],
            entrypoint=None if a.entrypoint == b.entrypoint else [a.entrypoint, b.entrypoint],
        )

    @get("/{number:int}/export", media_type="application/zstd")
    async def export(
        self,
        db: DbDep,
        store: StoreDep,
        settings: SettingsDep,
        name: FromPath[str],
        number: FromPath[int],
    ) -> Stream:
        """The whole build, wheels included, as one portable .tar.zst."""
        _, row = await _build_row(db, name, number)
        manifest = await _manifest(store, row)
        fd, path = scratch_file(settings.uploads_dir, "export-")
        try:
            with os.fdopen(os.dup(fd), "wb") as out:
                await asyncio.to_thread(exchange.export, store, manifest, out)
        except BaseException:
            _discard(fd, path)
            raise
        return Stream(
            _stream_file(fd, path),
            media_type="application/zstd",
            headers={
                "Content-Disposition": f'attachment; filename="{name}-{number}.tar.zst"',
                "Content-Length": str(os.fstat(fd).st_size),
            },
        )


async def _versions(store: ContentStore, row: BuildRow) -> dict[str, str]:
    if not row.manifest:
        return {}
    manifest = await _manifest(store, row)
    found = {w.name: w.version for w in manifest.derived.wheels}
    r = manifest.derived.r
    if r is not None:  # an R function's: "R", and its packages as "R:name"
        found["R"] = r.r_version
        found.update({f"R:{t.name}": t.version for t in r.tarballs})
        found.update({f"R:{n}": v for n, v in r.machine.items()})
    return found


def _discard(fd: int, path: Path) -> None:
    path.unlink(missing_ok=True)
    os.close(fd)


async def _stream_file(fd: int, path: Path, chunk: int = 1 << 20):
    """The file's bytes; then it is deleted and let go (`fd` held it, out of a sweep's reach)."""
    try:
        with open(path, "rb") as f:  # noqa: ASYNC230 (a local file: the reads go to a thread)
            while data := await asyncio.to_thread(f.read, chunk):
                yield data
    finally:
        _discard(fd, path)


@post(
    "/api/v1/builds/import",
    opt={"perm": "write"},
    status_code=201,
    tags=["builds"],
    request_max_body_size=None,
)
async def import_build(request: Request, builds: BuildsDep, settings: SettingsDep) -> ImportedBuild:
    """Import an exported build (multipart `archive`, optional `model`); keeps its digest."""
    upload = await _upload(request, settings)
    try:
        unknown = set(upload.fields) - {"model"}
        if unknown:
            raise RequestInvalid(f"Unknown field `{sorted(unknown)[0]}`.", field=sorted(unknown)[0])
        return await builds.import_(upload.fields.get("model"), who(request).actor, upload.archive)
    finally:
        upload.discard()
