"""Shared fixtures: a real `modelport serve` subprocess, and the app in-process on real files."""

from __future__ import annotations

import os
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def start(self, timeout: float = 30.0) -> "Server":
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*MODELPORT, "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    self.token = (self.data_dir / "admin.token").read_text().strip()
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


def server_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env["MODELPORT_HOME"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    started: list[Server] = []

    def make(data_dir: Path | None = None, **kwargs) -> Server:
        data = data_dir or tmp_path / f"data{len(started)}"
        srv = Server(data_dir=data, port=free_port(), env=server_env(data), **kwargs)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def server(make_server) -> Server:
    return make_server().start()


@pytest.fixture
def app_client(tmp_path: Path):
    """The app in-process (Litestar's TestClient) on a real SQLite file and store in tmp."""
    from litestar.testing import TestClient

    from modelport.app import create_app
    from modelport.settings import Settings

    settings = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {client.app.state.admin_token}"
        yield client
