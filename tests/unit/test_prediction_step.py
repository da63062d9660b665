"""The HTTP lane runs each prediction's coroutine without an asyncio Task (gateway/http.py
_Step): its first part at once, then each part when the future it awaits is done; in the
server's set of tasks while it runs, so that uvicorn's shutdown waits for it or cancels it."""

from __future__ import annotations

import asyncio

from modelport.gateway.http import _Step


def started(prediction, loop) -> tuple[_Step, set]:
    """``prediction`` run by a _Step at once; the step and the server's task set."""
    tasks: set = set()
    step = _Step(prediction(), loop, tasks)
    step.run()
    return step, tasks


def catching(kind: type[BaseException], fut: asyncio.Future, caught: list) -> object:
    """A prediction that awaits ``fut`` and keeps the ``kind`` of error raised there (again)."""

    async def prediction():
        try:
            await fut
        except kind as exc:
            caught.append(exc)
            if kind is asyncio.CancelledError:
                raise

    return prediction


def test_runs_at_once_then_when_its_future_is_done():
    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        seen: list[str] = []

        async def prediction():
            seen.append("started")
            seen.append(await fut)
            await asyncio.sleep(0)  # a bare yield: resumed at the next iteration
            seen.append("answered")

        step, tasks = started(prediction, loop)
        assert seen == ["started"]  # before any loop iteration
        assert tasks == {step}
        fut.set_result("the answer")
        for _ in range(5):
            await asyncio.sleep(0)
        assert seen == ["started", "the answer", "answered"]
        assert tasks == set()  # done: out of the server's set
        assert not step.cancel()

    asyncio.run(main())


def test_an_error_of_the_awaited_future_is_raised_where_it_awaits():
    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        caught: list[BaseException] = []

        _, tasks = started(catching(RuntimeError, fut, caught), loop)
        fut.set_exception(RuntimeError("replica gone"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert [str(e) for e in caught] == ["replica gone"]
        assert tasks == set()

    asyncio.run(main())


def test_cancel_ends_it_where_it_waits():
    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        caught: list[BaseException] = []

        step, tasks = started(catching(asyncio.CancelledError, fut, caught), loop)
        assert step.cancel("timeout graceful shutdown exceeded")
        assert [type(e) for e in caught] == [asyncio.CancelledError]
        assert tasks == set()
        fut.set_result("late")  # the future it waited on is no longer watched
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(caught) == 1

    asyncio.run(main())
