"""A full disk on a real (tmpfs) file system: registry writes fail as store.full and work again
once there is room; the monitor holds what it could not write and writes it later."""

from __future__ import annotations

import asyncio
import sqlite3
from types import SimpleNamespace

import pytest
from modelport.errors import disk_full, to_modelport_error
from modelport.gateway.predict import Outcome
from modelport.gateway.routes import Routes
from modelport.observability.monitor import Monitor
from modelport.registry import metric_points
from modelport.registry.db import SqliteDatabase

from tests.conftest import fill_disk

T0 = 1_699_999_200.0


async def _registry(disk) -> SqliteDatabase:
    db = await SqliteDatabase(disk / "registry.sqlite3").open()
    await db.execute(
        "INSERT INTO models (name, owner, access_key_hash, created_at, updated_at)"
        " VALUES ('m', 'admin', 'x', 'now', 'now')"
    )
    return db


def test_a_registry_write_on_a_full_disk_is_store_full_and_the_next_one_works(small_disk):
    disk = small_disk(8)

    async def main():
        db = await _registry(disk)
        filler = fill_disk(disk)
        with pytest.raises(sqlite3.OperationalError) as caught:
            async with db.write() as conn:  # 2 MB: the WAL must grow, and cannot
                for i in range(20):
                    await conn.execute(
                        "UPDATE models SET description = ? WHERE name = 'm'", (f"{i}" * 100_000,)
                    )
        assert disk_full(caught.value)
        err = to_modelport_error(caught.value, disk)
        assert (err.status, err.code) == (507, "store.full") and str(disk) in err.message
        assert await db.value("SELECT description FROM models") == ""  # rolled back
        filler.unlink()
        await db.execute("UPDATE models SET description = 'room again'")  # no transaction left
        assert await db.value("SELECT description FROM models") == "room again"
        await db.close()

    asyncio.run(main())


def test_the_monitor_holds_what_a_full_disk_refuses_and_writes_it_with_room(small_disk):
    disk = small_disk(8)

    async def main():
        db = await _registry(disk)
        routes = Routes()
        routes.set_model("m")
        clock = SimpleNamespace(t=T0)
        monitor = Monitor(
            db, SimpleNamespace(groups=set(), active={}), routes, clock=lambda: clock.t
        )
        group = SimpleNamespace(
            spec=SimpleNamespace(
                capture_percent=100.0, capture_max_bytes=65_536, model="m", build=1
            )
        )
        monitor.recorder._random = lambda: 0.0
        filler = fill_disk(disk)
        for i in range(60):  # 60 requests over 6 slots, each captured with a 60 kB body
            monitor.on_result(
                Outcome(
                    "m",
                    1,
                    200,
                    0.01,
                    f"r{i}",
                    {"score": float(i)},
                    group,
                    None,
                    b"x" * 60_000,
                    b"1",
                )
            )
            clock.t += 1
        clock.t += 10
        await monitor.flush()  # refused: held
        assert len(monitor.backlog) > 0 and await metric_points.count(db) == {}
        _, cells = await monitor.series(1, "m", T0, clock.t, 60)  # reads see what is held
        assert sum(b.requests for _, _, b in cells) == 60
        assert len(await monitor.captures(1, 1, after_id=None, limit=100)) == 0  # not written
        filler.unlink()
        await monitor.flush()
        assert len(monitor.backlog) == 0
        _, cells = await monitor.series(1, "m", T0, clock.t, 60)
        assert sum(b.requests for _, _, b in cells) == 60
        assert sum((await metric_points.count(db)).values()) >= 6
        assert len(await monitor.captures(1, 1, after_id=None, limit=100)) == 60
        assert (
            len(
                await monitor.tracked(
                    1, since=0, until=clock.t + 1, name=None, after=None, limit=100
                )
            )
            == 60
        )
        await db.close()

    asyncio.run(main())
