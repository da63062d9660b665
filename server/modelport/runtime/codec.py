"""Encoding of return values and decoding into NumPy/pandas types, without importing them first."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["array_lib", "dec_hook", "enc_hook", "json_encoder", "msgpack_encoder", "schema_hook"]

# Recognised by their types' module, never imported here.
_ARRAY_LIBS = frozenset({"numpy", "pandas"})


def array_lib(tp: Any) -> str | None:
    root = (getattr(tp, "__module__", None) or "").partition(".")[0]
    return root if root in _ARRAY_LIBS else None


def enc_hook(obj: Any) -> Any:
    """Encode NumPy scalars/arrays and pandas objects as numbers, lists and records."""
    lib = array_lib(type(obj))
    if lib == "numpy":
        return obj.tolist()  # ndarray -> nested lists, scalar -> int/float/bool/str
    if lib == "pandas":
        if hasattr(obj, "to_dict") and hasattr(obj, "columns"):
            return obj.to_dict(orient="records")
        if hasattr(obj, "tolist"):
            return obj.tolist()
        if hasattr(obj, "isoformat"):
            return obj.isoformat()
    tolist = getattr(obj, "tolist", None)  # torch / jax / cupy arrays
    if callable(tolist) and hasattr(obj, "shape"):
        return tolist()
    raise NotImplementedError(f"Encoding objects of type {type(obj).__qualname__} is unsupported")


def dec_hook(tp: Any, obj: Any) -> Any:
    """Decode into NumPy arrays/scalars and pandas frames for parameters annotated with them."""
    lib = array_lib(tp)
    if lib == "numpy":
        import numpy

        if tp is numpy.ndarray:
            if not isinstance(obj, (list, int, float)) or isinstance(obj, bool):
                raise TypeError(f"Expected `array`, got `{type(obj).__name__}`")
            return numpy.asarray(obj)
        return tp(obj)
    if lib == "pandas":
        return tp(obj)
    raise TypeError(f"cannot decode into {getattr(tp, '__qualname__', tp)}")


def schema_hook(tp: Any) -> dict[str, Any]:
    """JSON schema of the NumPy/pandas types the hooks above handle."""
    lib = array_lib(tp)
    name = getattr(tp, "__name__", "")
    if lib == "numpy":
        if name == "ndarray":
            return {"type": "array"}
        if "int" in name:
            return {"type": "integer"}
        if "float" in name:
            return {"type": "number"}
        if "bool" in name:
            return {"type": "boolean"}
        return {}
    if lib == "pandas":
        return {"type": "array", "items": {"type": "object"}} if name == "DataFrame" else {}
    raise TypeError(f"no JSON schema for {tp!r}")


json_encoder = msgspec.json.Encoder(enc_hook=enc_hook)
msgpack_encoder = msgspec.msgpack.Encoder(enc_hook=enc_hook)
