"""A build made ready to run on a node from the artifact store alone (blocking: run it in a
thread): its project folder, its offline environment and the replica runtime, each made once
per node and then reused (the environment by lock digest, the folder by build digest). No
package index is needed: the build's wheels are in the store. A Ray node does this for each
replica placed on it (``serving/ray_host.py``); the server does the same for its own replicas
(``deployer.spec_for``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import msgspec

from modelport.builder import deps
from modelport.builder.projects import Projects
from modelport.builder.wheelhouse import file_lock
from modelport.runtime_home import ensure_runtime
from modelport.store import manifest as mf
from modelport.store.contract import ContentStore

__all__ = ["NodeBuild", "lock_of", "materialise"]


class NodeBuild(msgspec.Struct, frozen=True):
    python: str  # the environment's interpreter on this node
    project: str  # the build's project folder on this node
    entry: str  # path/to/file.py:function
    runtime: str  # the folder on the replica's PYTHONPATH (modelport.runtime)
    cached: bool  # the environment was there already


def lock_of(manifest: mf.Manifest) -> deps.Lock:
    """The lock a build's environment is made from (and named by)."""
    derived = manifest.derived
    return deps.Lock(
        python=manifest.content.python,
        text=manifest.content.lock,
        packages=[
            deps.LockedPackage(w.name, w.version, w.filename, w.digest.removeprefix("sha256:"))
            for w in derived.wheels
        ],
        digest=derived.lock_digest,
    )


def materialise(
    store: ContentStore, node_dir: Path, manifest_digest: str, log: Callable[[str], None]
) -> NodeBuild:
    """The build whose manifest object is ``manifest_digest``, ready under ``node_dir``."""
    manifest = mf.decode(store.read_bytes(manifest_digest))
    if manifest.derived.r is not None:
        raise ValueError("an R function cannot be placed on a Ray cluster (yet): serve it locally")
    node_dir.mkdir(parents=True, exist_ok=True)
    lock, envs = lock_of(manifest), node_dir / "envs"
    python = deps.env_python(envs, lock.digest)
    cached = python is not None
    if python is None:
        log(f"making environment {lock.digest[7:19]} from the store's wheels")
        tmp = Path(tempfile.mkdtemp(dir=node_dir, prefix=".wheels-"))
        try:
            for w in manifest.derived.wheels:
                store.copy_to(w.digest, tmp / w.filename)
            python = deps.materialize(lock, tmp, envs, log=log)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    # Several replicas of a build may start on one node at once, each in its own actor process:
    # one makes the folder, the others then find it (Projects' own lock is per process).
    hexd = manifest.digest.removeprefix("sha256:")
    with file_lock(node_dir / "projects" / f".{hexd}.lock"):
        project = Projects(store, node_dir).prepare(manifest.digest, manifest.content.files)
    return NodeBuild(
        python=str(python),
        project=str(project),
        entry=manifest.content.entrypoint,
        runtime=str(ensure_runtime(node_dir)),
        cached=cached,
    )
