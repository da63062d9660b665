"""Replay reports in the registry (each backend): written, listed per build, pruned by age,
counted, deleted with their model; and the promotion gate reading them."""

from __future__ import annotations

import asyncio

import pytest
from modelport.errors import ReplayMismatch
from modelport.registry import models as model_rows
from modelport.registry import replays as report_rows
from modelport.replay.gate import check_promotion


async def _model(db, name: str) -> int:
    await model_rows.create(db, name=name, description="", auth=True, owner="t", key_hash=name)
    return (await model_rows.row(db, name)).id


async def _report(db, model_id: int, from_build: int, to_build: int, at: float = 100.0) -> int:
    row = await report_rows.create(
        db,
        model_id=model_id,
        from_build=from_build,
        to_build=to_build,
        source="capture",
        since=0.0,
        until=50.0,
        max_requests=1000,
        rtol=1e-9,
        atol=0.0,
        created_by="t",
        at=at,
    )
    return row.id


def test_reports_and_the_gate(registry):
    async def run():
        db = await registry.open()
        try:
            m = await _model(db, "gated")
            first = await _report(db, m, 6, 7)
            assert (await report_rows.row(db, m, first)).status == "running"
            with pytest.raises(ReplayMismatch, match="running, not done"):
                await check_promotion(db, m, primary_build=6, candidate_build=7, report_id=first)
            diffs = [{"request_id": "r1", "path": "$.a", "old": 1, "new": 2, "kind": "changed"}]
            await report_rows.finish(
                db, first, diffs, status="done", replayed=3, equal=2, different=1, finished_at=1
            )
            with pytest.raises(ReplayMismatch, match="1 of 3 replayed"):
                await check_promotion(db, m, primary_build=6, candidate_build=7, report_id=first)
            good = await _report(db, m, 6, 7)
            await report_rows.finish(db, good, [], status="done", replayed=3, equal=3)
            found = await check_promotion(db, m, primary_build=6, candidate_build=7, report_id=good)
            assert found is not None and found.id == good
            with pytest.raises(ReplayMismatch, match="not the primary #6 on the candidate #8"):
                await check_promotion(db, m, primary_build=6, candidate_build=8, report_id=good)
            other = await _model(db, "other")
            with pytest.raises(ReplayMismatch, match="no such replay report"):
                await check_promotion(db, other, primary_build=6, candidate_build=7, report_id=good)
            with pytest.raises(ReplayMismatch, match="require_replay"):
                await check_promotion(
                    db, m, primary_build=6, candidate_build=7, report_id=None, required=True
                )
            assert (
                await check_promotion(db, m, primary_build=6, candidate_build=7, report_id=None)
                is None
            )
            listed = await report_rows.of_model(db, m, build=None, after_id=None, limit=10)
            assert [r.id for r in listed] == [good, first]
            await _report(db, m, 2, 3)
            of7 = await report_rows.of_model(db, m, build=7, after_id=None, limit=10)
            assert [r.id for r in of7] == [good, first]
            count, size = await report_rows.stats(db)
            assert count == 3 and size > 0
            old = await _report(db, m, 6, 7, at=10.0)
            async with db.write() as tx:
                assert await report_rows.prune(tx, 50.0) == 1
            assert await report_rows.row(db, m, old) is None
            await model_rows.delete(db, "gated", "t")
            assert await report_rows.of_model(db, m, build=None, after_id=None, limit=10) == []
        finally:
            await db.close()

    asyncio.run(run())


def test_a_restarting_server_fails_only_its_own_running_replays(registry):
    async def run():
        db = await registry.open()
        try:
            m = await _model(db, "two")
            mine = await _report(db, m, 1, 2)
            theirs = await _report(db, m, 1, 2)
            async with db.write() as tx:
                await tx.execute("UPDATE replay_reports SET node = 'a' WHERE id = ?", (mine,))
                await tx.execute("UPDATE replay_reports SET node = 'b' WHERE id = ?", (theirs,))
            assert await report_rows.interrupted(db, "a", "the server stopped", 5.0) == 1
            failed = await report_rows.row(db, m, mine)
            assert failed is not None
            assert (failed.status, failed.error) == ("failed", "the server stopped")
            other = await report_rows.row(db, m, theirs)
            assert other is not None and other.status == "running"
        finally:
            await db.close()

    asyncio.run(run())
