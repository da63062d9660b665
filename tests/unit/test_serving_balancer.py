"""Least-connections choice with round-robin ties: pure function, no processes."""

from __future__ import annotations

from dataclasses import dataclass

from modelport.serving.balancer import Balancer, choose


@dataclass
class R:
    in_flight: int = 0
    accepting: bool = True
    turns: int = 1

    @property
    def pipe(self) -> R:  # a replica's load and calls are its pipe's
        return self


def rotate(replicas: list[R], n: int, max_concurrency: int = 1) -> list[int]:
    """n sequential requests, each finished before the next."""
    cursor, picks = 0, []
    for _ in range(n):
        i = choose(replicas, max_concurrency, cursor)
        picks.append(i)
        cursor = i + 1
    return picks


def test_sequential_requests_rotate():
    assert rotate([R(), R(), R()], 7) == [0, 1, 2, 0, 1, 2, 0]


def test_least_connections_wins_over_the_cursor():
    replicas = [R(2), R(1), R(0), R(1)]
    assert choose(replicas, 4, 0) == 2
    assert choose(replicas, 4, 3) == 2


def test_ties_go_to_the_first_at_or_after_the_cursor():
    replicas = [R(1), R(1), R(1)]
    assert choose(replicas, 4, 0) == 0
    assert choose(replicas, 4, 2) == 2
    assert choose(replicas, 4, 3) == 0  # a cursor past the end wraps (the list may shrink)


def test_full_and_not_ready_replicas_are_skipped():
    assert choose([R(1), R(0, accepting=False), R(1)], 1, 0) == -1
    assert choose([R(1), R(0, accepting=False), R(0)], 1, 0) == 2
    assert choose([R(3), R(2)], 4, 0) == 1
    assert choose([R(4), R(4)], 4, 0) == -1
    assert choose([], 1, 0) == -1


def test_rotation_skips_a_replica_that_is_not_ready():
    replicas = [R(), R(accepting=False), R()]
    assert rotate(replicas, 4) == [0, 2, 0, 2]


def test_queue_depth_follows_how_long_calls_take():
    from modelport.serving.balancer import depth_for

    assert depth_for(0.00002) == 32  # a + b: many queued calls, few wake-ups
    assert depth_for(0.0002) == 10  # about 2 ms of work queued
    assert depth_for(0.003) == 2
    assert depth_for(0.5) == 2  # slow calls: at most one waits behind a running one
    assert depth_for(0.0) == 8


def test_an_idle_replica_is_told_how_many_ready_ones_rotate():
    replicas = [R(), R(), R(accepting=False)]
    balancer = Balancer(replicas, max_concurrency=1, timeout_s=1, queue_timeout_s=1, max_queue=1)
    assert balancer._pick().pipe.turns == 2  # its next call comes after the other ready one's
    del replicas[1:]
    assert balancer._pick().pipe.turns == 1  # scaled down to one: it alone takes the next call


def test_a_deeper_queue_starts_the_calls_waiting_for_it():
    """An inline replica starts at depth 2; once its calls are known to be fast, the calls
    waiting in the balancer go to its pipe at once, not one more per answer."""
    import asyncio

    class Fake:
        def __init__(self) -> None:
            self.in_flight, self.accepting, self.turns = 0, True, 1
            self.service_s = 0.0001  # 0.1 ms a call: depth 20
            self.pipe = self
            self.held: list[asyncio.Future[None]] = []

        async def call(self, *_: object) -> str:
            self.in_flight += 1
            fut = asyncio.get_running_loop().create_future()
            self.held.append(fut)
            try:
                await fut
            finally:
                self.in_flight -= 1
            return "ok"

    async def go() -> None:
        replica = Fake()
        balancer = Balancer(
            [replica],  # type: ignore[list-item]
            max_concurrency=1,
            timeout_s=10,
            queue_timeout_s=10,
            max_queue=100,
        )
        balancer.recoverable = True
        balancer.replica_ready(inline=True)
        calls = [asyncio.ensure_future(balancer.call(b"", "json", "json", "r")) for _ in range(30)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert replica.in_flight == 2 and balancer.queued == 28
        replica.held[0].set_result(None)
        for _ in range(10):
            await asyncio.sleep(0)
        assert replica.in_flight == 20 and balancer.queued == 9
        while not all(c.done() for c in calls):
            for fut in replica.held:
                if not fut.done():
                    fut.set_result(None)
            await asyncio.sleep(0)
        assert [c.result()[1] for c in calls] == ["ok"] * 30

    asyncio.run(go())
