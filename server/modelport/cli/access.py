"""`modelport login` (a token kept for a server, found by its URL) and `modelport admin
reset-token` (a new admin token made on the data dir itself, for whoever lost every other)."""

from __future__ import annotations

import sys

import click
import httpx

from modelport.cli.common import console, err_console, json_option, print_json


@click.command()
@click.argument("url")
@click.option("--token", help="The API token (default: asked for, not echoed).")
def login(url: str, token: str | None) -> None:
    """Keep TOKEN for the server at URL: later verbs with that --url / MODELPORT_URL use it."""
    from modelport import servers
    from modelport.client import ApiError, Client

    token = token or click.prompt("token", hide_input=True).strip()
    url = url.rstrip("/")
    try:
        with Client(url, token) as client:
            client.models(limit=1)
    except ApiError as exc:
        if exc.code in ("auth.missing", "auth.invalid"):
            err_console.print(
                f"[red]error[/red] {exc.code}: the server at {url} does not take "
                "this token; nothing stored"
            )
            sys.exit(1)
        if exc.code != "auth.denied":  # a token of a narrower role is still a token
            raise
    except httpx.TransportError as exc:
        err_console.print(f"[red]error[/red] cannot reach the server at {url}: {exc}")
        sys.exit(2)
    path = servers.login(url, token)
    console.print(f"logged in to {url}; the token is in {path} (mode 0600)", highlight=False)


@click.group()
def admin() -> None:
    """Recovery on the server's machine, on the data dir itself (no token needed)."""


@admin.command("reset-token")
@click.option("--data-dir", envvar="MODELPORT_HOME", help="Data dir (default ./artifacts).")
@json_option
def reset_token(data_dir: str | None, as_json: bool) -> None:
    """A new admin token in the data dir's registry, printed once and written to its
    admin.token; the server may be running (it takes the token in within a second) or stopped."""
    import asyncio
    import os

    from modelport.datadir import TOKENS_CHANGED, DataDirBusy, DataDirLock, write_admin_token
    from modelport.settings import SettingError, Settings

    try:
        settings = Settings.from_env(data_dir=data_dir)
    except SettingError as exc:
        err_console.print(f"[red]error[/red] {exc}")
        sys.exit(2)
    if not settings.database_url and not settings.registry_path.exists():
        err_console.print(
            f"[red]error[/red] no registry in {settings.data_dir}: no server has "
            "started there (--data-dir names the server's data dir)"
        )
        sys.exit(1)
    os.umask(0o077)
    try:  # held while stopped, so that no server starts half-way through
        lock = DataDirLock(settings.lock_path).acquire()
    except DataDirBusy:
        lock = None  # a server runs on it: SQLite lets this process write beside it
    try:
        token, secret = asyncio.run(_new_admin_token(settings))
        write_admin_token(settings.admin_token_path, secret)
        settings.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (settings.run_dir / TOKENS_CHANGED).write_text(f"{token.id}\n")  # for a running server
    finally:
        if lock is not None:
            lock.release()
    if as_json:
        return print_json(
            {
                "id": token.id,
                "token": secret,
                "path": str(settings.admin_token_path),
                "server_running": lock is None,
            }
        )
    console.print(f"new admin token {token.id}, shown once: {secret}", highlight=False)
    console.print(
        f"written to {settings.admin_token_path} (mode 0600)"
        + ("; the running server takes it within a second" if lock is None else ""),
        highlight=False,
    )


async def _new_admin_token(settings):
    from modelport.auth import Auth
    from modelport.registry.backends import registry

    db = await registry(settings.database_url, settings.registry_path).open()
    try:
        return await Auth(db).issue_token(
            name="admin (reset)",
            role="admin",
            expires_in_days=None,
            models=[],
            actor="admin reset-token",
        )
    finally:
        await db.close()


COMMANDS = [login, admin]
