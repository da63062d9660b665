#!/usr/bin/env python3
"""A forwarded prediction against a direct one, in the same run: p50, p99 and req/s at c=1 and
c=16 on the server that hosts a one-replica model and through a server that forwards it.

    scripts/bench/forwarding.py [--duration 5] [--rounds 3] [--baseline REV]

Servers a and b share a PostgreSQL (scripts/pg-server) and a radosgw (scripts/s3-server) in a
temp folder (scripts/bench/cluster.py's setup); the adder runs with 1 replica, on one of them.
With --baseline REV (a git revision, e.g. main), a third server c runs the server code of that
revision (`git archive`) on the same registry: its forwarding is measured in the same rounds
(the host may then be any of the three; the other two forward). Each round runs every target at
each concurrency for --duration seconds with wrk (bounded in time); the median round is
reported, with the spread, as ratios to the direct target of the same round. The load average
is printed before and after: this machine is shared.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster
import serving as bench

ROOT = bench.ROOT


def old_tree(rev: str, dest: Path) -> Path:
    """The server code of ``rev``, unpacked in ``dest``: what the baseline server imports."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "server"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "server"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", help="a git revision whose forwarding runs beside, e.g. main")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "server"))
    from modelport.client import Client

    print(f"load average before: {load()}", flush=True)
    with cluster.shared_registry("mp-fwd-") as (tmp, shared, servers):
        nodes = {
            "a (this tree)": cluster.join(tmp, servers, "a", shared),
            "b (this tree)": cluster.join(tmp, servers, "b", shared),
        }
        if args.baseline:
            code = old_tree(args.baseline, tmp / "old")
            nodes[f"c ({args.baseline})"] = cluster.join(
                tmp, servers, "c", shared, PYTHONPATH=str(code)
            )
        token = servers[0][2]
        with Client(servers[0][1], token) as client:
            key = bench.deploy(client, "adder", "solo", 1)
        counts: dict[str, int] = {}
        deadline = time.monotonic() + 90
        while sorted(counts.values()) != [0] * (len(nodes) - 1) + [1]:
            assert time.monotonic() < deadline, f"one replica on one server: {counts}"
            time.sleep(0.2)
            for label, (_, url, _) in nodes.items():
                with Client(url, token) as client:
                    counts[label] = len(client.replicas("solo")["items"])
        headers = {"Authorization": f"Bearer {key}"}
        for label, (_, url, _) in nodes.items():  # every server answers it (the others forward)
            predict = f"{url}/models/solo/predict"
            while httpx.post(
                predict, json=bench.BODIES["adder"], headers=headers, timeout=60
            ).is_error:
                assert time.monotonic() < deadline, f"{label} does not answer"
                time.sleep(0.2)
        lua = bench.lua_script(bench.BODIES["adder"], headers, tmp)
        host = next(label for label, n in counts.items() if n == 1)
        host_pid = nodes[host][0].pid
        targets = [(f"direct: {host}", nodes[host])] + [
            (f"forwarded by {label}", srv) for label, srv in nodes.items() if label != host
        ]
        runs: dict[tuple[int, str], list[dict]] = {}
        for _ in range(args.rounds):
            for c in (1, 16):
                base = None
                for label, (proc, url, _) in targets:
                    pids = {proc.pid, host_pid}
                    before = {pid: bench.cpu_seconds([pid]) for pid in pids}
                    got = bench.wrk(f"{url}/models/solo/predict", lua, c, args.duration)
                    n = max(1.0, got["rps"] * args.duration) / 1e6
                    spent = {pid: (bench.cpu_seconds([pid]) - before[pid]) / n for pid in pids}
                    got["cpu_us"] = round(spent[proc.pid])  # the server called
                    got["host_cpu_us"] = round(spent[host_pid])
                    if base is None:
                        base = got
                    got["ratio"] = round(got["rps"] / base["rps"], 3)
                    got["added_p50_ms"] = round(got["p50_ms"] - base["p50_ms"], 3)
                    runs.setdefault((c, label), []).append(got)
        print(
            f"{'target':32} {'c':>3} {'req/s':>8} {'p50 ms':>7} {'+p50 ms':>8} {'p99 ms':>7}"
            f" {'non2xx':>6} {'cpu µs':>7} {'host µs':>7} {'×direct':>8}  spread (×direct)"
        )
        for (c, label), found in runs.items():
            r = bench.median_row(found)
            added = sorted(x["added_p50_ms"] for x in found)
            print(
                f"{label:32} {c:>3} {r['rps']:>8.0f} {r['p50_ms']:>7.3f}"
                f" {added[len(added) // 2]:>8.3f} {r['p99_ms']:>7.2f} {r['non_2xx']:>6}"
                f" {r['cpu_us']:>7} {r['host_cpu_us']:>7}"
                f" {r['ratio']:>8}  {' '.join(f'{v:g}' for v in r['spread'])}",
                flush=True,
            )
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
