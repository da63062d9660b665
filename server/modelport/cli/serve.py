"""`modelport serve`: the server on uvicorn with uvloop and httptools."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import click
import uvicorn

from modelport.cli.common import err_console


class CleanExitServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; we shut down cleanly, exit 0.

    Once it listens, it tells the CLI where its data dir is (modelport.servers), and takes that
    back when it stops."""

    def __init__(self, config: uvicorn.Config, settings):
        super().__init__(config)
        self.settings = settings
        self.record: Path | None = None  # this server's entry in modelport.servers

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            from modelport import servers

            try:
                self.record = servers.announce(
                    self.settings.host,
                    self.settings.port,
                    self.settings.url,
                    self.settings.data_dir,
                )
            except OSError as exc:  # a read-only home must not stop the server
                err_console.print(
                    f"[yellow]warning[/yellow] could not write the server's file for the CLI: {exc}"
                )

    def withdraw(self) -> None:
        if self.record is not None:
            from modelport import servers

            servers.withdraw(self.record)
            self.record = None

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to bind.")
@click.option("--data-dir", envvar="MODELPORT_HOME", help="Data dir (default ./artifacts).")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def serve(host: str, port: int, data_dir: str | None, log_format: str, log_level: str) -> None:
    """Run the server: the REST API, predictions and the web UI at /."""
    from modelport.settings import SettingError, Settings

    try:
        from modelport.app import create_asgi, ready
        from modelport.datadir import UMASK, DataDirBusy, DataDirLock, prepare
        from modelport.gateway.http import PredictionProtocol
        from modelport.observability.logs import configure
        from modelport.registry.db import RegistryTooNew, RegistryUnreachable
        from modelport.registry.sealed import SealError

        settings = Settings.from_env(
            host=host, port=port, data_dir=data_dir, log_format=log_format, log_level=log_level
        )
    except SettingError as exc:
        err_console.print(f"[red]error[/red] {exc}")
        sys.exit(2)
    configure(log_format, log_level)
    os.umask(UMASK)  # every file the server (and a replica) makes is its user's only
    if settings.sandbox:
        from modelport.runtime.sandbox import not_dumpable

        not_dumpable()  # its environment and memory out of its replicas' reach
    prepare(settings)
    try:
        lock = DataDirLock(settings.lock_path).acquire()
    except DataDirBusy as exc:
        err_console.print(f"[red]error[/red] {exc}")
        sys.exit(1)
    try:  # a registry this modelport cannot use stops it here, with one line saying why
        asyncio.run(ready(settings))
    except (RegistryTooNew, RegistryUnreachable, SealError) as exc:
        lock.release()
        err_console.print(f"[red]error[/red] {exc}")
        sys.exit(1)
    app = create_asgi(settings, lock=lock)
    click.echo(
        f"modelport serving {settings.url}  (web UI at /, API at /api/v1, OpenAPI at "
        f"/schema; data dir {settings.data_dir})",
        err=True,
    )
    protocol = type("Protocol", (PredictionProtocol,), {"gateway": app})
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=protocol,
        lifespan="on",
        proxy_headers=False,
        log_config=None,
        log_level=log_level,
        access_log=False,
        server_header=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
    )
    server = CleanExitServer(config, settings)
    try:
        server.run()
    finally:
        server.withdraw()
        lock.release()


COMMANDS = [serve]
