"""A build's manifest: what it holds, and its digest over the canonical encoding of its content."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec


class FileEntry(msgspec.Struct, array_like=True, frozen=True):
    path: str
    mode: int
    size: int
    digest: str


class Snapshot(msgspec.Struct):
    """The uploaded project folder as stored: every file, sorted by path."""

    files: list[FileEntry]


class Wheel(msgspec.Struct, frozen=True):
    name: str
    version: str
    filename: str
    digest: str
    size: int


class Content(msgspec.Struct, frozen=True):
    """Exactly what the digest covers: same folder, same lock, same entry → same digest."""

    files: list[FileEntry]
    lock: str
    entrypoint: str
    python: str
    example_input: Any = None


class RPackages(msgspec.Struct):
    """An R function's packages: its library is made from these tarballs, in this order."""

    r_version: str
    digest: str  # the R lock's digest (names the library)
    order: list[str]  # packages to install, dependencies first
    tarballs: list[Wheel]  # the source tarballs in the store
    machine: dict[str, str] = {}  # used as the machine's R has them: name -> version


class Derived(msgspec.Struct):
    """Read from the content by the build: deterministic given the content."""

    wheels: list[Wheel]
    lock_digest: str
    requirements: str | None
    form: str
    is_async: bool
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    example_output: Any = None
    r: RPackages | None = None  # an R function's packages


class Meta(msgspec.Struct):
    """Who, when, why: outside the digest."""

    model: str
    number: int
    message: str
    labels: dict[str, str]
    created_by: str
    created_at: str
    git_commit: str | None = None


class Manifest(msgspec.Struct):
    format: int
    digest: str
    content: Content
    derived: Derived
    meta: Meta


FORMAT = 1
_encoder = msgspec.msgpack.Encoder(order="deterministic")


def content_digest(content: Content) -> str:
    return "sha256:" + hashlib.sha256(_encoder.encode(content)).hexdigest()


def encode(manifest: Manifest) -> bytes:
    return msgspec.json.encode(manifest, order="deterministic")


def decode(data: bytes) -> Manifest:
    return msgspec.json.decode(data, type=Manifest)
