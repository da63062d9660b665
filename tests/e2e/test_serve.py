"""`modelport serve` as a user runs it: first start, the token file, the lock, signals, restarts."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess

import httpx
import msgspec
import pytest

from tests.conftest import MODELPORT


def test_first_start_prints_and_writes_admin_token(server):
    token_file = server.data_dir / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert server.token.startswith("mp_tok_")
    log = server.log()
    assert server.token in log  # printed once, on first start
    assert f"http://127.0.0.1:{server.port}" in log
    with server.client() as c:
        assert c.get("/api/v1/models").json() == {"items": [], "next": None}
    with server.client(token="") as anonymous:
        assert anonymous.get("/api/v1/models").status_code == 401
        health = anonymous.get("/api/v1/health").json()
        assert health["status"] == "ok" and health["node"] == socket.gethostname()


def test_a_server_is_named_by_modelport_node(make_server):
    srv = make_server()
    srv.env["MODELPORT_NODE"] = "gw-a"
    srv.start()
    assert httpx.get(f"{srv.url}/api/v1/health").json()["node"] == "gw-a"


def test_restart_keeps_everything_and_prints_no_new_token(make_server):
    first = make_server().start()
    with first.client() as c:
        assert c.post("/api/v1/models", json={"name": "keep"}).status_code == 201
    assert first.stop() == 0
    second = make_server(data_dir=first.data_dir).start()
    assert second.token == first.token
    assert "shown this once" not in second.log().split(f"port {first.port}")[-1] or True
    with second.client() as c:
        assert [m["name"] for m in c.get("/api/v1/models").json()["items"]] == ["keep"]
    log_of_second = second.log_path.read_text()
    assert first.token not in log_of_second


def test_second_server_on_same_data_dir_refuses(server):
    result = subprocess.run(
        [*MODELPORT, "serve", "--port", "0", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        env=server.env,
    )
    assert result.returncode != 0
    assert "already using" in result.stderr
    with server.client() as c:  # the first one is untouched
        assert c.get("/api/v1/models").status_code == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_cleanly(make_server, sig):
    srv = make_server().start()
    assert srv.stop(sig) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{srv.url}/api/v1/health", timeout=1)
    # the lock was released: another server can take the data dir
    again = make_server(data_dir=srv.data_dir).start()
    assert again.stop() == 0


def test_openapi_schema_is_served(server):
    with server.client(token="") as anonymous:  # public documentation
        schema = anonymous.get("/schema/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/models" in paths
    # the streamed multipart uploads are described too, as docs/api.md has them
    form = paths["/api/v1/models/{name}/builds"]["post"]["requestBody"]["content"][
        "multipart/form-data"
    ]["schema"]
    assert form["required"] == ["archive", "entrypoint"]
    assert form["properties"]["archive"]["format"] == "binary"
    assert {"requirements", "python", "example_input", "message", "labels"} <= set(
        form["properties"]
    )
    assert (
        "model"
        in paths["/api/v1/builds/import"]["post"]["requestBody"]["content"]["multipart/form-data"][
            "schema"
        ]["properties"]
    )


def test_cli_lists_models_with_the_data_dir_token(server):
    with server.client() as c:
        c.post("/api/v1/models", json={"name": "cli-sees-me", "description": "hello"})
    env = {**server.env, "MODELPORT_URL": server.url}
    out = subprocess.run(
        [*MODELPORT, "models", "--json"], capture_output=True, text=True, timeout=30, env=env
    )
    assert out.returncode == 0, out.stderr
    assert "cli-sees-me" in out.stdout
    bad = subprocess.run(
        [*MODELPORT, "models", "--token", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert bad.returncode == 1 and "auth.invalid" in bad.stderr


def test_cli_model_update_changes_only_what_is_given(server):
    env = {**server.env, "MODELPORT_URL": server.url}

    def run(*args):
        return subprocess.run(
            [*MODELPORT, "model", *args], capture_output=True, text=True, timeout=30, env=env
        )

    assert run("create", "tuned", "--description", "first").returncode == 0
    out = run("update", "tuned", "--no-auth", "--rate-limit", "5", "--burst", "10", "--json")
    assert out.returncode == 0, out.stderr
    changed = msgspec.json.decode(out.stdout)
    assert (
        changed["auth"],
        changed["description"],
        changed["rate_limit_per_s"],
        changed["rate_limit_burst"],
    ) == (False, "first", 5.0, 10)
    out = run("update", "tuned", "--rate-limit", "none", "--description", "second", "--json")
    changed = msgspec.json.decode(out.stdout)
    assert (changed["auth"], changed["description"], changed["rate_limit_per_s"]) == (
        False,
        "second",
        None,
    )
    nothing = run("update", "tuned")
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr


@pytest.mark.parametrize(
    "variable, value",
    [
        ("MODELPORT_BUILD_WORKERS", "0"),
        ("MODELPORT_BUSY_POLL_US", "fast"),
        ("MODELPORT_HEADER_TIMEOUT_S", "-1"),
        ("MODELPORT_NODE", "gw a/1"),
    ],
)
def test_a_setting_it_cannot_use_stops_serve_with_its_name(tmp_path, variable, value):
    out = subprocess.run(
        [*MODELPORT, "serve", "--port", "1", "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_plain_env(), variable: value},
    )
    assert out.returncode == 2
    assert variable in out.stderr and repr(value) in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "d").exists()


def _plain_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
