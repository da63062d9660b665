"""The session's Ray cluster (tests/conftest.py ray_cluster) is real: two nodes, on 127.0.0.2 and
127.0.0.3, that a driver in another process (as `modelport serve` is) joins."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

DRIVER = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print(json.dumps(sorted(
    (n["NodeManagerAddress"], n["Resources"].get("node2", 0)) for n in ray.nodes() if n["Alive"]
)))
"""


def test_a_driver_process_sees_both_nodes(ray_cluster):
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, ray_cluster.address],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    nodes = json.loads(done.stdout.strip().splitlines()[-1])
    assert nodes == [["127.0.0.2", 0], ["127.0.0.3", 1]]
