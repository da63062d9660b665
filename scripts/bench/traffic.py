#!/usr/bin/env python3
"""A canary's and a shadow's cost (issue 17): c=64 `a + b` through one server, as ratios to a
single build measured in the same round.

    scripts/bench/traffic.py [--duration 5] [--rounds 3] [--replicas 2] [--connections 64]

One `modelport serve` holds three models of the same adder (tests/models/add): `single` (one
build), `canary` (its primary and a candidate taking 10 % of requests) and `shadow` (its
primary and a shadow candidate getting a copy of every request). Each primary has
``--replicas`` replicas, each candidate ``--candidate-replicas``. Every round measures the three
one after the other with wrk (serving.py's helpers; one thread, since the machine has 2 cores);
the ratios are each round's, the median round is reported with the spread of all. A shadow's
copies past what its candidate keeps up with are dropped (counted, printed).
Targets (issue 17): canary ≥ 0.9 of single, shadow ≥ 0.45 (it does each request
twice). The server binds 127.0.0.1 and is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving as sv


def candidate(client, name: str, build: int, replicas: int, **traffic) -> None:
    row = client.deploy(name, build, replicas=replicas, **traffic)
    done = client.wait_candidate(name, row["id"])
    assert done["status"] == "candidate", done["reason"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument(
        "--candidate-replicas", type=int, default=1, help="the canary's and the shadow's"
    )
    ap.add_argument("--json", type=Path, help="Also write the figures here.")
    args = ap.parse_args()
    sys.path.insert(0, str(sv.ROOT / "server"))
    from modelport.client import Client

    with tempfile.TemporaryDirectory(prefix="mp-bench-traffic-") as tmp:
        proc, url, token = sv.modelport_server(Path(tmp) / "data")
        try:
            client = Client(url, token)
            keys = {}
            for name in ("single", "canary", "shadow"):
                keys[name] = sv.deploy(client, "adder", name, args.replicas)
            for name, traffic in (("canary", {"canary_percent": 10}), ("shadow", {"shadow": True})):
                folder, entry = sv.ENTRY["adder"]
                built = client.build(sv.ROOT / folder, name, entry)
                candidate(client, name, built["number"], args.candidate_replicas, **traffic)
            scripts = {
                name: sv.lua_script(
                    sv.BODIES["adder"], {"Authorization": f"Bearer {key}"}, Path(tmp)
                )
                for name, key in keys.items()
            }
            for name in keys:  # warm-up
                sv.wrk(f"{url}/models/{name}/predict", scripts[name], args.connections, 2)
            rounds = []
            for _ in range(args.rounds):
                got = {
                    name: sv.measure(
                        f"{url}/models/{name}/predict",
                        scripts[name],
                        args.connections,
                        args.duration,
                        proc.pid,
                    )
                    for name in ("single", "canary", "shadow")
                }
                base = got["single"]["rps"]
                for name in ("canary", "shadow"):
                    got[name]["ratio"] = round(got[name]["rps"] / base, 3) if base else 0.0
                rounds.append(got)
                time.sleep(0.5)
            shown = client.traffic("shadow")
        finally:
            sv.stop(proc)
    result = {}
    for name in ("single", "canary", "shadow"):
        result[name] = sv.median_row([r[name] for r in rounds])
    result["shadow_copies"] = shown.get("shadow")
    print(
        f"c={args.connections}, {args.replicas} replica(s) per primary, "
        f"{args.candidate_replicas} per candidate, {args.rounds} rounds"
    )
    for name, row in result.items():
        if name == "shadow_copies":
            print(f"shadow copies: {row}")
            continue
        ratio = f" ratio {row['ratio']:.3f} (spread {row['spread']})" if "ratio" in row else ""
        print(
            f"{name:>7}: {row['rps']:8.0f} req/s  p50 {row['p50_ms']:.2f} ms  "
            f"p99 {row['p99_ms']:.2f} ms  non-2xx {row['non_2xx']}{ratio}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
