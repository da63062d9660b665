"""`modelport replay` (a window of one build's captured requests on another, the diff report)
and `modelport replays`."""

from __future__ import annotations

import sys

import click
import msgspec

from modelport.cli.common import (
    client_options,
    console,
    err_console,
    json_option,
    print_json,
    print_table,
)


def _value(value) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= 60 else text[:59] + "…"


def show_report(report: dict) -> None:
    head = (
        f"replay {report['id']}: build #{report['from_build']} → #{report['to_build']} "
        f"({report['source']}): {report['status']}"
    )
    console.print(head)
    if report["status"] == "failed":
        console.print(f"[red]failed[/red]: {report['error']}")
        return
    console.print(
        f"  replayed {report['replayed']} · equal {report['equal']} · "
        f"different {report['different']} · skipped {report['skipped']}"
    )
    console.print(
        f"  errors: #{report['from_build']} {report['errors_from']} · "
        f"#{report['to_build']} {report['errors_to']}"
    )
    if report["p50_ms_from"] is not None:
        console.print(
            f"  p50: #{report['from_build']} {report['p50_ms_from']:g} ms · "
            f"#{report['to_build']} {report['p50_ms_to']:g} ms"
        )
    if report["diffs"]:
        print_table(
            [
                {
                    "request_id": d["request_id"],
                    "path": d["path"],
                    "old": _value(d["old"]) if d["kind"] != "added" else "—",
                    "new": _value(d["new"]) if d["kind"] != "removed" else "—",
                }
                for d in report["diffs"]
            ],
            [
                ("request_id", "request"),
                ("path", "path"),
                ("old", f"#{report['from_build']}"),
                ("new", f"#{report['to_build']}"),
            ],
            title=f"the first {len(report['diffs'])} differences",
        )


@click.command()
@click.argument("name")
@click.option("--build", "to_build", type=int, required=True, help="The build to replay on.")
@click.option(
    "--from",
    "from_build",
    type=int,
    help="The build whose captured requests are replayed (default: the one serving).",
)
@click.option(
    "--since",
    default="1h",
    show_default=True,
    help="The window's start: an ISO-8601 time or a time before now (15m, 2h, 7d).",
)
@click.option("--until", help="The window's end (default: now).")
@click.option("--max-requests", type=click.IntRange(1, 100_000), help="At most this many.")
@click.option("--rtol", type=click.FloatRange(0), help="Relative tolerance of floats [1e-9].")
@click.option("--atol", type=click.FloatRange(0), help="Absolute tolerance of floats [0].")
@click.option(
    "--shadow",
    is_flag=True,
    help="Compare what a shadow recorded for the same requests instead (nothing is sent).",
)
@client_options
@json_option
def replay(
    client,
    name: str,
    to_build: int,
    from_build: int | None,
    since: str,
    until: str | None,
    max_requests: int | None,
    rtol: float | None,
    atol: float | None,
    shadow: bool,
    as_json: bool,
) -> None:
    """Replay the requests model NAME's serving build captured on build --build, compare the
    answers and print the report (exit 1 when they differ or the replay failed)."""
    if from_build is None:
        from_build = client.deployment(name)["build"]
    started = client.replay(
        name,
        from_build,
        to_build,
        since=since,
        until=until,
        max_requests=max_requests,
        rtol=rtol,
        atol=atol,
        source="shadow" if shadow else None,
    )
    if not as_json:
        err_console.print(f"replay {started['id']}: build #{from_build}'s requests on #{to_build}…")
    done = client.wait_replay(name, started["id"])
    print_json(done) if as_json else show_report(done)
    sys.exit(0 if done["status"] == "done" and not done["different"] else 1)


@click.command()
@click.argument("name")
@click.option("--build", type=int, help="Only the reports from or to this build.")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@client_options
@json_option
def replays(client, name: str, build: int | None, limit: int, as_json: bool) -> None:
    """Model NAME's replay reports, newest first."""
    page = client.replays(name, build=build, limit=limit)
    if as_json:
        return print_json(page)
    if not page["items"]:
        console.print(f"No replay of {name} yet: `modelport replay {name} --build N`.")
        return
    print_table(
        [
            {
                **r,
                "builds": f"#{r['from_build']} → #{r['to_build']}",
                "at": r["created_at"][:19].replace("T", " "),
            }
            for r in page["items"]
        ],
        [
            ("id", "id"),
            ("at", "at (UTC)"),
            ("builds", "builds"),
            ("status", "status"),
            ("replayed", "replayed"),
            ("equal", "equal"),
            ("different", "different"),
            ("errors_to", "errors (new)"),
        ],
        title=f"{name}: replays",
    )


COMMANDS = [replay, replays]
