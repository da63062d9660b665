"""Replica groups with real worker subprocesses: rotation, crashes, timeouts, memory, queueing,
boot failures, restarts, draining and scaling."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import msgspec
import pytest
from modelport.errors import (
    ModelBusy,
    ModelCrashed,
    ModelFailed,
    ModelTimeout,
    ModelUnavailable,
)
from modelport.runtime.protocol import Failure, Result
from modelport.runtime_home import ensure_runtime
from modelport.serving.balancer import Draining
from modelport.serving.config import GroupSpec, Tuning
from modelport.serving.supervisor import GroupFailed, ReplicaGroup, Supervisor

MODELS = Path(__file__).resolve().parent.parent / "models"
TUNING = Tuning(
    boot_timeout_s=30,
    stop_grace_s=3,
    ping_interval_s=0.5,
    ping_timeout_s=10,
    rss_interval_s=0.05,
    backoff_base_s=0.05,
    backoff_cap_s=0.5,
    log_check_s=0.5,
)


def spec(model: str, **kw) -> GroupSpec:
    return GroupSpec(
        model=model.replace("_", "-"),
        build=kw.pop("build", 1),
        python=sys.executable,
        project=str(MODELS / model),
        entry="model.py:predict",
        **kw,
    )


def one_file_model(project: Path, code: str) -> Path:
    """A project folder made by the test: model.py with ``code``."""
    project.mkdir()
    (project / "model.py").write_text(code)
    return project


def local_spec(project: Path, **kw) -> GroupSpec:
    """A group of the model in ``project`` (named after the folder), run by this Python."""
    return GroupSpec(
        model=project.name,
        build=1,
        python=sys.executable,
        project=str(project),
        entry="model.py:predict",
        **kw,
    )


class Env:
    def __init__(self, tmp: Path, **tuning) -> None:
        self.tmp = tmp
        self.events: list[tuple[str, dict]] = []
        self.sup = Supervisor(
            runtime_dir=ensure_runtime(tmp),
            logs_dir=tmp / "logs",
            tuning=msgspec.structs.replace(TUNING, **tuning),
            on_change=lambda g, e, d: self.events.append((e, d)),
        )

    def run(self, test) -> None:
        async def go():
            try:
                await test(self.sup)
            finally:
                await self.sup.shutdown(5)

        asyncio.run(go())

    def named(self, event: str) -> list[dict]:
        return [d for e, d in self.events if e == event]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


async def call(
    group,
    body: object = None,
    *,
    raw: bytes | None = None,
    ctype: str = "json",
    accept: str = "json",
):
    data = (
        raw
        if raw is not None
        else (msgspec.msgpack.encode(body) if ctype == "msgpack" else msgspec.json.encode(body))
    )
    return await group.call(data, ctype, accept, "req")


async def until(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" in f.read()
    except FileNotFoundError:
        return True


def test_sequential_requests_rotate_over_ready_replicas(env):
    async def t(sup):
        group = await sup.deploy(spec("add", replicas=2))
        ids = [r.id for r in group.replicas]
        assert all(re.fullmatch(r"add-1-[12]-[0-9a-f]{4}", i) for i in ids)
        assert [r.state for r in group.replicas] == ["ready", "ready"]
        seen = []
        for i in range(6):
            replica, msg = await call(group, {"a": i, "b": 0.5})
            assert (msg.id, msg.body, msg.metrics) == (msg.id, str(i + 0.5).encode(), {})
            assert 0 < msg.took < 1  # how long the replica ran it
            seen.append(replica.id)
        assert seen == ids * 3
        replica, msg = await call(group, {"a": 1, "b": 2}, ctype="msgpack", accept="msgpack")
        assert msgspec.msgpack.decode(msg.body) == 3.0
        assert [r.served for r in group.replicas] == [4, 3]
        assert group.info().state == "running"

    env.run(t)
    assert [e for e, _ in env.events][:4] == [
        "group.starting",
        "replica.ready",
        "replica.ready",
        "group.ready",
    ]
    stdout = next((env.tmp / "logs" / "replicas").glob("add-1-1-*.stdout")).read_text()
    assert "add: loaded in pid" in stdout


def test_model_errors_come_back_as_failures(env):
    async def t(sup):
        group = await sup.deploy(spec("raises"))
        _, msg = await call(group, {"x": 3})
        assert (msg.status, msg.code, msg.message) == (
            500,
            "model.error",
            "ValueError: cannot handle 3",
        )
        _, msg = await call(group, {"x": "three"})
        assert (msg.status, msg.code, msg.field) == (422, "request.invalid", "x")
        _, msg = await call(group, raw=b"{nope")
        assert (msg.status, msg.code) == (400, "request.malformed")
        assert group.replicas[0].failed == 1 and group.replicas[0].served == 3
        metrics = await sup.deploy(spec("metrics"))
        _, msg = await call(metrics, {"x": 2})
        assert msg.body == b"4.0" and msg.metrics == {"input": 2.0, "doubled": 4.0}

    env.run(t)
    stderr = next((env.tmp / "logs" / "replicas").glob("raises-1-1-*.stderr")).read_text()
    assert "Traceback" in stderr and "ValueError: cannot handle 3" in stderr


def test_numpy_values_go_out_as_json(env):
    pytest.importorskip("numpy")

    async def t(sup):
        group = await sup.deploy(spec("numpy_out"))
        _, msg = await call(group, {"n": 3})
        assert msgspec.json.decode(msg.body) == {"values": [0.0, 1.5, 3.0], "mean": 1.5, "count": 3}

    env.run(t)


def test_routing_while_starting_and_stopping(env):
    async def t(sup):
        deploying = asyncio.create_task(sup.deploy(spec("slow")))
        await until(lambda: sup.group("slow") is not None)
        group = sup.group("slow")
        assert group.state == "starting"
        with pytest.raises(ModelUnavailable):  # routed while starting: 503, not 404
            await call(group, {})
        await deploying
        assert sup.group("slow") is group and group.state == "running"
        in_flight = asyncio.create_task(call(group, {"seconds": 0.3}))
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(sup.stop("slow"))
        await asyncio.sleep(0.05)
        assert sup.group("slow") is group  # still routed while it drains (the gateway says 503)
        with pytest.raises(Draining):
            await call(group, {})
        assert isinstance((await in_flight)[1], Result)
        await stopping
        assert sup.group("slow") is None and sup.groups == set()
        with pytest.raises(GroupFailed):
            await sup.deploy(spec("fails_import"))
        assert sup.group("fails-import") is None

    env.run(t)


def test_crash_mid_request_is_502_and_the_replica_restarts(env):
    async def t(sup):
        group = await sup.deploy(spec("crash_on_call"))
        replica = group.replicas[0]
        rid, pid = replica.id, replica.pid
        with pytest.raises(ModelCrashed) as info:
            await call(group, {"crash": True})
        assert info.value.status == 502 and rid in info.value.message
        await until(lambda: replica.state == "ready")
        assert (replica.id, replica.restarts, replica.failed) == (rid, 1, 1)
        assert replica.pid != pid and gone(pid)
        _, msg = await call(group, {})
        assert msgspec.json.decode(msg.body) == {"pid": replica.pid}

    env.run(t)
    crashed = env.named("replica.crashed")
    assert crashed[0]["reason"] == "exited with code 7" and crashed[0]["restart_in_s"] == 0.05


def test_timeout_is_504_and_the_replica_is_replaced(env):
    async def t(sup):
        group = await sup.deploy(spec("hang", timeout_s=0.5))
        replica = group.replicas[0]
        pid = replica.pid
        started = time.monotonic()
        with pytest.raises(ModelTimeout) as info:
            await call(group, {"hang": True})
        assert 0.5 <= time.monotonic() - started < 2 and info.value.status == 504
        await until(lambda: replica.state == "ready" and replica.pid != pid)
        assert replica.restarts == 1 and gone(pid)
        _, msg = await call(group, {})
        assert isinstance(msg, Result)

    env.run(t)
    stderr = next((env.tmp / "logs" / "replicas").glob("hang-1-1-*.stderr")).read_text()
    assert "a call ran past timeout_s=0.5s" in stderr
    assert env.named("replica.crashed")[0]["restart_in_s"] == 0.0


def test_memory_limit_kills_and_logs_why(env, caplog):
    async def t(sup):
        group = await sup.deploy(spec("hog", memory_mb=120))
        replica = group.replicas[0]
        _, msg = await call(group, {"mb": 1, "hold_s": 0})
        assert isinstance(msg, Result)
        with pytest.raises(ModelCrashed) as info:
            await call(group, {"mb": 300})
        assert "memory_mb=120" in info.value.message
        await until(lambda: replica.state == "ready")
        assert replica.restarts == 1

    env.run(t)
    stderr = next((env.tmp / "logs" / "replicas").glob("hog-1-1-*.stderr")).read_text()
    assert re.search(r"killed: resident memory \d+ MiB is over memory_mb=120", stderr)
    assert "over memory_mb=120" in caplog.text


def test_busy_is_429_after_the_queue_timeout_and_the_queue_is_fifo(env):
    async def t(sup):
        group = await sup.deploy(spec("slow", queue_timeout_s=0.2, max_queue=1))
        outcomes = await asyncio.gather(
            call(group, {"seconds": 0.6}),
            call(group, {"seconds": 0.6}),
            call(group, {"seconds": 0.6}),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0][1], Result)
        for busy in outcomes[1:]:  # one waited 0.2 s, the other found the queue full
            assert isinstance(busy, ModelBusy) and busy.headers == {"Retry-After": "1"}
        fifo = await sup.deploy(spec("slow", build=2, queue_timeout_s=10))
        done: list[int] = []

        async def one(i: int):
            await call(fifo, {"seconds": 0.05})
            done.append(i)

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        assert done == [0, 1, 2, 3, 4]

    env.run(t)


def test_max_concurrency_lets_a_replica_run_calls_side_by_side(env):
    async def t(sup):
        group = await sup.deploy(spec("slow", max_concurrency=3, queue_timeout_s=0.1))
        started = time.monotonic()
        results = await asyncio.gather(*(call(group, {"seconds": 0.4}) for _ in range(3)))
        assert time.monotonic() - started < 1.0  # together, not one after the other
        assert all(isinstance(m, Result) for _, m in results)
        outcomes = await asyncio.gather(
            *(call(group, {"seconds": 0.4}) for _ in range(4)), return_exceptions=True
        )
        assert sum(isinstance(o, ModelBusy) for o in outcomes) == 1  # the fourth had to wait

    env.run(t)


def test_no_ready_replica_is_503(env):
    async def t(sup):
        group = ReplicaGroup(spec("add"), runtime_dir=sup.runtime_dir, logs_dir=sup.logs_dir)
        with pytest.raises(ModelUnavailable):  # starting: nothing ready yet
            await call(group, {"a": 1})

    env.run(t)


def test_boot_failure_fails_the_group_with_the_error_and_no_restart(env):
    async def t(sup):
        with pytest.raises(GroupFailed) as info:
            await sup.deploy(spec("fails_import", replicas=2))
        assert str(info.value) == "ModuleNotFoundError: No module named 'modelport_no_such_package'"
        with pytest.raises(GroupFailed) as info:
            await sup.deploy(spec("dies_at_import"))
        assert "exited with code 9 before it was ready" in str(info.value)
        assert "loading the weights failed: corrupt file" in str(info.value)
        assert sup.active == {} and sup.groups == set()
        await asyncio.sleep(0.3)

    env.run(t)
    assert env.named("group.failed")[0]["reason"].startswith("ModuleNotFoundError")
    assert env.named("replica.ready") == [] and env.named("replica.crashed") == []
    stderr = next((env.tmp / "logs" / "replicas").glob("fails-import-1-1-*.stderr")).read_text()
    assert "Traceback" in stderr and stderr.count("starting at") == 1


def test_flapping_gives_up_and_then_nothing_is_ready(tmp_path):
    env = Env(tmp_path, flap_max_crashes=3, flap_window_s=60)

    async def t(sup):
        group = await sup.deploy(spec("crash_on_call"))
        replica = group.replicas[0]
        for restarts in (1, 2):
            with pytest.raises(ModelCrashed):
                await call(group, {"crash": True})
            await until(lambda n=restarts: replica.state == "ready" and replica.restarts == n)
        with pytest.raises(ModelCrashed):
            await call(group, {"crash": True})
        await until(lambda: group.state == "failed")
        assert group.reason.startswith("flapping: 3 crashes within 60s")
        await asyncio.sleep(0.3)
        assert replica.state == "crashed" and replica.restarts == 2
        with pytest.raises(ModelUnavailable):
            await call(group, {})

    env.run(t)
    assert env.named("group.failed")[0]["reason"].startswith("flapping")


def test_a_call_that_never_reached_a_dead_replica_is_retried(env):
    async def t(sup):
        group = await sup.deploy(spec("echo_dict", replicas=2))
        first, second = group.replicas
        os.kill(second.pid, signal.SIGKILL)
        time.sleep(0.2)  # noqa: ASYNC251 - block the loop: its EOF is not seen, it looks ready
        assert second.accepting
        group.balancer._cursor = 1  # and it is the next choice
        replica, msg = await call(group, {"n": 1})
        assert replica is first and isinstance(msg, Result)
        await until(lambda: second.state == "ready" and second.restarts == 1)

        single = await sup.deploy(spec("echo_dict", build=2))
        only = single.replicas[0]
        pid = only.pid
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)  # noqa: ASYNC251 - as above
        replica, msg = await call(single, {"n": 2})  # waits for the restart instead of failing
        assert replica is only and msgspec.json.decode(msg.body)["pid"] == only.pid != pid
        assert only.restarts == 1
        assert [r.failed for r in (*group.replicas, only)] == [0, 0, 0]

    env.run(t)


BIG_ANSWERS = (
    "import os, struct, sys, time\n"
    "def predict(args):\n"
    "    if args.get('frame'):  # writes on its pipe itself: a length over the cap, then bytes\n"
    "        fd = int(sys.argv[sys.argv.index('--fd') + 1])\n"
    "        os.write(fd, struct.pack('>I', 200 << 20))\n"
    "        try:\n"
    "            for _ in range(32):\n"
    "                os.write(fd, b'x' * (1 << 20))\n"
    "        except OSError:\n"
    "            pass\n"
    "        time.sleep(60)\n"
    "    return {'pid': os.getpid(), 'pad': 'x' * args.get('pad', 0)}\n"
)


def test_answers_over_the_response_cap(tmp_path, caplog):
    """An honest answer over the cap is the model's error (the replica keeps serving); a replica
    that writes a frame over it is recycled, its call a model.error, the other replica serving."""
    env = Env(tmp_path, max_response_bytes=1 << 20)
    project = one_file_model(tmp_path / "big", BIG_ANSWERS)

    async def t(sup):
        group = await sup.deploy(local_spec(project, replicas=2))
        first, second = group.replicas
        group.balancer._cursor = 0
        _, msg = await call(group, {"pad": 2 << 20})
        assert isinstance(msg, Failure) and (msg.status, msg.code) == (500, "model.error")
        assert "over the server's response cap of 1048576 bytes" in msg.message
        assert first.restarts == 0 and first.state == "ready"
        pid = first.pid
        group.balancer._cursor = 0
        with pytest.raises(ModelFailed) as info:
            await call(group, {"frame": True})
        assert info.value.status == 500 and info.value.code == "model.error"
        assert "over the response cap of 1 MiB (MODELPORT_MAX_RESPONSE_MB)" in info.value.message
        for _ in range(4):  # the other replica serves meanwhile
            replica, msg = await call(group, {"pad": 10})
            assert isinstance(msg, Result)
        await until(lambda: first.state == "ready" and first.restarts == 1)
        assert first.pid != pid and gone(pid) and second.restarts == 0
        group.balancer._cursor = 0
        replica, msg = await call(group, {})
        assert replica is first and msgspec.json.decode(msg.body)["pid"] == first.pid

    env.run(t)
    assert re.search(
        r"killed: it sent an answer of 209715200 bytes, over the response cap of "
        r"1 MiB \(MODELPORT_MAX_RESPONSE_MB\)",
        caplog.text,
    )
    assert env.named("replica.crashed")[0]["restart_in_s"] == 0.0


def test_sigkill_under_load_fails_only_what_was_in_flight(env):
    async def t(sup):
        group = await sup.deploy(spec("slow", replicas=2, queue_timeout_s=10))
        stop = False
        ok, errors = [], []

        async def client():
            while not stop:
                try:
                    _, msg = await call(group, {"seconds": 0.01})
                    assert isinstance(msg, Result)
                    ok.append(1)
                except ModelCrashed as exc:
                    errors.append(exc)

        tasks = [asyncio.create_task(client()) for _ in range(6)]
        await asyncio.sleep(0.4)
        victim = group.replicas[0]
        os.kill(victim.pid, signal.SIGKILL)
        await until(lambda: victim.restarts == 1 and victim.state == "ready")
        await asyncio.sleep(0.3)
        stop = True
        await asyncio.gather(*tasks)
        assert len(errors) <= 1  # max_concurrency 1: at most one call was inside it
        assert len(ok) > 40
        assert victim.served > 0 and group.replicas[1].served > 0

    env.run(t)


def test_drain_waits_for_in_flight_calls_then_stops_the_processes(env):
    async def t(sup):
        group = await sup.deploy(spec("slow", replicas=2))
        pids = [r.pid for r in group.replicas]
        calls = [asyncio.create_task(call(group, {"seconds": 0.5})) for _ in range(3)]
        await asyncio.sleep(0.1)
        drained = asyncio.create_task(sup.stop("slow", drain_timeout=5))
        await asyncio.sleep(0.05)
        with pytest.raises(Draining):
            await call(group, {})
        results = await asyncio.gather(*calls)  # the third was queued: it is served too
        assert all(isinstance(m, Result) for _, m in results)
        await drained
        assert group.state == "stopped" and [r.state for r in group.replicas] == ["exited"] * 2
        assert all(gone(p) for p in pids)
        assert "slow" not in sup.active

    env.run(t)
    assert env.named("group.stopped") == [{"clean": True}]


def test_scale_up_and_down_keeps_slots(env):
    async def t(sup):
        group = await sup.deploy(spec("add"))
        first = group.replicas[0]
        await group.scale(3)
        assert [r.slot for r in group.replicas] == [1, 2, 3]
        assert all(r.state == "ready" for r in group.replicas)
        seen = {(await call(group, {"a": 1}))[0].id for _ in range(3)}
        assert len(seen) == 3
        removed = group.replicas[1:]
        await group.scale(1)
        assert group.replicas == [first] and all(r.state == "exited" for r in removed)
        assert all(gone(r.pid) for r in removed)
        await group.scale(2)
        assert [r.slot for r in group.replicas] == [1, 2]

    env.run(t)
    assert env.named("group.scaled") == [
        {"from": 1, "to": 3},
        {"from": 3, "to": 1},
        {"from": 1, "to": 2},
    ]


PARENT = """
import asyncio, sys
from pathlib import Path
from modelport.serving.config import GroupSpec
from modelport.serving.supervisor import Supervisor

async def main():
    sup = Supervisor(runtime_dir=Path(sys.argv[1]), logs_dir=Path(sys.argv[2]))
    group = await sup.deploy(GroupSpec(model="add", build=1, python=sys.executable,
                                       project=sys.argv[3], entry="model.py:predict", replicas=2))
    print(" ".join(str(r.pid) for r in group.replicas), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_replicas_die_with_a_killed_server(tmp_path):
    import subprocess

    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PARENT,
            str(ensure_runtime(tmp_path)),
            str(tmp_path / "logs"),
            str(MODELS / "add"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and not any(gone(p) for p in pids)
        parent.kill()  # SIGKILL: no cleanup runs in the parent
        parent.wait(10)
        deadline = time.monotonic() + 10
        while not all(gone(p) for p in pids):
            assert time.monotonic() < deadline, f"replicas {pids} outlived their server"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_a_replica_that_stops_answering_pings_is_recycled(tmp_path):
    env = Env(tmp_path, ping_interval_s=0.1, ping_timeout_s=0.6)

    async def t(sup):
        group = await sup.deploy(spec("add"))
        replica = group.replicas[0]
        pid = replica.pid
        await asyncio.sleep(0.5)  # idle but answering: left alone
        assert replica.pid == pid and replica.state == "ready"
        os.kill(pid, signal.SIGSTOP)
        try:
            await until(lambda: replica.pid != pid and replica.state == "ready", timeout=5)
        finally:
            if not gone(pid):
                os.kill(pid, signal.SIGCONT)
        assert replica.restarts == 1
        _, msg = await call(group, {"a": 1})
        assert msg.body == b"1.0"

    env.run(t)
    assert env.named("replica.crashed")[0]["reason"] == "killed: no answer to pings for 0.6s"


def test_a_stopped_replica_is_late_and_passed_over_until_it_answers(tmp_path):
    """SIGSTOP: its pipe stays open and its process alive, so it looks ready. Idle, it misses a
    Ping; busy, its call's answer is overdue: late either way, the other replica takes the
    calls meanwhile, and after SIGCONT it answers and is chosen again."""
    env = Env(tmp_path, ping_interval_s=0.2)

    async def t(sup):
        group = await sup.deploy(spec("slow", replicas=2))
        first, second = group.replicas
        os.kill(first.pid, signal.SIGSTOP)  # idle
        try:
            await until(lambda: first.late)
            assert not first.accepting and first.info().late and first.state == "ready"
            for _ in range(6):
                replica, msg = await call(group, {"seconds": 0})
                assert replica is second and isinstance(msg, Result)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        await until(lambda: not first.late)
        assert first.accepting and not first.info().late

        group.balancer._cursor = 0  # busy: stopped in the middle of a call
        stuck = asyncio.create_task(call(group, {"seconds": 0.3}))
        await asyncio.sleep(0.1)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            await until(lambda: first.late)
            for _ in range(6):  # the stuck call waits; the others go to the other replica
                replica, msg = await call(group, {"seconds": 0})
                assert replica is second and isinstance(msg, Result)
            assert not stuck.done()
        finally:
            os.kill(first.pid, signal.SIGCONT)
        replica, msg = await stuck  # it finishes once resumed
        assert replica is first and isinstance(msg, Result)
        assert not first.late and first.restarts == 0
        group.balancer._cursor = 0
        replica, _ = await call(group, {"seconds": 0})
        assert replica is first

    env.run(t)
    assert [e for e, _ in env.events if e in ("replica.late", "replica.back")] == [
        "replica.late",
        "replica.back",
        "replica.late",
        "replica.back",
    ]


def test_replica_logs_are_bounded(tmp_path):
    from modelport.serving.procs import open_log, trim_log

    path = tmp_path / "r.stdout"
    path.write_bytes(b"".join(b"line %07d\n" % i for i in range(100_000)))  # 1.3 MB
    assert not trim_log(path, 2_000_000, 10_000)
    assert trim_log(path, 1_000_000, 10_000)
    data = path.read_bytes()
    assert len(data) < 10_100 and data.endswith(b"line 0099999\n")
    assert data.startswith(b"--- modelport: log truncated, ") and b"\nline 0099" in data
    fd = open_log(path, "--- header ---\n", 1_000_000, 10_000)
    os.write(fd, b"more\n")
    os.close(fd)
    assert path.read_bytes().endswith(b"line 0099999\n--- header ---\nmore\n")


def test_an_inline_replica_holds_one_queued_call_and_a_crash_retries_it(env):
    """A replica that runs calls one at a time gets the next one queued in its pipe; when the
    running call kills it, the queued one never started: it is answered by another replica."""

    async def t(sup):
        group = await sup.deploy(spec("crash_on_call", replicas=2))
        first, second = group.replicas
        assert first.inline and group.balancer.depth == 2
        group.balancer._cursor = 0
        crash = asyncio.create_task(call(group, {"crash": True, "after": 0.3}))
        await asyncio.sleep(0.05)
        busy_other = asyncio.create_task(call(group, {}))  # least connections: the idle one
        queued = asyncio.create_task(call(group, {}))  # both hold one: queued behind a call
        results = await asyncio.gather(crash, busy_other, queued, return_exceptions=True)
        assert isinstance(results[0], ModelCrashed)
        assert all(isinstance(r[1], Result) for r in results[1:]), results
        assert first.failed == 1 and second.failed == 0

    env.run(t)


def test_a_queued_call_that_cannot_start_in_time_is_429_and_not_run(env, tmp_path):
    project = one_file_model(
        tmp_path / "counting",
        (
            "import time\n"
            "def predict(seconds: float, tag: str) -> str:\n"
            "    with open('runs.log', 'a') as f:\n"
            "        f.write(tag + '\\n')\n"
            "    time.sleep(seconds)\n"
            "    return tag\n"
        ),
    )

    async def t(sup):
        group = await sup.deploy(local_spec(project, queue_timeout_s=0.2))
        running = asyncio.create_task(call(group, {"seconds": 0.8, "tag": "first"}))
        await asyncio.sleep(0.05)
        with pytest.raises(ModelBusy):  # queued in the pipe, past its start deadline
            await call(group, {"seconds": 0.0, "tag": "late"})
        _, msg = await running
        assert isinstance(msg, Result)
        _, after = await call(group, {"seconds": 0.0, "tag": "after"})
        assert isinstance(after, Result)

    env.run(t)
    assert (project / "runs.log").read_text().split() == ["first", "after"]


def test_a_queued_call_has_its_own_timeout_from_when_it_starts(env, tmp_path):
    """Two calls of 0.6 s on one replica with timeout_s=1: the second waits in the pipe, then
    runs; 1.2 s after the first arrived, but 0.6 s after it started — both answer."""
    project = one_file_model(
        tmp_path / "sleepy",
        (
            "import time\n"
            "def predict(seconds: float) -> float:\n"
            "    time.sleep(seconds)\n"
            "    return seconds\n"
        ),
    )

    async def t(sup):
        group = await sup.deploy(local_spec(project, timeout_s=1.0))
        first = asyncio.create_task(call(group, {"seconds": 0.6}))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(call(group, {"seconds": 0.6}))
        results = await asyncio.gather(first, second)
        assert [type(msg) for _, msg in results] == [Result, Result]
        assert group.replicas[0].restarts == 0 and group.replicas[0].state == "ready"
        with pytest.raises(ModelTimeout):  # and one that runs past it still times out
            await call(group, {"seconds": 3.0})

    env.run(t)
