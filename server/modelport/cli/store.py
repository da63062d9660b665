"""`modelport verify` and `modelport gc`: the store and project folders checked and pruned."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import click
from rich.markup import escape

from modelport.cli.common import console, err_console, json_option, print_json


def _settings(data_dir: str | None):
    from modelport.settings import Settings

    return Settings.from_env(data_dir=data_dir)


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """A store's S3 server or a registry's PostgreSQL that does not answer: one line naming it,
    exit 1 (no traceback)."""
    from modelport.registry.db import RegistryUnreachable
    from modelport.store.objects import StoreUnreachable

    try:
        yield
    except (StoreUnreachable, RegistryUnreachable) as exc:
        err_console.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        sys.exit(1)


@click.command()
@click.option("--data-dir", envvar="MODELPORT_HOME", help="Data dir (default ./artifacts).")
@click.option("--quarantine", is_flag=True, help="Move corrupt objects aside.")
@click.option(
    "--repair",
    is_flag=True,
    help="Restore tampered project folders from the store (and fix their modes).",
)
@json_option
def verify(data_dir: str | None, quarantine: bool, repair: bool, as_json: bool) -> None:
    """Re-hash every object in the store and every project folder; exit 1 when an object is
    missing or corrupt or a project folder is tampered with (and not repaired)."""
    from modelport import upkeep
    from modelport.builder.projects import Projects, describe
    from modelport.registry.builds import in_use_read_only
    from modelport.store.backends import open_store

    settings = _settings(data_dir)
    store = open_store(settings.store_dir, settings.store_url)
    with _reachable():
        found = upkeep.verify(
            store,
            Projects(store, settings.data_dir),
            in_use_read_only(settings.database_url, settings.registry_path),
            quarantine=quarantine,
            repair=repair,
        )
    if as_json:
        print_json(
            {
                "objects": found.objects,
                "problems": found.corrupt,
                "missing": found.missing,
                "projects": found.projects,
                "tampered": found.tampered,
            }
        )
    else:
        for problem in found.corrupt:
            err_console.print(f"[red]corrupt[/red] {problem.digest}: {problem.reason}")
        for digest in found.missing:
            err_console.print(f"[red]missing[/red] {digest} (referenced by a build)")
        for folder in found.tampered:
            done = " [green](repaired)[/green]" if folder.repaired else ""
            err_console.print(
                f"[red]tampered[/red] {folder.folder}: {describe(folder.files)}{done}"
            )
        if not found.corrupt and not found.missing and not found.tampered:
            console.print(
                f"[green]ok[/green] {found.objects} objects and {found.projects} "
                "project folders verified"
            )
    sys.exit(0 if found.ok else 1)


@click.command()
@click.option("--data-dir", envvar="MODELPORT_HOME", help="Data dir (default ./artifacts).")
@click.option(
    "--grace-s",
    default=3600,
    show_default=True,
    help="Keep objects younger than this: a build may still be writing them.",
)
@json_option
def gc(data_dir: str | None, grace_s: int, as_json: bool) -> None:
    """Remove objects no build refers to, the project folders, environments and checked-out
    files of builds that are gone, and the temp files of uploads and builds that died mid-way
    (the server must be stopped)."""
    from modelport import upkeep
    from modelport.datadir import DataDirBusy, DataDirLock
    from modelport.registry.builds import in_use_read_only
    from modelport.store.backends import open_store

    settings = _settings(data_dir)
    try:
        lock = DataDirLock(settings.lock_path).acquire()
    except DataDirBusy as exc:
        err_console.print(f"[red]error[/red] {exc}")
        sys.exit(1)
    try:
        with _reachable():
            done = upkeep.collect(
                open_store(settings.store_dir, settings.store_url),
                settings.data_dir,
                in_use_read_only(settings.database_url, settings.registry_path),
                grace_s=grace_s,
                stopped=True,
            )
    finally:
        lock.release()
    if as_json:
        return print_json(done)
    console.print(
        f"removed {done.removed} objects, {done.folders_removed} folders, "
        f"{done.files_removed} checked-out files and {done.temp_removed} temp files "
        f"and folders: {done.freed_bytes} bytes freed"
    )


COMMANDS = [verify, gc]
