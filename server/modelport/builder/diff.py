"""What changed between two builds: files, dependencies, schemas."""

from __future__ import annotations

from typing import Any

import msgspec

from modelport.builder.compat import Compatibility
from modelport.store.manifest import FileEntry


class FileChange(msgspec.Struct):
    path: str
    change: str  # added | removed | changed
    size_before: int | None = None
    size_after: int | None = None


class DependencyChange(msgspec.Struct):
    name: str
    change: str  # added | removed | changed
    before: str | None = None
    after: str | None = None


class SchemaChange(msgspec.Struct):
    schema: str  # input | output
    added: list[str]
    removed: list[str]
    changed: list[str]


class BuildDiff(msgspec.Struct):
    model: str
    base: int
    other: int
    files: list[FileChange]
    dependencies: list[DependencyChange]
    schemas: list[SchemaChange]
    entrypoint: list[str | None] | None = None
    # Would callers of `base` still be served by `other` (the deployment gate's verdict)?
    compatibility: Compatibility | None = None


def diff_files(before: list[FileEntry], after: list[FileEntry]) -> list[FileChange]:
    a, b = {e.path: e for e in before}, {e.path: e for e in after}
    out = [FileChange(p, "added", None, b[p].size) for p in sorted(b.keys() - a.keys())]
    out += [FileChange(p, "removed", a[p].size, None) for p in sorted(a.keys() - b.keys())]
    out += [
        FileChange(p, "changed", a[p].size, b[p].size)
        for p in sorted(a.keys() & b.keys())
        if (a[p].digest, a[p].mode) != (b[p].digest, b[p].mode)
    ]
    return sorted(out, key=lambda c: c.path)


def diff_dependencies(before: dict[str, str], after: dict[str, str]) -> list[DependencyChange]:
    out = [DependencyChange(n, "added", None, after[n]) for n in after.keys() - before.keys()]
    out += [DependencyChange(n, "removed", before[n], None) for n in before.keys() - after.keys()]
    out += [
        DependencyChange(n, "changed", before[n], after[n])
        for n in before.keys() & after.keys()
        if before[n] != after[n]
    ]
    return sorted(out, key=lambda c: c.name)


def diff_schema(kind: str, before: Any, after: Any) -> SchemaChange | None:
    if before == after:
        return None
    a = _properties(before)
    b = _properties(after)
    return SchemaChange(
        kind,
        sorted(b.keys() - a.keys()),
        sorted(a.keys() - b.keys()),
        sorted(k for k in a.keys() & b.keys() if a[k] != b[k]),
    )


def _properties(schema: Any) -> dict[str, Any]:
    """Top-level properties, looking through msgspec's $ref into $defs."""
    if not isinstance(schema, dict):
        return {}
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        schema = schema.get("$defs", {}).get(ref.split("/")[-1], schema)
    props = schema.get("properties")
    return props if isinstance(props, dict) else {"(value)": schema}
