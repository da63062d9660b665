"""The registry's cost per operation on each backend, same machine, one run: a write (a build
recorded), a read (a model with its deployment), and builds recorded from two registries at once
(two servers). Usage: scripts/bench/registry.py [--postgres URL] [-n N]; without --postgres only
SQLite (scripts/pg-server starts one)."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from modelport.registry import builds, models
from modelport.registry.backends import registry


def _new() -> builds.NewBuild:
    return builds.NewBuild(
        entrypoint="m.py:f",
        python="3.11",
        requirements=None,
        snapshot="s",
        size_bytes=1,
        new_bytes=0,
        objects=["a" * 64, "b" * 64],
    )


async def run(url: str | None, path: Path, n: int) -> dict[str, float]:
    a = await registry(url, path).open()
    b = await registry(url, path).open()
    try:
        name = f"bench{time.time_ns()}"
        await models.create(a, name=name, description="", auth=True, owner="me", key_hash=name)
        model_id = (await models.row(a, name))["id"]
        t0 = time.perf_counter()
        for _ in range(n):
            await builds.create(a, model_id, name, "me", _new())
        write = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            await models.get(a, name)
        read = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        await asyncio.gather(
            *(builds.create(db, model_id, name, "me", _new()) for _ in range(n) for db in (a, b))
        )
        both = 2 * n / (time.perf_counter() - t0)
        return {"write_ms": write * 1e3, "read_ms": read * 1e3, "two_writers_per_s": both}
    finally:
        await a.close()
        await b.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres")
    parser.add_argument("-n", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("sqlite", None)] + ([("postgresql", args.postgres)] if args.postgres else [])
        for label, url in backends:
            found = asyncio.run(run(url, Path(tmp) / "registry.sqlite3", args.n))
            print(
                f"{label:10} build recorded {found['write_ms']:.2f} ms, model read "
                f"{found['read_ms']:.2f} ms, two registries recording builds at once "
                f"{found['two_writers_per_s']:.0f}/s"
            )


if __name__ == "__main__":
    main()
