"""A real `modelport serve` with real models deployed through the API, and a real browser.

Test modules import the fixtures (`site_fixture`, `browser_fixture`, `page_fixture`); pytest knows
them by their names `site`, `browser` and `page`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    Server,
    free_port,
    pack_bytes,
    server_env,
    upload_build,
    wait_build,
    write_project,
)

from . import ARGS, CHROMIUM, VIEWPORT, Console, chromium_missing_reason

ADDER_V1 = '''"""Adds two numbers."""
print("adder loading", flush=True)


def predict(a: float, b: float = 0.0) -> float:
    return a + b
'''
ADDER_V2 = '''"""Adds three numbers, and pins a package."""
import tinypkg

print("adder v2 loading with tinypkg", tinypkg.VERSION, flush=True)


def predict(a: float, b: float = 0.0, c: int = 0) -> float:
    return a + b + c
'''
ECHO = """def predict(args):
    return {"echo": args, "keys": sorted(args)}
"""


@dataclass
class Site:
    server: Server
    projects: Path
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def token(self) -> str:
        return self.server.token

    def api(self) -> httpx.Client:
        return self.server.client()

    def current(self, model: str) -> dict:
        return self.api().get(f"/api/v1/models/{model}/deployments/current").json()

    def current_build(self, model: str) -> int:
        return self.current(model)["build"]

    def start_build(self, model: str, files: dict, **fields) -> int:
        """Upload a project; returns the build's number without waiting for it."""
        folder = write_project(self.projects / f"{model}-{time.monotonic_ns()}", files)
        fields.setdefault("entrypoint", "predict.py:predict")
        response = upload_build(self.api(), model, pack_bytes(folder), **fields)
        assert response.status_code == 202, response.text
        return response.json()["number"]


def _deploy(c: httpx.Client, model: str, build: int, **settings) -> None:
    response = c.post(f"/api/v1/models/{model}/deployments", json={"build": build, **settings})
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        found = c.get(f"/api/v1/models/{model}/deployments/{response.json()['id']}").json()
        if found["status"] in ("deployed", "failed"):
            assert found["status"] == "deployed", found
            return
        time.sleep(0.1)
    raise TimeoutError(f"{model} build {build} did not deploy")


def _build(c: httpx.Client, tmp, model: str, files: dict, **fields) -> int:
    folder = write_project(tmp / f"{model}-{time.monotonic_ns()}", files)
    fields.setdefault("entrypoint", "predict.py:predict")
    response = upload_build(c, model, pack_bytes(folder), **fields)
    assert response.status_code == 202, response.text
    number = response.json()["number"]
    built = wait_build(c, model, number)
    assert built["status"] == "built", built
    return number


@pytest.fixture(scope="module", name="site")
def site_fixture(tmp_path_factory, wheel_links):
    """adder (build 1 serving, build 2 built with a new parameter, file and dependency) and echo
    (a Cloudera-style dict function), on a server that resolves only from the local wheel folder."""
    data = tmp_path_factory.mktemp("web") / "data"
    srv = Server(data_dir=data, port=free_port(), env=server_env(data))
    srv.env["MODELPORT_FIND_LINKS"] = str(wheel_links)
    srv.env["MODELPORT_NO_INDEX"] = "1"
    srv.start()
    projects = tmp_path_factory.mktemp("projects")
    site = Site(srv, projects)
    try:
        with srv.client() as c:
            for name, about in (
                ("adder", "Adds numbers: the smallest typed model."),
                ("echo", "Echoes the request (Cloudera style)"),
            ):
                created = c.post("/api/v1/models", json={"name": name, "description": about})
                assert created.status_code == 201, created.text
                site.keys[name] = created.json()["access_key"]
            one = _build(
                c,
                projects,
                "adder",
                {"predict.py": ADDER_V1},
                example_input={"a": 1, "b": 2},
                message="first version",
            )
            echo = _build(
                c, projects, "echo", {"predict.py": ECHO}, example_input={"text": "hello"}
            )
            _build(
                c,
                projects,
                "adder",
                {
                    "predict.py": ADDER_V2,
                    "notes.txt": "v2 adds c\n",
                    "requirements.txt": "tinypkg==1.0\n",
                },
                example_input={"a": 1, "b": 2, "c": 3},
                message="adds c",
            )
            _deploy(c, "adder", one, timeout_s=12, env={"GREETING": "hi"})
            _deploy(c, "echo", echo)
        yield site
    finally:
        srv.stop()


@pytest.fixture(scope="module", name="browser")
def browser_fixture():
    reason = chromium_missing_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(name="page")
def page_fixture(browser):
    """A fresh tab (own sessionStorage) on a laptop-sized screen; fails the test on an uncaught
    error or a Content-Security-Policy violation."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(15_000)
    tab = context.new_page()
    console = Console(tab)
    yield tab
    context.close()
    assert not console.problems, console.problems
