"""The builds service: an upload into a queued build, an export into a build, a build's files."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from modelport.builder import exchange
from modelport.builder.snapshot import ingest
from modelport.errors import ModelNotFound, RequestInvalid
from modelport.registry import builds as build_rows
from modelport.registry import models as model_rows
from modelport.registry.records import MODEL_NAME, Build, ImportedBuild
from modelport.registry.rows import BuildRow
from modelport.runtime.invoke import field_of
from modelport.store import manifest as mf
from modelport.store.archive import ArchiveLimits
from modelport.store.manifest import Snapshot

if TYPE_CHECKING:
    from modelport.builder.pipeline import Builder
    from modelport.models import Models
    from modelport.registry.db import Database
    from modelport.store.contract import ContentStore

# A Python function (an identifier) in a .py file, or an R one (dots allowed) in a .R file.
ENTRY = re.compile(
    r"^(?!/)(?!.*(?:^|/)\.\.(?:/|:))[^:\x00]+"
    r"(?:\.py:[A-Za-z_][A-Za-z0-9_]*|\.R:(?:[A-Za-z]|\.[A-Za-z_.])[A-Za-z0-9._]*)$"
)
PYTHON = re.compile(r"^3\.\d{1,2}$")


def default_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


class BuildForm(msgspec.Struct, forbid_unknown_fields=True):
    entrypoint: Annotated[str, msgspec.Meta(pattern=ENTRY.pattern)]
    requirements: str | None = None
    python: Annotated[str, msgspec.Meta(pattern=PYTHON.pattern)] | None = None
    example_input: Any = None
    example_output: Any = None
    message: Annotated[str, msgspec.Meta(max_length=10_000)] = ""
    labels: dict[str, str] = {}
    git_commit: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{7,64}$")] | None = None


JSON_FIELDS = ("example_input", "example_output", "labels")
MAX_EXAMPLE_DEPTH = 100  # stored, then sent back in every read of the build


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in a decoded JSON value (a scalar is 0); no recursion."""
    deepest, todo = 0, [(value, 0)]
    while todo and deepest <= MAX_EXAMPLE_DEPTH:
        item, level = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level + 1)
            todo.extend((c, level + 1) for c in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_form(fields: dict[str, str]) -> BuildForm:
    values: dict[str, Any] = {}
    for key, text in fields.items():
        if key in JSON_FIELDS:
            try:
                values[key] = msgspec.json.decode(text)
                deep = _depth(values[key]) > MAX_EXAMPLE_DEPTH
            except msgspec.DecodeError:
                raise RequestInvalid(f"`{key}` is not valid JSON.", field=key) from None
            except RecursionError:  # msgspec stops at Python's recursion limit
                deep = True
            if deep:
                raise RequestInvalid(
                    f"`{key}` nests deeper than {MAX_EXAMPLE_DEPTH} levels.", field=key
                )
        else:
            values[key] = text
    try:
        form = msgspec.convert(values, BuildForm)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = field_of(message)
        if field == "entrypoint":
            message = (
                "entrypoint must look like path/to/file.py:function or path/to/file.R:function"
            )
        raise RequestInvalid(message, field=field) from None
    if form.example_input is not None and not isinstance(form.example_input, dict):
        raise RequestInvalid("example_input must be a JSON object.", field="example_input")
    return form


class Builds:
    """What the builds routes do beyond reading rows: take an upload into a queued build, import
    an exported one, read a build's snapshot. Archives are read within ``limits``."""

    def __init__(
        self,
        db: Database,
        store: ContentStore,
        builder: Builder,
        models: Models,
        limits: ArchiveLimits,
    ) -> None:
        self.db, self.store, self.builder, self.models = db, store, builder, models
        self.limits = limits

    async def create(self, model_name: str, actor: str, form: BuildForm, archive: Path) -> Build:
        """Ingest the archive into the store, record a queued build and hand it to the builder."""
        store = self.store
        model = await model_rows.row(self.db, model_name)
        with open(archive, "rb") as f, store.lease() as lease:  # noqa: ASYNC230 (a local file: the reads go to a thread)
            ingested = await asyncio.to_thread(ingest, store, f, self.limits)
            paths = {e.path for e in ingested.snapshot.files}
            requirements = form.requirements
            if requirements is None and "requirements.txt" in paths:
                requirements = "requirements.txt"
            if requirements is not None and requirements not in paths:
                raise RequestInvalid(
                    f"The requirements file '{requirements}' is not in the archive.",
                    field="requirements",
                )
            snap = await asyncio.to_thread(store.put_bytes, msgspec.json.encode(ingested.snapshot))
            lease.add(snap.digest)
            row = await build_rows.create(
                self.db,
                model.id,
                model_name,
                actor,
                build_rows.NewBuild(
                    entrypoint=form.entrypoint,
                    python=form.python or default_python(),
                    requirements=requirements,
                    message=form.message,
                    labels=form.labels,
                    example_input=form.example_input,
                    example_output=form.example_output,
                    git_commit=form.git_commit,
                    snapshot=snap.digest,
                    size_bytes=ingested.size_bytes,
                    new_bytes=ingested.new_bytes + snap.new_bytes,
                    objects=[snap.digest, *(e.digest for e in ingested.snapshot.files)],
                ),
            )
        self.builder.submit(row.id)
        return build_rows.to_build(row, model_name)

    async def snapshot_of(self, row: BuildRow) -> Snapshot:
        if row.snapshot is None:
            raise LookupError(f"build {row.id} has no snapshot")
        data = await asyncio.to_thread(self.store.read_bytes, row.snapshot)
        return msgspec.json.decode(data, type=Snapshot)

    async def import_(self, model_name: str | None, actor: str, archive: Path) -> ImportedBuild:
        """An exported build into this server: its model made when missing, the next number,
        the same digest."""
        store, db = self.store, self.db
        with open(archive, "rb") as f, store.lease() as lease:  # noqa: ASYNC230 (a local file: the reads go to a thread)
            manifest = await asyncio.to_thread(exchange.ingest_export, store, f, self.limits)
            name = model_name or manifest.meta.model
            if not re.match(MODEL_NAME, name):
                raise RequestInvalid(f"'{name}' is not a valid model name.", field="model")
            access_key = None
            try:
                model = await model_rows.row(db, name)
            except ModelNotFound:
                access_key = (await self.models.create(name, owner=actor)).access_key
                model = await model_rows.row(db, name)
            snap = await asyncio.to_thread(store.put_bytes, exchange.snapshot_bytes(manifest))
            put = await asyncio.to_thread(store.put_bytes, mf.encode(manifest))
            lease.add(snap.digest)
            objects = [snap.digest, put.digest, *exchange.referenced(manifest)]
            meta, derived = manifest.meta, manifest.derived
            row = await build_rows.create(
                db,
                model.id,
                name,
                actor,
                build_rows.NewBuild(
                    entrypoint=manifest.content.entrypoint,
                    python=manifest.content.python,
                    requirements=derived.requirements,
                    message=meta.message or f"imported from {meta.model} #{meta.number}",
                    labels=meta.labels,
                    example_input=manifest.content.example_input,
                    example_output=derived.example_output,
                    git_commit=meta.git_commit,
                    snapshot=snap.digest,
                    size_bytes=sum(e.size for e in manifest.content.files)
                    + sum(w.size for w in derived.wheels),
                    new_bytes=0,
                    objects=objects,
                ),
                status="building",
            )
            await build_rows.finish(
                db,
                row.id,
                model=name,
                number=row.number,
                fields={
                    "status": "built",
                    "digest": manifest.digest,
                    "manifest": put.digest,
                    "lock_digest": derived.lock_digest,
                    "input_schema": derived.input_schema,
                    "output_schema": derived.output_schema,
                },
            )
        row = await build_rows.row(db, model.id, row.number, name)
        return ImportedBuild(
            **msgspec.structs.asdict(build_rows.to_build(row, name)), access_key=access_key
        )
