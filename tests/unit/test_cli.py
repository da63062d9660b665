"""What the CLI prints for a user to copy: the curl line's body when a build has no example."""

from __future__ import annotations

from modelport.cli.deploying import sample_input


def test_typed_parameters_give_their_required_fields_blank():
    schema = {
        "type": "object",
        "required": ["a", "names", "flag"],
        "properties": {
            "a": {"type": "number"},
            "b": {"type": "number", "default": 0.0},
            "names": {"type": "array", "items": {"type": "string"}},
            "flag": {"type": ["boolean", "null"]},
        },
    }
    assert sample_input(schema) == {"a": 0, "names": [], "flag": False}


def test_a_struct_argument_and_nested_structs_by_reference():
    schema = {
        "$ref": "#/$defs/Req",
        "$defs": {
            "Req": {
                "type": "object",
                "required": ["point", "label"],
                "properties": {"point": {"$ref": "#/$defs/Point"}, "label": {"type": "string"}},
            },
            "Point": {"type": "object", "properties": {"x": {"type": "number"}}},
        },
    }
    assert sample_input(schema) == {"point": {}, "label": ""}


def test_a_dict_function_gets_an_empty_object():
    assert sample_input({"type": "object"}) == {}
    assert sample_input({}) == {}
