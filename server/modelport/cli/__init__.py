"""The `modelport` command: one click group; `serve` runs the server, other verbs are clients."""

from __future__ import annotations

import click

from modelport import __version__
from modelport.cli.common import ApiErrorHandlingGroup


@click.group(cls=ApiErrorHandlingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelport")
def main() -> None:
    """modelport: turn a Python or R function into a versioned, load-balanced REST API."""


def _register() -> None:
    from modelport.cli import (
        access,
        builds,
        deploying,
        k8s,
        manage,
        migrating,
        replaying,
        serve,
        store,
    )

    for module in (serve, manage, builds, deploying, replaying, store, access, k8s, migrating):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
