"""R functions without R: the schema made of worker.R's description, the R lock's pure parts."""

from __future__ import annotations

import pytest
from modelport.builder import rdeps
from modelport.builder.rlang import RInfo
from modelport.runtime.invoke import CallFailed, Invoker
from modelport.runtime.rbridge import is_r_entry, r_signature

DESCRIBED = {
    "function": "predict",
    "form": "params",
    "doc": "Sum.",
    "return_type": "number",
    "params": [
        {"name": "a", "type": "number", "required": True, "default": None},
        {"name": "k", "type": "integer", "required": False, "default": "3"},
        {"name": "tags", "type": "string[]", "required": False, "default": '["x"]'},
        {"name": "n", "type": None, "required": False, "default": None},  # `n = length(a)`
        {"name": "rows", "type": "rows", "required": False, "default": "null"},
    ],
}


def test_the_schema_of_an_r_function():
    sig = r_signature(DESCRIBED)
    props = sig.input_schema["properties"]
    assert props["a"] == {"type": "number"}
    assert props["k"] == {"type": "integer", "default": 3}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "default": ["x"]}
    assert "default" not in props["n"]  # R computes it
    assert props["rows"]["type"] == "array"
    assert sig.input_schema["required"] == ["a"]
    assert sig.output_schema == {"type": "number"}
    assert sig.describe()["doc"] == "Sum." and sig.describe()["function"] == "predict"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"k": 1}', "a"),
        (b'{"a": "1"}', "a"),
        (b'{"a": 1, "k": 1.5}', "k"),
        (b'{"a": 1, "tags": [1]}', "tags[0]"),
        (b'{"a": 1, "zz": 1}', "zz"),
    ],
)
def test_a_request_is_checked_before_r_sees_it(body, field):
    decode = Invoker(r_signature(DESCRIBED)).decode
    with pytest.raises(CallFailed) as failed:
        decode(body, "json")
    assert failed.value.status == 422 and failed.value.field == field
    decode(b'{"a": 1, "n": {"any": ["thing"]}}', "json")


def test_the_one_list_form_takes_any_object():
    sig = r_signature({"function": "f", "form": "dict", "params": [], "return_type": None})
    assert sig.form == "dict" and sig.input_schema == {"type": "object"}
    with pytest.raises(CallFailed) as failed:
        Invoker(sig).decode(b"[1]", "json")
    assert failed.value.status == 400


def test_r_entrypoints():
    assert is_r_entry("models/predict.R:predict") and not is_r_entry("predict.py:predict")


def test_r_requirements_lines():
    assert rdeps.parse_requirements("# pins\njsonlite\n\nglmnet==4.1-8  # the model\n") == [
        ("jsonlite", None),
        ("glmnet", "4.1-8"),
    ]
    with pytest.raises(rdeps.RDependencyError, match="line 1"):
        rdeps.parse_requirements("glmnet>=4\n")


def test_description_imports():
    text = (
        "Package: mymodel\nVersion: 0.1\nDepends: R (>= 4.0), stats\n"
        "Imports: jsonlite (>= 1.8),\n    glmnet\n"
    )
    assert rdeps.description_imports(text) == [("jsonlite", None), ("glmnet", None)]


def test_the_machines_packages_are_used_as_they_are():
    info = RInfo("/usr/bin/Rscript", "4.2.2", {"jsonlite": "1.8.4", "Matrix": "1.5-3"})
    packages, order = rdeps.resolve(
        [("jsonlite", None), ("Matrix", "1.5-3"), ("utils", None)], info, [], lambda line: None
    )
    assert [(p.name, p.version, p.machine) for p in packages] == [
        ("Matrix", "1.5-3", True),
        ("jsonlite", "1.8.4", True),
    ]
    assert order == []
    with pytest.raises(rdeps.RDependencyError, match=r"'Matrix' version 9\.9"):
        rdeps.resolve([("Matrix", "9.9")], info, [], lambda line: None)
    a = rdeps.r_lock_digest("4.2.2", packages)
    assert a == rdeps.r_lock_digest("4.2.2", list(reversed(packages)))
    assert a != rdeps.r_lock_digest("4.3.0", packages)


def test_what_goes_to_r_as_json_text_rather_than_rs_serialization():
    from modelport.runtime.rserial import Unfit, call_frame

    assert call_frame(0.0, {"a": 1, "b": {"c": "é", "d": None}}).startswith(b"X\n")
    for args in ({"x": [1]}, {"b": b"\x00"}, {"n": 2**1100}, {"k": {"x": ()}}):
        with pytest.raises(Unfit):
            call_frame(0.0, args)


def test_health_asks_r_in_the_background_and_answers_with_the_last_answer(monkeypatch):
    import asyncio
    import threading

    from modelport.api import health
    from modelport.builder import rlang

    asked: list[str] = []
    release = threading.Event()

    def find_r(rscript: str) -> RInfo:
        asked.append(rscript)
        release.wait(10)
        if rscript == "none":
            raise rlang.RMissing("no R")
        return RInfo(rscript, f"4.2.{len(asked)}")

    monkeypatch.setattr(rlang, "find_r", find_r)

    async def go() -> None:
        check = health._RCheck()
        check.ask("R")  # the server's start
        first = asyncio.ensure_future(check.version("R"))  # waits for that one answer
        await asyncio.sleep(0.05)
        assert not first.done() and asked == ["R"]
        release.set()
        assert await first == "4.2.1"
        assert await check.version("R") == "4.2.1" and asked == ["R"]  # not asked again
        monkeypatch.setattr(health, "_R_CHECK_S", 0.0)  # stale: the last answer, asked anew
        assert await check.version("R") == "4.2.1"
        while len(asked) < 2 or check._asking:
            await asyncio.sleep(0.01)
        assert await check.version("R") == "4.2.2"
        assert await check.version("none") is None

    asyncio.run(go())
