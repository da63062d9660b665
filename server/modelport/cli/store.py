"""`modelport verify` and `modelport gc`: the artifact store and project folders checked, and pruned."""

from __future__ import annotations

import sqlite3
import sys

import click

from modelport.cli.common import console, err_console, json_option, print_json


def _settings(data_dir: str | None):
    from modelport.settings import Settings

    return Settings.from_env(data_dir=data_dir)


@click.command()
@click.option("--data-dir", envvar="MODELPORT_HOME", help="Data dir (default ./artifacts).")
@click.option("--quarantine", is_flag=True, help="Move corrupt objects aside.")
@click.option("--repair", is_flag=True,
              help="Restore tampered project folders from the store (and fix their modes).")
@json_option
def verify(data_dir: str | None, quarantine: bool, repair: bool, as_json: bool) -> None:
    """Re-hash every object in the store and every project folder; exit 1 when an object is
    missing or corrupt or a project folder is tampered with (and not repaired)."""
    from modelport.builder.projects import Projects, describe
    from modelport.store.cas import ContentStore as Store

    settings = _settings(data_dir)
    store = Store(settings.store_dir)
    problems = store.verify(quarantine=quarantine)
    missing = _missing_objects(settings, store)
    projects = Projects(store, settings.data_dir)
    files = {}
    for digest, manifest in _built_manifests(settings).items():
        if (found := projects.files_of(manifest)) is not None:
            files[digest] = found
    checked, tampered = projects.verify(files, repair=repair)
    if as_json:
        print_json({"objects": store.stats().objects, "problems": problems, "missing": missing,
                    "projects": checked, "tampered": tampered})
    else:
        for problem in problems:
            err_console.print(f"[red]corrupt[/red] {problem.digest}: {problem.reason}")
        for digest in missing:
            err_console.print(f"[red]missing[/red] {digest} (referenced by a build)")
        for folder in tampered:
            done = " [green](repaired)[/green]" if folder.repaired else ""
            err_console.print(f"[red]tampered[/red] {folder.folder}: "
                              f"{describe(folder.files)}{done}")
        if not problems and not missing and not tampered:
            console.print(f"[green]ok[/green] {store.stats().objects} objects and {checked} "
                          "project folders verified")
    unrepaired = any(not f.repaired for f in tampered)
    sys.exit(1 if problems or missing or unrepaired else 0)


def live_digests(settings) -> set[str]:
    """Every object a build refers to, read straight from the registry file."""
    if not settings.registry_path.exists():
        return set()
    conn = sqlite3.connect(f"file:{settings.registry_path}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT DISTINCT digest FROM build_objects")}
    finally:
        conn.close()


def _folder_digests(settings) -> tuple[set[str], set[str]]:
    from modelport.registry.builds import FOLDER_DIGESTS

    if not settings.registry_path.exists():
        return set(), set()
    conn = sqlite3.connect(f"file:{settings.registry_path}?mode=ro", uri=True)
    try:
        rows = conn.execute(FOLDER_DIGESTS).fetchall()
    finally:
        conn.close()
    return {r[0] for r in rows if r[0]}, {r[1] for r in rows if r[1]}


def _built_manifests(settings) -> dict[str, str]:
    from modelport.registry.builds import BUILT_MANIFESTS

    if not settings.registry_path.exists():
        return {}
    conn = sqlite3.connect(f"file:{settings.registry_path}?mode=ro", uri=True)
    try:
        return dict(conn.execute(BUILT_MANIFESTS).fetchall())
    finally:
        conn.close()


def _missing_objects(settings, store) -> list[str]:
    return sorted(d for d in live_digests(settings) if not store.has(d))


@click.command()
@click.option("--data-dir", envvar="MODELPORT_HOME", help="Data dir (default ./artifacts).")
@click.option("--grace-s", default=3600, show_default=True,
              help="Keep objects younger than this: a build may still be writing them.")
@json_option
def gc(data_dir: str | None, grace_s: int, as_json: bool) -> None:
    """Remove objects no build refers to, the project folders, environments and checked-out
    files of builds that are gone, and the temp files of uploads and builds that died mid-way
    (the server must be stopped)."""
    from modelport.builder.prune import live_hex, prune
    from modelport.datadir import DataDirBusy, DataDirLock
    from modelport.scratch import sweep
    from modelport.store import maintenance as store_gc
    from modelport.store.cas import ContentStore as Store

    settings = _settings(data_dir)
    try:
        lock = DataDirLock(settings.lock_path).acquire()
    except DataDirBusy as exc:
        err_console.print(f"[red]error[/red] {exc}")
        sys.exit(1)
    try:
        store = Store(settings.store_dir)
        result = store.gc(live_digests(settings), grace_s=grace_s)
        projects, envs = _folder_digests(settings)
        pruned = prune(settings.data_dir, live_hex(projects), live_hex(envs), grace_s)
        # No server runs on the data dir (its lock is ours): every temp is a dead writer's.
        temps = result.temp_removed + store_gc.clean_temp(store, 0)
        swept = sweep(settings.data_dir)
    finally:
        lock.release()
    freed = result.freed_bytes + pruned.freed_bytes + swept.freed_bytes
    temps += swept.removed
    if as_json:
        return print_json({"removed": result.removed, "freed_bytes": freed,
                           "folders_removed": pruned.folders, "files_removed": pruned.files,
                           "temp_removed": temps})
    console.print(f"removed {result.removed} objects, {pruned.folders} folders, "
                  f"{pruned.files} checked-out files and {temps} temp files and folders: "
                  f"{freed} bytes freed")


COMMANDS = [verify, gc]
