"""The compatibility gate through a real server: a build whose input schema would refuse what
the serving build takes is not deployed (409 schema.breaking) unless allowed; CLI included."""

from __future__ import annotations

import msgspec
import pytest

from tests.conftest import write_project
from tests.e2e.test_deployments import Deployed, _cli, typed

OTHER = "def predict(x: float) -> float:\n    return x\n"
WIDER = "def predict(a: float, b: float = 1.0, c: int = 0) -> float:\n    return a + b + c\n"


@pytest.fixture
def d(offline_server, tmp_path):
    return Deployed(offline_server().start(), tmp_path)


def test_a_breaking_build_is_refused_naming_the_fields_unless_allowed(d):
    d.model("m")
    one = d.build("m", {"predict.py": typed(1.0)})
    other = d.build("m", {"predict.py": OTHER})
    wider = d.build("m", {"predict.py": WIDER})
    d.deploy("m", one)
    refused = d.c.post("/api/v1/models/m/deployments", json={"build": other})
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "schema.breaking"
    assert "required field 'x' added" in error["message"]
    assert "field 'a' removed" in error["message"] and "field 'b' removed" in error["message"]
    assert "allow_breaking" in error["message"]
    assert len(d.c.get("/api/v1/models/m/deployments").json()["items"]) == 1
    assert d.predict("m", {"a": 1}).json() == 2.0  # build 1 serves on, untouched

    compatible = d.deploy("m", wider)  # a new optional field passes, with a note
    assert compatible["status"] == "deployed"
    note = compatible["events"][0]["detail"]["schema_note"]
    assert note == "input schema compatible with build #1's: new optional field 'c'"
    assert d.predict("m", {"a": 1, "c": 2}).json() == 4.0

    back = d.c.post("/api/v1/models/m/rollback", json={})  # #1 lacks 'c': a rollback is gated too
    assert back.status_code == 409 and "field 'c' removed" in back.json()["error"]["message"]
    allowed = d.c.post("/api/v1/models/m/rollback", json={"allow_breaking": True})
    assert allowed.status_code == 202 and allowed.json()["build"] == one
    assert d.wait("m", allowed.json()["id"])["status"] == "deployed"
    assert "(allowed): field 'c' removed" in allowed.json()["events"][0]["detail"]["schema_note"]

    forced = d.deploy("m", other, allow_breaking=True)
    assert forced["status"] == "deployed" and d.predict("m", {"x": 5}).json() == 5.0
    entry = d.c.get("/api/v1/audit", params={"model": "m"}).json()["items"][0]
    assert entry["action"] == "deployment.create"
    assert entry["detail"]["schema_note"].startswith("input schema not compatible with build #1")


def test_the_cli_shows_the_diff_and_the_flag_and_deploys_an_existing_build(
    offline_server, tmp_path
):
    run = _cli(offline_server().start())
    first = write_project(tmp_path / "one", {"predict.py": typed(1.0)})
    second = write_project(tmp_path / "two", {"predict.py": OTHER})
    assert run("deploy", str(first), "--name", "m", "--entry", "predict.py:predict").returncode == 0
    out = run("deploy", str(second), "--name", "m", "--entry", "predict.py:predict")
    assert out.returncode == 1
    assert "error schema.breaking: Build #2's input schema is not compatible" in out.stderr
    assert "input schema, build #1 → #2:\n  + x\n  - a\n  - b\n" in out.stderr
    assert "modelport deploy m --build 2 --allow-breaking" in out.stderr
    assert run("predict", "m", '{"a": 1}').stdout.strip() == "2.0"
    forced = run("deploy", "m", "--build", "2", "--allow-breaking")
    assert forced.returncode == 0, forced.stderr
    assert "note: input schema not compatible with build #1's (allowed)" in forced.stderr
    assert run("predict", "m", '{"x": 3}').stdout.strip() == "3.0"
    refused = run("rollback", "m")
    assert refused.returncode == 1 and "modelport rollback m --allow-breaking" in refused.stderr
    history = msgspec.json.decode(run("deployments", "m", "--json").stdout)["items"]
    assert [h["build"] for h in history] == [2, 1]
