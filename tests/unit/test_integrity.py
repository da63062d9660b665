"""The verdict on a project folder, from what a walk found: changed, added, missing, modes."""

from __future__ import annotations

import os
import stat

from modelport.builder.integrity import DIR_MODE, Tampered, compare
from modelport.store.manifest import FileEntry

A = FileEntry("predict.py", 0o644, 10, "sha256:" + "a" * 64)
B = FileEntry("pkg/weights.bin", 0o755, 20, "sha256:" + "b" * 64)


def st(kind: int, mode: int, size: int = 0, ino: int = 1) -> os.stat_result:
    return os.stat_result((kind | mode, ino, 1, 1, 0, 0, size, 0, 0, 0))


def folder(**over) -> dict[str, os.stat_result]:
    found = {
        "": st(stat.S_IFDIR, DIR_MODE),
        "predict.py": st(stat.S_IFREG, 0o444, 10),
        "pkg": st(stat.S_IFDIR, DIR_MODE),
        "pkg/weights.bin": st(stat.S_IFREG, 0o555, 20),
    }
    found.update(over)
    return {k: v for k, v in found.items() if v is not None}


def good(entry, _st) -> bool:
    return True


def test_a_folder_as_made_is_clean():
    checked = compare([A, B], folder(), good)
    assert checked.tampered == [] and checked.modes == []


def test_content_size_kind_added_and_missing_are_tampering():
    assert compare([A, B], folder(), lambda e, _: e is not A).tampered == [
        Tampered("predict.py", "changed")
    ]
    assert compare(
        [A, B], folder(**{"predict.py": st(stat.S_IFREG, 0o444, 11)}), good
    ).tampered == [Tampered("predict.py", "changed")]
    assert compare(
        [A, B], folder(**{"predict.py": st(stat.S_IFLNK, 0o777, 10)}), good
    ).tampered == [Tampered("predict.py", "changed")]
    added = folder(
        **{
            "pkg/json.py": st(stat.S_IFREG, 0o644, 3),
            "cache": st(stat.S_IFDIR, 0o755),
            "cache/x": st(stat.S_IFREG, 0o644),
        }
    )
    assert compare([A, B], added, good).tampered == [
        Tampered("cache", "added"),
        Tampered("cache/x", "added"),
        Tampered("pkg/json.py", "added"),
    ]
    gone = folder(**{"pkg/weights.bin": None, "pkg": None})
    assert compare([A, B], gone, good).tampered == [Tampered("pkg/weights.bin", "missing")]


def test_a_file_where_a_folder_belongs_is_added():
    found = folder(pkg=st(stat.S_IFREG, 0o444), **{"pkg/weights.bin": None})
    assert compare([A, B], found, good).tampered == [
        Tampered("pkg", "added"),
        Tampered("pkg/weights.bin", "missing"),
    ]


def test_modes_alone_are_not_tampering_and_content_is_asked_only_when_it_can_match():
    asked = []
    found = folder(
        **{
            "predict.py": st(stat.S_IFREG, 0o644, 10),
            "pkg": st(stat.S_IFDIR, 0o755),
            "": st(stat.S_IFDIR, 0o700),
            "pkg/weights.bin": st(stat.S_IFREG, 0o555, 99),
        }
    )
    checked = compare([A, B], found, lambda e, s: asked.append(e.path) or True)
    assert checked.modes == ["", "pkg", "predict.py"]
    assert checked.tampered == [Tampered("pkg/weights.bin", "changed")]
    assert asked == ["predict.py"]  # a size that differs needs no hash
