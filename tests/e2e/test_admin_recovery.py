"""Admin recovery through the real CLI and a real server: `modelport admin reset-token` on the
data dir (server running or stopped), and an admin.token that never holds a revoked token."""

from __future__ import annotations

import stat
import subprocess
import time

import httpx
import msgspec

from tests.conftest import MODELPORT


def reset(srv) -> dict:
    done = subprocess.run(
        [*MODELPORT, "admin", "reset-token", "--data-dir", str(srv.data_dir), "--json"],
        capture_output=True,
        text=True,
        env=srv.env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return msgspec.json.decode(done.stdout)


def works(srv, token: str, timeout: float = 30) -> bool:
    """Whether the server takes the token, within the time it has to notice a reset."""
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(
            f"{srv.url}/api/v1/tokens", headers={"Authorization": f"Bearer {token}"}
        ).status_code
        if status == 200 or time.monotonic() > deadline:
            return status == 200
        time.sleep(0.2)


def test_reset_token_while_running_and_stopped_and_no_revoked_token_in_the_file(make_server):
    srv = make_server().start()
    token_file = srv.data_dir / "admin.token"
    token_file.unlink()  # the only admin token is lost
    made = reset(srv)
    assert made["server_running"] is True and made["token"].startswith("mp_tok_")
    assert token_file.read_text().strip() == made["token"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert works(srv, made["token"])  # the running server took it in, no restart
    assert works(srv, srv.token)  # a reset revokes nothing: the lost one still works

    with srv.client(token=made["token"]) as c:
        listed = {t["name"]: t["id"] for t in c.get("/api/v1/tokens").json()["items"]}
        assert set(listed) == {"admin", "admin (reset)"}
        revoked = c.delete(f"/api/v1/tokens/{listed['admin (reset)']}")
        assert revoked.status_code == 200, revoked.text
    assert not token_file.exists()  # it held the token just revoked
    with srv.client() as c:
        entries = c.get("/api/v1/audit").json()["items"]
    assert [(e["actor"], e["action"]) for e in entries][:2] == [
        ("admin (reset)", "token.revoke"),
        ("admin reset-token", "token.create"),
    ]

    assert srv.stop() == 0
    token_file.write_text(made["token"] + "\n")  # a revoked token put back by hand
    srv.start()
    assert not token_file.exists() and srv.token == ""  # a server finding one there removes it
    assert "the token in it is revoked" in srv.log()
    assert srv.stop() == 0

    again = reset(srv)  # server stopped: written straight to the registry
    assert again["server_running"] is False
    srv.start()
    assert token_file.read_text().strip() == again["token"] == srv.token
    assert works(srv, again["token"], timeout=0)
    assert not works(srv, made["token"], timeout=0)


def test_reset_token_says_when_there_is_no_registry(tmp_path):
    done = subprocess.run(
        [*MODELPORT, "admin", "reset-token", "--data-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "no registry in" in done.stderr
    assert not (tmp_path / "none").exists()
