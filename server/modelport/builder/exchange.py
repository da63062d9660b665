"""One portable .tar.zst per build (manifest + every object), and its import into any server."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

import msgspec
import zstandard

from modelport.store.archive import ArchiveInvalid, ArchiveLimits, iter_members
from modelport.store.contract import ContentStore
from modelport.store.manifest import Manifest, Snapshot, decode, encode

MANIFEST_NAME = "modelport-build.json"


def referenced(manifest: Manifest) -> list[str]:
    """Every object a build needs: files, wheels and R tarballs, each once, in a stable order."""
    seen: dict[str, None] = {}
    for entry in manifest.content.files:
        seen.setdefault(entry.digest)
    for wheel in manifest.derived.wheels:
        seen.setdefault(wheel.digest)
    for tarball in manifest.derived.r.tarballs if manifest.derived.r else ():
        seen.setdefault(tarball.digest)
    return list(seen)


def export(store: ContentStore, manifest: Manifest, out: BinaryIO) -> None:
    """Write the build to `out` as .tar.zst, streaming each object (blocking)."""
    cctx = zstandard.ZstdCompressor(level=3, threads=-1)
    with (
        cctx.stream_writer(out, closefd=False) as zout,
        tarfile.open(fileobj=zout, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        _add_bytes(tar, MANIFEST_NAME, encode(manifest))
        for digest in referenced(manifest):
            info = tarfile.TarInfo("objects/" + digest.removeprefix("sha256:"))
            info.size, info.mode = store.size(digest), 0o644
            with store.open(digest) as reader:
                tar.addfile(info, reader)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def ingest_export(store: ContentStore, fileobj: BinaryIO, limits: ArchiveLimits) -> Manifest:
    """Read an exported build into the store, checking every object against its name (blocking)."""
    members: Iterator = iter_members(fileobj, limits)
    first = next(members, None)
    if first is None or first[0].path != MANIFEST_NAME:
        raise ArchiveInvalid(f"Not a modelport build export: it must begin with {MANIFEST_NAME}.")
    try:
        manifest = decode(first[1].read())
    except msgspec.DecodeError as exc:
        raise ArchiveInvalid(f"{MANIFEST_NAME} is not a valid manifest: {exc}") from None
    for member, stream in members:
        if not member.path.startswith("objects/"):
            continue
        put = store.put_stream(stream)
        if put.digest.removeprefix("sha256:") != member.path.removeprefix("objects/"):
            raise ArchiveInvalid(f"'{member.path}': its content does not match its name.")
    missing = [d for d in referenced(manifest) if not store.has(d)]
    if missing:
        raise ArchiveInvalid(f"The export lacks {len(missing)} objects, e.g. {missing[0]}.")
    return manifest


def snapshot_bytes(manifest: Manifest) -> bytes:
    return msgspec.json.encode(Snapshot(manifest.content.files))
