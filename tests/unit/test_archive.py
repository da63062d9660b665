"""Hostile and good uploads through modelport.store.archive.iter_members, all in memory."""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import lzma
import os
import random
import tarfile

import pytest
import zstandard
from modelport.store.archive import (
    ArchiveError,
    ArchiveInvalid,
    ArchiveLimits,
    ArchiveTooLarge,
    ArchiveUnsafe,
    Member,
    iter_members,
    resolve_links,
)
from modelport.store.ignore import BUILTIN_IGNORE, IgnoreRules, apply_ignore

MiB, GiB, TB = 1 << 20, 1 << 30, 10**12


# --- building archives --------------------------------------------------------------------


def entry(name, data=b"", *, type=tarfile.REGTYPE, link="", mode=0o644, size=None, pax=None):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = type, link, mode
    ti.size = len(data) if size is None else size
    if pax:
        ti.pax_headers = pax
    return ti, data


def tar(*entries, format=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=format, encoding="utf-8", errors="surrogateescape"
    ) as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


def raw_header(name: bytes, *, prefix: bytes = b"", size: int = 0, type: bytes = b"0") -> bytes:
    """A ustar header written byte by byte (for fields tarfile will not produce)."""
    h = bytearray(512)
    h[0 : len(name)] = name
    h[100:108] = b"0000644\x00"
    h[108:116] = h[116:124] = b"0000000\x00"
    h[124:136] = b"%011o\x00" % size
    h[136:148] = b"00000000000\x00"
    h[156:157] = type
    h[257:265] = b"ustar\x0000"
    h[345 : 345 + len(prefix)] = prefix
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\x00 " % sum(h)
    return bytes(h)


def raw_tar(*blocks: bytes) -> bytes:
    return b"".join(blocks) + bytes(1024)


def zst_window(data: bytes, window_log: int) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=window_log)
    out = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(out, closefd=False) as w:
        w.write(data)
    return out.getvalue()


@functools.cache
def zstd_bomb() -> bytes:
    """A .tar.zst of ~130 KB holding one 4 GiB file of zeros, never in memory whole."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as w:
        ti, _ = entry("weights.bin", size=4 * GiB)
        w.write(ti.tobuf(format=tarfile.PAX_FORMAT))
        zeros = bytes(MiB)
        for _ in range(4 * 1024):
            w.write(zeros)
        w.write(bytes(1024))
    return out.getvalue()


GOOD = tar(entry("a.txt", b"hello"), entry("b.txt", b"world" * 1000))
NOISE = tar(*(entry(f"n{i}", random.Random(i).randbytes(200_000)) for i in range(5)))
SMALL = ArchiveLimits(max_members=50, max_total_bytes=1 * MiB)


def drain(data: bytes, limits: ArchiveLimits | None = None) -> list[tuple[Member, bytes]]:
    got = []
    for member, stream in iter_members(io.BytesIO(data), limits):
        chunks = []
        while chunk := stream.read(256 * 1024):
            chunks.append(chunk)
        got.append((member, b"".join(chunks)))
    return got


# --- hostile: (archive bytes, limits, error class, offending member name or None) ---------

LONG = "x" * 5000
DEEP = "/".join(["d"] * 200) + "/f.py"
HOSTILE = {
    "dotdot": (tar(entry("../x", b"evil")), None, ArchiveUnsafe, "../x"),
    "dotdot-after-dir": (tar(entry("a/../../x", b"evil")), None, ArchiveUnsafe, "a/../../x"),
    "dotdot-inside": (tar(entry("a/../b", b"evil")), None, ArchiveUnsafe, "a/../b"),
    "absolute": (tar(entry("/etc/passwd", b"root")), None, ArchiveUnsafe, "/etc/passwd"),
    "dot-dotdot": (tar(entry("./../x", b"evil")), None, ArchiveUnsafe, "./../x"),
    "dot-dir-dotdot": (tar(entry("a/./../../x", b"e")), None, ArchiveUnsafe, "a/./../../x"),
    "ustar-prefix-absolute": (
        raw_tar(raw_header(b"passwd", prefix=b"/etc")),
        None,
        ArchiveUnsafe,
        "/etc/passwd",
    ),
    "backslash-dotdot": (
        tar(entry("..\\..\\evil.py", b"e")),
        None,
        ArchiveUnsafe,
        "..\\..\\evil.py",
    ),
    "drive-letter": (
        tar(entry("C:/Windows/evil.dll", b"e")),
        None,
        ArchiveUnsafe,
        "C:/Windows/evil.dll",
    ),
    "symlink-to-etc": (
        tar(entry("etc", type=tarfile.SYMTYPE, link="/etc")),
        None,
        ArchiveUnsafe,
        "etc",
    ),
    "symlink-up-up": (
        tar(entry("x", type=tarfile.SYMTYPE, link="../..")),
        None,
        ArchiveUnsafe,
        "x",
    ),
    "symlink-nested-escape": (
        tar(entry("sub/deep/l", type=tarfile.SYMTYPE, link="../../../x")),
        None,
        ArchiveUnsafe,
        "sub/deep/l",
    ),
    "symlink-chain": (
        tar(
            entry("a", type=tarfile.SYMTYPE, link="."),
            entry("b", type=tarfile.SYMTYPE, link="a/.."),
        ),
        None,
        ArchiveUnsafe,
        "b",
    ),
    "symlink-chain-reversed": (
        tar(
            entry("b", type=tarfile.SYMTYPE, link="a/.."),
            entry("a", type=tarfile.SYMTYPE, link="."),
        ),
        None,
        ArchiveUnsafe,
        "a",
    ),
    "symlink-chain-deep": (
        tar(
            entry("s/a", type=tarfile.SYMTYPE, link=".."),
            entry("b", type=tarfile.SYMTYPE, link="s/a/s/a/.."),
        ),
        None,
        ArchiveUnsafe,
        "b",
    ),
    "write-through-symlink-outside": (
        tar(entry("d", type=tarfile.SYMTYPE, link="/tmp"), entry("d/evil", b"e")),
        None,
        ArchiveUnsafe,
        "d",
    ),
    "write-through-symlink-inside": (
        tar(entry("d", type=tarfile.SYMTYPE, link="sub"), entry("d/evil", b"e")),
        None,
        ArchiveUnsafe,
        "d/evil",
    ),
    "symlink-over-used-folder": (
        tar(entry("d/ok", b"x"), entry("d", type=tarfile.SYMTYPE, link="/tmp")),
        None,
        ArchiveUnsafe,
        "d",
    ),
    "hardlink-to-etc-passwd": (
        tar(entry("pw", type=tarfile.LNKTYPE, link="/etc/passwd")),
        None,
        ArchiveUnsafe,
        "pw",
    ),
    "hardlink-up": (
        tar(entry("a", b"x"), entry("h", type=tarfile.LNKTYPE, link="../a")),
        None,
        ArchiveUnsafe,
        "h",
    ),
    "hardlink-to-missing": (
        tar(entry("h", type=tarfile.LNKTYPE, link="later"), entry("later", b"x")),
        None,
        ArchiveUnsafe,
        "h",
    ),
    "char-device": (tar(entry("dev/null", type=tarfile.CHRTYPE)), None, ArchiveUnsafe, "dev/null"),
    "block-device": (tar(entry("dev/sda", type=tarfile.BLKTYPE)), None, ArchiveUnsafe, "dev/sda"),
    "fifo": (tar(entry("pipe", type=tarfile.FIFOTYPE)), None, ArchiveUnsafe, "pipe"),
    "unknown-type": (raw_tar(raw_header(b"vol", type=b"V")), None, ArchiveUnsafe, "vol"),
    "size-100TB": (
        tar(entry("a.txt", b"ok"), entry("huge.bin", size=100 * TB)),
        None,
        ArchiveTooLarge,
        "huge.bin",
    ),
    "size-100TB-gnu": (
        tar(entry("huge.bin", size=100 * TB), format=tarfile.GNU_FORMAT)[:1024],
        None,
        ArchiveTooLarge,
        "huge.bin",
    ),
    "tar-bomb-members": (
        tar(*(entry(f"f{i}", b"") for i in range(60))),
        SMALL,
        ArchiveTooLarge,
        "f50",
    ),
    "tar-bomb-size": (
        tar(entry("ok", b"1"), entry("zeros.bin", bytes(2 * MiB))),
        SMALL,
        ArchiveTooLarge,
        "zeros.bin",
    ),
    "tar-bomb-total": (
        tar(*(entry(f"z{i}", bytes(300 * 1024)) for i in range(5))),
        SMALL,
        ArchiveTooLarge,
        "z3",
    ),
    "upload-too-large": (
        tar(entry("a.txt", b"1"), entry("big.bin", os.urandom(2 * MiB))),
        ArchiveLimits(max_archive_bytes=MiB),
        ArchiveTooLarge,
        "big.bin",
    ),
    "pax-header-huge": (
        tar(entry("a", b"x"), entry("b", b"y", pax={"comment": "z" * (2 * MiB)})),
        None,
        ArchiveTooLarge,
        "a",
    ),
    "duplicate": (tar(entry("a.py", b"1"), entry("a.py", b"2")), None, ArchiveUnsafe, "a.py"),
    "duplicate-normalised": (
        tar(entry("a/b.py", b"1"), entry("a/./b.py", b"2")),
        None,
        ArchiveUnsafe,
        "a/./b.py",
    ),
    "duplicate-dot-slash": (
        tar(entry("a.py", b"1"), entry(".//a.py", b"2")),
        None,
        ArchiveUnsafe,
        ".//a.py",
    ),
    "file-then-folder": (tar(entry("a", b"1"), entry("a/b", b"2")), None, ArchiveUnsafe, "a/b"),
    "folder-then-file": (tar(entry("a/b", b"1"), entry("a", b"2")), None, ArchiveUnsafe, "a"),
    "non-utf8-name": (
        tar(entry("caf\udce9.py", b"1"), format=tarfile.USTAR_FORMAT),
        None,
        ArchiveInvalid,
        "caf\udce9.py",
    ),
    "name-5000-chars": (tar(entry(LONG, b"1")), None, ArchiveUnsafe, LONG),
    "depth-200": (tar(entry(DEEP, b"1")), None, ArchiveUnsafe, DEEP),
    "nul-in-name": (
        tar(entry("x", b"1", pax={"path": "evil\x00.py"})),
        None,
        ArchiveUnsafe,
        "evil\x00.py",
    ),
    "newline-in-name": (tar(entry("a\nb.py", b"1")), None, ArchiveUnsafe, "a\nb.py"),
    "symlink-target-nul": (
        tar(entry("l", type=tarfile.SYMTYPE, link="x", pax={"linkpath": "a\x00b"})),
        None,
        ArchiveUnsafe,
        "l",
    ),
    "gzip": (gzip.compress(GOOD), None, ArchiveInvalid, None),
    "bzip2": (bz2.compress(GOOD), None, ArchiveInvalid, None),
    "xz": (lzma.compress(GOOD), None, ArchiveInvalid, None),
    "zip": (b"PK\x03\x04" + bytes(600), None, ArchiveInvalid, None),
    "zstd-1GiB-window": (zst_window(GOOD, 30), None, ArchiveInvalid, None),
    "random-bytes": (random.Random(7).randbytes(4096), None, ArchiveInvalid, None),
    "empty-file": (b"", None, ArchiveInvalid, None),
    "short-file": (b"hello", None, ArchiveInvalid, None),
    "zstd-of-non-tar": (zst(b"just some text " * 100), None, ArchiveInvalid, None),
    "truncated-tar-data": (GOOD[: 1536 + 2000], None, ArchiveInvalid, "b.txt"),
    "truncated-tar-header": (GOOD[: 1024 + 100], None, ArchiveInvalid, "a.txt"),
    "tar-without-end-block": (GOOD[:1024], None, ArchiveInvalid, "a.txt"),
    "corrupt-second-header": (
        GOOD[:1024] + b"\xff" * 512 + GOOD[1536:],
        None,
        ArchiveInvalid,
        "a.txt",
    ),
    "truncated-zstd-early": (zst(GOOD)[: len(zst(GOOD)) // 2], None, ArchiveInvalid, None),
    "truncated-zstd-mid": (zst(NOISE)[: len(zst(NOISE)) * 6 // 10], None, ArchiveInvalid, "n2"),
    "corrupt-zstd": (zst(GOOD)[:12] + b"\x00" * 20 + zst(GOOD)[32:], None, ArchiveInvalid, None),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_archive_is_rejected(case):
    data, limits, error, member = HOSTILE[case]
    with pytest.raises(error) as caught:
        drain(data, limits)
    exc = caught.value
    assert isinstance(exc, ArchiveError)
    assert (exc.code, exc.status) == {
        ArchiveUnsafe: ("archive.unsafe", 400),
        ArchiveInvalid: ("archive.invalid", 400),
        ArchiveTooLarge: ("archive.too_large", 413),
    }[error]
    if member is not None:
        assert exc.member == member
        shown = member.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        assert repr(shown[:50])[:-1] in str(exc), str(exc)


def test_hostile_table_is_big_enough():
    assert len(HOSTILE) >= 20


def test_zstd_bomb_is_stopped_early():
    bomb = zstd_bomb()
    assert len(bomb) < 200_000  # ~4 GiB of zeros
    read = 0
    with pytest.raises(ArchiveTooLarge, match=r"weights\.bin") as caught:
        for _member, stream in iter_members(io.BytesIO(bomb)):
            while chunk := stream.read(MiB):
                read += len(chunk)
    assert caught.value.code == "archive.too_large"
    assert read < 64 * MiB


def test_zstd_bomb_is_stopped_when_not_read():
    with pytest.raises(ArchiveTooLarge, match=r"weights\.bin"):
        for _member, _stream in iter_members(io.BytesIO(zstd_bomb())):
            pass  # the skip over the member's data is metered too


def test_good_members_come_before_a_late_bad_one():
    data = tar(entry("ok.py", b"1"), entry("../evil", b"2"))
    seen = []
    with pytest.raises(ArchiveUnsafe):
        for member, stream in iter_members(io.BytesIO(data)):
            seen.append((member.path, stream.read()))
    assert seen == [("ok.py", b"1")]


# --- good archives ------------------------------------------------------------------------


def test_nested_folders_modes_and_empty_files():
    data = tar(
        entry("pkg", type=tarfile.DIRTYPE, mode=0o755),
        entry("pkg/sub", type=tarfile.DIRTYPE, mode=0o700),
        entry("pkg/sub/model.py", b"def predict(x): ...", mode=0o600),
        entry("pkg/run.sh", b"#!/bin/sh", mode=0o700),
        entry("pkg/suid", b"", mode=0o4755),
        entry("pkg/empty.txt", b"", mode=0o664),
        entry("group-exec-only", b"", mode=0o654),
    )
    assert [(m.path, oct(m.mode), m.size, body) for m, body in drain(data)] == [
        ("pkg/sub/model.py", "0o644", 19, b"def predict(x): ..."),
        ("pkg/run.sh", "0o755", 9, b"#!/bin/sh"),
        ("pkg/suid", "0o755", 0, b""),
        ("pkg/empty.txt", "0o644", 0, b""),
        ("group-exec-only", "0o644", 0, b""),
    ]


@pytest.mark.parametrize("format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_names(format):
    name = "/".join(["a-rather-long-folder-name"] * 20) + "/model.pkl"  # ~530 bytes
    link = "links/" + "l" * 200
    data = tar(
        entry(name, b"w"), entry(link, type=tarfile.SYMTYPE, link="../" + name), format=format
    )
    got = drain(data)
    assert [m.path for m, _ in got] == [name, link]
    assert got[1][0].link_target == name


def test_unicode_names_and_dot_prefix():
    data = tar(
        entry("./", type=tarfile.DIRTYPE),
        entry("./café/ünïcødé.py", b"1"),
        entry("./数据/模型.bin", b"2"),
        entry(".//emoji 🚀.txt", b"3"),
    )
    paths = [m.path for m, _ in drain(data)]
    assert paths == ["café/ünïcødé.py", "数据/模型.bin", "emoji 🚀.txt"]


def test_zstd_window_up_to_128_MiB_is_accepted():
    assert drain(zst_window(GOOD, 27)) == drain(GOOD)


def test_tar_and_tar_zst_give_the_same_members():
    data = tar(
        entry("a/b/c.py", b"x" * 10_000, mode=0o755),
        entry("d.txt", b""),
        entry("e", type=tarfile.SYMTYPE, link="a/b/c.py"),
    )
    assert drain(data) == drain(zst(data))
    frames = zst(data[:2048]) + zst(data[2048:])  # multi-frame, as pzstd writes
    assert drain(frames) == drain(data)


def test_links_inside_are_yielded_for_the_caller():
    data = tar(
        entry("weights/v3.pt", b"w", mode=0o755),
        entry("weights/latest.pt", type=tarfile.SYMTYPE, link="v3.pt"),
        entry("snap/x/model.pt", type=tarfile.SYMTYPE, link="../../weights/./v3.pt"),
        entry("root", type=tarfile.SYMTYPE, link="."),
        entry("copy.pt", type=tarfile.LNKTYPE, link="./weights/v3.pt"),
        entry("chain", type=tarfile.SYMTYPE, link="weights/latest.pt"),
    )
    got = [(m.path, m.kind, m.link_target, oct(m.mode), body) for m, body in drain(data)]
    assert got == [
        ("weights/v3.pt", "file", None, "0o755", b"w"),
        ("weights/latest.pt", "symlink", "weights/v3.pt", "0o644", b""),
        ("snap/x/model.pt", "symlink", "weights/v3.pt", "0o644", b""),
        ("root", "symlink", "", "0o644", b""),
        ("copy.pt", "hardlink", "weights/v3.pt", "0o755", b""),
        ("chain", "symlink", "weights/latest.pt", "0o644", b""),
    ]
    members = [m for m, _ in drain(data)]
    files = {m.path: m for m in members if m.kind == "file"}
    links = [m for m in members if m.kind != "file"]
    with pytest.raises(ArchiveUnsafe, match="'root': points to '', a folder holding it"):
        resolve_links(files, links)
    copies, warnings = resolve_links(files, [m for m in links if m.path != "root"])
    assert copies == {
        "weights/latest.pt": "weights/v3.pt",
        "snap/x/model.pt": "weights/v3.pt",
        "copy.pt": "weights/v3.pt",
        "chain": "weights/v3.pt",
    }
    assert warnings == []


def link(path, target):
    return Member(path, 0o644, 0, "symlink", target)


def test_resolve_links_to_folders_chains_and_nothing():
    files = {p: Member(p, 0o644, 10) for p in ["code/a.py", "code/sub/b.py", "code-x/c.py"]}
    links = [
        link("alias", "code"),
        link("code/l", "code/a.py"),
        link("again", "alias"),
        link("gone", "nowhere"),
    ]
    copies, warnings = resolve_links(files, links)
    assert copies == {
        "alias/a.py": "code/a.py",
        "alias/sub/b.py": "code/sub/b.py",  # not code-x/c.py
        "alias/l": "code/a.py",  # a link inside the folder, followed to its file
        "code/l": "code/a.py",
        "again/a.py": "code/a.py",
        "again/sub/b.py": "code/sub/b.py",
        "again/l": "code/a.py",
    }
    assert warnings == ["link 'gone' points to 'nowhere', not in the archive"]


def test_resolve_links_refusals():
    files = {"a.py": Member("a.py", 0o644, 600), "d/b.py": Member("d/b.py", 0o644, 1)}
    for links, limits, error, member in [
        ([link("x", "y"), link("y", "x")], None, ArchiveUnsafe, "x"),  # a loop
        ([link("d/up", "d")], None, ArchiveUnsafe, "d/up"),  # a folder holding it
        ([link("root", "")], None, ArchiveUnsafe, "root"),
        (
            [link("l1", "a.py"), link("l2", "a.py")],
            ArchiveLimits(max_total_bytes=1500),
            ArchiveTooLarge,
            "l2",
        ),
        (
            [link(f"l{i}", "d") for i in range(5)],
            ArchiveLimits(max_members=5),
            ArchiveTooLarge,
            "l3",
        ),
    ]:
        with pytest.raises(error) as caught:
            resolve_links(files, links, limits)
        assert caught.value.member == member


def test_empty_archive_and_folder_only_archive():
    assert drain(bytes(10240)) == []
    assert drain(tar()) == []
    assert drain(tar(entry("a", type=tarfile.DIRTYPE), entry("a/", type=tarfile.DIRTYPE))) == []


def test_streams_may_be_skipped_and_are_closed_after():
    data = tar(entry("a", os.urandom(50_000)), entry("b", b"bee"), entry("c", b"sea"))
    streams = []
    for member, stream in iter_members(io.BytesIO(data)):
        streams.append(stream)
        if member.path == "b":
            assert stream.read(1) == b"b"
    assert [m.path for m, _ in drain(data)] == ["a", "b", "c"]
    with pytest.raises(ValueError):
        streams[0].read()


def test_limits_are_exact_at_the_boundary():
    data = tar(*(entry(f"f{i}", b"x" * 100) for i in range(10)))
    assert len(drain(data, ArchiveLimits(max_members=10, max_total_bytes=1000))) == 10
    with pytest.raises(ArchiveTooLarge):
        drain(data, ArchiveLimits(max_members=10, max_total_bytes=999))


def test_ratio_is_not_checked_below_the_floor():
    zeros = zst(tar(entry("zeros.bin", bytes(5 * MiB))))
    assert len(zeros) * 200 < 5 * MiB  # far over the ratio, but under the 10 MiB floor
    assert drain(zeros)[0][0].size == 5 * MiB


# --- found by scripts/fuzz/archive.py (atheris) ---------------------------------------------


def _pax_record_past_ssize_t() -> bytes:
    record = b"99999999999999999999999 comment=x\n"  # a record length past 2**63
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(record)
    body = tarfile.TarInfo("a.txt")
    body.size = 1
    return (
        pax.tobuf(tarfile.USTAR_FORMAT)
        + record.ljust(512, b"\0")
        + body.tobuf(tarfile.USTAR_FORMAT)
        + b"x".ljust(512, b"\0")
        + b"\0" * 1024
    )


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.zst"])
def test_a_pax_record_length_past_ssize_t_is_invalid_not_a_crash(compress):
    data = _pax_record_past_ssize_t()
    if compress:
        data = zstandard.ZstdCompressor().compress(data)
    with pytest.raises(ArchiveInvalid):
        list(iter_members(io.BytesIO(data)))


# --- ignore rules (the server applies .modelportignore to uploaded members) ---------------


def test_ignore_rules():
    rules = IgnoreRules.from_text("# weights\n*.pt\n!keep.pt\nbuild/\n/secret.txt\n")
    assert rules.matches("m.pt") and rules.matches("deep/m.pt")
    assert not rules.matches("keep.pt")
    assert rules.matches("build/x.py") and rules.matches("a/build/x.py")
    assert not rules.matches("build") and rules.matches("build", is_dir=True)
    assert rules.matches("secret.txt") and not rules.matches("a/secret.txt")
    assert rules.check("x.py") is None and rules.check("keep.pt") is False
    assert apply_ignore(["a.py", "w.pt", "keep.pt", "build/o"], "*.pt\n!keep.pt\nbuild/") == [
        "a.py",
        "keep.pt",
    ]


def test_builtin_ignores():
    for path in [
        ".git/config",
        "a/__pycache__/m.cpython-311.pyc",
        ".venv/bin/python",
        "x.pyc",
        ".git",
    ]:
        assert BUILTIN_IGNORE.matches(path), path
    assert not BUILTIN_IGNORE.matches("src/gitter.py")
