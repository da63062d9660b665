"""`modelport migrate`: a one-machine data dir moved into PostgreSQL and an S3 bucket, verified."""

from __future__ import annotations

import sys

import click
import msgspec

from modelport.cli.common import console, err_console, json_option, print_json


@click.command()
@click.option(
    "--to",
    "database_url",
    metavar="DATABASE_URL",
    help="The PostgreSQL database to copy the registry into (postgresql://user@host/db).",
)
@click.option(
    "--store",
    "store_url",
    metavar="STORE_URL",
    help="The S3 bucket to copy the store into (s3://bucket/prefix?endpoint=…&region=…).",
)
@click.option("--data-dir", envvar="MODELPORT_HOME", help="Data dir (default ./artifacts).")
@json_option
def migrate(
    database_url: str | None, store_url: str | None, data_dir: str | None, as_json: bool
) -> None:
    """Copy the data dir's SQLite registry into PostgreSQL (--to) and its local store into an S3
    bucket (--store), verifying every object's digest and every table's row count; run it again
    to resume one that stopped. The server must be stopped."""
    from modelport import migrate as moving
    from modelport.datadir import DataDirBusy, DataDirLock
    from modelport.registry.backends import check_url as check_database
    from modelport.registry.db import RegistryTooNew, RegistryUnreachable
    from modelport.registry.transfer import CopyMismatch
    from modelport.settings import SettingError, Settings
    from modelport.store.backends import check_url as check_store
    from modelport.store.objects import StoreError

    if not database_url and not store_url:
        err_console.print("[red]error[/red] name a target: --to DATABASE_URL, --store STORE_URL")
        sys.exit(2)
    try:
        settings = Settings.from_env(data_dir=data_dir)
        if database_url:
            check_database(database_url)
        if store_url:
            check_store(store_url)
    except (SettingError, ValueError) as exc:
        err_console.print(f"[red]error[/red] {exc}")
        sys.exit(2)
    try:
        lock = DataDirLock(settings.lock_path).acquire()
    except DataDirBusy as exc:
        err_console.print(f"[red]error[/red] {exc}; stop the server to migrate its data dir")
        sys.exit(1)

    def said(line: str) -> None:
        if not as_json:
            err_console.print(line, highlight=False)

    try:
        done = moving.migrate(
            settings,
            database_url=database_url,
            store_url=store_url,
            on_table=lambda c: said(
                f"table {c.table}: {c.target} rows ({c.written} copied now, "
                f"{c.source} in the source)"
            ),
        )
    except (
        RegistryTooNew,
        RegistryUnreachable,
        CopyMismatch,
        StoreError,
        FileNotFoundError,
        moving.ObjectMismatch,
    ) as exc:
        err_console.print(f"[red]error[/red] {exc}")
        sys.exit(1)
    finally:
        lock.release()
    if as_json:
        print_json({"ok": done.ok, **msgspec.to_builtins(done)})
    else:
        if done.objects is not None:
            o = done.objects
            console.print(
                f"objects: {o.source} in the local store, {o.copied} copied, {o.present} there "
                f"already; {o.verified} verified in the bucket",
                highlight=False,
            )
            for problem in o.problems:
                err_console.print(f"[red]corrupt[/red] {problem.path}: {problem.reason}")
            for digest in o.missing:
                err_console.print(f"[red]missing[/red] {digest} (not in the bucket)")
        if done.tables is not None:
            rows = sum(c.target for c in done.tables)
            console.print(
                f"registry: {rows} rows in {len(done.tables)} tables, each count checked",
                highlight=False,
            )
        if done.ok:
            console.print(
                "[green]ok[/green] start servers with MODELPORT_DATABASE_URL / "
                f"MODELPORT_STORE_URL set to these and the key {settings.secret_key_path} (it "
                "opens the deployments' env values): a copy in each data dir, or one file "
                "named by MODELPORT_SECRET_KEY_FILE",
                highlight=False,
            )
    sys.exit(0 if done.ok else 1)


COMMANDS = [migrate]
