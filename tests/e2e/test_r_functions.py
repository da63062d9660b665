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
       rows = data.frame(a = 1:2, b = c("x", "é")),
       raw = structure('{"k": [1, 2]}', class = "json"),
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
    number = d.build("radd", {"model.R": MODEL_R}, entrypoint="model.R:add", example_input={"a": 1})
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
    assert r.json() == {
        "label": "s",
        "mean": 7 / 3,
        "count": 3,
        "third": 1 / 3,
        "p": 0.123456789,
        "rows": [{"a": 1, "b": "x"}, {"a": 2, "b": "é"}],
        "raw": {"k": [1, 2]},
        "flag": True,
        "none": None,
        "n": 1,
    }
    assert d.predict("rsum", {"x": [1], "n": 1.5}).json()["error"]["field"] == "n"
    # MessagePack callers get the same value
    import msgspec

    packed = httpx.post(
        f"{d.srv.url}/models/rsum/predict",
        content=msgspec.msgpack.encode({"x": [2.0]}),
        headers={
            "Authorization": f"Bearer {d.keys['rsum']}",
            "Content-Type": "application/msgpack",
            "Accept": "application/msgpack",
        },
    )
    assert packed.status_code == 200 and msgspec.msgpack.decode(packed.content)["mean"] == 2


def test_the_one_list_form_metrics_and_stop(d):
    d.model("rc")
    number = d.build("rc", {"model.R": MODEL_R}, entrypoint="model.R:predict")
    assert d.deploy("rc", number)["status"] == "deployed"
    r = d.predict("rc", {"a": 2, "b": 3}, headers={"X-Request-Id": "rc-1"})
    assert r.status_code == 200 and r.json() == 5
    assert _metrics(d, "rc", "rc-1") == {"a": 2.0}

    d.model("rf")
    assert (
        d.deploy("rf", d.build("rf", {"model.R": MODEL_R}, entrypoint="model.R:fails"))["status"]
        == "deployed"
    )
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
    refused = d.c.post("/api/v1/models/bad/deployments", json={"build": good, "max_concurrency": 2})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "max_concurrency"


FAULTS_R = r"""
bye <- function(args) {
  if (isTRUE(args$die)) quit(save = "no", status = 1L)
  "alive"
}
spin <- function(args) repeat {}
hog <- function(args) {
  x <- numeric(args$mb * 131072)
  x[] <- 1
  Sys.sleep(20)
  length(x)
}
loud <- function(args) {
  cat(strrep("x", 1048576), "\n", sep = "")
  cat("after the megabyte\n")
  "printed"
}
latin <- function(args) rawToChar(as.raw(c(0x63, 0x61, 0x66, 0xe9)))
slow <- function(args) {
  Sys.sleep(args$s)
  "done"
}
"""


def _replicas(d: Deployed, model: str) -> list[dict]:
    return d.c.get(f"/api/v1/models/{model}/replicas").json()["items"]


def _until(pred, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout:g} s")


def _r_children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_r_quitting_looping_and_hogging_memory(d):
    d.model("rq")
    build = d.build("rq", {"faults.R": FAULTS_R}, entrypoint="faults.R:bye")
    assert d.deploy("rq", build)["status"] == "deployed"
    assert d.predict("rq", {}).json() == "alive"
    died = d.predict("rq", {"die": True})
    assert died.status_code == 502 and died.json()["error"]["code"] == "model.crashed"
    _until(lambda: d.predict("rq", {}).status_code == 200, 60, "a restarted R replica serving")
    assert d.predict("rq", {}).json() == "alive"

    d.model("rs")
    build = d.build("rs", {"faults.R": FAULTS_R}, entrypoint="faults.R:spin")
    assert d.deploy("rs", build, timeout_s=1)["status"] == "deployed"
    looped = d.predict("rs", {})
    assert looped.status_code == 504 and looped.json()["error"]["code"] == "model.timeout"

    d.model("rh")
    build = d.build("rh", {"faults.R": FAULTS_R}, entrypoint="faults.R:hog")
    assert d.deploy("rh", build, memory_mb=200)["status"] == "deployed"
    hogged = d.predict("rh", {"mb": 400})
    assert hogged.status_code == 502, hogged.text
    rid = _until(lambda: _replicas(d, "rh"), 60, "the replica restarted")[0]["id"]
    logs = d.c.get(
        f"/api/v1/models/rh/replicas/{rid}/logs", params={"stream": "stderr", "tail": 65536}
    ).text
    assert "over memory_mb=200" in logs


def test_r_output_streams_bad_text_and_drain(d):
    d.model("rl")
    build = d.build("rl", {"faults.R": FAULTS_R}, entrypoint="faults.R:loud")
    assert d.deploy("rl", build)["status"] == "deployed"
    assert d.predict("rl", {}).json() == "printed"
    rid = _replicas(d, "rl")[0]["id"]
    out = d.c.get(
        f"/api/v1/models/rl/replicas/{rid}/logs", params={"stream": "stdout", "tail": 4096}
    ).text
    assert "xxxx" in out and "after the megabyte" in out

    d.model("ru")
    build = d.build("ru", {"faults.R": FAULTS_R}, entrypoint="faults.R:latin")
    assert d.deploy("ru", build)["status"] == "deployed"
    bad = d.predict("ru", {})
    assert bad.status_code == 500 and "UTF-8" in bad.json()["error"]["message"]

    # SIGTERM reaches R mid-call: it is ignored, the call finishes; a stop drains the replica
    d.model("rd")
    build = d.build("rd", {"faults.R": FAULTS_R}, entrypoint="faults.R:slow")
    assert d.deploy("rd", build)["status"] == "deployed"
    pid = _replicas(d, "rd")[0]["pid"]
    import os
    import signal
    import threading

    answers: list[httpx.Response] = []
    call = threading.Thread(target=lambda: answers.append(d.predict("rd", {"s": 3})))
    call.start()
    time.sleep(1.0)
    for child in _r_children(pid):
        os.kill(child, signal.SIGTERM)
    call.join()
    assert answers[0].status_code == 200 and answers[0].json() == "done"

    call = threading.Thread(target=lambda: answers.append(d.predict("rd", {"s": 3})))
    call.start()
    time.sleep(1.0)
    assert d.c.post("/api/v1/models/rd/stop").status_code == 200
    call.join()
    assert answers[1].status_code == 200 and answers[1].json() == "done"


def _r_package(root, name: str, version: str, body: str, imports: str = ""):
    src = root / name
    (src / "R").mkdir(parents=True)
    (src / "DESCRIPTION").write_text(
        f"Package: {name}\nVersion: {version}\nTitle: Tiny\nDescription: A tiny package.\n"
        "License: MIT\nAuthor: t\nMaintainer: t <t@example.com>\n"
        + (f"Imports: {imports}\n" if imports else "")
    )
    (src / "NAMESPACE").write_text(
        'exportPattern("^[a-z]")\n' + (f"import({imports})\n" if imports else "")
    )
    (src / "R" / "code.R").write_text(body)
    return src


@pytest.fixture(scope="session")
def r_repo(tmp_path_factory):
    """A CRAN-like repository on disk: tinyr 1.0 and tinyr2 0.1 (which imports tinyr)."""
    import subprocess

    root = tmp_path_factory.mktemp("rrepo")
    contrib = root / "src" / "contrib"
    contrib.mkdir(parents=True)
    src = tmp_path_factory.mktemp("rsrc")
    for pkg in (
        _r_package(src, "tinyr", "1.0", "tiny_add <- function(a, b) a + b + 0.5\n"),
        _r_package(
            src, "tinyr2", "0.1", "twice <- function(x) 2 * tiny_add(x, 0)\n", imports="tinyr"
        ),
    ):
        subprocess.run(
            ["R", "CMD", "build", "--no-build-vignettes", "--no-manual", str(pkg)],
            cwd=contrib,
            check=True,
            capture_output=True,
        )
    subprocess.run(
        ["Rscript", "-e", f'tools::write_PACKAGES("{contrib}", type = "source")'],
        check=True,
        capture_output=True,
    )
    return root


@pytest.fixture
def dr(offline_server, tmp_path, r_repo):
    srv = offline_server()
    srv.env["MODELPORT_R_REPOS"] = f"file://{r_repo}"
    return Deployed(srv.start(), tmp_path)


USES_PACKAGES_R = """
#' @param x numeric
predict <- function(x) {
  list(twice = tinyr2::twice(x), jsonlite = as.character(packageVersion("jsonlite")))
}
"""


def test_r_packages_locked_stored_and_installed_offline(dr):
    d = dr
    d.model("rp")
    files = {"model.R": USES_PACKAGES_R, "r-requirements.txt": "# packages\ntinyr2\njsonlite\n"}
    number = d.build("rp", files, entrypoint="model.R:predict", example_input={"x": 1})
    build = d.c.get(f"/api/v1/models/rp/builds/{number}").json()
    assert build["status"] == "built", build
    assert build["example_output"]["twice"] == 3
    log = d.c.get(f"/api/v1/models/rp/builds/{number}/log").text
    assert "locked tinyr==1.0, tinyr2==0.1" in log
    assert "from the machine's R as they are: jsonlite" in log
    assert "R CMD INSTALL tinyr_1.0.tar.gz" in log
    assert d.deploy("rp", number, replicas=2)["status"] == "deployed"
    r = d.predict("rp", {"x": 2})
    assert r.status_code == 200 and r.json()["twice"] == 5
    # the same files again: the same digest, the library reused
    again = d.build("rp", files, entrypoint="model.R:predict", example_input={"x": 1})
    assert d.c.get(f"/api/v1/models/rp/builds/{again}").json()["digest"] == build["digest"]

    # a package no repository has: the build fails naming it
    d.model("rmiss")
    number = d.build(
        "rmiss",
        {"model.R": USES_PACKAGES_R, "r-requirements.txt": "nopkg\n"},
        entrypoint="model.R:predict",
    )
    failed = d.c.get(f"/api/v1/models/rmiss/builds/{number}").json()
    assert failed["status"] == "failed" and "'nopkg'" in failed["error"]
    number = d.build(
        "rmiss",
        {"model.R": USES_PACKAGES_R, "r-requirements.txt": "tinyr==9.9\n"},
        entrypoint="model.R:predict",
    )
    failed = d.c.get(f"/api/v1/models/rmiss/builds/{number}").json()
    assert failed["status"] == "failed" and "the repositories have 1.0" in failed["error"]


def test_r_builds_diff_export_and_import(dr, make_server, wheel_links):
    d = dr
    d.model("rx")
    one = d.build(
        "rx",
        {"model.R": USES_PACKAGES_R, "r-requirements.txt": "tinyr\n"},
        entrypoint="model.R:predict",
    )
    two = d.build(
        "rx",
        {"model.R": USES_PACKAGES_R, "r-requirements.txt": "tinyr2\n"},
        entrypoint="model.R:predict",
    )
    diff = d.c.get(f"/api/v1/models/rx/builds/{one}/diff/{two}").json()
    assert {"name": "R:tinyr2", "change": "added", "before": None, "after": "0.1"} in diff[
        "dependencies"
    ]
    exported = d.c.get(f"/api/v1/models/rx/builds/{two}/export")
    assert exported.status_code == 200
    # another server with no R repository at all serves the imported build
    other = make_server()
    other.env["MODELPORT_FIND_LINKS"] = str(wheel_links)
    other.env["MODELPORT_NO_INDEX"] = "1"
    o = Deployed(other.start(), d.tmp)
    imported = o.c.post("/api/v1/builds/import", files={"archive": ("b.tar.zst", exported.content)})
    assert imported.status_code in (200, 201), imported.text
    o.keys["rx"] = imported.json()["access_key"]
    assert o.deploy("rx", imported.json()["number"])["status"] == "deployed"
    assert o.predict("rx", {"x": 1}).json()["twice"] == 3


def test_no_r_refuses_the_build_and_health_says_so(offline_server, tmp_path):
    srv = offline_server()
    srv.env["MODELPORT_RSCRIPT"] = str(tmp_path / "no-such-Rscript")
    d = Deployed(srv.start(), tmp_path)
    assert d.c.get("/api/v1/health").json()["r"] is None
    d.model("nor")
    number = d.build("nor", {"model.R": MODEL_R}, entrypoint="model.R:predict")
    failed = d.c.get(f"/api/v1/models/nor/builds/{number}").json()
    assert failed["status"] == "failed" and "MODELPORT_RSCRIPT" in failed["error"]
    # Python functions are served as ever
    python = d.build("nor", {"predict.py": "def predict(a: float) -> float:\n    return a\n"})
    assert d.deploy("nor", python)["status"] == "deployed"
    assert d.predict("nor", {"a": 2}).json() == 2


def test_health_names_the_r_version(d):
    assert d.c.get("/api/v1/health").json()["r"].startswith("4.")
