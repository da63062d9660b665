#!/usr/bin/env python3
"""How fast deployments move: a replica's start to ready, and a rollback call → every response
from the old build.

    scripts/bench/rollout.py [--rounds 5]

A real `modelport serve` on a loopback port (stopped by its pid), the trivial typed model in two
builds that answer differently. While a client thread calls the model back to back, `rollback`
is called; the figure is the time from the call until the first response of the old build after
which no response of the new one came. Bounded: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import ROOT, modelport_server, stop

MODEL = "def predict(a: float, b: float = 0.0) -> float:\n    return a + b + {bias}\n"


def project(folder: Path, bias: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(MODEL.format(bias=bias))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--replicas", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "server"))
    from modelport.client import Client

    with tempfile.TemporaryDirectory(prefix="mp-rollout-") as tmp:
        tmp = Path(tmp)
        server, url, token = modelport_server(tmp / "data")
        try:
            with Client(url, token) as client:
                key = client.create_model("roll")["access_key"]
                old = client.build(project(tmp / "old", 0), "roll", "model.py:predict")["number"]
                new = client.build(project(tmp / "new", 1000), "roll", "model.py:predict")["number"]
                ready, rollbacks = [], []
                for _ in range(args.rounds):
                    started = time.monotonic()
                    done = client.wait_deployment(
                        "roll", client.deploy("roll", old, replicas=args.replicas)["id"], timeout=60
                    )
                    assert done["status"] == "deployed", done
                    ready.append(time.monotonic() - started)
                    done = client.wait_deployment(
                        "roll", client.deploy("roll", new, replicas=args.replicas)["id"], timeout=60
                    )
                    assert done["status"] == "deployed", done
                    rollbacks.append(rollback_time(client, url, key, str(old).encode()))
        finally:
            stop(server)
    print(
        f"deploy of {args.replicas} replicas, call → deployed: median "
        f"{statistics.median(ready):.2f} s ({' '.join(f'{v:.2f}' for v in ready)})"
    )
    print(
        f"rollback call → every response from the old build: median "
        f"{statistics.median(rollbacks):.3f} s ({' '.join(f'{v:.3f}' for v in rollbacks)})"
    )


def rollback_time(client, url: str, key: str, old_build: bytes) -> float:
    seen: list[tuple[float, bytes]] = []
    stopping = threading.Event()

    def caller() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
            while not stopping.is_set():
                r = http.post(f"{url}/models/roll/predict", json={"a": 1})
                assert r.status_code == 200, r.text
                seen.append((time.monotonic(), r.headers["x-model-build"].encode()))

    thread = threading.Thread(target=caller)
    thread.start()
    time.sleep(0.3)
    called = time.monotonic()
    client.rollback("roll")
    deadline = called + 30
    while time.monotonic() < deadline and (not seen or seen[-1][1] != old_build):
        time.sleep(0.01)
    time.sleep(0.3)  # responses after the switch: none may come from the new build
    stopping.set()
    thread.join(15)
    after = [(t, b) for t, b in seen if t >= called]
    last_new = max((i for i, (_, b) in enumerate(after) if b != old_build), default=-1)
    assert last_new + 1 < len(after), "never switched back"
    return after[last_new + 1][0] - called


if __name__ == "__main__":
    main()
