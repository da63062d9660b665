"""`modelport deploy`, `predict`, `rollback`, `scale`, `stop`, `restart`, `replicas`, `deployments`,
`logs`, `metrics`."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import click
import msgspec
from rich.markup import escape

from modelport.cli.builds import _json_arg, _labels, build_options, run_build, show_created_key
from modelport.cli.common import (
    client_options,
    console,
    err_console,
    json_option,
    print_json,
    print_table,
)
from modelport.client import ApiError

allow_breaking_option = click.option(
    "--allow-breaking",
    is_flag=True,
    help="Deploy even when the build's input schema would refuse requests the serving build "
    "takes (a required field added, a field removed or narrowed).",
)


def _env(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--env")
        out[key] = value
    return out


def _wait(client, name: str, deployment: dict, quiet: bool) -> dict:
    def show(found: dict) -> None:
        if not quiet:
            err_console.print(
                f"deployment {found['id']} (build #{found['build']}): {found['status']}"
            )

    done = client.wait_deployment(name, deployment["id"], on_status=show)
    if done["status"] == "failed" and not quiet:
        err_console.print(f"[red]failed[/red]: {done['reason']}")
    return done


def _last_served(client, name: str) -> int | None:
    for item in client.deployments(name, limit=50)["items"]:
        if any(e["kind"] == "deployed" for e in item["events"]):
            return item["build"]
    return None


def _refused_schema(client, name: str, exc: ApiError, build: int | None, retry: str) -> None:
    """schema.breaking: the server's words, the input schema's diff, and the flag that overrides."""
    err_console.print(f"[red]error[/red] {exc.code}: {escape(exc.message)}", highlight=False)
    base = _last_served(client, name)
    if base is not None and build is not None:
        for change in client.diff(name, base, build)["schemas"]:
            if change["schema"] != "input":
                continue
            err_console.print(f"input schema, build #{base} → #{build}:", highlight=False)
            for sign, key in (("+", "added"), ("-", "removed"), ("~", "changed")):
                for field in change[key]:
                    err_console.print(f"  {sign} {field}", highlight=False, markup=False)
    err_console.print(
        f"to serve it anyway (its callers' requests may be refused): {retry}",
        highlight=False,
        markup=False,
    )
    sys.exit(1)


def _schema_note(deployment: dict, quiet: bool) -> None:
    """The one-line note of a compatible (or allowed) change of the input schema."""
    for event in deployment.get("events", [])[:1]:
        note = (event.get("detail") or {}).get("schema_note")
        if note and not quiet:
            err_console.print(f"note: {note}", highlight=False, markup=False)


_BLANKS = {"number": 0, "integer": 0, "string": "", "boolean": False, "array": [], "object": {}}


def sample_input(schema: dict) -> dict:
    """A body for the curl line when the build has no example input: each required field with a
    blank of its type (``{"a": 0}``), so the line shows the fields to fill in."""
    defs = schema.get("$defs", {})
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        schema = defs.get(ref[8:], {})
    out = {}
    for field in schema.get("required", []):
        prop = schema.get("properties", {}).get(field, {})
        if "$ref" in prop:
            prop = defs.get(prop["$ref"].rpartition("/")[2], {})
        kind = prop.get("type")
        out[field] = _BLANKS.get(kind[0] if isinstance(kind, list) else kind)
    return out


def _resources(pairs: tuple[str, ...]) -> dict[str, float]:
    """`--resource NAME=AMOUNT`, repeatable."""
    out: dict[str, float] = {}
    for pair in pairs:
        name, sep, amount = pair.partition("=")
        try:
            out[name.strip()] = float(amount)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise click.BadParameter(f"{pair!r} is not NAME=AMOUNT", param_hint="--resource")
    return out


def _serving_options(func):
    for option in reversed(
        [
            click.option(
                "--replicas",
                type=int,
                help="Replica processes (default: as many as serve now, else 1).",
            ),
            click.option(
                "--memory-mb",
                type=int,
                help="Memory limit per replica (default: the current deployment's).",
            ),
            click.option(
                "--timeout-s",
                type=float,
                help="Per-request time limit (default: the current deployment's, else 30).",
            ),
            click.option(
                "--max-concurrency",
                type=int,
                help="Requests at once per replica (default: the current deployment's, else 1).",
            ),
            click.option(
                "--env",
                "env_pairs",
                multiple=True,
                help="KEY=VALUE for the replicas, repeatable (default: the current "
                "deployment's env).",
            ),
            click.option(
                "--capture-percent",
                type=click.FloatRange(0, 100),
                help="Share of requests recorded with their answers, for `modelport "
                "captures` and replays (default: the current deployment's, else 0).",
            ),
            click.option(
                "--network/--no-network",
                default=None,
                help="Let the replicas open network connections, or give them none but "
                "their pipe to the server (default: the current deployment's, else "
                "allowed).",
            ),
            click.option(
                "--boot-timeout-s",
                type=float,
                help="Time a replica may take to import the model and be ready "
                "(default: the current deployment's, else 300).",
            ),
            click.option(
                "--cpus",
                type=float,
                help="On a Ray cluster: CPUs per replica, fractions allowed (default: the "
                "current deployment's, else 1).",
            ),
            click.option(
                "--gpus",
                type=int,
                help="On a Ray cluster: GPUs per replica (default: the current deployment's, "
                "else 0).",
            ),
            click.option(
                "--resource",
                "resource_pairs",
                multiple=True,
                help="On a Ray cluster: NAME=AMOUNT of a custom Ray resource per replica, "
                "repeatable (default: the current deployment's).",
            ),
            click.option(
                "--placement",
                type=click.Choice(["spread", "pack"]),
                help="On a Ray cluster: replicas on different nodes (spread) or together "
                "(pack) (default: the current deployment's, else spread).",
            ),
        ]
    ):
        func = option(func)
    return func


def _deploy_target(
    folder: str, name: str | None, entry: str | None, build_number: int | None
) -> tuple[Path | None, str]:
    """`deploy FOLDER --name NAME --entry E` builds FOLDER; `deploy NAME --build N` does not."""
    if build_number is not None:
        if name or entry:
            raise click.UsageError(
                "with --build N give the model's NAME alone (no --name, "
                "--entry): the build exists already"
            )
        return None, folder
    missing = [flag for flag, value in (("--name", name), ("--entry", entry)) if not value]
    if missing:
        raise click.UsageError(
            f"missing {' and '.join(missing)} (or deploy an existing build: "
            f"modelport deploy NAME --build N)"
        )
    path = Path(folder)
    if not path.is_dir():
        raise click.BadParameter(f"folder {folder!r} does not exist", param_hint="FOLDER")
    assert name is not None  # missing names it otherwise
    return path, name


@click.command()
@functools.partial(build_options, deploying=True)
@click.option(
    "--build",
    "build_number",
    type=int,
    help="Serve build N of model NAME, which exists (`modelport deploy NAME --build N`), "
    "instead of building a folder.",
)
@_serving_options
@click.option(
    "--canary",
    "canary",
    type=click.FloatRange(0, 100),
    help="Add the build as a candidate answering P %% of requests beside the build serving "
    "now (which keeps serving the rest); `modelport promote` or `abort` ends it.",
)
@click.option(
    "--shadow",
    is_flag=True,
    help="Add the build as a candidate that gets a copy of every request after the serving "
    "build answered (its answers recorded, never returned).",
)
@click.option(
    "--sticky-header",
    help="With --canary: callers sticky by this header's value (e.g. X-User-Id).",
)
@click.option(
    "--require-replay/--no-require-replay",
    default=None,
    help="Promote a candidate only on a replay report that matches (`promote "
    "--if-replay-matches`; default: the current deployment's, else not required).",
)
@allow_breaking_option
@client_options
@json_option
def deploy(
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
    build_number,
    replicas,
    memory_mb,
    timeout_s,
    max_concurrency,
    env_pairs,
    capture_percent,
    network,
    boot_timeout_s,
    cpus,
    gpus,
    resource_pairs,
    placement,
    canary,
    shadow,
    sticky_header,
    require_replay,
    allow_breaking,
    as_json,
) -> None:
    """Build FOLDER and deploy it as model NAME (or deploy build N of NAME with --build N);
    waits until it serves. With --canary P or --shadow, beside the build serving now."""
    if canary is not None and shadow:
        raise click.UsageError("--canary and --shadow: one or the other")
    if sticky_header and canary is None:
        raise click.UsageError("--sticky-header goes with --canary")
    path, name = _deploy_target(folder, name, entry, build_number)
    key = None
    if path is None:
        built = client.get_build(name, build_number)
    else:
        built, key = run_build(
            client,
            path,
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
    if built["status"] != "built":
        if as_json:
            print_json({"build": built, "deployment": None, "access_key": key})
        elif path is None:
            err_console.print(
                f"[red]error[/red] build #{build_number} of {name} is {built['status']}, not built"
            )
        elif key:
            show_created_key(name, key)
        sys.exit(1)
    started = time.monotonic()
    # A new version keeps how the model is served now (or was last), but for what is given here.
    try:
        deployment = client.deploy(
            name,
            built["number"],
            replicas=replicas,
            memory_mb=memory_mb,
            timeout_s=timeout_s,
            max_concurrency=max_concurrency,
            env=_env(env_pairs) or None,
            capture_percent=capture_percent,
            network=network,
            boot_timeout_s=boot_timeout_s,
            cpus=cpus,
            gpus=gpus,
            resources=_resources(resource_pairs) or None,
            placement=placement,
            require_replay=require_replay,
            keep_current=True,
            allow_breaking=allow_breaking or None,
            canary_percent=canary,
            shadow=shadow or None,
            sticky_header=sticky_header,
        )
    except ApiError as exc:
        if exc.code != "schema.breaking" or as_json:
            raise
        _refused_schema(
            client,
            name,
            exc,
            built["number"],
            f"modelport deploy {name} --build {built['number']} --allow-breaking",
        )
    _schema_note(deployment, as_json)
    if canary is not None or shadow:
        _candidate_started(client, name, deployment, as_json, key)
        return
    done = _wait(client, name, deployment, as_json)
    if as_json:
        print_json(
            {
                "build": built,
                "deployment": done,
                "access_key": key,
                "endpoint": f"{client.url}/models/{name}/predict",
            }
        )
        sys.exit(0 if done["status"] == "deployed" else 1)
    if done["status"] != "deployed":
        if key:
            show_created_key(name, key)
        sys.exit(1)
    endpoint = f"{client.url}/models/{name}/predict"
    example = built.get("example_input")
    if example is None:
        example = sample_input(built.get("input_schema") or {})
    example = msgspec.json.encode(example).decode()
    console.print(
        f"[green]✓[/green] built #{built['number']} · {done['replicas']} replica(s) "
        f"ready in {time.monotonic() - started:.1f}s · {endpoint}"
    )
    if key:
        console.print(f"access key (shown once): [bold]{key}[/bold]")
    console.print(
        f"curl -s {endpoint} -H 'Authorization: Bearer {key or '<access key>'}' "
        f"-H 'Content-Type: application/json' -d '{example}'",
        markup=False,
        highlight=False,
    )


def _candidate_started(client, name: str, deployment: dict, as_json: bool, key) -> None:
    done = client.wait_candidate(name, deployment["id"])
    if as_json:
        print_json({"deployment": done, "access_key": key})
    ready = done["status"] == "candidate"
    if not as_json:
        if ready:
            traffic = done.get("traffic") or {}
            share = (
                "a copy of every request (shadow)"
                if traffic.get("mode") == "shadow"
                else f"{traffic.get('candidate_percent', 0):g} % of requests"
            )
            console.print(
                f"[green]✓[/green] build #{done['build']} is {name}'s candidate: {share} · "
                f"`modelport traffic {name}`, `modelport promote {name}`, "
                f"`modelport abort {name}`"
            )
        else:
            err_console.print(f"[red]{done['status']}[/red]: {done['reason']}")
    sys.exit(0 if ready else 1)


def _split(value: str) -> tuple[int, float]:
    build, sep, percent = value.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(build.lstrip("#")), float(percent)
    except ValueError:
        raise click.BadParameter(
            f"expected BUILD=PERCENT, got {value!r}", param_hint="--set"
        ) from None


@click.command()
@click.argument("name")
@click.option(
    "--set",
    "setting",
    metavar="N=P",
    help="Give build N (the candidate, or the primary) P %% of requests; the other build the rest.",
)
@client_options
@json_option
def traffic(client, name: str, setting: str | None, as_json: bool) -> None:
    """Each build's share of NAME's requests, with its live errors and latency."""
    if setting is not None:
        build, percent = _split(setting)
        now = client.traffic(name)
        if now.get("candidate") is None:
            raise click.UsageError(f"{name} has no candidate (deploy one with --canary P)")
        if build == now["candidate_build"]:
            client.set_traffic(name, percent)
        elif build == now["build"]:
            client.set_traffic(name, 100 - percent)
        else:
            raise click.BadParameter(
                f"build #{build} serves no share of {name}: the primary is "
                f"#{now['build']}, the candidate #{now['candidate_build']}",
                param_hint="--set",
            )
    shown = client.traffic(name)
    if as_json:
        print_json(shown)
        return
    t = shown.get("traffic")
    if t is None:
        console.print(f"{name}: build #{shown['build']} takes 100 % (no candidate)")
        return
    pct = t["candidate_percent"]
    if t["mode"] == "shadow":
        line = f"#{shown['build']} 100 % · #{shown['candidate_build']} shadow ({pct:g} % copied)"
    else:
        line = f"#{shown['build']} {100 - pct:g} % · #{shown['candidate_build']} {pct:g} %"
    sticky = f" · sticky by {t['sticky_header']}" if t.get("sticky_header") else ""
    console.print(f"{name}: {line}{sticky} · candidate {shown['candidate_status']}")
    print_table(
        shown["builds"],
        [
            ("build", "build"),
            ("role", "role"),
            ("answered", "answered"),
            ("share_percent", "share %"),
            ("requests", f"requests ({shown['window_s']:g}s)"),
            ("error_rate", "error rate"),
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
        ],
    )
    if t["mode"] == "shadow":
        s = shown["shadow"]
        console.print(
            f"copies: {s.get('sent', 0)} sent · {s.get('recorded', 0)} recorded · "
            f"{s.get('dropped', 0)} dropped (candidate busy) · {s.get('failed', 0)} failed"
        )


@click.command()
@click.argument("name")
@click.option(
    "--if-replay-matches",
    is_flag=True,
    help="Only if the newest replay report of the candidate's build found no difference "
    "(else 409 replay.mismatch).",
)
@client_options
@json_option
def promote(client, name: str, if_replay_matches: bool, as_json: bool) -> None:
    """The candidate takes all of NAME's requests; the build serving now drains."""
    report = None
    if if_replay_matches:
        now = client.traffic(name)
        reports = client.request("GET", f"/api/v1/models/{name}/replays")["items"]
        mine = [r for r in reports if r.get("to_build") == now.get("candidate_build")]
        if not mine:
            raise click.UsageError(
                f"no replay report of build #{now.get('candidate_build')}: run "
                f"`modelport replay {name} --build {now.get('candidate_build')}` first"
            )
        report = max(r["id"] for r in mine)
    done = client.promote(name, report)
    if as_json:
        print_json(done)
    else:
        console.print(f"[green]✓[/green] {name} serves build #{done['build']} (promoted)")


@click.command()
@click.argument("name")
@client_options
@json_option
def abort(client, name: str, as_json: bool) -> None:
    """Stop NAME's candidate: the build serving takes all requests again."""
    done = client.abort(name)
    if as_json:
        print_json(done)
    else:
        console.print(f"{name}: candidate aborted · build #{done['build']} takes 100 %")


@click.command()
@click.argument("name")
@click.argument("body")
@click.option("--key", envvar="MODELPORT_KEY", help="The model's access key (default: the token).")
@client_options
def predict(client, name: str, body: str, key: str | None) -> None:
    """Call model NAME with the JSON BODY; prints the response body."""
    result = client.predict(name, _json_arg(body, "BODY"), key=key)
    click.echo(msgspec.json.encode(result).decode())


@click.command()
@click.argument("name")
@click.option("--to", "to_build", type=int, help="The build to serve (default: the one before).")
@allow_breaking_option
@client_options
@json_option
def rollback(client, name: str, to_build: int | None, allow_breaking: bool, as_json: bool) -> None:
    """Serve the build deployed before the current one again (or --to N)."""
    try:
        started = client.rollback(name, to_build, allow_breaking=allow_breaking)
    except ApiError as exc:
        if exc.code != "schema.breaking" or as_json:
            raise
        retry = f"modelport rollback {name}" + (f" --to {to_build}" if to_build else "")
        _refused_schema(client, name, exc, to_build, retry + " --allow-breaking")
    _schema_note(started, as_json)
    done = _wait(client, name, started, as_json)
    if as_json:
        print_json(done)
    elif done["status"] == "deployed":
        console.print(f"[green]✓[/green] {name} serves build #{done['build']} again")
    sys.exit(0 if done["status"] == "deployed" else 1)


@click.command()
@click.argument("name")
@click.argument("replicas", type=int)
@client_options
@json_option
def scale(client, name: str, replicas: int, as_json: bool) -> None:
    """Run REPLICAS replicas of the current deployment."""
    done = client.scale(name, replicas)
    print_json(done) if as_json else console.print(f"{name}: {done['replicas']} replicas")


@click.command()
@click.argument("name")
@client_options
@json_option
def stop(client, name: str, as_json: bool) -> None:
    """Stop serving NAME (in-flight requests finish first)."""
    done = client.stop(name)
    print_json(done) if as_json else console.print(f"{name}: {done['status']}")


@click.command()
@click.argument("name")
@click.option("--no-wait", is_flag=True, help="Return once the restart has begun.")
@client_options
@json_option
def restart(client, name: str, no_wait: bool, as_json: bool) -> None:
    """Fresh replicas for NAME, ready before the old ones drain; waits until they serve."""
    started = client.restart(name)
    if no_wait:
        print_json(started) if as_json else console.print(
            f"{name}: restarting deployment {started['id']}"
        )
        return
    if not as_json:
        err_console.print(f"deployment {started['id']} (build #{started['build']}): restarting")

    def show(event: dict) -> None:
        if not as_json and event["kind"] not in ("restarted", "restart_failed"):
            detail = event.get("detail") or {}
            where = (  # another server's report of its share (a shared registry)
                f" on server {detail['server']} ({detail.get('replicas')} replicas)"
                if "server" in detail
                else ""
            )
            err_console.print(
                f"deployment {started['id']}: {event['kind']}{where}", highlight=False
            )

    done = client.wait_restart(name, started, on_event=show)
    ended = done["events"][-1] if done["events"] else {}
    restarted = any(e["kind"] == "restarted" for e in done["events"][len(started["events"]) :])
    if as_json:
        print_json(done)
    elif restarted:
        console.print(
            f"[green]✓[/green] {name}: {done['replicas']} fresh replica(s) of build "
            f"#{done['build']} ready"
        )
    else:
        err_console.print(
            f"[red]failed[/red]: {name} was not restarted "
            f"({(ended.get('detail') or {}).get('error') or done['status']}); "
            "the replicas before it keep serving"
        )
    sys.exit(0 if restarted else 1)


@click.command()
@click.argument("name")
@client_options
@json_option
def replicas(client, name: str, as_json: bool) -> None:
    """The replicas serving NAME now."""
    page = client.replicas(name)
    if as_json:
        return print_json(page)
    print_table(
        page["items"],
        [
            ("id", "id"),
            ("build", "build"),
            ("state", "state"),
            ("pid", "pid"),
            ("in_flight", "in flight"),
            ("served", "served"),
            ("failed", "failed"),
            ("restarts", "restarts"),
            ("node", "node"),
            ("started_at", "started"),
        ],
    )


@click.command()
@click.argument("name")
@client_options
@json_option
def deployments(client, name: str, as_json: bool) -> None:
    """Every deployment of NAME, newest first: which build served when, who, outcome."""
    page = client.deployments(name, limit=200)
    if as_json:
        return print_json(page)
    print_table(
        page["items"],
        [
            ("id", "id"),
            ("build", "build"),
            ("status", "status"),
            ("replicas", "replicas"),
            ("created_by", "who"),
            ("created_at", "from"),
            ("finished_at", "until"),
            ("reason", "reason"),
        ],
    )


@click.command()
@click.argument("name")
@click.option("--build", "build_number", type=int, help="A build's log.")
@click.option("--replica", "replica_id", help="A replica's output (default: every replica).")
@click.option("--stderr", is_flag=True, help="The replica's stderr instead of stdout.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")
@client_options
def logs(client, name, build_number, replica_id, stderr, follow) -> None:
    """A build's log, or the replicas' output."""
    if build_number is not None:
        lines = (
            client.follow_build_log(name, build_number)
            if follow
            else client.build_log(name, build_number).splitlines()
        )
        for line in lines:
            click.echo(line)
        return
    stream = "stderr" if stderr else "stdout"
    ids = [replica_id] if replica_id else [r["id"] for r in client.replicas(name)["items"]]
    if not ids:
        err_console.print(f"{name} has no replicas running; see `modelport logs {name} --build N`")
        return
    if follow:
        if len(ids) > 1:
            err_console.print(f"following {ids[0]} (use --replica to choose)")
        for text in client.follow_replica_logs(name, ids[0], stream):
            click.echo(text, nl=False)
        return
    for rid in ids:
        if len(ids) > 1:
            click.echo(f"==> {rid} <==")
        click.echo(client.replica_logs(name, rid, stream), nl=False)


@click.command()
@click.argument("name")
@click.option(
    "--since",
    default="1h",
    show_default=True,
    help="How far back: 15m, 6h, 7d, seconds, or an ISO-8601 time.",
)
@click.option("--step", type=int, help="Seconds per row (default: by the window, 10 s to 1 h).")
@client_options
@json_option
def metrics(client, name: str, since: str, step: int | None, as_json: bool) -> None:
    """Requests, errors, latency and resources of model NAME over time, per build."""
    series = client.metrics(name, since=since, step=step)
    if as_json:
        return print_json(series)
    points = series["points"]
    if not points:
        console.print(f"No predictions of {name} since {since}.")
        return
    rows = [
        {
            **p,
            "t": p["t"][11:19] if p["t"][:10] == points[-1]["t"][:10] else p["t"][:16],
            "error_rate": f"{100 * p['errors'] / p['requests']:.1f} %" if p["requests"] else "—",
            "cpu": f"{p['cpu_percent']:.0f} %",
            "memory": f"{p['memory_mb']:.0f} MB",
        }
        for p in points
    ]
    print_table(
        rows,
        [
            ("t", "time (UTC)"),
            ("build", "build"),
            ("requests", "requests"),
            ("error_rate", "errors"),
            ("p50_ms", "p50 ms"),
            ("p95_ms", "p95 ms"),
            ("p99_ms", "p99 ms"),
            ("cpu", "CPU"),
            ("memory", "memory"),
        ],
        title=f"{name}: {series['step_s']} s per row",
    )


@click.command()
@click.argument("name")
@click.option("--build", "number", type=int, help="The build (default: the one serving).")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@client_options
@json_option
def captures(client, name: str, number: int | None, limit: int, as_json: bool) -> None:
    """The requests (with their answers) that model NAME's deployment recorded, newest first."""
    if number is None:
        number = client.deployment(name)["build"]
    page = client.captures(name, number, limit=limit)
    if as_json:
        return print_json(page)
    if not page["items"]:
        console.print(
            f"No captured request of {name} build #{number}: deploy with "
            "--capture-percent above 0 to record some."
        )
        return

    def shown(item: dict, key: str) -> str:
        value = item.get(key)
        if value is None and item.get(f"{key}_base64"):
            return "(bytes) " + item[f"{key}_base64"]
        return msgspec.json.encode(value).decode()

    rows = [
        {
            "at": c["at"][11:19],
            "status": c["status"],
            "latency": f"{c['latency_ms']:g} ms",
            "request": shown(c, "request"),
            "response": shown(c, "response") + (" (cut)" if c["truncated"] else ""),
        }
        for c in page["items"]
    ]
    print_table(
        rows,
        [
            ("at", "time (UTC)"),
            ("status", "status"),
            ("latency", "latency"),
            ("request", "request"),
            ("response", "response"),
        ],
        title=f"{name} build #{number}: captured requests",
    )


COMMANDS = [
    deploy,
    predict,
    rollback,
    scale,
    stop,
    restart,
    replicas,
    deployments,
    logs,
    metrics,
    captures,
    traffic,
    promote,
    abort,
]
