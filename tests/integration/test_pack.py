"""Packing a real project folder: ignore files, symlinks, determinism, round trip."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from modelport.store.archive import ZSTD_MAGIC, collect_files, iter_members, pack


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)


def names(folder: Path, warnings: list[str] | None = None) -> list[str]:
    return [p.as_posix() for p in collect_files(folder, warnings)]


def test_ignore_files_and_builtins(tmp_path):
    write(
        tmp_path,
        {
            ".gitignore": "*.log\ndata/\n*.pt\n/top-only.txt\n",
            ".modelportignore": "secrets.env\n!model.pt\n",
            "main.py": "",
            "model.pt": "w",
            "other.pt": "w",
            "x.log": "",
            "secrets.env": "",
            "top-only.txt": "",
            "data/raw.csv": "",
            "deep/data/raw.csv": "",
            "sub/.gitignore": "local.txt\n!keep.log\n",
            "sub/local.txt": "",
            "sub/keep.log": "",
            "sub/other.log": "",
            "sub/code.py": "",
            "sub/top-only.txt": "",
            "other/local.txt": "",
            ".git/config": "",
            ".git/objects/ab/cd": "",
            "__pycache__/m.cpython-311.pyc": "",
            "pkg/__pycache__/x.pyc": "",
            "pkg/mod.pyc": "",
            ".venv/bin/python": "",
            "pkg/__init__.py": "",
        },
    )
    assert names(tmp_path) == [
        ".gitignore",
        ".modelportignore",
        "main.py",
        "model.pt",
        "other/local.txt",
        "pkg/__init__.py",
        "sub/.gitignore",
        "sub/code.py",
        "sub/keep.log",
        "sub/top-only.txt",
    ]


def test_modelportignore_can_reinclude_a_gitignored_folder(tmp_path):
    write(
        tmp_path,
        {
            ".gitignore": "models/\n",
            ".modelportignore": "!models/\nmodels/*.tmp\n",
            "models/a.bin": "",
            "models/b.tmp": "",
            "p.py": "",
        },
    )
    assert names(tmp_path) == [".gitignore", ".modelportignore", "models/a.bin", "p.py"]


def test_symlinks_inside_are_followed_outside_skipped(tmp_path):
    root, outside = tmp_path / "proj", tmp_path / "outside"
    write(root, {"weights/v1.bin": "ONE", "code/m.py": "x"})
    write(outside, {"secret.txt": "s"})
    (root / "latest.bin").symlink_to("weights/v1.bin")
    (root / "alias").symlink_to("code", target_is_directory=True)
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "leakdir").symlink_to(outside, target_is_directory=True)
    (root / "dangling").symlink_to("nope")
    (root / "code" / "loop").symlink_to("..", target_is_directory=True)
    warnings: list[str] = []
    assert names(root, warnings) == ["alias/m.py", "code/m.py", "latest.bin", "weights/v1.bin"]
    assert len(warnings) == 5, warnings  # leak.txt, leakdir, dangling, code/loop, alias/loop
    assert any("leak.txt" in w and "outside" in w for w in warnings)
    assert any("dangling" in w for w in warnings)
    assert any("code/loop" in w and "loops" in w for w in warnings)

    out = io.BytesIO()
    result = pack(root, out)
    assert result.warnings == warnings
    out.seek(0)
    got = {m.path: (m.kind, s.read()) for m, s in iter_members(out)}
    assert got["latest.bin"] == ("file", b"ONE")


def test_pack_is_deterministic(tmp_path):
    write(
        tmp_path,
        {
            "a.py": "print(1)\n",
            "b/c.txt": "c" * 100_000,
            "run.sh": "#!/bin/sh\n",
            "é/ü.txt": "unicode",
        },
    )
    (tmp_path / "run.sh").chmod(0o700)
    first = io.BytesIO()
    pack(tmp_path, first)
    for path in tmp_path.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    (tmp_path / "a.py").chmod(0o600)
    (tmp_path / "run.sh").chmod(0o755)
    second = io.BytesIO()
    pack(tmp_path, second)
    assert first.getvalue() == second.getvalue()
    assert first.getvalue().startswith(ZSTD_MAGIC)


def test_roundtrip(tmp_path):
    files = {
        "model.py": "def predict(x):\n    return x\n",
        "requirements.txt": "numpy\n",
        "params/w.bin": os.urandom(300_000),
        "empty.txt": "",
        "bin/tool": "#!/bin/sh\n",
        "a-b/x.py": "",
        "a/x.py": "",
        "数据/模型.bin": "m",
    }
    write(tmp_path, files)
    (tmp_path / "bin/tool").chmod(0o755)
    progress: list[int] = []
    out = io.BytesIO()
    result = pack(tmp_path, out, progress=progress.append)
    assert (result.files, result.archive_bytes) == (len(files), len(out.getvalue()))
    assert (
        sum(progress)
        == result.bytes
        == sum(len(c.encode() if isinstance(c, str) else c) for c in files.values())
    )
    out.seek(0)
    got = [(m.path, m.mode, m.kind, s.read()) for m, s in iter_members(out)]
    assert [g[0] for g in got] == sorted(files)  # sorted by posix path
    for path, mode, kind, data in got:
        content = files[path]
        assert data == (content.encode() if isinstance(content, str) else content)
        assert kind == "file"
        assert mode == (0o755 if path == "bin/tool" else 0o644)


def test_collect_files_needs_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        collect_files(tmp_path / "missing")
