"""How the CLI finds a server's token by its URL alone: the file a running server leaves in the
user's config dir (its data dir), and `modelport login` for a server elsewhere."""

from __future__ import annotations

import os
import stat
import subprocess

import msgspec
from click.testing import CliRunner
from modelport.cli import main

from tests.conftest import MODELPORT


def cli_env(srv, config) -> dict[str, str]:
    """A shell with no MODELPORT_HOME or token: only the URL says which server."""
    env = {k: v for k, v in srv.env.items() if k not in ("MODELPORT_HOME", "MODELPORT_TOKEN")}
    return {**env, "XDG_CONFIG_HOME": str(config), "HOME": str(config.parent / "home")}


def run(env, cwd, *args, **kwargs):
    return subprocess.run(
        [*MODELPORT, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120, **kwargs
    )


def test_the_cli_finds_the_admin_token_of_a_server_started_elsewhere(make_server, tmp_path):
    config = tmp_path / "config"
    srv = make_server()
    srv.env["XDG_CONFIG_HOME"] = str(config)  # the server's user is the CLI's user
    srv.start()
    record = config / "modelport" / "servers" / f"127.0.0.1-{srv.port}.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE(record.parent.stat().st_mode) == 0o700
    saved = msgspec.json.decode(record.read_bytes())
    assert saved["url"] == srv.url and saved["data_dir"] == str(srv.data_dir)
    env, elsewhere = cli_env(srv, config), tmp_path / "elsewhere"
    elsewhere.mkdir()  # no ./artifacts here
    for url in (srv.url, f"http://localhost:{srv.port}"):
        listed = run(env, elsewhere, "models", "--json", "--url", url)
        assert listed.returncode == 0, listed.stderr
        assert msgspec.json.decode(listed.stdout)["items"] == []

    record.unlink()  # as if the server had never said where it is
    lost = run(env, elsewhere, "models", "--url", srv.url)
    assert lost.returncode == 1 and "auth.missing" in lost.stderr
    assert str(record) in lost.stderr.replace("\n", "")
    assert str(elsewhere / "artifacts" / "admin.token") in lost.stderr.replace("\n", "")

    bad = run(env, elsewhere, "login", srv.url, "--token", "mp_tok_nothing")
    assert bad.returncode == 1 and "nothing stored" in bad.stderr and not record.exists()
    logged = run(env, elsewhere, "login", srv.url, "--token", srv.token)
    assert logged.returncode == 0, logged.stderr
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert msgspec.json.decode(record.read_bytes())["token"] == srv.token
    assert run(env, elsewhere, "models", "--url", srv.url).returncode == 0

    other = make_server()
    other.env["XDG_CONFIG_HOME"] = str(config)
    other.start()
    other_record = record.with_name(f"127.0.0.1-{other.port}.json")
    assert other_record.exists()
    assert other.stop() == 0
    assert not other_record.exists()  # a clean stop takes it back


def test_login_asks_for_the_token_when_not_given(server, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("MODELPORT_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["login", server.url], input=server.token + "\n")
    assert result.exit_code == 0, result.output
    assert server.token not in result.output  # not echoed
    path = tmp_path / "cfg" / "modelport" / "servers" / f"127.0.0.1-{server.port}.json"
    assert msgspec.json.decode(path.read_bytes())["token"] == server.token
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_tables_are_not_cut_when_piped(server):
    env = {**server.env, "MODELPORT_URL": server.url, "COLUMNS": "80"}
    description = "a description far longer than a terminal is wide: " + "word " * 40
    made = run(env, None, "model", "create", "long", "--description", description.strip())
    assert made.returncode == 0, made.stderr
    table = run(env, None, "models")  # stdout is a pipe here
    assert table.returncode == 0
    assert description.strip() in table.stdout
    assert "…" not in table.stdout
