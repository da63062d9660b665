"""The examples deploy and answer: Cloudera style, typed with track_metric, clashing pins."""

from __future__ import annotations

import json

import httpx
import pytest
from modelport.client import Client

from tests.conftest import ROOT


@pytest.fixture
def client(server):
    with Client(server.url, server.token) as c:
        yield c


def _deploy(
    client: Client, folder: str, name: str, entry: str = "predict.py:predict", **kwargs
) -> dict:
    built = client.build(ROOT / "examples" / folder, name, entry, **kwargs)
    assert built["status"] == "built", built["error"]
    done = client.wait_deployment(name, client.deploy(name, built["number"])["id"])
    assert done["status"] == "deployed", done["reason"]
    return built


@pytest.mark.slow
def test_conflicting_pins_serve_side_by_side(client):
    _deploy(client, "pins-old", "pins-old")
    _deploy(client, "pins-new", "pins-new")
    assert client.predict("pins-old", {"version": "1.0rc1"}) == {
        "packaging": "23.2",
        "is_prerelease": True,
    }
    assert client.predict("pins-new", {"version": "1.0"}) == {
        "packaging": "26.3",
        "is_prerelease": False,
    }


def test_cloudera_example_through_post_model(client, server):
    built = _deploy(client, "cloudera", "words", example_input={"text": "a b c"})
    assert built["example_output"] == {"words": 3, "chars": 5, "upper": "A B C"}
    key = client.rotate_key("words")["access_key"]
    r = httpx.post(f"{server.url}/model", json={"accessKey": key, "request": {"text": "hi there"}})
    assert r.json()["success"] is True and r.json()["response"]["words"] == 2


def test_adder_example_schema(client):
    built = _deploy(client, "adder", "adder", example_input={"a": 2, "b": 3})
    assert built["example_output"] == 5.0
    assert built["input_schema"]["required"] == ["a"]
    assert client.predict("adder", {"a": -1.5}) == -1.5


def test_client_reads_tracked_metrics_and_series(client):
    _deploy(client, "adder", "adder")
    answer = client.call("adder", {"a": -2, "b": 3})
    assert answer.result == 1.0 and answer.build == 1 and answer.replica.startswith("adder-")
    request_id = answer.request_id
    assert client.prediction_metrics("adder", request_id)["metrics"] == {"magnitude": 5.0}
    client.track_delayed_metrics("adder", request_id, {"truth": 1.0})
    assert client.prediction_metrics("adder", request_id)["metrics"] == {
        "magnitude": 5.0,
        "truth": 1.0,
    }
    tracked = client.read_metrics("adder", metric="magnitude")["items"]
    assert [t["request_id"] for t in tracked] == [request_id]
    series = client.metrics("adder")
    assert sum(p["requests"] for p in series["points"]) >= 1


@pytest.mark.slow
def test_r_examples(client, server):
    example = json.loads((ROOT / "examples" / "r-iris" / "example.json").read_text())
    built = _deploy(client, "r-iris", "r-iris", "predict.R:predict", example_input=example)
    assert built["example_output"]["species"] == "setosa"
    assert built["input_schema"]["required"] == [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
    ]
    called = client.call(
        "r-iris", {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
    )
    answer, request_id = called.result, called.request_id
    assert answer["species"] == "virginica" and 0.5 < answer["probability"] <= 1
    assert client.prediction_metrics("r-iris", request_id)["metrics"] == {
        "probability": answer["probability"]
    }

    built = _deploy(
        client, "r-cloudera", "r-words", "predict.R:predict", example_input={"text": "a b c"}
    )
    assert built["example_output"] == {"words": 3, "chars": 5, "upper": "A B C"}
    key = client.rotate_key("r-words")["access_key"]
    r = httpx.post(f"{server.url}/model", json={"accessKey": key, "request": {"text": "hi there"}})
    assert r.json()["success"] is True and r.json()["response"]["words"] == 2


@pytest.mark.slow
def test_readme_r_example(server):
    """The README's R lines, run as written (the CLI against a real server)."""
    import re

    from tests.e2e.test_quickstart import run

    text = (ROOT / "README.md").read_text()
    section = text[text.index("R functions are served the same way") :]
    lines = [
        ln
        for ln in re.search(r"```bash\n(.*?)```", section, re.S).group(1).splitlines()
        if ln.strip()
    ]
    env = {**server.env, "MODELPORT_URL": server.url}
    outputs = [run(line, env) for line in lines]
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    assert json.loads(outputs[-1].stdout)["species"] == "setosa"
