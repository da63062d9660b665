#!/usr/bin/env python3
"""Replicas on a Ray cluster against local replicas, in the same run: throughput, latency and
the time to ready of each.

    scripts/bench/ray_serving.py [--duration 5] [--rounds 3]

Starts a two-node Ray cluster on this machine (ray.cluster_utils: 127.0.0.2 and 127.0.0.3, its
processes stopped by pid at the end) and two servers: one with local replicas, one with
MODELPORT_REPLICAS=ray://…. Each deploys the adder (a + b) with 2 replicas. Reported: the time
from `deploy` to ready on Ray for a cold node (the environment made there from the store) and a
cached one (a new deployment of the same build), next to the local server's; then wrk at c=64 and
c=1 against both servers, alternating in each round (the median round is reported with the
spread: this machine is shared and its speed drifts).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving as bench

ROOT = bench.ROOT


def timed_deploy(client, name: str, build: int, replicas: int) -> float:
    began = time.monotonic()
    done = client.wait_deployment(name, client.deploy(name, build, replicas=replicas)["id"])
    assert done["status"] == "deployed", done["reason"]
    return time.monotonic() - began


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "server"))
    from modelport.client import Client

    with tempfile.TemporaryDirectory(prefix="mp-rb-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        (tmp / "ray").mkdir()
        os.environ["RAY_TMPDIR"] = str(tmp)
        os.environ["MODELPORT_NODE_DIR"] = str(tmp / "nodes")
        from ray.cluster_utils import Cluster

        health = {
            "health_check_initial_delay_ms": 1000,
            "health_check_period_ms": 1000,
            "health_check_timeout_ms": 1000,
            "health_check_failure_threshold": 3,
        }
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "node_ip_address": "127.0.0.2",
                "num_cpus": 4,
                "include_dashboard": False,
                "object_store_memory": 80_000_000,
                "temp_dir": str(tmp),
                "_system_config": health,
            },
        )
        servers = []
        try:
            cluster.add_node(
                node_ip_address="127.0.0.3", num_cpus=4, object_store_memory=80_000_000
            )
            cluster.wait_for_nodes()
            local = bench.modelport_server(tmp / "local")
            servers.append(local)
            ray = bench.modelport_server(tmp / "ray", MODELPORT_REPLICAS=f"ray://{cluster.address}")
            servers.append(ray)
            targets, ready = [], {}
            for label, (proc, url, token) in (("local", local), ("ray", ray)):
                with Client(url, token) as client:
                    key = client.create_model("adder")["access_key"]
                    built = client.build(ROOT / "tests/models/add", "adder", "model.py:predict")
                    assert built["status"] == "built", built["error"]
                    cold = timed_deploy(client, "adder", built["number"], 2)
                    cached = timed_deploy(client, "adder", built["number"], 2)
                    ready[label] = (cold, cached)
                    nodes = sorted(r["node"] for r in client.replicas("adder")["items"])
                    print(f"{label}: replicas on {nodes}", flush=True)
                script = bench.lua_script(
                    bench.BODIES["adder"], {"Authorization": f"Bearer {key}"}, tmp
                )
                targets.append((label, f"{url}/models/adder/predict", script, proc.pid))
            for label, (cold, cached) in ready.items():
                print(
                    f"{label}: deploy → ready, 2 replicas: first {cold:.2f}s, again {cached:.2f}s"
                )
            print(
                f"{'target':6} {'c':>3} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non2xx':>6}"
                f" {'×local':>7} {'srv µs/req':>10}  spread"
            )
            for c in (64, 1):
                runs = bench.alternate(targets, c, args.rounds, args.duration)
                for label, found in runs.items():
                    r = (
                        bench.median_row(found)
                        if label != "local"
                        else {
                            **sorted(found, key=lambda g: g["rps"])[len(found) // 2],
                            "spread": sorted(g["rps"] for g in found),
                        }
                    )
                    print(
                        f"{label:6} {c:>3} {r['rps']:>9.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.2f}"
                        f" {r['non_2xx']:>6} {r.get('ratio', ''):>7}"
                        f" {r.get('server_cpu_us', ''):>10}"
                        f"  {' '.join(f'{v:g}' for v in r['spread'])}",
                        flush=True,
                    )
        finally:
            for proc, _, _ in servers:
                bench.stop(proc)
            cluster.shutdown()


if __name__ == "__main__":
    main()
