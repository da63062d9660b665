"""Replicas placed on a real two-node Ray cluster (MODELPORT_REPLICAS=ray://…) by a real server:
each replica a Ray actor that makes the build ready on its node from the store and starts the
worker on a TCP port there; the server calls the worker directly over TCP."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from modelport.runtime.sandbox import probe

from tests.conftest import MODELPORT
from tests.e2e.test_deployments import Deployed

PROTECTIONS = probe()

MODEL = {
    "predict.py": (
        "import os\n"
        "print('loading on', os.uname().nodename, flush=True)\n"
        "def predict(a: float, b: float = 1.0) -> dict:\n"
        "    print('adding', a, b, flush=True)\n"
        "    return {'sum': a + b, 'pid': os.getpid()}\n"
    )
}


@pytest.fixture
def on_ray(offline_server, tmp_path, ray_cluster):
    srv = offline_server()
    srv.env["MODELPORT_REPLICAS"] = ray_cluster.url
    return Deployed(srv.start(timeout=120), tmp_path)


def _replicas(d: Deployed, name: str) -> list[dict]:
    return d.c.get(f"/api/v1/models/{name}/replicas").json()["items"]


def _wait_for(check, timeout: float = 120.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise TimeoutError(what)


@pytest.mark.slow
def test_replicas_spread_over_both_nodes_and_answer(on_ray, ray_cluster):
    """4 replicas over the 2 nodes with SPREAD (the default): both nodes used, and
    predictions reach all 4."""
    d = on_ray
    d.model("adder")
    build = d.build("adder", MODEL)
    created = d.deploy("adder", build, wait=False, replicas=4, cpus=0.5)
    done = d.wait("adder", created["id"], timeout=240)
    assert done["status"] == "deployed", done
    assert (done["cpus"], done["gpus"], done["placement"]) == (0.5, 0, "spread")
    replicas = _replicas(d, "adder")
    assert len(replicas) == 4 and all(r["state"] == "ready" for r in replicas)
    assert {r["node"] for r in replicas} == {"127.0.0.2", "127.0.0.3"}, replicas
    # Predictions reach all 4 replicas (least-connections over the TCP pipes).
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: d.predict("adder", {"a": i, "b": 2}), range(200)))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert [r.json()["sum"] for r in answers] == [i + 2 for i in range(200)]
    assert {r.json()["pid"] for r in answers} == {r["pid"] for r in replicas}
    # Each node made the build ready from the store in its own folder.
    for ip in ("127.0.0.2", "127.0.0.3"):
        assert any((ray_cluster.nodes_dir / ip / "envs").iterdir())
    # The CLI shows where each replica runs.
    shown = subprocess.run(
        [*MODELPORT, "replicas", "adder", "--url", d.srv.url, "--token", d.srv.token],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "127.0.0.2" in shown and "127.0.0.3" in shown
    # What a replica prints on its node reaches its log here (modelport logs, the UI).
    rid = replicas[0]["id"]

    def printed() -> bool:
        out = d.c.get(f"/api/v1/models/adder/replicas/{rid}/logs", params={"stream": "stdout"})
        return out.status_code == 200 and "loading on" in out.text and "adding" in out.text

    _wait_for(printed, 30, "the replica's output in its log")
    # The worker's port took the server's connection, and takes no other: nothing else on
    # the network can drive the replica.
    ports = re.findall(r"placed on Ray node (\S+) \(\w+\), worker pid \d+, port (\d+)", d.srv.log())
    assert len(ports) == 4
    for host, port in ports:
        with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=5):
            pass
    assert d.predict("adder", {"a": 1}).json()["sum"] == 2.0


def test_ray_settings_are_kept_and_bad_ones_are_422(offline_server, tmp_path):
    """Validated and recorded whatever the backend (a local server here: kept, unused)."""
    d = Deployed(offline_server().start(), tmp_path)
    d.model("bad")
    for settings, field in (
        ({"cpus": 0}, "cpus"),
        ({"gpus": -1}, "gpus"),
        ({"placement": "random"}, "placement"),
        ({"resources": {"node2": 0}}, "resources"),
        ({"resources": {"bad name": 1}}, "resources"),
    ):
        r = d.c.post("/api/v1/models/bad/deployments", json={"build": 1, **settings})
        assert r.status_code == 422, (settings, r.text)
        assert r.json()["error"]["code"] == "request.invalid"
        assert field in r.text
    build = d.build("bad", MODEL)
    settings = {"cpus": 0.25, "gpus": 1, "resources": {"node2": 0.5}, "placement": "pack"}
    done = d.deploy("bad", build, **settings)
    assert done["status"] == "deployed", done
    assert {k: done[k] for k in settings} == settings
    node = d.c.get("/api/v1/health").json()["node"]  # this server's name: a local replica's
    assert [r["node"] for r in _replicas(d, "bad")] == [node]
    # A new deployment with keep_current keeps them.
    kept = d.deploy("bad", build, keep_current=True, replicas=1)
    assert {k: kept[k] for k in settings} == settings


@pytest.mark.slow
def test_a_lost_node_s_replicas_are_replaced_on_the_other(on_ray, ray_cluster):
    """SIGKILL of the second node's raylet (a machine lost) under load (8 threads), 4 replicas
    over the 2 nodes: its replicas end `lost`, the deployment's history says so, replacements
    start on the remaining node (4 ready there), and the requests that failed are only those
    that were running on the lost replicas."""
    import threading

    d = on_ray
    d.model("sturdy")
    build = d.build("sturdy", MODEL)
    created = d.deploy("sturdy", build, wait=False, replicas=4, cpus=0.5)
    assert d.wait("sturdy", created["id"], timeout=240)["status"] == "deployed"
    before = _replicas(d, "sturdy")
    assert {r["node"] for r in before} == {"127.0.0.2", "127.0.0.3"}
    lost = {r["id"] for r in before if r["node"] == "127.0.0.3"}

    outcomes: list[tuple[int, str]] = []
    messages: list[str] = []
    stop = threading.Event()

    def load() -> None:
        import httpx

        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                r = client.post(
                    f"{d.srv.url}/models/sturdy/predict",
                    json={"a": 1},
                    headers={"Authorization": f"Bearer {d.keys['sturdy']}"},
                )
                error = r.json()["error"] if r.status_code != 200 else {}
                outcomes.append((r.status_code, error.get("code", "")))
                if error:
                    messages.append(error.get("message", ""))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        _wait_for(lambda: len(outcomes) > 50, 60, "load before the kill")
        killed_at = time.monotonic()
        ray_cluster.kill_second_raylet()

        def replaced() -> list[dict] | None:
            now = _replicas(d, "sturdy")
            ready = [r for r in now if r["state"] == "ready"]
            if len(ready) == 4 and all(r["node"] == "127.0.0.2" for r in ready):
                return now
            return None

        now = _wait_for(replaced, 120, "a replacement on the remaining node")
        back_in = time.monotonic() - killed_at
        count = len(outcomes)
        _wait_for(lambda: len(outcomes) > count + 50, 60, "load after the replacement")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        ray_cluster.remove_second()
        ray_cluster.add_second()
    print(f"lost node: 4 ready replicas on the remaining node {back_in:.1f}s after the kill")
    assert lost <= {r["id"] for r in now}  # the same slots, started again
    failed = [o for o in outcomes if o[0] != 200]
    # Only requests running on the lost replica fail (model.crashed); none waiting or unsent.
    assert all(code == "model.crashed" for _, code in failed), (failed, messages)
    assert len(failed) <= 8, failed  # at most one per client thread: each was running there
    history = d.c.get("/api/v1/models/sturdy/deployments/current").json()["events"]
    crashed = [e for e in history if e["kind"] == "replica.crashed"]
    assert {e["detail"]["replica"] for e in crashed} == lost
    assert all(e["detail"]["reason"].startswith("lost: its Ray node 127.0.0.3") for e in crashed)
    assert d.predict("sturdy", {"a": 2}).json()["sum"] == 3.0


HOG = {
    "predict.py": (
        "import os, time\n"
        "held = []\n"
        "def predict(mb: int) -> dict:\n"
        "    held.append(b'\\x01' * (mb * 1024 * 1024))  # touched: resident\n"
        "    time.sleep(5 if mb > 100 else 0)  # the node's memory watch sees it meanwhile\n"
        "    return {'pid': os.getpid()}\n"
    )
}


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_memory_limit_on_the_node_scale_and_stop(on_ray):
    d = on_ray
    d.model("hog")
    build = d.build("hog", HOG)
    created = d.deploy("hog", build, wait=False, replicas=1, cpus=0.5, memory_mb=96)
    assert d.wait("hog", created["id"], timeout=240)["status"] == "deployed"
    (first,) = _replicas(d, "hog")
    assert d.predict("hog", {"mb": 1}).status_code == 200
    # Over memory_mb on its node: killed there, the call fails, the replica comes back.
    r = d.predict("hog", {"mb": 300})
    assert r.status_code >= 500 and r.json()["error"]["code"] == "model.crashed", r.text

    def restarted() -> list[dict] | None:
        now = _replicas(d, "hog")
        return now if now and now[0]["state"] == "ready" and now[0]["restarts"] == 1 else None

    _wait_for(restarted, 120, "the replica back after its memory kill")
    events = d.c.get("/api/v1/models/hog/deployments/current").json()["events"]
    reasons = [e["detail"]["reason"] for e in events if e["kind"] == "replica.crashed"]
    assert any("resident memory" in why and "memory_mb=96" in why for why in reasons), reasons
    stderr = d.c.get(
        f"/api/v1/models/hog/replicas/{first['id']}/logs", params={"stream": "stderr"}
    ).text
    assert "memory_mb=96" in stderr
    # Scale out: the new replica goes to the other node (spread).
    assert d.c.patch("/api/v1/models/hog/deployments/current", json={"replicas": 2}).status_code
    both = _wait_for(
        lambda: (
            (now := _replicas(d, "hog"))
            and len(now) == 2
            and all(x["state"] == "ready" for x in now)
            and now
        ),
        120,
        "two replicas",
    )
    assert sorted(x["node"] for x in both) == ["127.0.0.2", "127.0.0.3"]
    # Stop: the workers on the nodes end (and their actors with them).
    assert d.c.post("/api/v1/models/hog/stop", json={}).status_code in (200, 202)
    _wait_for(lambda: all(_gone(x["pid"]) for x in both), 60, "the workers gone after stop")
    assert d.predict("hog", {"mb": 1}).status_code == 404


def test_an_unreachable_ray_head_stops_the_server_at_start(make_server, tmp_path):
    from tests.conftest import free_port

    srv = make_server()
    srv.env["MODELPORT_REPLICAS"] = f"ray://127.0.0.2:{free_port()}"
    with pytest.raises(RuntimeError, match="exited"):
        srv.start(timeout=60)
    assert "the Ray head at 127.0.0.2" in srv.log() and "cannot be reached" in srv.log()
    bad = make_server()
    bad.env["MODELPORT_REPLICAS"] = "ray:/nope"
    with pytest.raises(RuntimeError, match="exited"):
        bad.start(timeout=60)
    assert "MODELPORT_REPLICAS" in bad.log() and "ray://host:port" in bad.log()


@pytest.mark.slow
def test_a_replica_that_cannot_boot_on_its_node_fails_the_deployment_saying_why(on_ray):
    d = on_ray
    d.model("broken")
    files = {
        "predict.py": (
            "import os\n"
            "if os.environ.get('BOOM'):\n"
            "    raise ImportError('no such weights on this node')\n"
            "def predict(a: float) -> float:\n"
            "    return a\n"
        )
    }
    build = d.build("broken", files)
    created = d.deploy("broken", build, wait=False, replicas=1, cpus=0.5, env={"BOOM": "1"})
    done = d.wait("broken", created["id"], timeout=240)
    assert done["status"] == "failed"
    assert "no such weights on this node" in (done["reason"] or ""), done


@pytest.mark.slow
def test_pack_places_the_replicas_together_and_resources_pick_the_node(on_ray):
    d = on_ray
    d.model("packed")
    build = d.build("packed", MODEL)
    created = d.deploy("packed", build, wait=False, replicas=3, cpus=0.25, placement="pack")
    assert d.wait("packed", created["id"], timeout=240)["status"] == "deployed"
    nodes = {r["node"] for r in _replicas(d, "packed")}
    assert len(nodes) == 1, nodes
    # A custom resource only the second node has: every replica goes there.
    created = d.deploy("packed", build, wait=False, replicas=2, resources={"node2": 0.25})
    assert d.wait("packed", created["id"], timeout=240)["status"] == "deployed"
    assert [r["node"] for r in _replicas(d, "packed")] == ["127.0.0.3", "127.0.0.3"]
    assert d.predict("packed", {"a": 1}).json()["sum"] == 2.0


PRYING = r"""
import os, socket
from pathlib import Path


def attempt(fn):
    try:
        return "ok: " + str(fn())[:200]
    except Exception as exc:
        return f"refused: {type(exc).__name__}"


def connect(port):
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    return "connected"


def predict(path: str = "", port: int = 0) -> dict:
    return {
        "read": attempt(lambda: Path(path).read_text()) if path else "",
        "walk": attempt(lambda: sorted(os.listdir(Path.cwd().parent))),
        "own": attempt(lambda: len(Path("predict.py").read_text())),
        "net": attempt(lambda: connect(port)) if port else "",
        "home": os.environ.get("HOME", ""),
    }
"""


@pytest.mark.slow
@pytest.mark.skipif("landlock" not in PROTECTIONS, reason="this kernel has no Landlock")
def test_a_replica_on_a_ray_node_is_confined_as_a_local_one(on_ray, ray_cluster):
    """The node starts the worker through the sandbox's launcher with a local replica's policy:
    the server's data dir (same machine here) and the node's other builds are out of reach, it
    writes only its own temp dir, and network: false leaves it no socket but its port."""
    d = on_ray
    health = d.c.get("/api/v1/health").json()["sandbox"]
    assert "landlock" in health and "seccomp" in health
    for name in ("neighbour", "prying", "open"):
        d.model(name)
    pin = {"replicas": 1, "cpus": 0.25, "resources": {"node2": 0.1}}  # all on the second node
    neighbour = d.deploy("neighbour", d.build("neighbour", MODEL), wait=False, **pin)
    prying = d.deploy(
        "prying", d.build("prying", {"predict.py": PRYING}), wait=False, network=False, **pin
    )
    opened = d.deploy(
        "open", d.build("open", {"predict.py": PRYING}), wait=False, network=True, **pin
    )
    for name, created in (("neighbour", neighbour), ("prying", prying), ("open", opened)):
        assert d.wait(name, created["id"], timeout=240)["status"] == "deployed", name
    projects = ray_cluster.nodes_dir / "127.0.0.3" / "projects"
    other = next(p for p in projects.glob("*/predict.py") if "loading on" in p.read_text())
    token = d.srv.data_dir / "admin.token"
    port = d.srv.port

    def pry(name: str, path: object) -> dict:
        r = d.predict(name, {"path": str(path), "port": port})
        assert r.status_code == 200, r.text
        return r.json()

    seen = pry("prying", token)
    assert seen["read"] == "refused: PermissionError", seen  # the server's admin token
    assert seen["own"].startswith("ok: "), seen  # its own project folder it reads
    assert seen["walk"] == "refused: PermissionError", seen  # not the node's other builds
    assert pry("prying", other)["read"] == "refused: PermissionError"
    assert seen["net"] == "refused: PermissionError", seen  # network: false
    assert "/run/tmp/" in seen["home"] and "127.0.0.3" in seen["home"], seen
    # The same code with network: true may call out; files stay shut.
    opened_seen = pry("open", token)
    assert opened_seen["net"] == "ok: connected", opened_seen
    assert opened_seen["read"] == "refused: PermissionError", opened_seen
    assert pry("open", other)["read"] == "refused: PermissionError"
    # The replica's log says under what it runs on its node (fetched from it every second).
    rid = _replicas(d, "prying")[0]["id"]

    def noted() -> bool:
        logs = f"/api/v1/models/prying/replicas/{rid}/logs"
        return "sandbox: landlock" in d.c.get(logs, params={"stream": "stderr"}).text

    _wait_for(noted, 30, "the sandbox noted in the replica's log")


@pytest.mark.slow
def test_a_build_the_node_never_saw_is_made_ready_there_from_the_store(on_ray, ray_cluster):
    """A build with a dependency no other test uses, placed on the second node: that node has
    no environment for its lock, makes it from the wheels in the store alone (uv --no-index
    --offline: no package index, nor the server's find-links, is known there) and serves."""
    d = on_ray
    d.model("fresh")
    code = "import tinypkg\ndef predict(x: int) -> dict:\n    return {'v': tinypkg.VERSION}\n"
    build = d.build("fresh", {"predict.py": code, "requirements.txt": "tinypkg==2.0\n"})
    envs = ray_cluster.nodes_dir / "127.0.0.3" / "envs"
    before = set(envs.iterdir()) if envs.is_dir() else set()
    created = d.deploy("fresh", build, wait=False, replicas=1, cpus=0.25, resources={"node2": 0.1})
    assert d.wait("fresh", created["id"], timeout=240)["status"] == "deployed"
    assert d.predict("fresh", {"x": 1}).json() == {"v": "2.0"}
    made = [p for p in set(envs.iterdir()) - before if not p.name.startswith(".")]
    assert len(made) == 1, made  # the new lock's environment, on that node
    assert list(made[0].glob("lib/python*/site-packages/tinypkg/__init__.py"))
    rid = _replicas(d, "fresh")[0]["id"]

    def noted() -> str:
        logs = f"/api/v1/models/fresh/replicas/{rid}/logs"
        text = d.c.get(logs, params={"stream": "stderr"}).text
        return text if "environment made" in text else ""

    text = str(_wait_for(noted, 30, "the node's note in the replica's log"))
    assert "from the store's wheels" in text


# -- a partition: the second node in its own network namespace -----------------------------------


class Partitioned:
    """A two-node Ray cluster of its own: the head on the host end of a veth pair, the second
    node in a network namespace on the other end (10.231.N.1 / .2), started by `ray start
    --block` (ours, ended by pid: every process under them and in the namespace)."""

    def __init__(self) -> None:
        import random

        from tests.conftest import free_port

        self.net = random.randint(1, 250)
        tag = f"{os.getpid() % 10000}{self.net}"
        self.ns, self.host_if, self.ns_if = f"mp-ray-{tag}", f"mpv{tag}h", f"mpv{tag}n"
        self.head_ip, self.node_ip = f"10.231.{self.net}.1", f"10.231.{self.net}.2"
        self.port = free_port()
        self.temp = Path(tempfile.mkdtemp(prefix="mp-rayp-", dir="/tmp"))
        self.nodes_dir = self.temp / "nodes"
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        import json
        import sys

        from tests.conftest import RAY_HEALTH_CHECKS, free_port

        self._ip("netns", "add", self.ns)
        self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._ip("link", "set", self.ns_if, "netns", self.ns)
        self._ip("addr", "add", f"{self.head_ip}/30", "dev", self.host_if)
        self._ip("link", "set", self.host_if, "up")
        self._in_ns("ip", "addr", "add", f"{self.node_ip}/30", "dev", self.ns_if)
        self._in_ns("ip", "link", "set", self.ns_if, "up")
        self._in_ns("ip", "link", "set", "lo", "up")
        ray = str(Path(sys.executable).parent / "ray")
        env = {
            **os.environ,
            "MODELPORT_NODE_DIR": str(self.nodes_dir),
            "RAY_TMPDIR": str(self.temp),
        }
        common = ["--num-cpus", "2", "--object-store-memory", "80000000", "--block"]
        common += ["--temp-dir", str(self.temp), "--disable-usage-stats"]
        head = [ray, "start", "--head", "--node-ip-address", self.head_ip, "--port", str(self.port)]
        head += ["--include-dashboard=false", "--ray-client-server-port", str(free_port())]
        head += ["--dashboard-agent-listen-port", str(free_port())]
        head += ["--system-config", json.dumps(RAY_HEALTH_CHECKS)]
        self._start([*head, *common], env)
        self._wait_port(self.head_ip, self.port, 60)
        node = ["ip", "netns", "exec", self.ns, ray, "start", "--address", self.address]
        node += ["--node-ip-address", self.node_ip, "--resources", '{"node2": 1}']
        self._start([*node, *common], env)
        self._wait_nodes(2, 300)

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.port}"

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def _in_ns(self, *args: str) -> None:
        self._ip("netns", "exec", self.ns, *args)

    def _start(self, argv: list[str], env: dict[str, str]) -> None:
        log = open(self.temp / f"start-{len(self.procs)}.log", "wb")  # noqa: SIM115
        self.procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=log))

    @staticmethod
    def _wait_port(host: str, port: int, timeout: float) -> None:
        def up() -> bool:
            try:
                socket.create_connection((host, port), timeout=1).close()
                return True
            except OSError:
                return False

        _wait_for(up, timeout, f"the Ray head on {host}:{port}")

    def _wait_nodes(self, count: int, timeout: float) -> None:
        """Until ``count`` nodes are alive (one driver that joins once and looks every 0.5 s:
        joining alone took 30 s here with the machine loaded)."""
        import sys

        probe = (
            "import ray, sys, time; ray.init(address=sys.argv[1], log_to_driver=False)\n"
            "while sum(1 for n in ray.nodes() if n['Alive']) < int(sys.argv[2]):\n"
            "    time.sleep(0.5)\n"
            "print('alive')"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe, self.address, str(count)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert out.stdout.strip() == "alive", out.stderr[-2000:]

    def cut(self) -> None:
        """The link down on the namespace's side: the node neither answers nor says so."""
        self._in_ns("ip", "link", "set", self.ns_if, "down")

    def _tree(self) -> set[int]:
        children: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(name))
        found, todo = set(), [p.pid for p in self.procs]
        while todo:
            pid = todo.pop()
            if pid not in found:
                found.add(pid)
                todo += children.get(pid, [])
        listed = subprocess.run(
            ["ip", "netns", "pids", self.ns], capture_output=True, text=True, timeout=30
        ).stdout.split()
        return found | {int(p) for p in listed if p.isdigit()} | self._marked()

    def _marked(self) -> set[int]:
        """Processes whose environment names our temp dir (Ray's agents outlive their raylet,
        re-parented away from the tree)."""
        mark, found = f"RAY_TMPDIR={self.temp}".encode(), set()
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != os.getpid():
                try:
                    with open(f"/proc/{name}/environ", "rb") as f:
                        if mark in f.read().split(b"\0"):
                            found.add(int(name))
                except OSError:
                    continue
        return found

    def close(self) -> None:
        import signal

        for _ in range(3):  # Ray's processes start others while going: look again
            for pid in self._tree():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            for p in self.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
            time.sleep(0.5)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)
        shutil.rmtree(self.temp, ignore_errors=True)


def _netns_possible() -> str:
    """Why a namespace cannot be made here ('' when it can)."""
    if os.geteuid() != 0:
        return "making a network namespace needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "no `ip` (iproute2) on this machine"
    return ""


@pytest.fixture
def partitioned():
    if why := _netns_possible():
        pytest.skip(why)
    cluster = Partitioned()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.mark.slow
def test_a_partitioned_node_s_replicas_are_replaced_on_the_other(
    offline_server, tmp_path, partitioned
):
    """The second node's link set down under load (a partition: no FIN, no RST, silence): Ray's
    tuned health checks mark the node dead, its replica ends lost, a replacement starts on the
    head's node; the only failed requests are those that were running on the cut-off replica."""
    import threading

    srv = offline_server()
    srv.env["MODELPORT_REPLICAS"] = f"ray://{partitioned.address}"
    srv.env["MODELPORT_NODE_DIR"] = str(partitioned.nodes_dir)
    d = Deployed(srv.start(timeout=120), tmp_path)
    d.model("apart")
    build = d.build("apart", MODEL)
    created = d.deploy("apart", build, wait=False, replicas=2, cpus=0.5)
    assert d.wait("apart", created["id"], timeout=240)["status"] == "deployed"
    before = {r["node"]: r for r in _replicas(d, "apart")}
    assert sorted(before) == [partitioned.head_ip, partitioned.node_ip], before
    cut_off = before[partitioned.node_ip]

    outcomes: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        import httpx

        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                r = client.post(
                    f"{d.srv.url}/models/apart/predict",
                    json={"a": 1},
                    headers={"Authorization": f"Bearer {d.keys['apart']}"},
                )
                error = r.json()["error"] if r.status_code != 200 else {}
                outcomes.append((r.status_code, error.get("code", "")))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        _wait_for(lambda: len(outcomes) > 50, 60, "load before the cut")
        cut_at, cut_wall = time.monotonic(), time.time()
        partitioned.cut()

        def replaced() -> list[dict] | None:
            now = _replicas(d, "apart")
            ready = [r for r in now if r["state"] == "ready"]
            if len(ready) == 2 and all(r["node"] == partitioned.head_ip for r in ready):
                return now
            return None

        now = _wait_for(replaced, 180, "a replacement on the head's node")
        back_in = time.monotonic() - cut_at
        count = len(outcomes)
        _wait_for(lambda: len(outcomes) > count + 50, 60, "load after the replacement")
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert cut_off["id"] in {r["id"] for r in now}  # the same slot, started again
    failed = [o for o in outcomes if o[0] != 200]
    assert all(code == "model.crashed" for _, code in failed), failed
    assert len(failed) <= 4, failed  # at most one per client thread: each was running there
    history = d.c.get("/api/v1/models/apart/deployments/current").json()["events"]
    crashed = [e for e in history if e["kind"] == "replica.crashed"]
    assert crashed and crashed[0]["detail"]["replica"] == cut_off["id"]
    assert crashed[0]["detail"]["reason"].startswith(f"lost: its Ray node {partitioned.node_ip}")
    from datetime import datetime

    lost_in = datetime.fromisoformat(crashed[0]["at"]).timestamp() - cut_wall
    print(
        f"partition: lost {lost_in:.1f}s, 2 ready on the head's node {back_in:.1f}s after the cut"
    )
    assert d.predict("apart", {"a": 2}).json()["sum"] == 3.0
    srv.stop()


@pytest.mark.slow
def test_with_replica_tls_the_link_to_each_node_is_tls(offline_server, tmp_path, ray_cluster):
    """MODELPORT_REPLICA_TLS=on: each replica start gets its own key and certificate (the only
    one the server trusts for it), the link is TLS 1.3 with the Hello inside; predictions and
    a boot failure's message reach the server through it."""
    srv = offline_server()
    srv.env.update(MODELPORT_REPLICAS=ray_cluster.url, MODELPORT_REPLICA_TLS="on")
    d = Deployed(srv.start(timeout=120), tmp_path)
    d.model("sealed")
    created = d.deploy("sealed", d.build("sealed", MODEL), wait=False, replicas=2, cpus=0.25)
    assert d.wait("sealed", created["id"], timeout=240)["status"] == "deployed"
    replicas = _replicas(d, "sealed")
    assert sorted(r["node"] for r in replicas) == ["127.0.0.2", "127.0.0.3"]
    answers = [d.predict("sealed", {"a": i, "b": 1}) for i in range(20)]
    assert [r.json()["sum"] for r in answers] == [i + 1.0 for i in range(20)]
    placed = re.findall(r"placed on Ray node \S+ .*?environment \w+; TLS\)", srv.log())
    assert len(placed) == 2, srv.log()[-3000:]
    d.model("cracked")
    files = {
        "predict.py": (
            "import os\n"
            "if os.environ.get('BOOM'):\n"
            "    raise ImportError('no weights on this node')\n"
            "def predict(a: float) -> float:\n"
            "    return a\n"
        )
    }
    build = d.build("cracked", files)
    created = d.deploy("cracked", build, wait=False, replicas=1, cpus=0.25, env={"BOOM": "1"})
    done = d.wait("cracked", created["id"], timeout=240)
    assert done["status"] == "failed" and "no weights on this node" in (done["reason"] or "")
