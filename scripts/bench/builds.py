#!/usr/bin/env python3
"""Build figures against a real server: a code-only change with the environment cached, bytes a
one-file change adds, export and import of a build with 500 MB of weights, a cold sklearn build.

    scripts/bench/builds.py [--weights-mb 500] [--skip-sklearn]

Servers bind to 127.0.0.1, use temporary data dirs and are stopped by pid.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))
from modelport.client import Client  # noqa: E402
from serving import modelport_server, stop  # noqa: E402

CODE = "def predict(a: float, b: float = {b}) -> float:\n    return a + b\n"


def timed_build(client: Client, folder: Path, name: str, entry: str = "predict.py:predict"):
    started = time.perf_counter()
    build = client.build(folder, name, entry)
    return build, time.perf_counter() - started


def uv_seconds(log: str) -> float:
    """Seconds uv reported for its steps in a build log (resolve, prepare, install, compile)."""
    total = 0.0
    for value, unit in re.findall(r"in ([\d.]+)(ms|s)\b", log):
        total += float(value) / (1000 if unit == "ms" else 1)
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights-mb", type=int, default=500)
    ap.add_argument("--skip-sklearn", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mp-bench-builds-") as tmp:
        tmp = Path(tmp)
        os.environ["UV_CACHE_DIR"] = str(tmp / "uv-cache")  # cold: nothing cached from before
        server, url, token = modelport_server(tmp / "a")
        other, url_b, token_b = modelport_server(tmp / "b")
        try:
            with Client(url, token) as c, Client(url_b, token_b) as c2:
                project = tmp / "proj"
                project.mkdir()
                (project / "predict.py").write_text(CODE.format(b=1.0))
                _, cold = timed_build(c, project, "add")
                (project / "predict.py").write_text(CODE.format(b=2.0))
                second, warm = timed_build(c, project, "add")
                print(f"first build (tiny env, cold caches): {cold:.2f} s")
                print(f"code-only change, environment cached, upload → built: {warm:.2f} s")
                print(
                    f"bytes the second build added: {second['new_bytes']} "
                    f"(the changed file is {len(CODE.format(b=2.0))} bytes; the rest is its "
                    "snapshot listing and manifest)"
                )

                weights = project / "weights.bin"
                import numpy as np

                rng = np.random.default_rng(7)
                with open(weights, "wb") as f:  # model-like: float32 noise, a MB at a time
                    for _ in range(args.weights_mb):
                        f.write((rng.standard_normal(262144) * 0.02).astype(np.float32).tobytes())
                big, big_s = timed_build(c, project, "big")
                size = weights.stat().st_size / 1e6
                print(
                    f"build with {size:.0f} MB of weights: {big_s:.2f} s "
                    f"({size / big_s:.0f} MB/s through pack, upload and store)"
                )
                export = tmp / "big.tar.zst"
                started = time.perf_counter()
                c.export_build("big", big["number"], export)
                ex_s = time.perf_counter() - started
                started = time.perf_counter()
                imported = c2.import_build(export)
                im_s = time.perf_counter() - started
                assert imported["digest"] == big["digest"]
                print(
                    f"export: {ex_s:.2f} s ({size / ex_s:.0f} MB/s); import into another server:"
                    f" {im_s:.2f} s ({size / im_s:.0f} MB/s);"
                    f" file {export.stat().st_size / 1e6:.0f} MB"
                )
                if not args.skip_sklearn:
                    sk, sk_s = timed_build(c, ROOT / "examples" / "iris", "iris")
                    log = c.build_log("iris", sk["number"])
                    uv = uv_seconds(log)
                    print(
                        f"cold scikit-learn build: {sk_s:.2f} s, of which uv reported "
                        f"{uv:.2f} s ({100 * uv / sk_s:.0f}%)"
                    )
        finally:
            stop(server)
            stop(other)


if __name__ == "__main__":
    main()
