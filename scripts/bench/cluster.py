#!/usr/bin/env python3
"""Two servers on one PostgreSQL registry and one S3 bucket against the one-process SQLite
setup, in the same run: prediction throughput through one gateway, a forwarded prediction's
added latency, and the time from a rollback call on one server until the other serves the old
build.

    scripts/bench/cluster.py [--duration 5] [--rounds 3] [--rollbacks 3] [--rollback-only]

Starts a PostgreSQL (scripts/pg-server) and a radosgw (scripts/s3-server) in a temp folder, a
SQLite server, and servers a and b sharing the database, the bucket and a sealing key; every
process is stopped by pid at the end. The SQLite server runs the adder with 1 replica; the pair
runs it with 2 (spread: one on each), so that one gateway of the pair has one replica of its
own, as the SQLite server does. wrk at c=64 alternates between the SQLite server and a in each
round (the median round is reported with the spread: this machine is shared). Then a model
with 1 replica: p50 at c=1 on the server that hosts it and on the one that forwards it. Then
rollbacks through a, polling b every 5 ms for the old build (only those with --rollback-only).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving as bench

ROOT = bench.ROOT
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "testtest"}


def script(*args: str) -> str:
    return subprocess.run(
        [str(ROOT / "scripts" / args[0]), *args[1:]], check=True, capture_output=True, text=True
    ).stdout.strip()


def replicas(client, name: str) -> int:
    return len(client.replicas(name)["items"])


@contextlib.contextmanager
def shared_registry(prefix: str) -> Iterator[tuple[Path, dict[str, str], list]]:
    """A temp folder, a PostgreSQL and a radosgw in it, and what servers sharing them need in
    their environment; the list is for the servers started meanwhile (proc, url, token), all
    stopped by pid at the end, then the services, then the folder removed."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    pg, s3 = tmp / "pg", tmp / "s3"
    pg.mkdir()
    os.chmod(tmp, 0o755)
    pg_port, s3_port = bench.free_port(), bench.free_port()
    servers: list = []
    started_pg = started_s3 = False
    try:
        script("pg-server", "start", str(pg), str(pg_port))
        started_pg = True
        script("s3-server", "start", str(s3), str(s3_port), "modelport")
        started_s3 = True
        key_file = tmp / "sealing.key"
        key_file.write_bytes(os.urandom(32))
        yield (
            tmp,
            {
                **CREDENTIALS,
                "MODELPORT_DATABASE_URL": f"postgresql://modelport@127.0.0.1:{pg_port}/modelport",
                "MODELPORT_STORE_URL": f"s3://modelport/bench?endpoint=http://127.0.0.1:{s3_port}"
                "&region=us-east-1",
                "MODELPORT_SECRET_KEY_FILE": str(key_file),
            },
            servers,
        )
    finally:
        for proc, _, _ in servers:
            bench.stop(proc)
        if started_s3:
            subprocess.run([str(ROOT / "scripts/s3-server"), "stop", str(s3)], check=False)
        if started_pg:
            subprocess.run([str(ROOT / "scripts/pg-server"), "stop", str(pg)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def join(tmp: Path, servers: list, node: str, shared: dict[str, str], **extra: str):
    """Server ``node`` on the shared registry (the first one's admin token: the registry's)."""
    if servers:
        (tmp / node).mkdir()
        (tmp / node / "admin.token").write_text(servers[0][2])
    srv = bench.modelport_server(tmp / node, MODELPORT_NODE=node, **shared, **extra)
    servers.append(srv)
    return srv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rollbacks", type=int, default=3)
    ap.add_argument(
        "--rollback-only", action="store_true", help="only the rollbacks (no wrk, no SQLite)"
    )
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "server"))
    from modelport.client import Client

    with shared_registry("mp-cb-") as (tmp, shared, servers):
        a = join(tmp, servers, "a", shared)
        b = join(tmp, servers, "b", shared)
        one = None if args.rollback_only else bench.modelport_server(tmp / "sqlite")
        if one is not None:
            servers.append(one)
        token = a[2]
        with Client(a[1], token) as ca, Client(b[1], token) as cb:
            key_pair = bench.deploy(ca, "adder", "adder", 2)
            deadline = time.monotonic() + 60
            while (replicas(ca, "adder"), replicas(cb, "adder")) != (1, 1):
                assert time.monotonic() < deadline, "the pair did not spread its replicas"
                time.sleep(0.2)
        if one is not None:
            gateways(args, tmp, one, a, b, token, key_pair)

        took = []
        with Client(a[1], token) as ca:
            second = ca.build(ROOT / "tests/models/add", "adder", "model.py:predict")["number"]
            first = second - 1
            for i in range(args.rollbacks):
                new, old = (second, first) if i % 2 == 0 else (first, second)
                done = ca.wait_deployment("adder", ca.deploy("adder", new, replicas=2)["id"])
                assert done["status"] == "deployed", done
                with httpx.Client(timeout=10) as http:

                    def build_on_b() -> str:
                        return http.post(
                            f"{b[1]}/models/adder/predict",
                            json=bench.BODIES["adder"],
                            headers={"Authorization": f"Bearer {key_pair}"},
                        ).headers.get("x-model-build", "")

                    while build_on_b() != str(new):
                        time.sleep(0.05)
                    began = time.monotonic()
                    ca.rollback("adder", to_build=old)
                    while build_on_b() != str(old):
                        time.sleep(0.005)
                    took.append(time.monotonic() - began)
        print(
            "rollback on a → b serves the old build: "
            + ", ".join(f"{t:.3f}" for t in took)
            + f" s (median {sorted(took)[len(took) // 2]:.3f})"
        )


def gateways(args, tmp: Path, one, a, b, token: str, key_pair: str) -> None:
    """Throughput through a against the SQLite server, then a forwarded prediction's p50."""
    from modelport.client import Client

    with Client(one[1], one[2]) as c:
        key_one = bench.deploy(c, "adder", "adder", 1)
    with Client(a[1], token) as ca, Client(b[1], token) as cb:
        key_fwd = bench.deploy(ca, "adder", "solo", 1)
        while sorted((replicas(ca, "solo"), replicas(cb, "solo"))) != [0, 1]:
            time.sleep(0.2)
        host, other = (a, b) if replicas(ca, "solo") == 1 else (b, a)

    def target(label, srv, name, key):
        lua = bench.lua_script(bench.BODIES["adder"], {"Authorization": f"Bearer {key}"}, tmp)
        return label, f"{srv[1]}/models/{name}/predict", lua, srv[0].pid

    print(
        f"{'target':14} {'c':>3} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non2xx':>6}"
        f" {'×sqlite':>8}  spread"
    )
    pair = [
        target("sqlite, 1 proc", one, "adder", key_one),
        target("a of a+b (PG)", a, "adder", key_pair),
    ]
    runs = bench.alternate(pair, 64, args.rounds, args.duration)
    for label, found in runs.items():
        r = bench.median_row(found)
        print(
            f"{label:14} {64:>3} {r['rps']:>9.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.2f}"
            f" {r['non_2xx']:>6} {r.get('ratio', ''):>8}"
            f"  {' '.join(f'{v:g}' for v in r['spread'])}",
            flush=True,
        )

    fwd = [
        target("solo on host", host, "solo", key_fwd),
        target("solo forwarded", other, "solo", key_fwd),
    ]
    p50s: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for label, url, lua, _pid in fwd:
            got = bench.wrk(url, lua, 1, args.duration)
            assert got["non_2xx"] == 0, got
            p50s.setdefault(label, []).append(got["p50_ms"])
    med = {k: sorted(v)[len(v) // 2] for k, v in p50s.items()}
    print(
        f"c=1 p50: on the host {med['solo on host']:.3f} ms, forwarded "
        f"{med['solo forwarded']:.3f} ms: +{med['solo forwarded'] - med['solo on host']:.3f}"
        f" ms (rounds {p50s})",
        flush=True,
    )


if __name__ == "__main__":
    main()
