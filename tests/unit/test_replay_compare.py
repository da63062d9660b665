"""The replay comparer: each rule of docs/api.md's "Replays" on decoded answers."""

from __future__ import annotations

import math

import pytest
from modelport.replay.compare import Diff, compare, equal


def paths(old, new, **kw) -> list[str]:
    return [d.path for d in compare(old, new, **kw)]


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -7, 2**70, 1.5, "", "text", [], {}, [1, [2, {"a": None}]], {"a": {}}],
)
def test_a_value_equals_itself(value):
    assert compare(value, value) == []
    assert equal(value, value)


def test_strings_integers_booleans_and_null_are_exact():
    assert compare("a", "b") == [Diff("$", "a", "b", "changed")]
    assert compare("a", "a ") != []
    assert compare(1, 2) == [Diff("$", 1, 2, "changed")]
    assert compare(10**18, 10**18 + 1) != []  # no tolerance for integers, however large
    assert compare(True, False) == [Diff("$", True, False, "changed")]
    assert compare(None, None) == []


def test_a_boolean_is_not_a_number_nor_null_an_empty_value():
    assert compare(True, 1) == [Diff("$", True, 1, "type")]
    assert compare(0, False) == [Diff("$", 0, False, "type")]
    assert compare(None, 0) == [Diff("$", None, 0, "type")]
    assert compare(None, "") == [Diff("$", None, "", "type")]
    assert compare([], {}) == [Diff("$", [], {}, "type")]
    assert compare("1", 1) == [Diff("$", "1", 1, "type")]


def test_floats_within_the_default_relative_tolerance():
    assert compare(1.0, 1.0 + 1e-12) == []
    assert compare(1.0, 1.0 + 1e-6) == [Diff("$", 1.0, 1.0 + 1e-6, "changed")]
    assert compare(0.0, 1e-300) != []  # atol 0 by default: nothing is close to zero but zero
    assert compare(1, 1.0) == []  # an integer against a float compares as numbers
    assert compare(1, 1.5) == [Diff("$", 1, 1.5, "changed")]


def test_rtol_and_atol():
    assert compare(100.0, 101.0, rtol=0.02) == []
    assert compare(100.0, 103.0, rtol=0.02) != []
    assert compare(0.0, 0.001, atol=0.01) == []
    assert compare(0.0, 0.1, atol=0.01) != []
    assert compare(1.0, 1.0 + 1e-12, rtol=0.0) != []
    with pytest.raises(ValueError):
        compare(1.0, 1.0, rtol=-1)


def test_nan_and_infinities():
    assert compare(math.nan, math.nan) == []
    assert compare(math.nan, 1.0) != []
    assert compare(math.inf, math.inf) == []
    assert compare(math.inf, -math.inf) != []
    assert compare(math.inf, 1e308, rtol=1.0) != []


def test_objects_by_key_whatever_their_order():
    assert compare({"a": 1, "b": 2}, {"b": 2, "a": 1}) == []
    assert compare({"a": 1, "b": 2}, {"a": 1, "b": 3}) == [Diff("$.b", 2, 3, "changed")]


def test_a_key_on_one_side_only_is_a_difference():
    assert compare({"a": 1}, {}) == [Diff("$.a", 1, None, "removed")]
    assert compare({}, {"a": None}) == [Diff("$.a", None, None, "added")]
    assert compare({"a": None}, {"a": None}) == []


def test_lists_in_order_and_their_lengths():
    assert compare([1, 2], [2, 1]) == [Diff("$[0]", 1, 2, "changed"), Diff("$[1]", 2, 1, "changed")]
    assert compare([1, 2, 3], [1, 2]) == [Diff("$[2]", 3, None, "removed")]
    assert compare([1], [1, 5, 6]) == [
        Diff("$[1]", None, 5, "added"),
        Diff("$[2]", None, 6, "added"),
    ]
    assert compare([], [None]) == [Diff("$[0]", None, None, "added")]


def test_nested_paths_in_document_order():
    old = {"score": 0.5, "labels": ["a", "b"], "meta": {"v": 1, "odd key": [1, {"x": 1}]}}
    new = {"score": 0.7, "labels": ["a", "c"], "meta": {"v": 1, "odd key": [1, {"x": 2}]}}
    assert paths(old, new) == ["$.score", "$.labels[1]", '$.meta["odd key"][1].x']


def test_keys_that_are_not_names_are_quoted():
    assert paths({"a.b": 1}, {"a.b": 2}) == ['$["a.b"]']
    assert paths({'q"': 1}, {'q"': 2}) == ['$["q\\""]']
    assert paths({"1": 1}, {"1": 2}) == ['$["1"]']
    assert paths({"_x9": 1}, {"_x9": 2}) == ["$._x9"]


def test_one_changed_constant_names_exactly_the_outputs_it_changes():
    old = [{"id": i, "total": i + 1.0, "label": "ok"} for i in range(5)]
    new = [{"id": i, "total": i + 2.0, "label": "ok"} for i in range(5)]
    assert paths(old, new) == [f"$[{i}].total" for i in range(5)]


def test_the_limit_stops_early():
    assert len(compare(list(range(100)), list(range(1, 101)), limit=3)) == 3
    assert equal([1, 2], [1, 2]) and not equal([1, 2], [1, 3])


def test_any_depth():
    deep_old: list = []
    deep_new: list = []
    a, b = deep_old, deep_new
    for _ in range(5000):  # past Python's recursion limit
        a.append([])
        b.append([])
        a, b = a[0], b[0]
    a.append(1)
    b.append(2)
    [d] = compare(deep_old, deep_new)
    assert d.path.endswith("[0][0]") and (d.old, d.new) == (1, 2)
