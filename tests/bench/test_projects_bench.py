"""What the project folder's check adds to a replica's start: the iris example, and a large file.

Skipped by default (--benchmark-skip); run with:
    .venv/bin/python -m pytest tests/bench/test_projects_bench.py --benchmark-only
"""

from __future__ import annotations

from pathlib import Path

import pytest
from modelport.builder.integrity import LARGE
from modelport.builder.projects import Projects
from modelport.store.cas import LocalStore
from modelport.store.manifest import FileEntry

IRIS = Path(__file__).resolve().parents[2] / "examples" / "iris"


def _project(tmp_path: Path, sources: dict[str, bytes]) -> tuple[Projects, str, list[FileEntry]]:
    store = LocalStore(tmp_path / "store")
    files = []
    for name, data in sorted(sources.items()):
        put = store.put_bytes(data)
        files.append(FileEntry(name, 0o644, put.size, put.digest))
    projects = Projects(store, tmp_path)
    digest = "sha256:" + "e" * 64
    projects.prepare(digest, files)
    return projects, digest, files


def test_check_of_the_iris_project(benchmark, tmp_path):
    projects, digest, files = _project(
        tmp_path, {p.name: p.read_bytes() for p in IRIS.iterdir() if p.is_file()}
    )
    assert benchmark(projects.ensure, digest, files)[1] == []


@pytest.mark.parametrize("trusted", [False, True], ids=["hashed", "vouched"])
def test_check_of_a_large_file(benchmark, tmp_path, trusted):
    projects, digest, files = _project(tmp_path, {"weights.bin": b"\x01" * (2 * LARGE)})
    if not trusted:
        projects.trust = None  # every check hashes in full, as verify does
    else:  # as if hashed long after its last change
        folder = projects.path(digest)
        st = (folder / "weights.bin").stat()
        projects.trust.hashed(st, st.st_ctime_ns + 10**10, files[0].digest)
    assert benchmark(projects.ensure, digest, files)[1] == []
