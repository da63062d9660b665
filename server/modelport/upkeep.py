"""Store verify and gc, one way for the admin API (server running) and the CLI (server stopped)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from modelport.builder.projects import Folder, Projects
from modelport.builder.prune import live_hex, prune
from modelport.registry.builds import InUse
from modelport.scratch import sweep
from modelport.store.contract import ContentStore, Problem
from modelport.store.objects import parse_digest

__all__ = ["RUNNING_TEMP_GRACE_S", "GcDone", "Verified", "collect", "verify"]

RUNNING_TEMP_GRACE_S = 60.0  # with a server running, a temp a moment old may not be held yet


class Verified(msgspec.Struct):
    objects: int  # in the store
    corrupt: list[Problem]
    missing: list[str]  # objects builds refer to that the store lacks
    projects: int  # project folders re-hashed
    tampered: list[Folder]  # those found changed, with a file added or missing, or a mode

    @property
    def ok(self) -> bool:
        """Nothing corrupt or missing, and no project folder left tampered with."""
        return not self.corrupt and not self.missing and all(f.repaired for f in self.tampered)


class GcDone(msgspec.Struct):
    removed: int  # store objects
    freed_bytes: int  # by all of it
    folders_removed: int = 0  # project folders and environments no build names
    files_removed: int = 0  # checked-out files no project links to
    temp_removed: int = 0  # temp files and folders of uploads and builds that died mid-way


def verify(
    store: ContentStore,
    projects: Projects,
    in_use: InUse,
    *,
    quarantine: bool = False,
    repair: bool = False,
) -> Verified:
    """Re-hash every object and every built build's project folder (blocking); ``quarantine``
    moves corrupt objects aside, ``repair`` restores tampered folders from the store."""
    corrupt = store.verify(quarantine=quarantine)
    present = set(store.digests())  # one listing, not a request per object of a remote store
    missing = sorted(d for d in in_use.objects if parse_digest(d) not in present)
    files = {}
    for digest, manifest in in_use.manifests.items():
        if (found := projects.files_of(manifest)) is not None:  # else: its manifest is missing
            files[digest] = found
    checked, tampered = projects.verify(files, repair=repair)
    return Verified(store.stats().objects, corrupt, missing, checked, tampered)


def collect(
    store: ContentStore,
    data_dir: Path,
    in_use: InUse,
    *,
    grace_s: float = 3600.0,
    stopped: bool = False,
) -> GcDone:
    """Remove what no build refers to (blocking): store objects, project folders, environments
    and checked-out files older than ``grace_s`` (a build may be making them), and the temps of
    uploads and builds that died. ``stopped``: no server runs on the data dir (its lock is the
    caller's), so every temp, however young, is a dead writer's."""
    result = store.gc(in_use.objects, grace_s=grace_s)
    pruned = prune(data_dir, live_hex(in_use.projects), live_hex(in_use.envs), grace_s)
    temps = result.temp_removed + (store.clean_temp(0) if stopped else 0)
    swept = sweep(data_dir, 0.0 if stopped else RUNNING_TEMP_GRACE_S)
    return GcDone(
        result.removed,
        result.freed_bytes + pruned.freed_bytes + swept.freed_bytes,
        pruned.folders,
        pruned.files,
        temps + swept.removed,
    )
