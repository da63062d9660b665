"""What the verbs share: connection options, --json, tables, API errors turned into exit codes."""

from __future__ import annotations

import functools
import sys
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from modelport.client import ApiError, Client

# soft_wrap: long lines (a curl command, a key) are left for the terminal to wrap, never broken
# with newlines, so that they can be copied and pasted.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class ApiErrorHandlingGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            err_console.print(
                f"[red]error[/red] {exc.code}: {exc.message}"
                + (f" [dim](field: {exc.field})[/dim]" if exc.field else "")
            )
            sys.exit(1)
        except OSError as exc:  # connection refused and friends
            if "httpx" in type(exc).__module__ or "Connect" in type(exc).__name__:
                err_console.print(f"[red]error[/red] cannot reach the server: {exc}")
                sys.exit(2)
            raise


def client_options(func):
    """--url, --token and --data-dir, turned into a `client` argument."""

    @click.option(
        "--url", envvar="MODELPORT_URL", help="Server address (default http://127.0.0.1:8000)."
    )
    @click.option(
        "--token", envvar="MODELPORT_TOKEN", help="API token (default: the data dir's admin token)."
    )
    @click.option("--data-dir", envvar="MODELPORT_HOME", help="Where to find admin.token.")
    @functools.wraps(func)
    def wrapper(*args, url, token, data_dir, **kwargs):
        import httpx

        with Client(url, token, data_dir=data_dir) as client:
            try:
                return func(*args, client=client, **kwargs)
            except httpx.TransportError as exc:
                err_console.print(
                    f"[red]error[/red] cannot reach the server at {client.url}: {exc}"
                )
                sys.exit(2)

    return wrapper


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def print_json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value)).decode())


def print_table(rows: list[dict], columns: list[tuple[str, str]], title: str | None = None) -> None:
    table = Table(title=title, header_style="bold")
    for _, header in columns:
        table.add_column(header)
    for row in rows:
        table.add_row(*[_cell(row.get(key)) for key, _ in columns])
    if console.is_terminal:
        console.print(table)
        return
    # Piped or redirected: every value in full (a terminal's 80 columns mean nothing to grep or
    # a file), the table as wide as its longest row.
    width = Measurement.get(console, console.options.update(width=1 << 20), table).maximum
    Console(width=max(width, 20)).print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return msgspec.json.encode(value).decode()
    return str(value)
