"""The compatibility gate's rule on the schemas the signature reader writes for real functions."""

from __future__ import annotations

import msgspec
from modelport.builder.compat import compare
from modelport.runtime.signature import analyze


def schema(func) -> dict:
    return analyze(func).input_schema


def iris(features: list[list[float]]) -> dict: ...
def iris_top(features: list[list[float]], top: int = 1) -> dict: ...
def adder(a: float, b: float = 0.0) -> float: ...
def adder_int(a: int, b: float = 0.0) -> float: ...
def adder_any(a: float | str, b: float = 0.0) -> float: ...
def adder_required_b(a: float, b: float) -> float: ...
def request_object(args: dict) -> dict: ...


class Point(msgspec.Struct):
    x: float
    y: float = 0.0


class PointInt(msgspec.Struct):
    x: int
    y: float = 0.0


def struct_v1(p: Point) -> float: ...
def struct_v2(p: PointInt) -> float: ...


def test_another_model_over_iris_breaks_and_names_every_field():
    verdict = compare(schema(iris), schema(adder))
    assert verdict.breaking == ["required field 'a' added", "field 'features' removed"]


def test_a_new_optional_field_is_compatible_with_a_note():
    verdict = compare(schema(iris), schema(iris_top))
    assert verdict.breaking == [] and verdict.compatible == ["new optional field 'top'"]
    assert compare(schema(iris_top), schema(iris)).breaking == ["field 'top' removed"]


def test_a_widened_type_passes_and_a_narrowed_one_does_not():
    assert compare(schema(adder_int), schema(adder)).breaking == []
    assert compare(schema(adder_int), schema(adder)).compatible == [
        "field 'a' widened: integer → number"
    ]
    assert compare(schema(adder), schema(adder_any)).breaking == []
    assert compare(schema(adder), schema(adder_int)).breaking == [
        "field 'a' narrowed: number → integer"
    ]
    assert compare(schema(adder_any), schema(adder)).breaking == [
        "field 'a' narrowed: number | string → number"
    ]


def test_an_optional_field_made_required_breaks():
    assert compare(schema(adder), schema(adder_required_b)).breaking == [
        "field 'b' is now required"
    ]
    assert compare(schema(adder_required_b), schema(adder)).compatible == [
        "field 'b' is now optional"
    ]


def test_the_same_schema_and_the_request_object_form():
    assert compare(schema(iris), schema(iris)) == compare({}, {})
    assert compare(schema(iris), schema(iris)).breaking == []
    # the request object took any object: only a new required field can break its callers
    assert compare(schema(request_object), schema(adder)).breaking == ["required field 'a' added"]
    assert compare(schema(adder), schema(request_object)).breaking == []


def test_fields_inside_a_struct_by_path():
    assert compare(schema(struct_v1), schema(struct_v2)).breaking == [
        "field 'x' narrowed: number → integer"
    ]
    nested_old = {
        "type": "object",
        "properties": {"p": {"$ref": "#/$defs/P"}},
        "required": ["p"],
        "$defs": {
            "P": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}
        },
    }
    nested_new = {
        "type": "object",
        "properties": {"p": {"$ref": "#/$defs/P"}},
        "required": ["p"],
        "$defs": {
            "P": {"type": "object", "properties": {"z": {"type": "number"}}, "required": ["z"]}
        },
    }
    assert compare(nested_old, nested_new).breaking == [
        "required field 'p.z' added",
        "field 'p.x' removed",
    ]


def test_enums_and_bounds():
    old = {
        "type": "object",
        "properties": {"k": {"enum": ["a", "b"]}, "n": {"type": "integer", "minimum": 0}},
    }
    wider = {
        "type": "object",
        "properties": {"k": {"enum": ["a", "b", "c"]}, "n": {"type": "integer"}},
    }
    assert compare(old, wider).breaking == []
    narrower = compare(wider, old).breaking
    assert narrower == [
        'field \'k\' narrowed: one of "a", "b", "c" → one of "a", "b"',
        "field 'n' narrowed: integer → integer (minimum 0)",
    ]
    assert (
        compare(
            old,
            {"type": "object", "properties": {"k": {"type": "string"}, "n": {"type": "number"}}},
        ).breaking
        == []
    )
