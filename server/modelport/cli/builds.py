"""`modelport build`, `builds`, `export`, `import`: snapshots of a project folder, with progress."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import msgspec
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from modelport.cli.common import (
    client_options,
    console,
    err_console,
    json_option,
    print_json,
    print_table,
)


def _json_arg(value: str | None, name: str):
    if value is None:
        return None
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError:
        raise click.BadParameter(f"not valid JSON: {value[:80]}", param_hint=name) from None


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--label")
        out[key] = value
    return out


def build_options(func, deploying: bool = False):
    """FOLDER, --name, --entry and the rest; for `deploy`, whose ``--build N`` takes a model's
    NAME instead of a folder, the three are checked by the command."""
    target = (
        click.argument("folder", metavar="FOLDER|NAME")
        if deploying
        else click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
    )
    for option in reversed(
        [
            target,
            click.option(
                "--name", required=not deploying, help="The model's name (created when missing)."
            ),
            click.option(
                "--entry",
                required=not deploying,
                help="path/to/file.py:function or path/to/file.R:function",
            ),
            click.option("--requirements", help="Requirements file inside the folder."),
            click.option("--python", help="Python version, e.g. 3.11 (default: the server's)."),
            click.option(
                "--example-input", help="Example input as JSON: the build calls the function on it."
            ),
            click.option(
                "--example-output", help="Expected output as JSON: the build fails when it differs."
            ),
            click.option("--message", "-m", default="", help="What this build changes."),
            click.option("--label", multiple=True, help="key=value, repeatable."),
        ]
    ):
        func = option(func)
    return func


def run_build(
    client, folder: Path, name: str, entry: str, *, quiet: bool = False, **kwargs
) -> tuple[dict, str | None]:
    """Pack → upload → follow the build's steps; returns the finished build, and the access key of
    the model made for it (None when the model existed)."""
    out = err_console
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=out,
        transient=True,
        disable=quiet,
    ) as progress:
        packing = progress.add_task("packing", total=None)
        uploading = progress.add_task("uploading", total=None, visible=False)

        def on_pack(n):
            progress.advance(packing, n)

        def on_upload(n, total):
            progress.update(uploading, visible=True, total=total)
            progress.advance(uploading, n)

        upload = client.upload_build(
            folder, name, entry, on_pack=on_pack, on_upload=on_upload, **kwargs
        )
    queued = upload.build
    key = (upload.created_model or {}).get("access_key")
    if not quiet:
        out.print(
            f"packed {upload.packed.files} files · uploaded · build "
            f"[bold]#{queued['number']}[/bold] queued"
        )
        for warning in upload.packed.warnings:
            out.print(f"[yellow]warning[/yellow] {warning}")

    def on_line(line: str) -> None:
        text = line.split(" ", 1)[-1] if line[:2].isdigit() else line
        if not quiet and (text.startswith("→") or text.startswith("FAILED")):
            out.print(text.replace("→", "[cyan]→[/cyan]", 1))

    build = client.wait_build(name, queued["number"], on_line)
    if not quiet:
        if build["status"] == "built":
            out.print(f"[green]built[/green] #{build['number']} {build['digest']}")
        else:
            out.print(f"[red]failed[/red] #{build['number']}: {build['error']}")
    return build, key


@click.command()
@build_options
@client_options
@json_option
def build(
    client,
    folder,
    name,
    entry,
    requirements,
    python,
    example_input,
    example_output,
    message,
    label,
    as_json,
) -> None:
    """Snapshot FOLDER into a new build of model NAME (built, not deployed)."""
    result, key = run_build(
        client,
        folder,
        name,
        entry,
        quiet=as_json,
        requirements=requirements,
        python=python,
        example_input=_json_arg(example_input, "--example-input"),
        example_output=_json_arg(example_output, "--example-output"),
        message=message,
        labels=_labels(label),
    )
    if as_json:
        print_json({**result, "access_key": key} if key else result)
    elif key:
        show_created_key(name, key)
    sys.exit(0 if result["status"] == "built" else 1)


def show_created_key(name: str, key: str) -> None:
    """The key of a model this command created: its only showing, whatever else happened."""
    console.print(f"created model {name}; access key (shown once): [bold]{key}[/bold]")


@click.command()
@click.argument("name")
@client_options
@json_option
def builds(client, name: str, as_json: bool) -> None:
    """List a model's builds, newest first."""
    page = client.builds(name, limit=200)
    if as_json:
        return print_json(page)
    rows = [{**b, "digest": (b["digest"] or "")[:19]} for b in page["items"]]
    print_table(
        rows,
        [
            ("number", "#"),
            ("status", "status"),
            ("digest", "digest"),
            ("message", "message"),
            ("created_by", "who"),
            ("created_at", "when"),
            ("new_bytes", "new bytes"),
        ],
    )


@click.command("export")
@click.argument("name")
@click.argument("number", type=int)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path))
@client_options
def export_cmd(client, name: str, number: int, output: Path | None) -> None:
    """Write build NUMBER of NAME, wheels included, to one portable .tar.zst."""
    output = output or Path(f"{name}-{number}.tar.zst")
    with Progress(
        TextColumn("exporting"),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("export", total=None)
        size = client.export_build(
            name, number, output, on_bytes=lambda n: progress.advance(task, n)
        )
    console.print(f"wrote {output} ({size} bytes)")


@click.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", help="Import under another model name.")
@client_options
@json_option
def import_cmd(client, path: Path, model: str | None, as_json: bool) -> None:
    """Import an exported build; creates the model when missing."""
    imported = client.import_build(path, model)
    if as_json:
        return print_json(imported)
    console.print(f"imported as {imported['model']} #{imported['number']} {imported['digest']}")
    if imported.get("access_key"):
        console.print(
            f"created model {imported['model']}; access key (shown once): {imported['access_key']}"
        )


COMMANDS = [build, builds, export_cmd, import_cmd]
