"""The monitor on a real registry file, injected clock: flush, series, downsampling, pruning."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from modelport.gateway.predict import Outcome
from modelport.gateway.routes import Routes
from modelport.observability.monitor import Monitor
from modelport.registry import metric_points

T0 = 1_699_999_200.0  # a multiple of 600 (so of 10 and 30)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env(registry):
    async def make():
        db = await registry.open()
        await db.execute(
            "INSERT INTO models (name, owner, access_key_hash, created_at, updated_at)"
            " VALUES ('m', 'admin', 'x', 'now', 'now')"
        )
        routes = Routes()
        routes.set_model("m")
        clock = Clock()
        monitor = Monitor(
            db,
            SimpleNamespace(groups=set(), active={}),
            routes,
            clock=clock,
            max_tracked_rows=3,
            captures_per_build=2,
        )
        return db, monitor, clock

    return make


def traffic(
    monitor,
    clock,
    seconds: float,
    build: int = 1,
    every: float = 5.0,
    status: int = 200,
    metrics=None,
) -> None:
    end = clock.t + seconds
    n = 0
    while clock.t < end:
        n += 1
        monitor.on_result(
            Outcome("m", build, status, 0.01, f"r{clock.t}", metrics or {}, None, None, b"{}", b"1")
        )
        clock.t += every


def run(coro):
    return asyncio.run(coro)


def test_flush_series_downsampling_and_retention(env):
    async def main():
        db, monitor, clock = await env()
        model_id = 1
        traffic(monitor, clock, 60)  # 12 requests over 6 slots
        used, cells = await monitor.series(model_id, "m", T0, clock.t, None)
        assert used == 10 and sum(b.requests for _, _, b in cells) == 12  # live, not yet written
        await monitor.flush()
        assert (await metric_points.count(db)) == {10: 6}
        used, cells = await monitor.series(model_id, "m", T0, clock.t, 30)
        assert used == 30 and [b.requests for _, _, b in cells] == [6, 6]
        assert [t for t, _, _ in cells] == [T0, T0 + 30]

        clock.t = T0 + 3600 + 120  # the first minute is past an hour: 10 s rows → one 1 min row
        await monitor.flush()
        assert (await metric_points.count(db)) == {60: 1}
        used, cells = await monitor.series(model_id, "m", T0, clock.t, 10)
        assert used == 60 and [b.requests for _, _, b in cells] == [12]

        clock.t = T0 + 86_400 + 1200  # past a day: 1 min rows → 10 min rows
        await monitor.flush()
        assert (await metric_points.count(db)) == {600: 1}
        used, cells = await monitor.series(model_id, "m", T0 - 600, clock.t, None)
        assert used == 600 and cells[0][2].requests == 12 and cells[0][2].hist

        clock.t = T0 + 15 * 86_400  # past 14 days: gone
        await monitor.flush()
        assert (await metric_points.count(db)) == {}
        await db.close()

    run(main())


def test_a_slot_written_twice_is_merged(env):
    async def main():
        db, monitor, clock = await env()
        traffic(monitor, clock, 4, every=1)
        await monitor.flush(final=True)  # shutdown: the open slot is written
        traffic(monitor, clock, 4, every=1, status=500)  # same slot after a "restart"
        await monitor.flush(final=True)
        _, cells = await monitor.series(1, "m", T0, clock.t + 10, None)
        assert [(b.requests, b.errors) for _, _, b in cells] == [(8, 4)]
        await db.close()

    run(main())


def test_tracked_metrics_ground_truth_and_bounds(env):
    async def main():
        db, monitor, clock = await env()
        monitor.on_result(Outcome("m", 2, 200, 0.01, "req-1", {"score": 0.9}, None, None, b"", b""))
        row = await monitor.prediction(1, "req-1")
        assert row is not None and row.metrics == {"score": 0.9} and row.build == 2
        row = await monitor.add_metrics(1, "req-1", {"truth": 1.0})
        assert row.metrics == {"score": 0.9, "truth": 1.0} and row.build == 2
        assert (await monitor.add_metrics(1, "later", {"truth": 0.0})).build is None
        for i in range(4):
            clock.t += 1
            monitor.on_result(
                Outcome("m", 2, 200, 0.01, f"x{i}", {"other": i}, None, None, b"", b"")
            )
        rows = await monitor.tracked(1, since=0, until=1e12, name="truth", after=None, limit=10)
        assert [r.request_id for r in rows] == ["req-1", "later"]
        await monitor.prune(clock.t)  # at most 3 rows: the oldest go first
        rows = await monitor.tracked(1, since=0, until=1e12, name=None, after=None, limit=10)
        assert [r.request_id for r in rows] == ["x1", "x2", "x3"]
        clock.t += 15 * 86_400
        await monitor.prune(clock.t)
        assert await monitor.tracked(1, since=0, until=1e12, name=None, after=None, limit=10) == []
        await db.close()

    run(main())


def test_captures_kept_per_build_and_pruned(env):
    async def main():
        db, monitor, clock = await env()
        group = SimpleNamespace(spec=SimpleNamespace(capture_percent=100.0, capture_max_bytes=1000))
        for i in range(3):
            monitor.on_result(
                Outcome("m", 1, 200, 0.01, f"c{i}", {}, group, None, b'{"a": %d}' % i, b"%d" % i)
            )
        rows = await monitor.captures(1, 1, after_id=None, limit=10)
        assert [r.request_id for r in rows] == ["c2", "c1", "c0"]
        await monitor.prune(clock.t)
        assert [r.request_id for r in await monitor.captures(1, 1, after_id=None, limit=10)] == [
            "c2",
            "c1",
        ]
        clock.t += 15 * 86_400
        await monitor.prune(clock.t)
        assert await monitor.captures(1, 1, after_id=None, limit=10) == []
        await db.close()

    run(main())


def test_captures_and_replay_reports_go_after_the_capture_retention(registry):
    from modelport.registry import replays as report_rows

    async def main():
        db = await registry.open()
        await db.execute(
            "INSERT INTO models (name, owner, access_key_hash, created_at, updated_at)"
            " VALUES ('m', 'admin', 'x', 'now', 'now')"
        )
        routes = Routes()
        routes.set_model("m")
        clock = Clock()
        monitor = Monitor(
            db, SimpleNamespace(groups=set(), active={}), routes, clock=clock, capture_keep_s=86_400
        )
        group = SimpleNamespace(spec=SimpleNamespace(capture_percent=100.0, capture_max_bytes=99))
        monitor.on_result(Outcome("m", 1, 200, 0.01, "c0", {}, group, None, b"{}", b"1"))
        await monitor.flush_pending()
        await report_rows.create(
            db,
            model_id=1,
            from_build=1,
            to_build=1,
            source="capture",
            since=0.0,
            until=1.0,
            max_requests=1,
            rtol=0.0,
            atol=0.0,
            created_by="t",
            at=clock.t,
        )
        clock.t += 3600
        await monitor.prune(clock.t)  # within a day: both kept
        assert len(await monitor.captures(1, 1, after_id=None, limit=10)) == 1
        assert (await report_rows.stats(db))[0] == 1
        clock.t += 86_400
        await monitor.prune(clock.t)  # past a day: both gone, the series kept 14 days
        assert await monitor.captures(1, 1, after_id=None, limit=10) == []
        assert await report_rows.stats(db) == (0, 0)
        await db.close()

    run(main())
