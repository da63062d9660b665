"""The serving verbs of the CLI against a real server: a stopped model brought back, restart's
wait, a refused build leaving no model, tables when piped."""

from __future__ import annotations

import msgspec

from tests.conftest import write_project
from tests.e2e.test_deployments import _cli, typed


def _deploy_folder(run, tmp_path, name: str, b: float, *extra: str):
    folder = write_project(tmp_path / f"{name}-{b}", {"predict.py": typed(b)})
    return run("deploy", str(folder), "--name", name, "--entry", "predict.py:predict", *extra)


def test_a_stopped_model_comes_back_by_rollback_or_deploy_build(offline_server, tmp_path):
    run = _cli(offline_server().start())
    assert (
        _deploy_folder(
            run, tmp_path, "m", 1.0, "--replicas", "2", "--env", "GREETING=hi"
        ).returncode
        == 0
    )
    assert _deploy_folder(run, tmp_path, "m", 2.0).returncode == 0
    assert run("stop", "m").returncode == 0
    restart = run("restart", "m")
    assert restart.returncode == 1 and "is stopped" in restart.stderr
    assert "modelport deploy m --build N" in restart.stderr

    back = run("rollback", "m")  # from stopped: the build before the last one
    assert back.returncode == 0, back.stderr
    assert "m serves build #1 again" in back.stdout
    assert run("predict", "m", '{"a": 1}').stdout.strip() == "2.0"
    assert run("stop", "m").returncode == 0
    again = run("deploy", "m", "--build", "2")
    assert again.returncode == 0, again.stderr
    assert run("predict", "m", '{"a": 1}').stdout.strip() == "3.0"
    history = msgspec.json.decode(run("deployments", "m", "--json").stdout)["items"]
    assert [h["build"] for h in history] == [2, 1, 2, 1]
    assert [(h["replicas"], h["env_keys"]) for h in history] == [(2, ["GREETING"])] * 4
    wrong = run("deploy", "m", "--build", "2", "--entry", "predict.py:predict")
    assert wrong.returncode == 2 and "--build N" in wrong.stderr


def test_restart_returns_when_the_fresh_replicas_serve(offline_server, tmp_path):
    run = _cli(offline_server().start())
    assert _deploy_folder(run, tmp_path, "r", 1.0, "--replicas", "2").returncode == 0
    before = {r["id"] for r in msgspec.json.decode(run("replicas", "r", "--json").stdout)["items"]}
    done = run("restart", "r")
    assert done.returncode == 0, done.stderr
    assert "restarting" in done.stderr and "2 fresh replica(s) of build #1 ready" in done.stdout
    after = msgspec.json.decode(run("replicas", "r", "--json").stdout)["items"]
    assert len(after) == 2 and not before & {r["id"] for r in after}
    assert {r["state"] for r in after} == {"ready"}
    current = msgspec.json.decode(run("deployments", "r", "--json").stdout)["items"][0]
    assert current["events"][-1]["kind"] == "restarted"
    quick = run("restart", "r", "--no-wait", "--json")
    assert quick.returncode == 0
    assert msgspec.json.decode(quick.stdout)["events"][-1]["kind"] == "restarting"


def test_a_refused_build_leaves_no_model_and_a_failed_one_shows_its_key(offline_server, tmp_path):
    run = _cli(offline_server().start())
    folder = write_project(tmp_path / "p", {"predict.py": typed(1.0)})
    for verb in ("deploy", "build"):  # no function named: the server refuses the upload
        refused = run(verb, str(folder), "--name", f"fresh-{verb}", "--entry", "predict.py")
        assert refused.returncode == 1 and "request.invalid" in refused.stderr
    names = [m["name"] for m in msgspec.json.decode(run("models", "--json").stdout)["items"]]
    assert names == []
    broken = write_project(tmp_path / "broken", {"predict.py": "import nope_missing\n"})
    failed = run("deploy", str(broken), "--name", "broken", "--entry", "predict.py:predict")
    assert failed.returncode == 1
    assert "created model broken; access key (shown once): mp_key_" in failed.stdout
    listed = msgspec.json.decode(run("models", "--json").stdout)["items"]
    assert [m["name"] for m in listed] == ["broken"]  # kept: its build's log says what failed


def test_every_change_a_person_makes_to_a_model_is_in_the_audit_trail(offline_server, tmp_path):
    run = _cli(offline_server().start())
    assert _deploy_folder(run, tmp_path, "aud", 1.0).returncode == 0
    for verb in (
        ("scale", "aud", "2"),
        ("restart", "aud"),
        ("stop", "aud"),
        ("rollback", "aud"),
        ("model", "update", "aud", "--description", "audited"),
        ("keys", "rotate", "aud"),
    ):
        done = run(*verb)
        assert done.returncode == 0 or verb[0] == "rollback", (verb, done.stderr)
    assert _deploy_folder(run, tmp_path, "aud", 2.0).returncode == 0
    assert run("rollback", "aud").returncode == 0
    entries = msgspec.json.decode(run("audit", "--model", "aud", "--json").stdout)["items"]
    by_people = [e for e in reversed(entries) if e["actor"] != "system"]
    assert [e["action"] for e in by_people] == [
        "model.create",
        "build.create",
        "deployment.create",
        "deployment.scale",
        "deployment.restart",
        "deployment.stop",
        "model.update",
        "model.access_key.rotate",
        "build.create",
        "deployment.create",
        "deployment.create",
    ]
    assert {e["actor"] for e in by_people} == {"admin"}
    scale = by_people[3]
    assert scale["model"] == "aud" and scale["detail"] == {"from": 1, "to": 2}
    assert by_people[5]["target"] == by_people[2]["target"]  # the deployment it stopped
    table = run("audit", "--model", "aud")
    assert "deployment.stop" in table.stdout and "deployment.restart" in table.stdout


def test_canary_traffic_promote_and_abort_from_the_cli(offline_server, tmp_path):
    run = _cli(offline_server().start())
    assert _deploy_folder(run, tmp_path, "c", 1.0).returncode == 0
    canary = _deploy_folder(run, tmp_path, "c", 2.0, "--canary", "30")
    assert canary.returncode == 0, canary.stderr
    assert "build #2 is c's candidate: 30 % of requests" in canary.stdout
    shown = run("traffic", "c")
    assert shown.returncode == 0 and "#1 70 % · #2 30 %" in shown.stdout
    moved = run("traffic", "c", "--set", "1=40")  # the primary 40 %, the candidate the rest
    assert moved.returncode == 0 and "#1 40 % · #2 60 %" in moved.stdout
    live = msgspec.json.decode(run("traffic", "c", "--json").stdout)
    assert live["traffic"]["candidate_percent"] == 60.0
    assert [b["role"] for b in live["builds"]] == ["primary", "candidate"]
    wrong = run("traffic", "c", "--set", "9=10")
    assert wrong.returncode != 0 and "serves no share" in wrong.stderr
    second = run("deploy", "c", "--build", "1", "--shadow")
    assert second.returncode != 0 and "candidate.exists" in second.stderr
    promoted = run("promote", "c")
    assert promoted.returncode == 0 and "serves build #2 (promoted)" in promoted.stdout
    assert run("predict", "c", '{"a": 1}').stdout.strip() == "3.0"
    none = run("abort", "c")
    assert none.returncode != 0 and "candidate.none" in none.stderr
    shadow = run("deploy", "c", "--build", "1", "--shadow")
    assert shadow.returncode == 0 and "a copy of every request (shadow)" in shadow.stdout
    assert "shadow" in run("traffic", "c").stdout
    assert run("abort", "c").returncode == 0
    assert "no candidate" in run("traffic", "c").stdout
