"""Hostile models and builds against the sandbox: each attack docs/security.md names is refused
by the kernel, the model keeps serving, and no server secret leaks into its answers or logs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from modelport.runtime import sandbox

from tests.conftest import Server, free_port, pack_bytes, server_env, upload_build, write_project
from tests.e2e.test_deployments import Deployed, _alive, typed

PROTECTIONS = sandbox.probe()
needs_landlock = pytest.mark.skipif(
    "landlock" not in PROTECTIONS, reason="this kernel has no Landlock"
)

# A model that tries each of those attacks: every attempt answers "ok: …" or "refused: …", and is
# printed too (so that a secret it got would be in its log).
HOSTILE = r"""
import os, socket, tempfile
from pathlib import Path

DATA = Path.cwd().parent.parent  # its folder is <data dir>/projects/<digest>


def attempt(fn):
    try:
        out = "ok: " + str(fn())[:400]
    except Exception as exc:
        out = f"refused: {type(exc).__name__}: {exc}"
    print(out, flush=True)
    return out


def http(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /api/v1/tokens HTTP/1.0\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 29\r\n\r\n{\"name\": \"x\", \"role\": \"admin\"}")
        return s.recv(200).split(b"\r\n")[0].decode()


def scratch():
    with tempfile.NamedTemporaryFile(dir=None) as f:
        f.write(b"scratch")
        return os.path.dirname(f.name) + " " + os.environ["HOME"]


def predict(action: str, path: str = "", port: int = 0) -> str:
    if action == "token":
        return attempt(lambda: (DATA / "admin.token").read_text())
    if action == "walk":
        return attempt(lambda: sorted(os.listdir(DATA)))
    if action == "registry":
        return attempt(lambda: (DATA / "registry.sqlite3").read_bytes()[:100])
    if action == "logs":
        return attempt(lambda: sorted(os.listdir(DATA / "logs" / "replicas")))
    if action == "read":
        return attempt(lambda: Path(path).read_text())
    if action == "write":
        return attempt(lambda: Path(path).write_text("def predict(a: float) -> float:\n"
                                                     "    return 666.0\n"))
    if action == "environ":
        return attempt(lambda: Path(f"/proc/{path}/environ").read_bytes())
    if action == "http":
        return attempt(lambda: http(port))
    if action == "scratch":
        return attempt(scratch)
    return "ok"
"""

VICTIM = "import os\ndef predict(a: float, b: float = 1.0) -> float:\n    return a + b\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory, wheel_links):
    """One server: `evil` (network false), `open` (the same code, network true) and `victim`
    (with a secret in its env)."""
    tmp = tmp_path_factory.mktemp("sandbox")
    srv = Server(data_dir=tmp / "data", port=free_port(), env=server_env(tmp / "data"))
    srv.env.update(MODELPORT_FIND_LINKS=str(wheel_links), MODELPORT_NO_INDEX="1")
    srv.start()
    d = Deployed(srv, tmp)
    for name in ("evil", "open", "victim"):
        d.model(name)
    assert (
        d.deploy("evil", d.build("evil", {"predict.py": HOSTILE}), network=False)["status"]
        == "deployed"
    )
    assert (
        d.deploy("open", d.build("open", {"predict.py": HOSTILE}), network=True)["status"]
        == "deployed"
    )
    assert (
        d.deploy(
            "victim",
            d.build("victim", {"predict.py": VICTIM}),
            env={"VICTIM_SECRET": "s3cr3t-of-the-victim"},
        )["status"]
        == "deployed"
    )
    yield d
    srv.stop()


def attempt(d: Deployed, action: str, model: str = "evil", **args) -> str:
    r = d.predict(model, {"action": action, **args})
    assert r.status_code == 200, r.text
    return r.json()


def replica(d: Deployed, model: str) -> dict:
    return d.c.get(f"/api/v1/models/{model}/replicas").json()["items"][0]


def replica_log(d: Deployed, model: str) -> str:
    rid = replica(d, model)["id"]
    return d.c.get(f"/api/v1/models/{model}/replicas/{rid}/logs", params={"tail": 65536}).text


def still_serving(d: Deployed) -> None:
    assert attempt(d, "nothing") == "ok"
    assert d.predict("victim", {"a": 1}).json() == 2.0


def test_health_lists_the_protections(world):
    health = httpx.get(f"{world.srv.url}/api/v1/health").json()
    assert health["sandbox"] == PROTECTIONS
    assert "no_new_privs" in health["sandbox"]
    assert "sandbox: " in world.srv.log()  # said at start, once


@needs_landlock
def test_a_model_cannot_read_the_admin_token(world):
    token = world.srv.token
    got = attempt(world, "token")
    assert got.startswith("refused: PermissionError") and token not in got
    still_serving(world)
    log = replica_log(world, "evil")
    assert "refused: PermissionError" in log and token not in log


@needs_landlock
def test_a_model_cannot_walk_the_data_dir_its_registry_or_logs(world):
    for action in ("walk", "registry", "logs"):
        assert attempt(world, action).startswith("refused: PermissionError"), action
    still_serving(world)


@needs_landlock
def test_a_model_cannot_read_or_rewrite_another_models_files(world):
    digest = world.c.get("/api/v1/models/victim/builds/1").json()["digest"]
    victim_file = world.srv.data_dir / "projects" / digest.removeprefix("sha256:") / "predict.py"
    assert victim_file.is_file()
    assert attempt(world, "read", path=str(victim_file)).startswith("refused: PermissionError")
    assert attempt(world, "write", path=str(victim_file)).startswith("refused: PermissionError")
    assert victim_file.read_text() == VICTIM
    # its own project folder: readable, not writable
    own = world.c.get("/api/v1/models/evil/builds/1").json()["digest"].removeprefix("sha256:")
    own_file = world.srv.data_dir / "projects" / own / "predict.py"
    assert attempt(world, "read", path=str(own_file)).startswith("ok: \nimport os")
    assert attempt(world, "write", path=str(own_file)).startswith("refused: PermissionError")
    still_serving(world)


@needs_landlock
def test_a_model_cannot_read_other_processes_environment(world):
    victim_pid = replica(world, "victim")["pid"]
    for pid in (victim_pid, world.srv.proc.pid, 1):
        got = attempt(world, "environ", path=str(pid))
        assert got.startswith("refused: PermissionError") and "s3cr3t" not in got, pid
    assert attempt(world, "environ", path="self").startswith("ok: ")  # its own: yes
    still_serving(world)


def test_no_network_but_its_pipe_unless_the_deployment_allows_it(world):
    port = world.srv.port
    assert attempt(world, "http", port=port).startswith("refused: PermissionError")
    # network: true lets the model call out, the server's API included — which, without a
    # token (it cannot read one), answers it as it answers anyone: 401
    assert attempt(world, "http", model="open", port=port) == "ok: HTTP/1.1 401 Unauthorized"
    still_serving(world)


def test_a_private_temp_dir_as_tmpdir_and_home_removed_with_the_replica(world):
    rid = replica(world, "open")["id"]
    tmp = world.srv.data_dir / "run" / "tmp" / rid
    assert attempt(world, "scratch", model="open") == f"ok: {tmp} {tmp}"
    assert tmp.is_dir()
    assert world.c.post("/api/v1/models/open/stop").json()["status"] == "stopped"
    assert not tmp.exists()


@needs_landlock
def test_the_inspect_step_of_a_build_is_confined(world):
    """The build imports the model to read its signature: a module that reads the token at import
    and puts what it got in a parameter's default finds nothing to show."""
    code = (
        "from pathlib import Path\n"
        "try:\n"
        "    GOT = (Path.cwd().parent.parent / 'admin.token').read_text()\n"
        "except Exception as exc:\n"
        "    GOT = f'refused: {type(exc).__name__}'\n"
        "print('inspect got', GOT)\n"
        "def predict(x: str = GOT) -> str:\n"
        "    return x\n"
    )
    world.model("sneaky")
    number = world.build("sneaky", {"predict.py": code})
    build = world.c.get(f"/api/v1/models/sneaky/builds/{number}").json()
    assert build["status"] == "built", build
    default = build["input_schema"]["properties"]["x"]["default"]
    assert default == "refused: PermissionError"
    log = world.c.get(f"/api/v1/models/sneaky/builds/{number}/log").text
    assert "inspect got refused" in log and world.srv.token not in log


def test_sandbox_off_gives_no_protection(offline_server, tmp_path):
    """MODELPORT_SANDBOX=off: health says [] — and the attack is real: the token is read."""
    srv = offline_server()
    srv.env["MODELPORT_SANDBOX"] = "off"
    d = Deployed(srv.start(), tmp_path)
    assert httpx.get(f"{srv.url}/api/v1/health").json()["sandbox"] == []
    assert "sandbox: OFF" in srv.log()
    d.model("evil")
    d.deploy("evil", d.build("evil", {"predict.py": HOSTILE}))
    assert attempt(d, "token") == f"ok: {srv.token}\n"


SLOW_IMPORT = """
import os, subprocess, sys, tempfile, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.path.join(tempfile.gettempdir(), "pids"), "w") as f:
    f.write(f"{os.getpid()} {child.pid}\\n")
time.sleep(600)

def predict(x: int) -> int:
    return x
"""

# A local package whose own build backend (run by uv while it locks) does the same.
SLOW_BACKEND = (
    "def _hang(*args, **kwargs):\n"
    + "".join("    " + line + "\n" for line in SLOW_IMPORT.strip().splitlines()[:5])
    + ("get_requires_for_build_wheel = prepare_metadata_for_build_wheel = build_wheel = _hang\n")
)
IN_TREE = (
    '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    '[project]\nname = "{name}"\nversion = "1.0"\n'
)
PROJECTS = {
    "inspect": {"predict.py": SLOW_IMPORT},
    "uv": {
        "predict.py": typed(1.0),
        "requirements.txt": "./slowpkg\n",
        "slowpkg/backend.py": SLOW_BACKEND,
        "slowpkg/pyproject.toml": IN_TREE.format(name="slowpkg"),
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("step", ["inspect", "uv"])
def test_a_server_killed_mid_build_leaves_no_build_process(offline_server, tmp_path, step):
    """SIGKILL while the model is imported (inspect) or a package's build backend runs (uv):
    neither it, nor what it started, nor uv outlives the server."""
    srv = offline_server().start()
    d = Deployed(srv, tmp_path)
    d.model("slow")
    folder = write_project(tmp_path / "slow", PROJECTS[step])
    fields = {"requirements": "requirements.txt"} if step == "uv" else {}
    upload_build(d.c, "slow", pack_bytes(folder), entrypoint="predict.py:predict", **fields)
    deadline, pids = time.monotonic() + 120, []
    while time.monotonic() < deadline and not pids:
        pids = _written_pids(srv.data_dir)
        time.sleep(0.1)
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    others = [p for p in _processes_under(srv.data_dir) if p not in pids]
    assert others  # the launcher (and uv) are running too
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        any(_alive(p) for p in pids) or _processes_under(srv.data_dir)
    ):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), f"the {step} step or its child outlived the server"
    assert not _processes_under(srv.data_dir), "a build process outlived the server"


EVIL_BACKEND = """
from pathlib import Path

def _seen():
    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / "registry.sqlite3").exists() or folder.name.startswith("data"):
            try:
                return "read " + (folder / "admin.token").read_text()
            except Exception as exc:
                return f"refused: {type(exc).__name__}"
    return "no data dir"

def _fail(*args, **kwargs):
    raise RuntimeError("the backend " + _seen())

get_requires_for_build_wheel = prepare_metadata_for_build_wheel = build_wheel = _fail
"""


@needs_landlock
def test_a_build_backend_run_by_uv_is_confined(world):
    """A requirement on a local package runs that package's own build backend while uv locks:
    it finds the data dir above its folder, and cannot read the token there."""
    world.model("backend")
    files = {
        "predict.py": typed(1.0),
        "requirements.txt": "./evilpkg\n",
        "evilpkg/backend.py": EVIL_BACKEND,
        "evilpkg/pyproject.toml": IN_TREE.format(name="evilpkg"),
    }
    number = world.build("backend", files, requirements="requirements.txt")
    build = world.c.get(f"/api/v1/models/backend/builds/{number}").json()
    assert build["status"] == "failed"
    log = world.c.get(f"/api/v1/models/backend/builds/{number}/log").text
    assert "the backend refused: PermissionError" in log
    assert world.srv.token not in log and world.srv.token not in build["error"]


def _written_pids(data: Path) -> list[int]:
    """The pids the hanging step wrote to its temp dir (somewhere under the data dir: the
    build's folders come and go meanwhile)."""
    try:
        for found in data.rglob("pids"):
            text = found.read_text()
            if text.endswith("\n"):
                return [int(p) for p in text.split()]
    except OSError:
        pass
    return []


def _processes_under(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` (or a path under it)."""
    mark, found = str(folder).encode(), []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                continue
            if mark in cmdline and _alive(int(name)):
                found.append(int(name))
    return found
