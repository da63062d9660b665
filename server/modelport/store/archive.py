"""Safe streaming reader of uploaded project archives (.tar, .tar.zst); `pack` is in ignore.py.

Decisions (tests/unit/test_archive.py has a case for each):
- Format by magic bytes: zstd (28 B5 2F FD) holding a tar, or a tar (`ustar` at 257 or a valid
  header checksum). gzip, bzip2, xz, zip, anything else: `archive.invalid`.
- Paths: relative, `/`-separated, UTF-8; `.` and empty components dropped (`./a//b` is `a/b`).
  Unsafe: absolute or drive-letter paths, any `..`, backslashes, NUL or control characters,
  over `max_name_bytes` or `max_depth`, a name used twice or as both file and folder.
  Non-UTF-8 names: `archive.invalid`. Folders are skipped; devices, FIFOs, unknown types are
  unsafe. Modes become 0o755 when the owner may execute, else 0o644.
- Links are never followed here; they are yielded (empty stream) with `link_target`, the
  root-relative path they designate. A symlink's target, read from the link's folder, must
  stay inside the root, and no path may go *through* a symlink, neither a member (`d -> sub`,
  then `d/x`) nor a link target (`a -> .`, then `b -> a/..`), in either order: so lexical
  resolution is the real one and chains cannot escape. A hardlink must name an earlier regular
  file (as tar does). Once iteration ended, `resolve_links` turns links into copies of the
  regular files they reach, folders included (as `pack` stores links), within the limits.
- Limits (`archive.too_large`) are checked while streaming: upload bytes, declared sizes (a
  header claiming 100 TB fails before any read), expanded bytes, the expansion ratio (past
  `ratio_floor`), the member count, and `max_header_bytes` of pax/long-name data per member.
- Truncated or corrupt: `archive.invalid`; a tar must end with its end-of-archive block (a zstd
  frame cut after that block loses no content and is accepted).
Nothing is written: the caller streams members into the store and records a build only once
the iteration ended without error.
"""

from __future__ import annotations

import bisect
import io
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal, Protocol, Self

import msgspec
import zstandard

from modelport.errors import ModelportError
from modelport.store.ignore import ZSTD_MAGIC, PackResult, collect_files, pack

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "ArchiveError",
    "ArchiveInvalid",
    "ArchiveLimits",
    "ArchiveTooLarge",
    "ArchiveUnsafe",
    "Member",
    "PackResult",
    "collect_files",
    "iter_members",
    "pack",
    "resolve_links",
]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
_OTHER_FORMATS = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"PK\x03\x04": "zip"}
_BUFSIZE = 256 * KiB  # tarfile reads the stream by this much
_SLACK = 2 * _BUFSIZE  # how far tarfile may read ahead of the member it returned


class ArchiveError(ModelportError):
    """An uploaded archive was refused; `member` names the member at fault, if one is."""

    status, code = 400, "archive.error"

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


class ArchiveUnsafe(ArchiveError):
    code = "archive.unsafe"


class ArchiveInvalid(ArchiveError):
    code = "archive.invalid"


class ArchiveTooLarge(ArchiveError):
    code = "archive.too_large"
    status = 413


class ArchiveLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_archive_bytes: int = 2 * GiB  # bytes read from the upload
    max_total_bytes: int = 8 * GiB  # sum of the members' sizes
    max_ratio: float = 200.0  # expanded / compressed
    ratio_floor: int = 10 * MiB  # the ratio is checked past this many expanded bytes
    max_members: int = 100_000  # entries of any kind, folders included
    max_name_bytes: int = 1024  # a path or a link target, UTF-8
    max_depth: int = 64
    max_header_bytes: int = 1 * MiB  # pax / GNU long-name metadata of one member


class Member(msgspec.Struct, frozen=True):
    path: str  # posix, relative, normalised
    mode: int  # 0o644 or 0o755
    size: int  # bytes of the stream (0 for links)
    kind: Literal["file", "symlink", "hardlink"] = "file"
    link_target: str | None = None  # root-relative path a link designates


def _shown(name: str) -> str:
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return repr(text if len(text) <= 120 else text[:100] + f"…({len(text)} chars)")


def _human(n: float) -> str:
    units = ["bytes", "KiB", "MiB", "GiB", "TiB"]
    while n >= 1024 and len(units) > 1:
        n, units = n / 1024, units[1:]
    return f"{n:.4g} {units[0]}"


def _fail(cls: type[ArchiveError], name: str, reason: str) -> ArchiveError:
    return cls(f"archive member {_shown(name)}: {reason}", member=name)


def _parts(name: str, limits: ArchiveLimits, what: str = "path") -> list[str]:
    """The components of a member name or link target; raises on anything unsafe."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ArchiveInvalid(f"{what} is not valid UTF-8") from None
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        nul = "\x00" in name
        raise ArchiveUnsafe(f"{what} holds a {'NUL byte' if nul else 'control character'}")
    if "\\" in name:
        raise ArchiveUnsafe(f"{what} holds a backslash")
    if size > limits.max_name_bytes:
        raise ArchiveUnsafe(f"{what} is {size} bytes long (limit {limits.max_name_bytes})")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        raise ArchiveUnsafe(f"{what} is absolute")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts and what == "path":
        raise ArchiveUnsafe("path has a '..' component")
    if len(parts) > limits.max_depth:
        raise ArchiveUnsafe(f"{what} is {len(parts)} levels deep (limit {limits.max_depth})")
    return parts


class _Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Reader:
    """Reads `prefix` then `source`, counting bytes and calling `check(count)` as it goes."""

    def __init__(self, source: _Source, prefix: bytes, check: Callable[[int], None]) -> None:
        self.source, self.prefix, self.check, self.count = source, prefix, check, 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = MiB
        if self.prefix:
            data, self.prefix = self.prefix[:size], self.prefix[size:]
        else:
            data = self.source.read(size)
        self.count += len(data)
        self.check(self.count)
        return data


def _peek(source: _Source, n: int) -> bytes:
    chunks: list[bytes] = []
    have = 0
    while have < n and (chunk := source.read(n - have)):
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def _is_tar_header(block: bytes) -> bool:
    if len(block) < 512:
        return False
    if block[257:262] == b"ustar" or block[:512] == bytes(512):
        return True
    field = block[148:156].split(b"\x00", 1)[0].strip()
    try:
        stored = int(field, 8)
    except ValueError:
        return False
    return stored == 256 + sum(block[:148]) + sum(block[156:512])


class _TarInfo(tarfile.TarInfo):
    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        try:
            return super().frombuf(buf, encoding, errors)
        # These subclasses of HeaderError are tarfile's own, absent from typeshed.
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):  # type: ignore[attr-defined]
            # tarfile would silently stop here; a tar ends with a zero block
            raise tarfile.ReadError("archive is truncated (no end-of-archive block)") from None
        except tarfile.InvalidHeaderError as exc:  # type: ignore[attr-defined]
            raise tarfile.ReadError(f"corrupt tar header ({exc})") from None


# OverflowError: tarfile's pax parser takes a record length past 2**63 as a position (atheris).
_CORRUPT = (
    tarfile.TarError,
    zstandard.ZstdError,
    UnicodeError,
    EOFError,
    ValueError,
    OverflowError,
)


class _MemberStream(io.RawIOBase):
    """A member's data; corrupt or truncated data raises ArchiveInvalid naming the member."""

    def __init__(self, inner: IO[bytes], name: str) -> None:
        self._inner, self._name = inner, name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self.closed:
            raise ValueError(f"the stream of {self._name!r} is closed: iteration moved on")
        try:
            # extractfile gives a BufferedReader, which typeshed calls IO[bytes]
            n: int = self._inner.readinto(buffer)  # type: ignore[attr-defined]
            return n
        except _CORRUPT as exc:
            raise _fail(ArchiveInvalid, self._name, f"corrupt or truncated data ({exc})") from None


class _Meter:
    """Counts upload and expanded bytes against the limits, as they are read."""

    def __init__(self, lim: ArchiveLimits) -> None:
        self.lim, self.raw, self.member = lim, 0, None  # member: the last one read
        self.stop_at = lim.max_header_bytes + _SLACK  # where reading the next headers must end
        self.cap = lim.max_total_bytes + lim.max_members * 4 * KiB  # data + tar overhead

    def _too_large(self, reason: str) -> ArchiveError:
        if self.member is None:
            return ArchiveTooLarge(reason)
        return _fail(ArchiveTooLarge, self.member, reason)

    def on_raw(self, n: int) -> None:
        self.raw = n
        if n > self.lim.max_archive_bytes:
            raise self._too_large(f"archive is over {_human(self.lim.max_archive_bytes)}")

    def on_expanded(self, n: int) -> None:
        lim = self.lim
        if n > self.stop_at:
            raise self._too_large(f"tar headers over {_human(lim.max_header_bytes)} follow it")
        if n > self.cap or (n > lim.ratio_floor and n > lim.max_ratio * self.raw):
            raise self._too_large(
                f"archive expands too much ({_human(n)} from {_human(self.raw)}; limits "
                f"{_human(lim.max_total_bytes)}, ratio {lim.max_ratio:g})"
            )

    def on_both(self, n: int) -> None:
        self.on_raw(n)
        self.on_expanded(n)


def iter_members(
    fileobj: BinaryIO, limits: ArchiveLimits | None = None
) -> Iterator[tuple[Member, io.RawIOBase]]:
    """Yield each safe file or link of an uploaded .tar / .tar.zst with a stream of its data.

    Read (or ignore) each stream before asking for the next member; it is closed then.
    Raises ArchiveUnsafe, ArchiveInvalid or ArchiveTooLarge, possibly after good members.
    """
    meter = _Meter(limits or ArchiveLimits())
    head = _peek(fileobj, 512)
    if not head:
        raise ArchiveInvalid("archive is empty")
    if head.startswith(ZSTD_MAGIC):
        raw = _Reader(fileobj, head, meter.on_raw)
        dctx = zstandard.ZstdDecompressor(max_window_size=1 << 27)
        # zstandard only calls read(); its stub asks for a whole IO[bytes]
        source = dctx.stream_reader(raw, read_across_frames=True)  # type: ignore[arg-type]
        try:
            tar_head = _peek(source, 512)
        except zstandard.ZstdError as exc:
            raise ArchiveInvalid(f"corrupt zstd data ({exc})") from None
        if not _is_tar_header(tar_head):
            raise ArchiveInvalid("the zstd data is not a tar archive")
        expanded = _Reader(source, tar_head, meter.on_expanded)
    else:
        for magic, kind in _OTHER_FORMATS.items():
            if head.startswith(magic):
                raise ArchiveInvalid(f"{kind} archives are not accepted: send a .tar or .tar.zst")
        if not _is_tar_header(head):
            raise ArchiveInvalid("not a tar or tar.zst archive")
        expanded = _Reader(fileobj, head, meter.on_both)
    yield from _iter_tar(expanded, meter)


def _iter_tar(expanded: _Reader, meter: _Meter) -> Iterator[tuple[Member, io.RawIOBase]]:
    lim = meter.lim
    try:
        # tarfile only reads a "r|" stream; its stub asks for a whole file object
        tar = tarfile.open(  # noqa: SIM115 (a stream over `expanded`, closed by our caller)
            fileobj=expanded,
            mode="r|",
            tarinfo=_TarInfo,  # type: ignore[call-overload]
            bufsize=_BUFSIZE,
            encoding="utf-8",
            errors="surrogateescape",
        )
    except _CORRUPT as exc:
        raise ArchiveInvalid(f"not a valid tar archive ({exc})") from None
    seen: dict[str, Member | None] = {}  # path -> member; None for folders
    through: dict[str, str] = {}  # folder path -> a member name that goes through it
    count = total = 0
    stream: _MemberStream | None = None
    while True:
        try:
            ti = tar.next()
        except _CORRUPT as exc:
            last = meter.member
            where = f" after member {_shown(last)}" if last is not None else ""
            raise ArchiveInvalid(f"corrupt or truncated tar{where} ({exc})", last) from None
        finally:
            if stream is not None:
                stream.close()
        if ti is None:
            return
        name = meter.member = ti.name
        count += 1
        if count > lim.max_members:
            raise _fail(ArchiveTooLarge, name, f"more than {lim.max_members} members")
        try:
            parts = _parts(name, lim)
        except ArchiveError as exc:
            raise _fail(type(exc), name, exc.message) from None
        path = "/".join(parts)
        if ti.isreg():
            if ti.size < 0:
                raise _fail(ArchiveInvalid, name, "negative size")
            if ti.size > lim.max_total_bytes - total:
                raise _fail(
                    ArchiveTooLarge,
                    name,
                    f"its {_human(ti.size)} take the archive "
                    f"past {_human(lim.max_total_bytes)} expanded",
                )
            total += ti.size
        data = ti.size + 511 if ti.isreg() else 0
        meter.stop_at = expanded.count + data + lim.max_header_bytes + _SLACK
        if ti.isdir():
            if (folder_of := seen.get(path)) is not None:
                kind = folder_of.kind
                raise _fail(ArchiveUnsafe, name, f"{path!r} is both a {kind} and a folder")
            _go_through(parts, len(parts), seen, through, name)
            seen.setdefault(path, None)
            continue
        if not path:
            raise _fail(ArchiveUnsafe, name, "a non-folder member at the archive root")
        kind = _kind(ti, name)
        if path in seen:
            dup = "duplicate member name" if seen[path] else "both a file and a folder:"
            raise _fail(ArchiveUnsafe, name, f"{dup} {path!r}")
        if path in through:
            raise _fail(
                ArchiveUnsafe,
                name,
                f"{path!r} is a {kind} but member {_shown(through[path])} uses it as a folder",
            )
        _go_through(parts, len(parts) - 1, seen, through, name)
        mode = 0o755 if ti.mode & 0o100 else 0o644
        if kind == "file":
            member = Member(path, mode, ti.size)
            data_of = tar.extractfile(ti)
            if data_of is None:  # only for members that are not regular files
                raise _fail(ArchiveInvalid, name, "no data")
            stream = _MemberStream(data_of, name)
        else:
            target = _link_target(ti, parts, kind, lim, seen, through, name)
            # a hardlink's target is an earlier file (_link_target checked it)
            linked = seen[target] if kind == "hardlink" else None
            mode = linked.mode if linked is not None else 0o644
            member = Member(path, mode, 0, kind, target)
            stream = _MemberStream(io.BytesIO(b""), name)
        seen[path] = member
        yield member, stream


def _kind(ti: tarfile.TarInfo, name: str) -> Literal["file", "symlink", "hardlink"]:
    if ti.isreg():
        return "file"
    if ti.issym():
        return "symlink"
    if ti.islnk():
        return "hardlink"
    what = {
        tarfile.CHRTYPE: "a character device",
        tarfile.BLKTYPE: "a block device",
        tarfile.FIFOTYPE: "a FIFO",
    }.get(ti.type, f"of unsupported type {ti.type!r}")
    raise _fail(ArchiveUnsafe, name, f"is {what}")


def _go_through(
    parts: list[str], n: int, seen: dict[str, Member | None], through: dict[str, str], name: str
) -> None:
    """Record that member `name` uses the first `n` prefixes of `parts` as folders."""
    for i in range(1, n + 1):
        prefix = "/".join(parts[:i])
        if (entry := seen.get(prefix)) is not None:
            raise _fail(ArchiveUnsafe, name, f"goes through {prefix!r}, which is a {entry.kind}")
        through.setdefault(prefix, name)


def _link_target(
    ti: tarfile.TarInfo,
    parts: list[str],
    kind: str,
    lim: ArchiveLimits,
    seen: dict[str, Member | None],
    through: dict[str, str],
    name: str,
) -> str:
    try:
        target = _parts(ti.linkname, lim, what=f"{kind} target {_shown(ti.linkname)}")
    except ArchiveError as exc:
        raise _fail(type(exc), name, exc.message) from None
    shown = _shown(ti.linkname)
    if kind == "hardlink":  # tar hardlinks name an earlier member, from the root
        if ".." in target:
            raise _fail(ArchiveUnsafe, name, f"hardlink target {shown} leaves the archive root")
        path = "/".join(target)
        if getattr(seen.get(path), "kind", None) != "file":
            raise _fail(ArchiveUnsafe, name, f"hardlink target {shown} is not an earlier file")
        return path
    where = parts[:-1]  # a symlink's target is relative to the link's folder
    for i, part in enumerate(target):
        if part == "..":
            if not where:
                raise _fail(ArchiveUnsafe, name, f"symlink target {shown} leaves the archive root")
            where.pop()
            continue
        where.append(part)
        if i < len(target) - 1:
            _go_through(where, len(where), seen, through, name)
    if len(where) > lim.max_depth:
        raise _fail(ArchiveUnsafe, name, f"symlink target {shown} is too deep")
    return "/".join(where)


def resolve_links(
    files: Mapping[str, Any], links: Iterable[Member], limits: ArchiveLimits | None = None
) -> tuple[dict[str, str], list[str]]:
    """After an iteration ended well, what the yielded links stand for, as `pack` stores links:
    `({path: the regular file it is a copy of}, warnings)`. A link to a file is one copy; a
    link to a folder, one copy per file below it (links below it are followed to files only);
    chains are followed. `files` maps the regular files' paths to anything with a `.size`.
    A link to nothing is dropped with a warning; a loop, or a link to a folder holding it, is
    unsafe; copies past `max_members` or `max_total_bytes` are `too_large`."""
    lim = limits or ArchiveLimits()
    targets = {m.path: m.link_target or "" for m in links}
    names, link_names = sorted(files), sorted(targets)
    count, total = len(files), sum(f.size for f in files.values())
    found: dict[str, str] = {}
    warnings: list[str] = []

    def final(link: str) -> str:
        path = link
        for _ in range(41):
            if path not in targets:
                return path
            path = targets[path]
        raise _fail(ArchiveUnsafe, link, "is a loop of links")

    def copy(path: str, real: str, link: str) -> None:
        nonlocal count, total
        count, total = count + 1, total + files[real].size
        if count > lim.max_members or total > lim.max_total_bytes:
            raise _fail(
                ArchiveTooLarge,
                link,
                f"its copies take the archive past "
                f"{lim.max_members} files or {_human(lim.max_total_bytes)}",
            )
        found[path] = real

    def below(sorted_paths: list[str], prefix: str) -> list[str]:  # "0" follows "/"
        lo = bisect.bisect_left(sorted_paths, prefix)
        return sorted_paths[lo : bisect.bisect_left(sorted_paths, prefix[:-1] + "0", lo)]

    for link in targets:
        target = final(link)
        if target in files:
            copy(link, target, link)
            continue
        prefix = f"{target}/" if target else ""
        if not target or link.startswith(prefix):
            raise _fail(ArchiveUnsafe, link, f"points to {_shown(target)}, a folder holding it")
        inside, inner_links = below(names, prefix), below(link_names, prefix)
        for path in inside:
            copy(f"{link}/{path[len(prefix) :]}", path, link)
        for inner in inner_links:
            if (real := final(inner)) in files:
                copy(f"{link}/{inner[len(prefix) :]}", real, link)
        if not inside and not inner_links:
            warnings.append(f"link {_shown(link)} points to {_shown(target)}, not in the archive")
    return found, warnings
