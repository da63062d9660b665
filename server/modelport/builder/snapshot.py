"""An uploaded archive, member by member, into the store: the build's snapshot of the project folder."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import msgspec

from modelport.store.archive import ArchiveLimits, ArchiveUnsafe, Member, iter_members
from modelport.store.cas import ContentStore
from modelport.store.ignore import IgnoreRules
from modelport.store.manifest import FileEntry, Snapshot

IGNORE_FILE = ".modelportignore"


class Ingested(msgspec.Struct):
    snapshot: Snapshot
    size_bytes: int
    new_bytes: int
    warnings: list[str]


def ingest(store: ContentStore, fileobj: BinaryIO, limits: ArchiveLimits) -> Ingested:
    """Stream every safe member into the store (blocking: run it in a thread).

    Raises the archive's errors; objects already written for a rejected archive are simply not
    referenced by any build, and garbage collection removes them.
    """
    files: dict[str, FileEntry] = {}
    links: list[Member] = []
    new_bytes = 0
    for member, stream in iter_members(fileobj, limits):
        if member.kind == "file":
            put = store.put_stream(stream)
            new_bytes += put.new_bytes
            files[member.path] = FileEntry(member.path, member.mode, put.size, put.digest)
        else:
            links.append(member)
    warnings = _resolve_links(files, links)
    ignored = _ignored(store, files)
    entries = sorted((e for p, e in files.items() if p not in ignored), key=lambda e: e.path)
    return Ingested(Snapshot(entries), sum(e.size for e in entries), new_bytes, warnings)


def _resolve_links(files: dict[str, FileEntry], links: list[Member]) -> list[str]:
    """A link becomes a copy of what it names: a file, or every file under a folder."""
    warnings = []
    for link in links:
        target = link.link_target or ""
        if target in files:
            found = files[target]
            files[link.path] = FileEntry(link.path, found.mode, found.size, found.digest)
            continue
        prefix = target + "/" if target else ""
        under = [e for p, e in list(files.items()) if p.startswith(prefix)]
        if link.path == target or (prefix and link.path.startswith(prefix)):
            raise ArchiveUnsafe(f"'{link.path}': a link to a folder that holds it")
        for entry in under:
            path = link.path + "/" + entry.path[len(prefix):]
            files[path] = FileEntry(path, entry.mode, entry.size, entry.digest)
        if not under:
            warnings.append(f"'{link.path}' links to '{target}', which is not in the archive")
    return warnings


def _ignored(store: ContentStore, files: dict[str, FileEntry]) -> set[str]:
    """The server applies the root .modelportignore too (the CLI already did, other clients may not)."""
    rules_entry = files.get(IGNORE_FILE)
    if rules_entry is None:
        return set()
    rules = IgnoreRules.from_text(store.read_bytes(rules_entry.digest).decode("utf-8", "replace"))
    return {p for p in files if p != IGNORE_FILE and rules.matches(p)}


def materialize(store: ContentStore, snapshot: Snapshot, dest: Path) -> None:
    """Write the snapshot's files under dest (verified on the way out; blocking)."""
    for entry in snapshot.files:
        target = dest / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        store.copy_to(entry.digest, target, mode=entry.mode)
