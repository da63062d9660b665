"""Fuzz the upload unpacker (store/archive.py) with atheris for a bounded time (not in CI).

    .venv/bin/python scripts/fuzz/archive.py              # 120 s
    .venv/bin/python scripts/fuzz/archive.py 600 -jobs=4  # seconds, then libFuzzer flags

Every input goes through `iter_members` (each member's stream read to the end) and then
`resolve_links`, under small limits so that a run stays in memory. Only `ArchiveError`
subclasses may escape; a member or link target that is absolute, holds `..` or a backslash, or
names a path twice is a finding too. libFuzzer prints a crash's input and writes it to
`crash-<sha1>` in the working folder (a temp folder, printed at the start); replay one with
`.venv/bin/python scripts/fuzz/archive.py 0 <crash file>`. atheris is installed into the running
interpreter's environment when missing (script-only: not a project dependency).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time

try:
    import atheris
except ImportError:
    print("installing atheris into", sys.prefix, "(script-only; not a project dependency)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "atheris",
        ],
        check=True,
    )
    os.execv(sys.executable, [sys.executable, *sys.argv])

with atheris.instrument_imports():  # the standard library's tarfile too, when not loaded yet
    import tarfile

    import zstandard
    from modelport.store import archive

LIMITS = archive.ArchiveLimits(
    max_archive_bytes=4 << 20,
    max_total_bytes=4 << 20,
    ratio_floor=1 << 20,
    max_members=2_000,
    max_header_bytes=64 << 10,
)


def _check_path(path: str, what: str) -> None:
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise AssertionError(f"unsafe {what} got through: {path!r}")


def one_input(data: bytes) -> None:
    seen: set[str] = set()
    files: dict[str, archive.Member] = {}
    links: list[archive.Member] = []
    try:
        for member, stream in archive.iter_members(io.BytesIO(data), LIMITS):
            _check_path(member.path, "path")
            if member.path in seen:
                raise AssertionError(f"{member.path!r} yielded twice")
            seen.add(member.path)
            got = len(stream.read())
            if member.kind == "file":
                if got != member.size:
                    raise AssertionError(f"{member.path!r}: {got} bytes, header says {member.size}")
                files[member.path] = member
            else:
                _check_path(member.link_target or "", "link target")
                links.append(member)
        archive.resolve_links(files, links, LIMITS)
    except archive.ArchiveError:
        pass


def _tar(entries, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.type = {
                    "dir": tarfile.DIRTYPE,
                    "sym": tarfile.SYMTYPE,
                    "hard": tarfile.LNKTYPE,
                }[kind]
                info.linkname = payload.decode() if payload else ""
                tar.addfile(info)
    return buf.getvalue()


def seeds() -> list[bytes]:
    """Good archives of every kind the unpacker reads, for the fuzzer to mutate."""
    plain = _tar(
        [
            ("predict.py", "file", b"def predict(a): return a\n"),
            ("pkg", "dir", b""),
            ("pkg/w.bin", "file", bytes(range(256)) * 4),
            ("alias.py", "sym", b"predict.py"),
            ("same.py", "hard", b"predict.py"),
            ("pkg/link", "sym", b"../pkg"),
            ("l" * 150 + "/deep.txt", "file", b"x"),
        ]
    )
    gnu = _tar(
        [("a.txt", "file", b"hello"), ("b" * 120, "file", b"long"), ("c", "sym", b"a.txt")],
        fmt=tarfile.GNU_FORMAT,
    )
    ustar = _tar([("./x/y.txt", "file", b"y"), ("z.txt", "file", b"")], fmt=tarfile.USTAR_FORMAT)
    cctx = zstandard.ZstdCompressor(level=3)
    return [plain, gnu, ustar, cctx.compress(plain), cctx.compress(gnu)]


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 120
    rest = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1].isdigit() else sys.argv[1:]
    if rest and os.path.isfile(rest[0]):  # replay one input
        with open(rest[0], "rb") as f:
            one_input(f.read())
        print("no finding")
        return
    work = tempfile.mkdtemp(prefix="modelport-archive-fuzz.")
    corpus = os.path.join(work, "corpus")
    os.makedirs(corpus)
    for i, seed in enumerate(seeds()):
        with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
            f.write(seed)
    print(f"fuzzing store/archive.py for {seconds} s; corpus and findings in {work}", flush=True)
    os.chdir(work)
    started = time.monotonic()
    atheris.Setup(
        [
            sys.argv[0],
            f"-max_total_time={seconds}",
            "-rss_limit_mb=2048",
            "-timeout=20",
            "-max_len=65536",
            *rest,
            corpus,
        ],
        one_input,
    )
    try:
        atheris.Fuzz()
    finally:
        print(f"ran {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
