"""An uploaded archive, member by member, into the store: the build's snapshot of the project."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import msgspec

from modelport.store.archive import ArchiveLimits, Member, iter_members, resolve_links
from modelport.store.contract import ContentStore
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
    copies, warnings = resolve_links(files, links, limits)
    for path, real in copies.items():  # a link becomes a copy of the file it names
        found = files[real]
        files[path] = FileEntry(path, found.mode, found.size, found.digest)
    ignored = _ignored(store, files)
    entries = sorted((e for p, e in files.items() if p not in ignored), key=lambda e: e.path)
    return Ingested(Snapshot(entries), sum(e.size for e in entries), new_bytes, warnings)


def _ignored(store: ContentStore, files: dict[str, FileEntry]) -> set[str]:
    """The server applies the root .modelportignore too (the CLI did; other clients may not)."""
    rules_entry = files.get(IGNORE_FILE)
    if rules_entry is None:
        return set()
    rules = IgnoreRules.from_text(store.read_bytes(rules_entry.digest).decode("utf-8", "replace"))
    return {p for p in files if p != IGNORE_FILE and rules.matches(p)}


def checkout_path(files_dir: Path, digest: str, mode: int) -> Path:
    return files_dir / f"{digest.removeprefix('sha256:')}-{mode:o}"


def checkout(store: ContentStore, digest: str, mode: int, files_dir: Path) -> Path:
    """One uncompressed, read-only copy of an object per mode, shared by the projects holding it."""
    target = checkout_path(files_dir, digest, mode)
    if not target.exists():
        files_dir.mkdir(parents=True, exist_ok=True)
        store.copy_to(digest, target, mode=mode & 0o555)
    return target


def materialize(store: ContentStore, snapshot: Snapshot, dest: Path, files_dir: Path) -> None:
    """The snapshot's files under dest, as hard links to checked-out objects (blocking).

    A 5 GB weights file is decompressed once, however many builds hold it; the links are
    read-only, so nothing a replica does can change a build's files.
    """
    for entry in snapshot.files:
        target = dest / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        source = checkout(store, entry.digest, entry.mode, files_dir)
        try:
            os.link(source, target)
        except OSError:  # another filesystem: a copy does
            store.copy_to(entry.digest, target, mode=entry.mode & 0o555)
