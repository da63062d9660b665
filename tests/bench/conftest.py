"""Benchmarks run in every suite once each, untimed and on small inputs (`--benchmark-disable`,
the default in pyproject.toml), so that they cannot rot; `--benchmark-enable` times them at full
size: `.venv/bin/python -m pytest tests/bench --benchmark-enable`."""

from __future__ import annotations

import os


def pytest_configure(config) -> None:
    # Read by the bench modules when they are imported (after this hook).
    quick = bool(config.getoption("benchmark_disable", False)) and not config.getoption(
        "benchmark_enable", False
    )
    os.environ["MODELPORT_BENCH_QUICK"] = "1" if quick else ""


def quick() -> bool:
    return os.environ.get("MODELPORT_BENCH_QUICK") == "1"
