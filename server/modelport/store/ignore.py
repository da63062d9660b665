"""The client side of archives: which files of a project folder go in, and packing them."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import pathspec
import zstandard

__all__ = ["BUILTIN_IGNORE", "IgnoreRules", "PackResult", "apply_ignore", "collect_files", "pack"]

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class IgnoreRules:
    """One gitignore-syntax file (`.gitignore`, `.modelportignore`), paths relative to its folder.

    Example: ``IgnoreRules.from_text("*.pt\\n!model.pt\\n").matches("data/x.pt")`` is True.
    """

    __slots__ = ("_spec",)

    def __init__(self, spec: pathspec.PathSpec[Any]) -> None:
        self._spec = spec

    @classmethod
    def from_text(cls, text: str) -> IgnoreRules:
        return cls(pathspec.GitIgnoreSpec.from_lines(text.splitlines()))

    def check(self, path: str, *, is_dir: bool = False) -> bool | None:
        """True: ignored, False: re-included by a `!pattern`, None: no pattern speaks of it."""
        return self._spec.check_file(path + "/" if is_dir else path).include

    def matches(self, path: str, *, is_dir: bool = False) -> bool:
        """Whether `path` (posix, relative) is ignored, itself or through an ignored parent
        folder (as in git, a file cannot be re-included inside an ignored folder)."""
        parts = path.split("/")
        for i in range(1, len(parts)):
            if self.check("/".join(parts[:i]), is_dir=True):
                return True
        return bool(self.check(path, is_dir=is_dir))


#: Never packed, whatever the ignore files say.
BUILTIN_IGNORE = IgnoreRules.from_text(".git\n__pycache__/\n.venv/\n*.pyc\n")


def apply_ignore(paths: Iterable[str], text: str) -> list[str]:
    """The paths (posix, relative to the archive root) that a `.modelportignore` holding
    `text` keeps; the server runs this over an uploaded archive's members."""
    rules = IgnoreRules.from_text(text)
    return [p for p in paths if not rules.matches(p)]


def collect_files(folder: Path, warnings: list[str] | None = None) -> list[Path]:
    """The files of `folder` that a build snapshots, relative to it, sorted by posix path.

    `.modelportignore` (root) decides first, so `!*.pt` there re-includes weights that
    `.gitignore` drops; then every `.gitignore` from the deepest folder up to the root, each
    relative to its own folder; `.git`, `__pycache__/`, `.venv/` and `*.pyc` always go.
    Symlinks pointing inside the folder are followed (files are stored as regular files,
    folders walked, loops cut); symlinks leaving it, dangling ones, special files and
    non-UTF-8 names are skipped with a message appended to `warnings`.
    """
    root = Path(folder).resolve(strict=True)
    if not root.is_dir():
        raise NotADirectoryError(str(folder))
    warn = warnings if warnings is not None else []
    own = root / ".modelportignore"
    mp = IgnoreRules.from_text(_read_text(own)) if own.is_file() else None
    found: list[str] = []
    _walk(root, root, "", frozenset({root}), [], mp, found, warn)
    return [Path(p) for p in sorted(found)]


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _ignored(
    rel: str, is_dir: bool, mp: IgnoreRules | None, layers: list[tuple[str, IgnoreRules]]
) -> bool:
    if BUILTIN_IGNORE.check(rel, is_dir=is_dir):
        return True
    if mp is not None and (verdict := mp.check(rel, is_dir=is_dir)) is not None:
        return verdict
    for base, rules in reversed(layers):  # deepest .gitignore first
        verdict = rules.check(rel[len(base) :], is_dir=is_dir)
        if verdict is not None:
            return verdict
    return False


def _walk(
    root: Path,
    real: Path,
    rel: str,
    ancestors: frozenset[Path],
    layers: list[tuple[str, IgnoreRules]],
    mp: IgnoreRules | None,
    found: list[str],
    warn: list[str],
) -> None:
    prefix = f"{rel}/" if rel else ""
    gitignore = real / ".gitignore"
    if gitignore.is_file() and gitignore.resolve().is_relative_to(root):
        layers = [*layers, (prefix, IgnoreRules.from_text(_read_text(gitignore)))]
    with os.scandir(real) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        path = prefix + entry.name
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:
            warn.append(f"skipped {path!r}: its name is not valid UTF-8")
            continue
        target = Path(entry.path)
        if entry.is_symlink():
            target = target.resolve()
            if not target.is_relative_to(root):
                warn.append(f"skipped symlink {path!r}: it points outside the folder")
                continue
            if not target.exists():
                warn.append(f"skipped symlink {path!r}: its target does not exist")
                continue
        is_dir = target.is_dir()
        if _ignored(path, is_dir, mp, layers):
            continue
        if is_dir:
            if target in ancestors:
                warn.append(f"skipped symlink {path!r}: it loops back to a parent folder")
                continue
            _walk(root, target, path, ancestors | {target}, layers, mp, found, warn)
        elif target.is_file():
            found.append(path)
        else:
            warn.append(f"skipped {path!r}: not a regular file")


class PackResult(msgspec.Struct):
    files: int
    bytes: int  # content bytes packed
    archive_bytes: int  # compressed bytes written
    warnings: list[str] = []


class _CountingWriter:
    def __init__(self, out: BinaryIO) -> None:
        self.out, self.count = out, 0

    def write(self, data: bytes) -> int:
        n = self.out.write(data)
        self.count += len(data)
        return n if n is not None else len(data)

    def flush(self) -> None:
        if hasattr(self.out, "flush"):
            self.out.flush()


class _ProgressReader:
    def __init__(self, inner: BinaryIO, progress: Callable[[int], None]) -> None:
        self.inner, self.progress = inner, progress

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.progress(len(data))
        return data


def pack(
    folder: Path, out: BinaryIO, *, progress: Callable[[int], None] | None = None, level: int = 3
) -> PackResult:
    """Write `folder` as a deterministic .tar.zst to `out` (sorted names, mtime 0, owner 0/"",
    modes 0o644/0o755, no folder entries); `progress` gets each chunk's byte count."""
    folder = Path(folder)
    warnings: list[str] = []
    files = collect_files(folder, warnings)
    writer = _CountingWriter(out)
    content = 0
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
    # zstandard only calls write() and flush(); its stub asks for a whole IO[bytes]
    with (
        cctx.stream_writer(writer, closefd=False) as zw,  # type: ignore[arg-type]
        tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar,
    ):
        for rel in files:
            with open(folder / rel, "rb") as f:
                st = os.fstat(f.fileno())
                ti = tarfile.TarInfo(rel.as_posix())
                ti.size, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = (
                    st.st_size,
                    0,
                    0,
                    0,
                    "",
                    "",
                )
                ti.mode = 0o755 if st.st_mode & 0o100 else 0o644
                tar.addfile(ti, _ProgressReader(f, progress) if progress else f)
                content += st.st_size
    return PackResult(len(files), content, writer.count, warnings)
