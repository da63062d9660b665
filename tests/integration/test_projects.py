"""Project folders on a real store and real files: made read-only, checked, restored, verified."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from modelport.builder.integrity import LARGE, RACY_NS, Trust, check
from modelport.builder.projects import Projects, RestoreFailed
from modelport.builder.snapshot import checkout_path
from modelport.store.cas import LocalStore
from modelport.store.manifest import FileEntry

DIGEST = "sha256:" + "c" * 64
CODE = b"def predict(x: int) -> int:\n    return x\n"
DATA = b"weights\n" * 1000


@pytest.fixture
def made(tmp_path):
    store = LocalStore(tmp_path / "store")
    files = []
    for path, mode, data in (("predict.py", 0o644, CODE), ("pkg/data.bin", 0o755, DATA)):
        put = store.put_bytes(data)
        files.append(FileEntry(path, mode, put.size, put.digest))
    projects = Projects(store, tmp_path)
    folder, notes = projects.ensure(DIGEST, files)
    assert notes == []
    return projects, files, folder


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _write(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)
    path.write_bytes(data)


def test_a_project_folder_is_read_only_and_clean(made):
    projects, files, folder = made
    assert folder == projects.path(DIGEST)
    assert (_mode(folder), _mode(folder / "pkg")) == (0o555, 0o555)
    assert (_mode(folder / "predict.py"), _mode(folder / "pkg/data.bin")) == (0o444, 0o555)
    assert check(folder, files).tampered == []
    assert projects.ensure(DIGEST, files) == (folder, [])


def test_a_tampered_file_is_restored_and_so_is_the_shared_checkout(made, tmp_path):
    projects, files, folder = made
    _write(folder / "predict.py", CODE.replace(b"return x", b"return -x"))
    cache = checkout_path(tmp_path / "files", files[0].digest, files[0].mode)
    assert cache.read_bytes() != CODE  # a hard link: the checkout was changed too
    old_inode = folder.stat().st_ino

    again, notes = projects.ensure(DIGEST, files)
    assert again == folder and folder.stat().st_ino != old_inode  # a new folder, swapped in
    assert notes == ["project folder tampered with (predict.py changed): restored from the store"]
    assert (folder / "predict.py").read_bytes() == CODE and cache.read_bytes() == CODE
    assert _mode(folder / "predict.py") == 0o444
    aside = [p.name for p in (tmp_path / "projects").iterdir() if p.name.startswith(".tampered-")]
    assert len(aside) == 1  # kept for gc's grace: replicas started from it may still run


def test_added_and_missing_files_and_a_same_size_same_mtime_rewrite(made):
    projects, files, folder = made
    os.chmod(folder, 0o755)
    (folder / "json.py").write_text("raise SystemExit")
    os.chmod(folder / "pkg", 0o755)
    (folder / "pkg/data.bin").unlink()
    _, notes = projects.ensure(DIGEST, files)
    assert notes == [
        "project folder tampered with (json.py added, pkg/data.bin missing): "
        "restored from the store"
    ]
    assert sorted(p.name for p in folder.iterdir()) == ["pkg", "predict.py"]

    target = folder / "predict.py"
    before = target.stat()
    _write(target, CODE.replace(b"return x", b"return 0"))
    os.chmod(target, 0o444)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size
    assert target.stat().st_mtime_ns == before.st_mtime_ns
    assert check(folder, files, projects.trust).tampered[0].path == "predict.py"


def test_modes_alone_are_put_right_in_place(made):
    projects, files, folder = made
    os.chmod(folder / "predict.py", 0o644)
    os.chmod(folder / "pkg", 0o777)
    inode = folder.stat().st_ino
    assert projects.ensure(DIGEST, files) == (folder, [])
    assert folder.stat().st_ino == inode
    assert (_mode(folder / "predict.py"), _mode(folder / "pkg")) == (0o444, 0o555)


def test_what_the_store_cannot_give_back_fails_with_the_reason(made, tmp_path):
    projects, files, folder = made
    _write(folder / "predict.py", b"tampered")
    obj = projects.store.path(files[0].digest)
    os.chmod(obj, 0o644)
    obj.write_bytes(obj.read_bytes()[:-3])
    with pytest.raises(
        RestoreFailed,
        match=r"predict.py changed\) and the store cannot restore "
        r"it: object sha256:\w+ .* is corrupt",
    ):
        projects.ensure(DIGEST, files)
    assert (folder / "predict.py").read_bytes() == b"tampered"  # nothing half-made in its place
    assert not [p for p in (tmp_path / "projects").iterdir() if p.name.startswith(".tmp-")]


def test_verify_reports_and_repair_restores(made):
    projects, files, folder = made
    assert projects.verify({DIGEST: files}) == (1, [])
    _write(folder / "predict.py", b"tampered")
    os.chmod(folder / "pkg", 0o755)
    checked, found = projects.verify({DIGEST: files})
    assert checked == 1 and [(f.digest, f.repaired) for f in found] == [(DIGEST, False)]
    assert [(t.path, t.problem) for t in found[0].files] == [
        ("predict.py", "changed"),
        ("pkg", "mode"),
    ]
    assert (folder / "predict.py").read_bytes() == b"tampered"  # verify alone changes nothing
    _, found = projects.verify({DIGEST: files}, repair=True)
    assert found[0].repaired
    assert projects.verify({DIGEST: files}) == (1, [])
    assert (folder / "predict.py").read_bytes() == CODE


def test_trust_vouches_for_an_unchanged_large_file_only(tmp_path):
    big = tmp_path / "weights.bin"
    big.write_bytes(b"\0" * LARGE)
    files = [
        FileEntry(
            "weights.bin",
            0o444,
            LARGE,
            "sha256:" + __import__("hashlib").sha256(b"\0" * LARGE).hexdigest(),
        )
    ]
    os.chmod(big, 0o444)
    trust = Trust()
    st = big.stat()
    trust.hashed(st, time.time_ns(), files[0].digest)  # a hash begun just now: racy
    assert not trust.vouches(st, files[0].digest)
    trust.hashed(st, st.st_ctime_ns + RACY_NS + 1, files[0].digest)
    assert trust.vouches(st, files[0].digest)
    os.chmod(big, 0o644)
    with open(big, "r+b") as f:  # same size, mtime put back: ctime still moves
        f.write(b"\1")
    os.chmod(big, 0o444)
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not trust.vouches(big.stat(), files[0].digest)
    assert check(tmp_path, files, trust).tampered[0].problem == "changed"
