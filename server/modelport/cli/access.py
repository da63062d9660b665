"""`modelport login`: a token kept for a server, where the CLI finds it by the server's URL."""

from __future__ import annotations

import sys

import click
import httpx

from modelport.cli.common import console, err_console


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
            err_console.print(f"[red]error[/red] {exc.code}: the server at {url} does not take "
                              "this token; nothing stored")
            sys.exit(1)
        if exc.code != "auth.denied":  # a token of a narrower role is still a token
            raise
    except httpx.TransportError as exc:
        err_console.print(f"[red]error[/red] cannot reach the server at {url}: {exc}")
        sys.exit(2)
    path = servers.login(url, token)
    console.print(f"logged in to {url}; the token is in {path} (mode 0600)", highlight=False)


COMMANDS = [login]
