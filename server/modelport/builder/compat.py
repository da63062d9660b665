"""Whether a build's input schema still takes every request the serving build takes (pure).

A caller of the serving build keeps working when each body it may send is still valid: no field
it never sent becomes required, no field it sends is gone, no field's type accepts less. What
can be proved only by looking (a new optional field, a widened type) is a compatible change.
Schemas are the JSON Schemas the runtime's signature reader writes, whatever the function's form
(typed parameters, one Struct, the request object); a rule that cannot tell says "narrowed", so a
doubt stops a deployment instead of breaking its callers.
"""

from __future__ import annotations

from typing import Any

import msgspec

# Keys that only describe a schema: a change in them changes no request's validity.
_ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "$defs",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$schema",
}
# A bound the new schema may drop or loosen, never add or tighten: key → the looser direction.
_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_EXACT = ("pattern", "format", "multipleOf", "uniqueItems")


class Compatibility(msgspec.Struct):
    """What changed, in words naming the field: ``breaking`` stops a deployment."""

    breaking: list[str]
    compatible: list[str]

    def summary(self, changes: list[str] | None = None) -> str:
        return "; ".join(self.breaking if changes is None else changes)


def compare(before: Any, after: Any) -> Compatibility:
    """How ``after`` (the build to serve) stands to ``before`` (the build serving now)."""
    walk = _Walk(
        before if isinstance(before, dict) else {}, after if isinstance(after, dict) else {}
    )
    walk.fields("", walk.old_root, walk.new_root)
    return Compatibility(walk.breaking, walk.compatible)


class _Walk:
    def __init__(self, old_root: dict, new_root: dict):
        self.old_root, self.new_root = old_root, new_root
        self.breaking: list[str] = []
        self.compatible: list[str] = []

    def fields(self, prefix: str, old: dict, new: dict) -> None:
        """An object's fields one by one, so that each change names its field's path."""
        old, new = self.resolve(old, self.old_root), self.resolve(new, self.new_root)
        if not (_is_object(old) and _is_object(new)):
            self.value(prefix.removesuffix("."), old, new)
            return
        old_props, new_props = old.get("properties") or {}, new.get("properties") or {}
        old_req, new_req = set(old.get("required") or ()), set(new.get("required") or ())
        open_after = "properties" not in new  # the request object form: takes any object
        for name in sorted(new_req - old_req):
            if name in old_props:
                self.breaking.append(f"field '{prefix}{name}' is now required")
            else:
                self.breaking.append(f"required field '{prefix}{name}' added")
        if not open_after:
            for name in sorted(old_props.keys() - new_props.keys()):
                self.breaking.append(f"field '{prefix}{name}' removed")
        for name in sorted(new_props.keys() - old_props.keys() - new_req):
            self.compatible.append(f"new optional field '{prefix}{name}'")
        for name in sorted(old_req - new_req):
            if name in new_props:
                self.compatible.append(f"field '{prefix}{name}' is now optional")
        for name in sorted(old_props.keys() & new_props.keys()):
            a = self.resolve(old_props[name], self.old_root)
            b = self.resolve(new_props[name], self.new_root)
            if _is_object(a) and _is_object(b) and "properties" in a and "properties" in b:
                self.fields(f"{prefix}{name}.", a, b)
            else:
                self.value(f"{prefix}{name}", a, b)

    def value(self, path: str, old: dict, new: dict) -> None:
        if _essence(old) == _essence(new):
            return
        before, after = self.describe(old, self.old_root), self.describe(new, self.new_root)
        what = f"field '{path}'" if path else "the input"
        if self.accepts(new, old):
            self.compatible.append(f"{what} widened: {before} → {after}")
        else:
            self.breaking.append(f"{what} narrowed: {before} → {after}")

    # -- does every value valid under `old` stay valid under `new`? -------------------------------

    def accepts(self, new: Any, old: Any, depth: int = 0) -> bool:
        if depth > 32:  # a recursive type: give up and say what is safe
            return _essence(old) == _essence(new)
        new, old = self.resolve(new, self.new_root), self.resolve(old, self.old_root)
        if not isinstance(new, dict) or not isinstance(old, dict):
            return new == old
        if _is_any(new):
            return True
        for key in ("anyOf", "oneOf"):
            if key in old:
                return all(self.accepts(new, branch, depth + 1) for branch in old[key])
        for key in ("anyOf", "oneOf"):
            if key in new:
                return any(self.accepts(branch, old, depth + 1) for branch in new[key])
        if "allOf" in new or "allOf" in old or "not" in new:
            return _essence(old) == _essence(new)
        if _is_any(old):
            return False
        if "const" in old or "enum" in old:
            values = [old["const"]] if "const" in old else old["enum"]
            return all(self.admits(new, v) for v in values)
        if "const" in new or "enum" in new:
            return False
        old_types, new_types = _types(old), _types(new)
        if old_types is None or new_types is None:
            return _essence(old) == _essence(new)
        if not all(t in new_types or (t == "integer" and "number" in new_types) for t in old_types):
            return False
        if not _bounds_looser(old, new):
            return False
        if "array" in old_types and not self._items(old, new, depth):
            return False
        if "object" in old_types:
            sub = _Walk(self.old_root, self.new_root)
            sub.fields("", old, new)
            if sub.breaking:
                return False
            extra_old, extra_new = old.get("additionalProperties"), new.get("additionalProperties")
            if (
                isinstance(extra_old, dict)
                and "properties" not in old
                and (
                    extra_new is False
                    or (
                        isinstance(extra_new, dict)
                        and not self.accepts(extra_new, extra_old, depth + 1)
                    )
                )
            ):
                return False
        return True

    def _items(self, old: dict, new: dict, depth: int) -> bool:
        if "prefixItems" in old or "prefixItems" in new:
            a, b = old.get("prefixItems", []), new.get("prefixItems", [])
            if len(a) != len(b) or not all(
                self.accepts(y, x, depth + 1) for x, y in zip(a, b, strict=True)
            ):
                return False
        if "items" in new:
            if "items" not in old:
                return _is_any(self.resolve(new["items"], self.new_root))
            return self.accepts(new["items"], old["items"], depth + 1)
        return True

    def admits(self, schema: dict, value: Any) -> bool:
        """Whether one literal value (an old enum's) fits ``schema``; a doubt is a no."""
        schema = self.resolve(schema, self.new_root)
        if _is_any(schema):
            return True
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return any(self.admits(branch, value) for branch in schema[key])
        if "const" in schema:
            return schema["const"] == value
        if "enum" in schema:
            return value in schema["enum"]
        types = _types(schema)
        if types is None or not _bounds_looser({}, schema):
            return False
        kind = _json_type(value)
        return kind in types or (kind == "integer" and "number" in types)

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def resolve(schema: Any, root: dict) -> Any:
        for _ in range(32):
            if not isinstance(schema, dict) or not str(schema.get("$ref", "")).startswith(
                "#/$defs/"
            ):
                return schema
            schema = (root.get("$defs") or {}).get(schema["$ref"][8:], {})
        return schema

    def describe(self, schema: Any, root: dict, depth: int = 0) -> str:
        """A short name for a type in a message: ``number``, ``array of integer``, ``a | null``."""
        if isinstance(schema, dict) and "$ref" in schema:
            return str(schema["$ref"]).rpartition("/")[2]
        schema = self.resolve(schema, root)
        if not isinstance(schema, dict) or _is_any(schema):
            return "any"
        for key in ("anyOf", "oneOf"):
            if key in schema and depth < 4:
                return " | ".join(self.describe(b, root, depth + 1) for b in schema[key])
        if "enum" in schema or "const" in schema:
            values = [schema["const"]] if "const" in schema else schema["enum"]
            return "one of " + ", ".join(msgspec.json.encode(v).decode() for v in values[:6])
        types = _types(schema) or ["any"]
        text = " | ".join(types)
        if types == ["array"] and "items" in schema and depth < 4:
            text = f"array of {self.describe(schema['items'], root, depth + 1)}"
        bounds = [f"{k} {schema[k]}" for k in (*_LOWER_BOUNDS, *_UPPER_BOUNDS) if k in schema]
        return text + (f" ({', '.join(bounds)})" if bounds else "")


def _is_object(schema: Any) -> bool:
    return isinstance(schema, dict) and (schema.get("type") == "object" or "properties" in schema)


def _essence(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return schema
    return {k: _essence(v) for k, v in schema.items() if k not in _ANNOTATIONS}


def _is_any(schema: dict) -> bool:
    return not _essence(schema)


def _types(schema: dict) -> list[str] | None:
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list) and all(isinstance(k, str) for k in kind):
        return kind
    return None


def _bounds_looser(old: dict, new: dict) -> bool:
    for key in _LOWER_BOUNDS:
        if key in new and (key not in old or new[key] > old[key]):
            return False
    for key in _UPPER_BOUNDS:
        if key in new and (key not in old or new[key] < old[key]):
            return False
    return all(key not in new or new.get(key) == old.get(key) for key in _EXACT)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"
