#!/usr/bin/env python3
"""Build of a large-weights project into an S3 store (a real radosgw, scripts/s3-server) against
the same build into the local store: upload → built seconds, MB/s, and the server's peak RSS.

    scripts/bench/s3_build.py [--weights-mb 500]

radosgw, its cluster and the servers bind to 127.0.0.1, use temporary folders and are stopped by
pid. memstore keeps the bucket in RAM: give it (S3_SERVER_BYTES) more than the weights.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))
from modelport.client import Client  # noqa: E402
from serving import free_port, modelport_server, stop  # noqa: E402

CODE = "def predict(a: float) -> float:\n    return a\n"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "testtest"}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_once(data: Path, project: Path, size_mb: float, **env: str) -> str:
    server, url, token = modelport_server(data, **env)
    try:
        before = peak_rss_mb(server.pid)
        with Client(url, token) as c:
            started = time.perf_counter()
            built = c.build(project, "big", "predict.py:predict")
            took = time.perf_counter() - started
        assert built["status"] == "built", built["error"]
        return (
            f"{took:.2f} s ({size_mb / took:.0f} MB/s through pack, upload and store); "
            f"server peak RSS {peak_rss_mb(server.pid):.0f} MB (after start-up {before:.0f} MB)"
        )
    finally:
        stop(server)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights-mb", type=int, default=500)
    args = ap.parse_args()
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="mp-bench-s3-") as tmp:
        tmp = Path(tmp)
        project = tmp / "proj"
        project.mkdir()
        (project / "predict.py").write_text(CODE)
        rng = np.random.default_rng(7)
        with open(project / "weights.bin", "wb") as f:  # model-like: float32 noise, 1 MiB a time
            for _ in range(args.weights_mb):
                f.write((rng.standard_normal(262144) * 0.02).astype(np.float32).tobytes())
        size = (project / "weights.bin").stat().st_size / 1e6

        s3_dir, port = tmp / "s3", free_port()
        env = {**os.environ, "S3_SERVER_BYTES": str(max(2 << 30, 3 * args.weights_mb << 20))}
        script = [str(ROOT / "scripts" / "s3-server")]
        endpoint = subprocess.run(
            [*script, "start", str(s3_dir), str(port), "bench"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        try:
            print(f"weights: {size:.0f} MB of float32 noise")
            print("local store:", build_once(tmp / "local", project, size))
            url = f"s3://bench/mp?endpoint={endpoint}&region=us-east-1"
            print(
                "S3 store:   ",
                build_once(tmp / "s3data", project, size, MODELPORT_STORE_URL=url, **CREDENTIALS),
            )
        finally:
            subprocess.run([*script, "stop", str(s3_dir)], check=False)


if __name__ == "__main__":
    main()
