#!/usr/bin/env python3
"""Load against `POST /models/{name}/predict` next to a bare baseline measured in the same run.

    scripts/bench/serving.py [--duration 5] [--rounds 3] [--models adder,iris,radder]
                             [--sandbox-off-too]

wrk (Debian's package; installed when missing) with one thread, since the machine has 2 cores.
Every run is bounded in time and stops by itself; servers bind to 127.0.0.1 and are stopped by pid.
Figures are reported as ratios to the bare baseline of the same round: each round measures the
bare server right before modelport's deployments (1 and 2 replicas), and the median round is
reported with the spread of all rounds, since this machine's speed drifts by 2× at times.
Next to it, in the same rounds, ``floor``: the bare server handing each body to a child process
that does the work (bare_server.py --pipe) — the four hand-offs of a prediction through a
replica and nothing else, the least a server in front of replica processes can take.
With --sandbox-off-too a second server runs the same deployments with MODELPORT_SANDBOX=off, in
the same rounds: `vs off` is the sandbox's cost (req/s with it over req/s without).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
BODIES = {
    "adder": {"a": 1.5, "b": 2.25},
    "iris": {"features": [[5.1, 3.5, 1.4, 0.2]]},
    "radder": {"a": 1.5, "b": 2.25},
}
ENTRY = {
    "adder": ("tests/models/add", "model.py:predict"),
    "iris": ("examples/iris", "predict.py:predict"),
    # An R function (args$a + args$b), against the same bare baseline as the adder's
    "radder": ("tests/models/radd", "model.R:predict"),
}
BARE = {"radder": "adder"}  # the bare server's work for a model: its own unless named here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_wrk() -> str:
    if shutil.which("wrk"):
        return shutil.which("wrk")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    return shutil.which("wrk")


def ensure_model_deps(kind: str) -> None:
    """The bare baseline does the model's work in this Python: it needs the model's packages."""
    if kind != "iris":
        return
    try:
        import sklearn  # noqa: F401
    except ImportError:
        subprocess.run(
            [
                PY,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                str(ROOT / "examples/iris/requirements.txt"),
            ],
            check=True,
        )


def lua_script(body: dict, headers: dict, folder: Path) -> Path:
    script = folder / f"post-{abs(hash(json.dumps([body, headers], sort_keys=True)))}.lua"
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {json.dumps(json.dumps(body))}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    return script


def wrk(url: str, script: Path, connections: int, duration: int) -> dict:
    out = subprocess.run(
        [
            ensure_wrk(),
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": to_ms(lat.get("50", "0ms")),
        "p99_ms": to_ms(lat.get("99", "0ms")),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (robust to other load on the box)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def replica_pids(server_pid: int) -> list[int]:
    """The server's replica processes, and theirs (an R function's R process)."""

    def children(pid: int) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    workers = children(server_pid)
    return workers + [child for pid in workers for child in children(pid)]


def to_ms(text: str) -> float:
    value, unit = float(re.match(r"[\d.]+", text).group()), re.sub(r"[\d.]+", "", text)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def start(
    cmd: list[str], env: dict | None = None, ready: str | None = None, url: str | None = None
):
    proc = subprocess.Popen(
        cmd,
        # read only for its "ready" line: a server watched by its URL writes nowhere, since a
        # pipe nobody reads blocks it once full (a server logging every request)
        stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ready and ready in (proc.stdout.readline() or ""):
            return proc
        if url:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return proc
            except httpx.TransportError:
                time.sleep(0.1)
    raise RuntimeError(f"{cmd} did not start")


def bare_server(port: int, kind: str, *options: str) -> subprocess.Popen:
    """scripts/bench/bare_server.py on ``port`` doing ``kind``'s work (--pipe: the floor)."""
    script = str(ROOT / "scripts/bench/bare_server.py")
    return start([PY, script, str(port), kind, *options], ready="ready")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def modelport_server(data: Path, **extra: str):
    port = free_port()
    env = {**os.environ, "MODELPORT_HOME": str(data), **extra}
    proc = start(
        [PY, "-m", "modelport.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        url=f"http://127.0.0.1:{port}/api/v1/health",
    )
    return proc, f"http://127.0.0.1:{port}", (data / "admin.token").read_text().strip()


def deploy(client, kind: str, name: str, replicas: int) -> str:
    from modelport.client import ApiError

    try:
        key = client.create_model(name)["access_key"]
    except ApiError:
        key = client.rotate_key(name)["access_key"]
    folder, entry = ENTRY[kind]
    built = client.build(ROOT / folder, name, entry)
    assert built["status"] == "built", built["error"]
    done = client.wait_deployment(
        name, client.deploy(name, built["number"], replicas=replicas)["id"]
    )
    assert done["status"] == "deployed", done["reason"]
    return key


def measure(url: str, script: Path, c: int, duration: int, server_pid: int | None) -> dict:
    """One wrk run; with ``server_pid``, also the CPU that the server and its replicas spent per
    request."""
    if server_pid is None:
        return wrk(url, script, c, duration)
    reps = replica_pids(server_pid)
    before = cpu_seconds([server_pid]), cpu_seconds(reps)
    got = wrk(url, script, c, duration)
    n = max(1.0, got["rps"] * duration)
    got["server_cpu_us"] = round((cpu_seconds([server_pid]) - before[0]) / n * 1e6, 1)
    got["replica_cpu_us"] = round((cpu_seconds(reps) - before[1]) / n * 1e6, 1)
    return got


def alternate(targets: list[tuple], c: int, rounds: int, duration: int) -> dict[str, list[dict]]:
    """label → its runs: each round measures every (label, url, script, server pid) in turn, the
    first the others' baseline (their "ratio" is to its req/s in the same round)."""
    runs: dict[str, list[dict]] = {}
    for _ in range(rounds):
        base = None
        for label, url, script, pid in targets:
            got = measure(url, script, c, duration, pid)
            if base is None:
                base = got
            else:
                got["ratio"] = round(got["rps"] / base["rps"], 3)
            runs.setdefault(label, []).append(got)
    return runs


def median_row(runs: list[dict]) -> dict:
    """The run with the median ratio (or req/s), its own figures kept together."""
    key = "ratio" if "ratio" in runs[0] else "rps"
    ordered = sorted(runs, key=lambda r: r[key])
    return {**ordered[len(ordered) // 2], "spread": [r[key] for r in ordered]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="each round measures the bare baseline right before modelport; the "
        "median round is reported (this machine's speed drifts)",
    )
    ap.add_argument("--models", default="adder,iris,radder")
    ap.add_argument("--json", type=Path, help="Also write the figures here.")
    ap.add_argument(
        "--sandbox-off-too",
        action="store_true",
        help="also measure a server with MODELPORT_SANDBOX=off, in the same rounds",
    )
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "server"))
    from modelport.client import Client

    rows = []
    with tempfile.TemporaryDirectory(prefix="mp-bench-") as tmp:
        tmp = Path(tmp)
        server, url, token = modelport_server(tmp / "data")
        servers = [("modelport", server, url, token)]
        try:
            if args.sandbox_off_too:
                servers.append(
                    ("unboxed", *modelport_server(tmp / "data-off", MODELPORT_SANDBOX="off"))
                )
            for kind in args.models.split(","):
                ensure_model_deps(kind)
                port, floor_port = free_port(), free_port()
                bare = bare_server(port, BARE.get(kind, kind))
                floor = bare_server(floor_port, BARE.get(kind, kind), "--pipe")
                try:
                    targets = [
                        (
                            "bare",
                            "-",
                            f"http://127.0.0.1:{port}/",
                            lua_script(BODIES[kind], {}, tmp),
                            None,
                        ),
                        (
                            "floor",
                            "-",
                            f"http://127.0.0.1:{floor_port}/",
                            lua_script(BODIES[kind], {}, tmp),
                            None,
                        ),
                    ]
                    for label, proc, where, secret in servers:
                        with Client(where, secret) as client:
                            for replicas in (1, 2):
                                name = f"{kind}-{replicas}"
                                key = deploy(client, kind, name, replicas)
                                script = lua_script(
                                    BODIES[kind], {"Authorization": f"Bearer {key}"}, tmp
                                )
                                targets.append(
                                    (
                                        label,
                                        replicas,
                                        f"{where}/models/{name}/predict",
                                        script,
                                        proc.pid,
                                    )
                                )
                    for c in (1, 64):
                        runs: dict[tuple, list[dict]] = {}
                        for _ in range(args.rounds):
                            base, this_round = None, {}
                            for target, replicas, where, script, pid in targets:
                                got = measure(where, script, c, args.duration, pid)
                                if base is None:
                                    base = got
                                else:
                                    got["ratio"] = round(got["rps"] / base["rps"], 3)
                                runs.setdefault((target, replicas), []).append(got)
                                this_round[(target, replicas)] = got
                            for (target, replicas), got in this_round.items():
                                off = this_round.get(("unboxed", replicas))
                                if target == "modelport" and off:
                                    got["vs_off"] = round(got["rps"] / off["rps"], 3)
                        for (target, replicas), found in runs.items():
                            row = {
                                "model": kind,
                                "target": target,
                                "replicas": replicas,
                                "c": c,
                                **median_row(found),
                            }
                            costs = sorted(g["vs_off"] for g in found if "vs_off" in g)
                            if costs:  # the median of the rounds' own ratios
                                row["vs_off"], row["vs_off_spread"] = costs[len(costs) // 2], costs
                            rows.append(row)
                finally:
                    stop(bare)
                    stop(floor)
        finally:
            for _, proc, _, _ in servers:
                stop(proc)
    print(
        f"{'model':7} {'target':9} {'rep':>3} {'c':>3} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'non2xx':>6} {'ratio':>6} {'vs off':>6} {'srv µs/req':>10} {'rep µs/req':>10}  spread"
    )
    for r in rows:
        print(
            f"{r['model']:7} {r['target']:9} {r['replicas']:>3} {r['c']:>3} {r['rps']:>9.0f}"
            f" {r['p50_ms']:>8.3f} {r['p99_ms']:>8.2f} {r['non_2xx']:>6} {r.get('ratio', ''):>6}"
            f" {r.get('vs_off', ''):>6}"
            f" {r.get('server_cpu_us', ''):>10} {r.get('replica_cpu_us', ''):>10}"
            f"  {' '.join(f'{v:g}' for v in r['spread'])}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
