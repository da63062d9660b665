"""Two decoded answers compared, each difference with its JSON path (pure, no I/O).

Exact for strings, integers, booleans and null; floats within ``rtol``/``atol`` (an integer
against a float compares as numbers); objects by key (a key on one side only is a difference);
lists in order, element by element, an element on one side only a difference too. A value of
another type on the other side is one difference at its path (``True`` is not ``1``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import msgspec

Kind = Literal["changed", "added", "removed", "type"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Diff(msgspec.Struct, frozen=True):
    """One difference: where (``$.a[0]``), the old value and the new one. For ``added`` the
    old value is null (the key or element is only new); for ``removed`` the new one is."""

    path: str
    old: Any
    new: Any
    kind: Kind


def key_path(parent: str, key: str) -> str:
    if _NAME.fullmatch(key):
        return f"{parent}.{key}"
    return f"{parent}[{msgspec.json.encode(key).decode()}]"


def _family(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def numbers_equal(old: int | float, new: int | float, rtol: float, atol: float) -> bool:
    if isinstance(old, int) and isinstance(new, int):
        return old == new
    a, b = float(old), float(new)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def compare(
    old: Any,
    new: Any,
    *,
    rtol: float = 1e-9,
    atol: float = 0.0,
    limit: int | None = None,
) -> list[Diff]:
    """The differences of ``new`` from ``old`` in document order (at most ``limit``)."""
    if rtol < 0 or atol < 0:
        raise ValueError("rtol and atol must be at least 0")
    found: list[Diff] = []
    stack: list[tuple[str, Any, Any]] = [("$", old, new)]  # iterative: any depth
    while stack and (limit is None or len(found) < limit):
        path, a, b = stack.pop()
        if a is _MISSING:
            found.append(Diff(path, None, b, "added"))
            continue
        if b is _MISSING:
            found.append(Diff(path, a, None, "removed"))
            continue
        fa, fb = _family(a), _family(b)
        if fa != fb:
            found.append(Diff(path, a, b, "type"))
        elif fa == "number":
            if not numbers_equal(a, b, rtol, atol):
                found.append(Diff(path, a, b, "changed"))
        elif fa == "object":
            children: list[tuple[str, Any, Any]] = []
            for key, value in a.items():
                where = key_path(path, str(key))
                if key in b:
                    children.append((where, value, b[key]))
                else:
                    children.append((where, value, _MISSING))
            for key, value in b.items():
                if key not in a:
                    children.append((key_path(path, str(key)), _MISSING, value))
            stack.extend(reversed(children))
        elif fa == "list":
            common = min(len(a), len(b))
            children = [(f"{path}[{i}]", a[i], b[i]) for i in range(common)]
            children += [(f"{path}[{i}]", a[i], _MISSING) for i in range(common, len(a))]
            children += [(f"{path}[{i}]", _MISSING, b[i]) for i in range(common, len(b))]
            stack.extend(reversed(children))
        elif a != b:
            found.append(Diff(path, a, b, "changed"))
    return found


class _Missing:
    """A key or element present on one side only (never a decoded value)."""

    __slots__ = ()


_MISSING: Any = _Missing()


def equal(old: Any, new: Any, *, rtol: float = 1e-9, atol: float = 0.0) -> bool:
    return not compare(old, new, rtol=rtol, atol=atol, limit=1)
