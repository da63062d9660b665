"""Store throughput and memory on 1 GB files (random bytes, float32 weights), in a child process.

Skipped by default (--benchmark-skip); run with:
    .venv/bin/python -m pytest tests/bench/test_store_bench.py --benchmark-only -s
MODELPORT_BENCH_MB sets the file size (default 1024). Files are made on first use only.
"""

import array
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
from modelport.store.cas import LocalStore

from tests.bench.conftest import quick

MB = int(os.environ.get("MODELPORT_BENCH_MB", "16" if quick() else "1024"))
TARGET_INGEST_MB_S = 300  # reported against, never asserted (no timing assertions in tests)
TARGET_RSS_MB = 150
POOL = 16 << 20  # bytes of true gaussian float32s, re-randomised per chunk

CHILD = """
import json, os, sys, time
from modelport.store.cas import LocalStore
from modelport.store.objects import CHUNK

def cpu():
    return time.process_time()

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

op, root, arg = sys.argv[1:4]
store = LocalStore(root)
out = {"baseline_rss_mb": round(rss("VmRSS:"), 1)}
if op == "ingest":
    t, c = time.perf_counter(), cpu()
    r = store.put_file(arg)
    dt = time.perf_counter() - t
    out.update(size=r.size, stored_bytes=r.stored_bytes, new_bytes=r.new_bytes, digest=r.digest,
               ingest_mb_s=round(r.size / dt / 1e6), ingest_cpu_s=round(cpu() - c, 2),
               ratio=round(r.stored_bytes / r.size, 4))
    t = time.perf_counter()
    again = store.put_file(arg)
    out.update(restore_new_bytes=again.new_bytes,
               restore_mb_s=round(r.size / (time.perf_counter() - t) / 1e6))
else:
    size = store.size(arg)
    t, c = time.perf_counter(), cpu()
    with store.open(arg) as f:
        while f.read(CHUNK):
            pass
    out.update(size=size, read_mb_s=round(size / (time.perf_counter() - t) / 1e6),
               read_cpu_s=round(cpu() - c, 2))
    t = time.perf_counter()
    store.copy_to(arg, os.path.join(root, "copy.bin"))
    out.update(copy_to_mb_s=round(size / (time.perf_counter() - t) / 1e6))
out["peak_rss_mb"] = round(rss("VmHWM:"), 1)
out["loadavg_1m"] = os.getloadavg()[0]  # other work on the machine skews MB/s, not CPU seconds
print(json.dumps(out))
"""


def write_random(path, size):
    rng = random.Random(1)
    with open(path, "wb") as f:
        for _ in range(size // POOL):
            f.write(rng.randbytes(POOL))
        os.fsync(f.fileno())  # its writeback must not run during the measurement


def write_floats(path, size):
    """Model-like weights: float32 ~ N(0, 0.02). A pool of real gaussians (random.gauss is
    10 MB/s) is reused with its low two mantissa bytes re-randomised per chunk, keeping the
    sign/exponent distribution that makes weights slightly compressible; 1 GB in ~10 s."""
    rng = random.Random(2)
    pool = array.array("f", [rng.gauss(0.0, 0.02) for _ in range(POOL // 4)]).tobytes()
    pool_int, zeros = int.from_bytes(pool, "little"), bytes(POOL // 4)
    with open(path, "wb") as f:
        for _ in range(size // POOL):
            noise = bytearray(rng.randbytes(POOL))
            noise[2::4] = noise[3::4] = zeros  # keep sign, exponent, high mantissa
            f.write((pool_int ^ int.from_bytes(noise, "little")).to_bytes(POOL, "little"))
        os.fsync(f.fileno())


@pytest.fixture(scope="session")
def bench_file(tmp_path_factory):
    made, folder = {}, tmp_path_factory.mktemp("store-bench-data")

    def get(kind):
        if kind not in made:
            made[kind] = folder / f"{kind}-{MB}MB.bin"
            {"random": write_random, "floats": write_floats}[kind](made[kind], MB << 20)
        return made[kind]

    yield get
    shutil.rmtree(folder)


@pytest.fixture
def root(tmp_path):
    yield tmp_path / "store"
    shutil.rmtree(tmp_path)  # a GB per test: do not keep it for pytest's last-three sessions


def child(op, root, arg):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, op, str(root), str(arg)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("kind", ["random", "floats"])
def test_ingest(benchmark, bench_file, root, kind):
    src = bench_file(kind)
    info = benchmark.pedantic(child, args=("ingest", root, src), rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    print(f"\n{kind} ingest: {info}")
    assert info["new_bytes"] == info["stored_bytes"] and info["restore_new_bytes"] == 0
    info["ingest_target_mb_s"] = TARGET_INGEST_MB_S
    assert info["peak_rss_mb"] < TARGET_RSS_MB


@pytest.mark.parametrize("kind", ["random", "floats"])
def test_read(benchmark, bench_file, root, kind):
    digest = LocalStore(root).put_file(bench_file(kind)).digest
    info = benchmark.pedantic(child, args=("read", root, digest), rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    print(f"\n{kind} read: {info}")
    assert info["size"] == MB << 20
    assert info["peak_rss_mb"] < TARGET_RSS_MB
