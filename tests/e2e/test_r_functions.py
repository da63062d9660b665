"""R functions through a real server, real R replicas (Rscript + jsonlite) and real builds."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.test_deployments import Deployed

pytestmark = pytest.mark.slow

MODEL_R = r"""
#' Add two numbers.
#' @param a numeric The first number
#' @param b numeric
#' @param tags character[]
#' @return numeric
add <- function(a, b = 2, tags = c("x")) {
  modelport::track_metric("sum", a + b)
  a + b
}

#* @param x:[number] Some numbers
#* @param label:string
#* @param n:int
summarise <- function(x, label = "s", n = 1L) {
  list(label = label, mean = mean(x), count = length(x), third = 1 / 3, p = 0.123456789,
       rows = data.frame(a = 1:2, b = c("x", "é")), raw = structure('{"k": [1, 2]}', class = "json"),
       flag = TRUE, none = NULL, n = n)
}

predict <- function(args) {
  track_metric("a", args$a)
  args$a + args$b
}

fails <- function(args) stop("the model refuses: ", args$why)
"""


@pytest.fixture
def d(offline_server, tmp_path):
    return Deployed(offline_server().start(), tmp_path)


def _metrics(d: Deployed, model: str, request_id: str) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = d.c.get(f"/api/v1/models/{model}/predictions/{request_id}/metrics")
        if got.status_code == 200:
            return got.json()["metrics"]
        time.sleep(0.2)
    raise AssertionError(f"no metrics for {request_id}")


def test_named_parameters_schema_types_and_answers(d):
    d.model("radd")
    number = d.build("radd", {"model.R": MODEL_R}, entrypoint="model.R:add",
                     example_input={"a": 1})
    build = d.c.get(f"/api/v1/models/radd/builds/{number}").json()
    assert build["status"] == "built", build
    schema = build["input_schema"]
    assert schema["properties"]["a"] == {"type": "number"}
    assert schema["properties"]["b"] == {"type": "number", "default": 2}
    assert schema["properties"]["tags"]["items"] == {"type": "string"}
    assert schema["required"] == ["a"] and build["output_schema"] == {"type": "number"}
    assert build["example_output"] == 3
    log = d.c.get(f"/api/v1/models/radd/builds/{number}/log").text
    assert "R 4." in log and "jsonlite" in log

    done = d.deploy("radd", number, replicas=2)
    assert done["status"] == "deployed", done
    r = d.predict("radd", {"a": 1.5, "b": 0.25}, headers={"X-Request-Id": "r-1"})
    assert r.status_code == 200 and r.json() == 1.75
    assert d.predict("radd", {"a": 1}).json() == 3
    # Validation happens before R is called, naming the field
    missing = d.predict("radd", {"b": 1})
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "a"
    wrong = d.predict("radd", {"a": "one"})
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "a"
    unknown = d.predict("radd", {"a": 1, "c": 2})
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "c"
    assert _metrics(d, "radd", "r-1") == {"sum": 1.75}
    # The per-model OpenAPI document carries the R function's schema
    doc = d.c.get("/api/v1/models/radd/openapi.json")
    assert doc.status_code == 200 and '"tags"' in doc.text


def test_plumber_annotations_and_the_encoding_of_results(d):
    d.model("rsum")
    number = d.build("rsum", {"model.R": MODEL_R}, entrypoint="model.R:summarise")
    build = d.c.get(f"/api/v1/models/rsum/builds/{number}").json()
    assert build["status"] == "built", build
    props = build["input_schema"]["properties"]
    assert props["x"] == {"type": "array", "items": {"type": "number"}}
    assert props["label"]["type"] == "string" and props["n"]["type"] == "integer"
    assert d.deploy("rsum", number)["status"] == "deployed"
    r = d.predict("rsum", {"x": [1, 2, 4]})
    assert r.status_code == 200, r.text
    assert r.json() == {"label": "s", "mean": 7 / 3, "count": 3, "third": 1 / 3,
                        "p": 0.123456789, "rows": [{"a": 1, "b": "x"}, {"a": 2, "b": "é"}],
                        "raw": {"k": [1, 2]}, "flag": True, "none": None, "n": 1}
    assert d.predict("rsum", {"x": [1], "n": 1.5}).json()["error"]["field"] == "n"
    # MessagePack callers get the same value
    import msgspec

    packed = httpx.post(f"{d.srv.url}/models/rsum/predict", content=msgspec.msgpack.encode(
        {"x": [2.0]}), headers={"Authorization": f"Bearer {d.keys['rsum']}",
                                "Content-Type": "application/msgpack",
                                "Accept": "application/msgpack"})
    assert packed.status_code == 200 and msgspec.msgpack.decode(packed.content)["mean"] == 2


def test_the_one_list_form_metrics_and_stop(d):
    d.model("rc")
    number = d.build("rc", {"model.R": MODEL_R}, entrypoint="model.R:predict")
    assert d.deploy("rc", number)["status"] == "deployed"
    r = d.predict("rc", {"a": 2, "b": 3}, headers={"X-Request-Id": "rc-1"})
    assert r.status_code == 200 and r.json() == 5
    assert _metrics(d, "rc", "rc-1") == {"a": 2.0}

    d.model("rf")
    assert d.deploy("rf", d.build("rf", {"model.R": MODEL_R},
                                  entrypoint="model.R:fails"))["status"] == "deployed"
    r = d.predict("rf", {"why": "no"})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "model.error"
    assert "the model refuses: no" in r.json()["error"]["message"]
    assert d.predict("rf", {"why": "again"}).status_code == 500  # the replica still serves


def test_r_entrypoints_at_the_door_and_bad_r_files(d):
    d.model("bad")
    folder = {"model.R": MODEL_R, "broken.R": "f <- function(args) {\n  1 +\n"}
    # a syntax error: the build fails with R's error
    number = d.build("bad", folder, entrypoint="broken.R:f")
    built = d.c.get(f"/api/v1/models/bad/builds/{number}").json()
    assert built["status"] == "failed" and "unexpected end of input" in built["error"]
    # a function the file does not define
    number = d.build("bad", folder, entrypoint="model.R:nope")
    built = d.c.get(f"/api/v1/models/bad/builds/{number}").json()
    assert built["status"] == "failed" and "no function nope" in built["error"]
    # an R replica runs one call at a time
    good = d.build("bad", folder, entrypoint="model.R:predict")
    refused = d.c.post("/api/v1/models/bad/deployments", json={"build": good,
                                                               "max_concurrency": 2})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "max_concurrency"
