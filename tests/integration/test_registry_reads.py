"""The registry's reads (each backend) see every write committed before a read began, under
concurrent tasks."""

from __future__ import annotations

import asyncio


def test_a_write_is_seen_by_the_next_read_while_other_reads_run(registry):
    # Found by schemathesis (scripts/fuzz/schemathesis.sh): POST /api/v1/tokens answered 500 when
    # another task's query held the reader's snapshot between the insert and its read-back.
    async def run() -> list[int]:
        db = await registry.open()
        missing: list[int] = []

        async def create(i: int) -> None:
            async with db.write() as conn:
                await conn.execute(
                    "INSERT INTO audit (at, actor, action, detail) VALUES ('t', 'me', ?, '{}')",
                    (f"a{i}",),
                )
            if await db.one("SELECT id FROM audit WHERE action = ?", (f"a{i}",)) is None:
                missing.append(i)

        async def browse() -> None:
            for _ in range(10):
                await db.all("SELECT * FROM audit ORDER BY id DESC LIMIT 50")

        try:
            await asyncio.gather(*(create(i) for i in range(60)), *(browse() for _ in range(4)))
        finally:
            await db.close()
        return missing

    assert asyncio.run(run()) == []
