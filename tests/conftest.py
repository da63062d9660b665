"""Shared fixtures: a real `modelport serve` subprocess, and the app in-process on real files."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELPORT = [sys.executable, "-m", "modelport.cli"]


_GIVEN: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one handed out before in this session: the kernel may give
    the same port again once the probe socket is closed, and two servers made one after the
    other then share it (the second fails to bind while the first answers its health check)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


@dataclass
class Server:
    """A `modelport serve` we started; stopped by its own pid only."""

    data_dir: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    token: str = ""
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Server:
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 — the server process keeps it
        self.proc = subprocess.Popen(
            [
                *MODELPORT,
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    token_file = self.data_dir / "admin.token"  # gone when it held a revoked one
                    self.token = token_file.read_text().strip() if token_file.exists() else ""
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def client(self, token: str | None = None, **kwargs) -> httpx.Client:
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def private_config_dir(tmp_path_factory) -> Iterator[Path]:
    """Every server a test starts writes its file for the CLI (modelport.servers) here, never in
    the user's own ~/.config; the tests' own CLI and Client read it from here too."""
    before = os.environ.get("XDG_CONFIG_HOME")
    config = tmp_path_factory.mktemp("config")
    os.environ["XDG_CONFIG_HOME"] = str(config)
    yield config
    if before is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = before


#: Every wheel the tests' builds need — msgspec (the runtime's), flit_core (to build the tiny
#: packages tests make), the examples' requirements — fetched by scripts/install-test-deps, so
#: that no test reaches a package index.
TEST_WHEELS = ROOT / ".cache" / "test-wheels"


def test_wheels() -> Path:
    if not any(TEST_WHEELS.glob("msgspec-*.whl")):
        raise RuntimeError(f"{TEST_WHEELS} lacks the tests' wheels: run scripts/install-test-deps")
    return TEST_WHEELS


def base_wheels(dest: Path) -> Path:
    """Copy msgspec's and flit_core's wheels (the installed msgspec's version) into `dest`."""
    from importlib.metadata import version

    wanted = [f"msgspec-{version('msgspec')}-*.whl", "flit_core-*.whl"]
    for pattern in wanted:
        found = sorted(test_wheels().glob(pattern))
        if not found:
            raise RuntimeError(f"no {pattern} in {TEST_WHEELS}: run scripts/install-test-deps")
        shutil.copy2(found[-1], dest)
    return dest


def server_env(data_dir: Path) -> dict[str, str]:
    """A server's environment: its own data dir, and builds resolved from TEST_WHEELS only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env["MODELPORT_HOME"] = str(data_dir)
    env["MODELPORT_FIND_LINKS"] = str(test_wheels())
    env["MODELPORT_NO_INDEX"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def make_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """Servers on their own data dirs; with MODELPORT_TEST_REGISTRY=postgresql each new data dir
    gets its own fresh PostgreSQL database (to run the e2e tests on that backend)."""
    started: list[Server] = []
    databases: dict[Path, str] = {}

    def make(data_dir: Path | None = None, **kwargs) -> Server:
        data = data_dir or tmp_path / f"data{len(started)}"
        srv = Server(data_dir=data, port=free_port(), env=server_env(data), **kwargs)
        if os.environ.get("MODELPORT_TEST_REGISTRY") == "postgresql":
            if data not in databases:
                databases[data] = request.getfixturevalue("postgres").fresh_database()
            srv.env["MODELPORT_DATABASE_URL"] = databases[data]
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def server(make_server) -> Server:
    return make_server().start()


@pytest.fixture
def app_client(request: pytest.FixtureRequest, tmp_path: Path):
    """The app in-process (Litestar's TestClient) on a real SQLite file and store in tmp; on a
    fresh PostgreSQL database instead when MODELPORT_TEST_REGISTRY=postgresql (to run the
    in-process tests on that backend: `MODELPORT_TEST_REGISTRY=postgresql pytest tests/…`)."""
    from litestar.testing import TestClient
    from modelport.app import create_app
    from modelport.settings import Settings

    url = None
    if os.environ.get("MODELPORT_TEST_REGISTRY") == "postgresql":
        url = request.getfixturevalue("pg_url")
    settings = Settings(data_dir=tmp_path / "data", database_url=url)
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {client.app.state.services.admin_token}"
        yield client


def _tiny_package(root: Path, name: str, version: str, body: str = "") -> Path:
    src = root / f"{name}-{version}"
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text(f'VERSION = "{version}"\n{body}')
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["flit_core>=3.2,<5"]\nbuild-backend = "flit_core.buildapi"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\ndescription = "tiny"\n'
    )
    return src


@pytest.fixture(scope="session")
def wheel_links(tmp_path_factory) -> Path:
    """A local wheel folder: msgspec's wheel and flit_core's (from TEST_WHEELS) and tiny
    packages made here (tinypkg 1.0 and 2.0), so build tests need no index at all."""

    links = base_wheels(tmp_path_factory.mktemp("links"))
    import uv

    src = tmp_path_factory.mktemp("src")
    for ver in ("1.0", "2.0"):
        project = _tiny_package(src, "tinypkg", ver)
        subprocess.run(
            [
                uv.find_uv_bin(),
                "build",
                "--wheel",
                "-q",
                "--no-index",
                "--find-links",
                str(links),
                "--out-dir",
                str(links),
                str(project),
            ],
            check=True,
        )
    return links


@pytest.fixture
def offline_server(make_server, wheel_links):
    """A server whose builds resolve only against the local wheel folder."""

    def make(**kwargs) -> Server:
        srv = make_server(**kwargs)
        srv.env["MODELPORT_FIND_LINKS"] = str(wheel_links)
        srv.env["MODELPORT_NO_INDEX"] = "1"
        return srv

    return make


def write_project(folder: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


def pack_bytes(folder: Path) -> bytes:
    import io

    from modelport.store.archive import pack

    buf = io.BytesIO()
    pack(folder, buf)
    return buf.getvalue()


def upload_build(client: httpx.Client, model: str, archive: bytes, **fields) -> httpx.Response:
    data = {k: v if isinstance(v, str) else __import__("json").dumps(v) for k, v in fields.items()}
    return client.post(
        f"/api/v1/models/{model}/builds", files={"archive": ("project.tar.zst", archive)}, data=data
    )


def wait_build(client: httpx.Client, model: str, number: int, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        build = client.get(f"/api/v1/models/{model}/builds/{number}").json()
        if build["status"] in ("built", "failed"):
            return build
        time.sleep(0.05)
    raise TimeoutError(f"build {model} #{number} still {build['status']}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator:
    """make(size_mb): a real file system of that size (a tmpfs; mounting needs root), to fill.
    Unmounted at the end (lazily: a server's files may still be open there)."""
    mounted: list[Path] = []

    def make(size_mb: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield make
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill_disk(disk: Path) -> Path:
    """Write a file until the disk is full, to the last byte; delete it to make room again."""
    import errno

    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


@dataclass
class Postgres:
    """A PostgreSQL we started (scripts/pg-server) on loopback, for the whole session."""

    folder: Path
    port: int
    made: int = 0

    def url(self, database: str = "modelport") -> str:
        return f"postgresql://modelport@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [
                *PSQL,
                "-h",
                str(self.folder),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-tAc",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {done.stderr.strip()}")
        return done.stdout.strip()

    def fresh_database(self) -> str:
        """A new, empty database owned by modelport; its URL."""
        self.made += 1
        name = f"test_{os.getpid()}_{self.made}"
        self.psql(f"CREATE DATABASE {name} OWNER modelport")
        return self.url(name)

    def start(self) -> None:
        subprocess.run(
            [str(ROOT / "scripts" / "pg-server"), "start", str(self.folder), str(self.port)],
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run([str(ROOT / "scripts" / "pg-server"), "stop", str(self.folder)], check=True)


def _psql() -> list[str]:
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))
    return [found[-1] if found else "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"]


PSQL = _psql()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL for the session, started on first use and stopped (by its pid) at the end.
    Its folder is outside pytest's tmp (that is root's own, closed to the postgres user)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="modelport-pg-"))
    pg = Postgres(folder=folder, port=free_port())
    try:
        pg.start()
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(
            f"PostgreSQL did not start (scripts/install-test-deps installs it): {exc.stderr!r}"
        ) from None
    yield pg
    pg.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres.fresh_database()


@dataclass
class Registry:
    """Where a test's registry lives: the SQLite file in its tmp, or its own PostgreSQL
    database; `open()` gives the opened `Database` (migrated unless read-only)."""

    dialect: str
    path: Path
    url: str | None

    def database(self, *, read_only: bool = False):
        from modelport.registry.backends import registry

        return registry(self.url, self.path, read_only=read_only)

    async def open(self, *, read_only: bool = False):
        return await self.database(read_only=read_only).open()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    """The registry on each backend in turn: a test that takes it runs once on each."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return Registry(request.param, tmp_path / "registry.sqlite3", url)


S3_BUCKET = "modelport"


def app_sql(app_client, sql: str, params: tuple = ()) -> list[dict]:
    """A statement run in the app's own registry (whichever backend app_client has), in one
    write transaction; its rows (those a RETURNING gives)."""
    db = app_client.app.state.services.db

    async def run() -> list[dict]:
        async with db.write() as tx:
            return await tx.all(sql, params)

    return app_client.blocking_portal.call(run)


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "testtest"}


@dataclass
class S3Server:
    """Ceph's radosgw we started (scripts/s3-server) on loopback, for the whole session: one
    bucket, S3_BUCKET; each test takes its own prefix in it."""

    folder: Path
    port: int
    made: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prefix(self) -> str:
        """A prefix no other test of the session uses."""
        self.made += 1
        return f"t{os.getpid()}-{self.made}"

    def url(self, prefix: str, **options: str) -> str:
        """The MODELPORT_STORE_URL of that prefix of the bucket."""
        query = "&".join(f"{k}={v}" for k, v in {"region": "us-east-1", **options}.items())
        return f"s3://{S3_BUCKET}/{prefix}?endpoint={self.endpoint}&{query}"

    def client(self, prefix: str):
        return bucket_client(self.endpoint, prefix)

    def script(self, *args: str) -> str:
        done = subprocess.run(
            [str(ROOT / "scripts" / "s3-server"), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"s3-server {' '.join(args)}: {done.stderr.strip()[-2000:]}")
        return done.stdout.strip()

    def stop_gateway(self) -> None:
        """radosgw alone (the cluster keeps the objects): the S3 service is down."""
        self.script("rgw-stop", str(self.folder))

    def start_gateway(self) -> None:
        self.script("rgw-start", str(self.folder))


def bucket_client(endpoint: str, prefix: str):
    """Our own obstore client of a prefix of S3_BUCKET, to look at and tamper with the bucket
    behind a store's back."""
    from obstore.store import S3Store

    return S3Store(
        S3_BUCKET,
        prefix=prefix,
        endpoint=endpoint,
        region="us-east-1",
        access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One radosgw for the session, started on first use (~15 s) and stopped by its pids."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="modelport-s3-"))
    s3 = S3Server(folder=folder, port=free_port())
    try:
        s3.script("start", str(folder), str(s3.port), S3_BUCKET)
    except RuntimeError:
        subprocess.run([str(ROOT / "scripts" / "s3-server"), "stop", str(folder)], check=False)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    yield s3
    s3.script("stop", str(folder))
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The session's radosgw, with its credentials in this process's AWS_* variables."""
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return s3_server


@dataclass
class RayCluster:
    """A real two-node Ray cluster on this machine (ray.cluster_utils.Cluster): the head on
    127.0.0.2, a second node on 127.0.0.3 with the custom resource ``node2`` (Ray rewrites
    127.0.0.1 to the machine's own address: docs/scale-out.md). Its processes are ours, stopped
    by their pids (never `ray stop`, which matches by name)."""

    cluster: object  # ray.cluster_utils.Cluster
    temp_dir: Path
    second: object = None  # the second node (ray._private.node.Node)

    HEAD_IP = "127.0.0.2"
    SECOND_IP = "127.0.0.3"

    @property
    def address(self) -> str:
        """The head's cluster address (what `ray start --address` takes)."""
        return self.cluster.address  # type: ignore[attr-defined]

    @property
    def nodes_dir(self) -> Path:
        """MODELPORT_NODE_DIR of the nodes: <it>/<node address>/ per node."""
        return self.temp_dir / "nodes"

    @property
    def url(self) -> str:
        """MODELPORT_REPLICAS for a server placing its replicas on this cluster."""
        return f"ray://{self.address}"

    def add_second(self) -> None:
        self.second = self.cluster.add_node(  # type: ignore[attr-defined]
            node_ip_address=self.SECOND_IP,
            num_cpus=4,
            resources={"node2": 1},
            object_store_memory=80_000_000,
        )
        self.cluster.wait_for_nodes()  # type: ignore[attr-defined]

    def kill_second_raylet(self) -> int:
        """SIGKILL the second node's raylet (a machine lost); its pid."""
        from ray._private import ray_constants

        info = self.second.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0]  # type: ignore[attr-defined]
        info.process.send_signal(signal.SIGKILL)
        info.process.wait(10)
        return info.process.pid

    def remove_second(self) -> None:
        if self.second is not None:
            self.cluster.remove_node(self.second, allow_graceful=False)  # type: ignore[attr-defined]
            self.second = None


#: Ray's health checks of its nodes, as docs/scale-out.md advises for a modelport cluster.
RAY_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """One Ray cluster for the session, started on first use (head ~4 s, second node ~2 s,
    ~0.6 GiB each), for the tests that place replicas on Ray (marked slow)."""
    import tempfile

    temp = Path(tempfile.mkdtemp(prefix="mp-ray-", dir="/tmp"))  # Ray's socket paths: short
    (temp / "ray").mkdir()
    before = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "MODELPORT_NODE_DIR")}
    os.environ["RAY_TMPDIR"] = str(temp)  # where Ray writes its current cluster's address
    # What the nodes make ready for their replicas (serving/ray_host.py), one folder per node
    os.environ["MODELPORT_NODE_DIR"] = str(temp / "nodes")
    from ray.cluster_utils import Cluster

    head = {
        "node_ip_address": RayCluster.HEAD_IP,
        "num_cpus": 4,
        "include_dashboard": False,
        "object_store_memory": 80_000_000,
        "temp_dir": str(temp),
        # A node lost is noticed within ~3 s, not Ray's default ~15 s (docs/scale-out.md)
        "_system_config": RAY_HEALTH_CHECKS,
    }
    try:
        cluster = Cluster(initialize_head=True, head_node_args=head)
    except Exception as exc:  # Ray gives a raylet 30 s to register: once missed, load ~15 here
        if "timed out during startup" not in str(exc):
            raise
        time.sleep(5)
        cluster = Cluster(initialize_head=True, head_node_args=head)
    ray = RayCluster(cluster=cluster, temp_dir=temp)
    try:
        ray.add_second()
        yield ray
    finally:
        cluster.shutdown()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp, ignore_errors=True)
