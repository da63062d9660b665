"""The runtime's signature reader: call forms, typed decoding, error paths, schemas, inspect CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
from modelport.runtime.context import track_metric
from modelport.runtime.invoke import CallFailed, Invoker, field_of
from modelport.runtime.signature import EntryError, analyze, describe, load_entry, parse_entry


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a one-file model project; load_entry's chdir, sys.path and modules are undone after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)

    def write(source: str, name: str = "model.py") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return tmp_path

    yield write
    for name in set(sys.modules) - before:
        if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


def invoker(project_dir: Path, entry: str = "model.py:predict") -> Invoker:
    return Invoker(analyze(load_entry(project_dir, entry)))


def failure(inv: Invoker, body: bytes, content_type: str = "json") -> CallFailed:
    with pytest.raises(CallFailed) as info:
        inv.run(body, content_type)
    return info.value


# --- forms ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "annotation", ["", ": dict", ": dict[str, Any]", ": Any", ": Dict[str, Any]", ": Mapping"]
)
def test_dict_form_passes_the_whole_object(project, annotation):
    d = project(f"""
        from typing import Any, Dict, Mapping
        def predict(args{annotation}):
            return {{"got": args, "type": type(args).__name__}}
    """)
    inv = invoker(d)
    assert inv.sig.form == "dict"
    body, _ = inv.run(b'{"a": 1, "b": [1, 2]}')
    assert json.loads(body) == {"got": {"a": 1, "b": [1, 2]}, "type": "dict"}
    assert inv.sig.input_schema == {"type": "object"}
    assert inv.sig.output_schema == {}


def test_dict_form_rejects_a_body_that_is_not_an_object(project):
    inv = invoker(project("def predict(args):\n    return args\n"))
    for body in (b"[1, 2]", b"3", b"null"):
        err = failure(inv, body)
        assert (err.status, err.code, err.field) == (400, "request.malformed", None)
    err = failure(inv, b"{not json")
    assert (err.status, err.code) == (400, "request.malformed")
    assert "JSON" in err.message


def test_typed_params_apply_defaults_and_check_types(project):
    d = project("""
        def predict(sepal_length: float, sepal_width: float, k: int = 3,
                    tags: list = ["x"]) -> dict:
            tags.append("mutated")
            return {"sum": sepal_length + sepal_width, "k": k, "tags": tags}
    """)
    inv = invoker(d)
    assert inv.sig.form == "params"
    body, _ = inv.run(b'{"sepal_length": 1, "sepal_width": 2.5}')
    assert json.loads(body) == {"sum": 3.5, "k": 3, "tags": ["x", "mutated"]}
    body, _ = inv.run(b'{"sepal_length": 1, "sepal_width": 2.5}')  # the default was copied
    assert json.loads(body)["tags"] == ["x", "mutated"]
    body, _ = inv.run(b'{"sepal_length": 1, "sepal_width": 2, "k": 7, "tags": []}')
    assert json.loads(body) == {"sum": 3.0, "k": 7, "tags": ["mutated"]}


def test_missing_wrong_and_unknown_fields_are_422_naming_the_field(project):
    inv = invoker(project("def predict(a: float, b: int = 1):\n    return a\n"))
    err = failure(inv, b'{"b": 2}')
    assert (err.status, err.code, err.field) == (422, "request.invalid", "a")
    assert "missing required field `a`" in err.message
    err = failure(inv, b'{"a": "x"}')
    assert (err.status, err.code, err.field) == (422, "request.invalid", "a")
    assert err.message == "Expected `float`, got `str` - at `$.a`"
    err = failure(inv, b'{"a": 1, "zzz": 2}')
    assert (err.status, err.code, err.field) == (422, "request.invalid", "zzz")
    err = failure(inv, b"[1]")
    assert (err.status, err.code) == (400, "request.malformed")


def test_nested_path_is_the_field(project):
    d = project("""
        import msgspec
        class Point(msgspec.Struct):
            x: float
        def predict(features: list[float], origin: Point | None = None):
            return sum(features)
    """)
    inv = invoker(d)
    err = failure(inv, b'{"features": ["a"]}')
    assert (err.status, err.field) == (422, "features[0]")
    err = failure(inv, b'{"features": [1], "origin": {}}')
    assert (err.status, err.field) == (422, "origin.x")
    assert json.loads(inv.run(b'{"features": [1, 2.5]}')[0]) == 3.5


def test_msgspec_struct_form(project):
    d = project("""
        import msgspec
        class IrisRequest(msgspec.Struct, forbid_unknown_fields=True):
            sepal_length: float
            features: list[float] = []
        class IrisResponse(msgspec.Struct):
            label: str
            score: float
        def predict(req: IrisRequest) -> IrisResponse:
            score = req.sepal_length + sum(req.features)
            return IrisResponse(label=type(req).__name__, score=score)
    """)
    inv = invoker(d)
    assert inv.sig.form == "struct"
    body, _ = inv.run(b'{"sepal_length": 1, "features": [2, 3]}')
    assert json.loads(body) == {"label": "IrisRequest", "score": 6.0}
    err = failure(inv, b'{"sepal_length": 1, "features": [2, "x"]}')
    assert (err.status, err.field) == (422, "features[1]")
    err = failure(inv, b'{"sepal_length": 1, "other": 1}')
    assert (err.status, err.field) == (422, "other")
    schema = inv.sig.input_schema
    assert schema["title"] == "IrisRequest" and schema["required"] == ["sepal_length"]
    assert inv.sig.output_schema["properties"] == {
        "label": {"type": "string"},
        "score": {"type": "number"},
    }


def test_dataclass_and_typeddict_forms(project):
    d = project("""
        import dataclasses
        from typing import TypedDict
        @dataclasses.dataclass
        class Req:
            a: float
            b: int = 2
        class TD(TypedDict):
            a: float
        def with_dataclass(req: Req) -> float:
            assert isinstance(req, Req)
            return req.a * req.b
        def with_typeddict(req: TD) -> float:
            return req["a"] * 10
    """)
    dc = invoker(d, "model.py:with_dataclass")
    assert dc.sig.form == "struct"
    assert json.loads(dc.run(b'{"a": 1.5}')[0]) == 3.0
    assert failure(dc, b'{"b": 1}').field == "a"
    td = invoker(d, "model.py:with_typeddict")
    assert td.sig.form == "struct"
    assert json.loads(td.run(b'{"a": 2}')[0]) == 20.0
    assert failure(td, b'{"a": "no"}').field == "a"
    assert td.sig.input_schema["required"] == ["a"]


def test_every_record_form_refuses_unknown_fields(project):
    d = project("""
        import dataclasses, msgspec
        from typing import TypedDict
        class Loose(msgspec.Struct):
            a: float
        @dataclasses.dataclass
        class Req:
            a: float
        class TD(TypedDict):
            a: float
        def by_struct(req: Loose) -> str:
            return f"{type(req).__name__} {isinstance(req, Loose)} {req.a}"
        def by_dataclass(req: Req) -> float:
            return req.a
        def by_typeddict(req: TD) -> float:
            return req["a"]
    """)
    for entry in ("by_struct", "by_dataclass", "by_typeddict"):
        inv = invoker(d, f"model.py:{entry}")
        err = failure(inv, b'{"a": 1, "extra": 1}')
        assert (err.status, err.code, err.field) == (422, "request.invalid", "extra"), entry
        packed = msgspec.msgpack.encode({"a": 1, "extra": 1})
        assert failure(inv, packed, "msgpack").field == "extra", entry
        assert inv.run(b'{"a": 1}')[0] in (b'"Loose True 1.0"', b"1.0"), entry


def test_a_non_finite_float_is_the_models_error_for_json_only(project):
    d = project("""
        import math
        def predict(x: float):
            return {"ok": None, "rows": [{"v": x}, {"v": math.nan if x < 0 else x}]}
    """)
    inv = invoker(d)
    assert json.loads(inv.run(b'{"x": 1}')[0]) == {"ok": None, "rows": [{"v": 1}, {"v": 1}]}
    err = failure(inv, b'{"x": -1}')
    assert (err.status, err.code) == (500, "model.error") and "rows[1].v" in err.message
    out = msgspec.msgpack.decode(inv.run(b'{"x": -1}', accept="msgpack")[0])
    assert out["rows"][1]["v"] != out["rows"][1]["v"]  # NaN, as it is


def test_generator_functions_are_refused(project):
    d = project("""
        def gen(n: int):
            yield n
        async def agen(n: int):
            yield n
    """)
    for entry in ("gen", "agen"):
        with pytest.raises(EntryError, match="generator function"):
            invoker(d, f"model.py:{entry}")


def test_future_annotations_and_forward_references(project):
    d = project("""
        from __future__ import annotations
        import dataclasses
        import msgspec
        def predict(req: Req) -> Out:
            return Out(total=req.a + req.inner.b)
        def typed(a: float, n: int = 2) -> list[float]:
            return [a] * n
        @dataclasses.dataclass
        class Inner:
            b: float
        @dataclasses.dataclass
        class Req:
            a: float
            inner: Inner
        class Out(msgspec.Struct):
            total: float
    """)
    inv = invoker(d)
    assert inv.sig.form == "struct"
    assert json.loads(inv.run(b'{"a": 1, "inner": {"b": 2}}')[0]) == {"total": 3.0}
    assert failure(inv, b'{"a": 1, "inner": {"b": "x"}}').field == "inner.b"
    assert inv.sig.input_schema["$defs"]["Inner"]["required"] == ["b"]
    typed = invoker(d, "model.py:typed")
    assert typed.sig.form == "params"
    assert typed.sig.output_schema == {"type": "array", "items": {"type": "number"}}
    assert json.loads(typed.run(b'{"a": 1.5}')[0]) == [1.5, 1.5]


def test_async_def(project):
    d = project("""
        import asyncio
        from modelport import track_metric
        async def predict(a: float) -> float:
            await asyncio.sleep(0)
            track_metric("doubled", a * 2)
            return a * 2
    """)
    inv = invoker(d)
    assert inv.sig.is_async and inv.sig.form == "params"
    import asyncio

    body, metrics = asyncio.run(inv.run_async(b'{"a": 2}'))
    assert json.loads(body) == 4.0 and metrics == {"doubled": 4.0}


def test_keyword_only_and_positional_only_parameters(project):
    d = project("""
        def kwonly(a: int, *, b: int = 10):
            return a + b
        def posonly(a: int, /, b: int, *, c: int = 100):
            return a + b + c
    """)
    assert json.loads(invoker(d, "model.py:kwonly").run(b'{"a": 1}')[0]) == 11
    assert json.loads(invoker(d, "model.py:posonly").run(b'{"a": 1, "b": 2}')[0]) == 103


def test_msgpack_in_and_out(project):
    inv = invoker(project("def predict(a: float, b: float) -> float:\n    return a + b\n"))
    body, _ = inv.run(msgspec.msgpack.encode({"a": 1, "b": 2}), "msgpack", "msgpack")
    assert msgspec.msgpack.decode(body) == 3.0
    body, _ = inv.run(msgspec.msgpack.encode({"a": 1, "b": 2}), "msgpack", "json")
    assert body == b"3.0"
    with pytest.raises(CallFailed) as info:
        inv.run(b"\xc1", "msgpack")
    assert (info.value.status, info.value.code) == (400, "request.malformed")


def test_model_error_and_unencodable_output(project):
    d = project("""
        class Thing:
            pass
        def boom(a: int):
            raise ValueError("boom")
        def opaque(a: int):
            return Thing()
        def rich(a: int):
            import datetime, dataclasses, decimal
            @dataclasses.dataclass
            class P:
                x: int
            return {"set": {1}, "tuple": (1, 2), "dc": P(1), "when": datetime.date(2024, 1, 2)}
    """)
    err = failure(invoker(d, "model.py:boom"), b'{"a": 1}')
    assert (err.status, err.code, err.message) == (500, "model.error", "ValueError: boom")
    err = failure(invoker(d, "model.py:opaque"), b'{"a": 1}')
    assert (err.status, err.code) == (500, "model.error")
    assert "Thing" in err.message
    body, _ = invoker(d, "model.py:rich").run(b'{"a": 1}')
    assert json.loads(body) == {"set": [1], "tuple": [1, 2], "dc": {"x": 1}, "when": "2024-01-02"}


def test_unsupported_annotations_fall_back_to_any(project):
    d = project("""
        class Weights:
            pass
        def predict(w: Weights, n: int = 1) -> Weights:
            return {"w": w, "n": n}
    """)
    inv = invoker(d)
    assert inv.sig.form == "params"
    assert json.loads(inv.run(b'{"w": [1, 2]}')[0]) == {"w": [1, 2], "n": 1}
    assert inv.sig.output_schema == {}
    assert inv.sig.input_schema["properties"]["w"] == {}


def test_numpy_values_are_sent_as_numbers_and_lists(project):
    pytest.importorskip("numpy")
    d = project("""
        import numpy as np
        def predict(x: np.ndarray, scale: float = 2.0) -> np.ndarray:
            assert isinstance(x, np.ndarray)
            return {"arr": x * scale, "mean": np.float32(x.mean()), "n": np.int64(x.size),
                    "flag": np.bool_(True)}
    """)
    inv = invoker(d)
    body, _ = inv.run(b'{"x": [[1, 2], [3, 4]]}')
    assert json.loads(body) == {"arr": [[2, 4], [6, 8]], "mean": 2.5, "n": 4, "flag": True}
    assert inv.sig.output_schema == {"type": "array"}


def test_describe_lists_params(project):
    d = project("""
        def predict(a: float, k: int = 3, tags: list[str] = ["x"], opt: str | None = None) -> float:
            '''Add things.'''
            return a
    """)
    info = describe(d, "model.py:predict")
    assert info["form"] == "params" and info["is_async"] is False
    assert info["doc"] == "Add things."
    assert info["output_schema"] == {"type": "number"}
    assert info["input_schema"]["additionalProperties"] is False
    assert info["params"] == [
        {"name": "a", "type": {"type": "number"}, "required": True, "default": None},
        {"name": "k", "type": {"type": "integer"}, "required": False, "default": 3},
        {
            "name": "tags",
            "type": {"type": "array", "items": {"type": "string"}},
            "required": False,
            "default": ["x"],
        },
        {
            "name": "opt",
            "type": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "required": False,
            "default": None,
        },
    ]


# --- loading errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry", ["model.py", "model:predict", "model.py:", ":predict", "model.py:not-a-name"]
)
def test_bad_entry_forms(entry):
    with pytest.raises(EntryError):
        parse_entry(entry)


def test_entry_errors(project):
    d = project("x = 1\ndef predict(a):\n    return a\n")
    with pytest.raises(EntryError, match="not found"):
        load_entry(d, "missing.py:predict")
    with pytest.raises(EntryError, match="no attribute 'nope'"):
        load_entry(d, "model.py:nope")
    with pytest.raises(EntryError, match="not callable"):
        load_entry(d, "model.py:x")
    with pytest.raises(EntryError, match="inside the project"):
        load_entry(d, "../model.py:predict")


def test_star_args_are_refused(project):
    d = project("def predict(*args, **kwargs):\n    return 1\n")
    with pytest.raises(EntryError, match=r"\*args"):
        analyze(load_entry(d, "model.py:predict"))


def test_nested_file_with_relative_import(project):
    project("FACTOR = 3\n", "pkg/helpers.py")
    d = project(
        "from .helpers import FACTOR\ndef predict(a: int):\n    return a * FACTOR\n", "pkg/serve.py"
    )
    assert json.loads(invoker(d, "pkg/serve.py:predict").run(b'{"a": 2}')[0]) == 6


def test_field_of():
    assert field_of("Expected `float`, got `str` - at `$.sepal_length`") == "sepal_length"
    assert field_of("Expected `float`, got `str` - at `$.features[0]`") == "features[0]"
    assert field_of("Object missing required field `k`") == "k"
    assert field_of("Object missing required field `x` - at `$.inner`") == "inner.x"
    assert field_of("Object contains unknown field `zz`") == "zz"
    assert field_of("Expected `object`, got `array`") is None
    # the place already cut off the message (Litestar's key): the named field is below it
    assert field_of("Object missing required field `x`", at="inner") == "inner.x"
    assert field_of("Expected `int >= 1`", at="limit") == "limit"
    assert field_of("Object contains unknown field `zz`", at="") == "zz"
    assert field_of("Expected `object`, got `array` - at `$.a`", at="") is None


def test_track_metric_outside_a_replica_is_a_noop():
    assert track_metric("accuracy", 0.9) is None
    from modelport import track_metric as exported

    assert exported is track_metric


# --- the inspect CLI -----------------------------------------------------------------------------


def run_inspect(project_dir: Path, entry: str, example: str | None = None):
    cmd = [
        sys.executable,
        "-m",
        "modelport.runtime.describe",
        "--project",
        str(project_dir),
        "--entry",
        entry,
    ]
    if example is not None:
        cmd += ["--example-input", example]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr
    return proc.returncode, json.loads(lines[0]), proc.stderr


MODEL = """
import sys
print("loading weights")
def predict(a: float, b: float = 1.0) -> float:
    print("predicting")
    from modelport import track_metric
    track_metric("calls", 1)
    if a < 0:
        raise ValueError("boom")
    return a + b
"""


def test_inspect_success_keeps_stdout_clean(tmp_path):
    (tmp_path / "model.py").write_text(MODEL)
    rc, out, err = run_inspect(tmp_path, "model.py:predict", '{"a": 2}')
    assert rc == 0 and out["ok"] is True
    assert out["example_output"] == 3.0 and out["example_metrics"] == {"calls": 1.0}
    assert out["describe"]["form"] == "params"
    assert out["describe"]["input_schema"]["required"] == ["a"]
    assert "loading weights" in err and "predicting" in err
    rc, out, _ = run_inspect(tmp_path, "model.py:predict")
    assert rc == 0 and out["ok"] is True and out["example_output"] is None


@pytest.mark.parametrize(
    ("source", "entry", "example", "stage", "error"),
    [
        (MODEL, "model.py:nope", None, "entry", "EntryError: "),
        (MODEL, "model.py", None, "entry", "EntryError: "),
        (MODEL, "other.py:predict", None, "entry", "EntryError: "),
        ("def predict(a:\n", "model.py:predict", None, "import", "SyntaxError: "),
        (
            "import not_a_real_dependency_xyz\n",
            "model.py:predict",
            None,
            "import",
            "ModuleNotFoundError: No module named 'not_a_real_dependency_xyz'",
        ),
        (
            "raise RuntimeError('no weights')\n",
            "model.py:predict",
            None,
            "import",
            "RuntimeError: no weights",
        ),
        (
            MODEL,
            "model.py:predict",
            '{"a": "x"}',
            "example_validate",
            "ValidationError: Expected `float`, got `str` - at `$.a`",
        ),
        (MODEL, "model.py:predict", '{"a": ', "example_validate", "DecodeError: "),
        (MODEL, "model.py:predict", '{"a": -1}', "example_call", "ValueError: boom"),
    ],
)
def test_inspect_failure_stages(tmp_path, source, entry, example, stage, error):
    (tmp_path / "model.py").write_text(source)
    rc, out, _ = run_inspect(tmp_path, entry, example)
    assert rc == 1
    assert out["ok"] is False and out["stage"] == stage
    assert out["error"].startswith(error), out
    if stage == "example_validate" and "ValidationError" in error:
        assert out["field"] == "a"
