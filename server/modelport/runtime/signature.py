"""Load a model's entry function and derive its call form, typed input decoders and JSON schemas."""

from __future__ import annotations

import collections.abc
import contextlib
import copy
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import itertools
import keyword
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi

from .codec import array_lib, dec_hook, enc_hook, schema_hook

__all__ = ["EntryError", "Signature", "analyze", "describe", "load_entry", "parse_entry"]

_EMPTY = inspect.Parameter.empty
_entry_counter = itertools.count(1)


class EntryError(Exception):
    """The entrypoint cannot be used: bad form, missing file, missing or non-callable function."""


# --- loading -------------------------------------------------------------------------------------


def parse_entry(entry: str) -> tuple[str, str]:
    """Split ``path/to/file.py:function`` into the file and the (possibly dotted) attribute."""
    file, sep, attr = entry.rpartition(":")
    if not sep or not file or not attr:
        raise EntryError(f"entrypoint {entry!r} is not of the form path/to/file.py:function")
    if not file.endswith(".py"):
        raise EntryError(f"entrypoint {entry!r}: {file!r} is not a .py file")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise EntryError(f"entrypoint {entry!r}: {attr!r} is not a Python name")
    return file, attr


def load_entry(project_dir: str | os.PathLike[str], entry: str) -> Callable[..., Any]:
    """Import the entry's file (the project on ``sys.path`` and as cwd); return the callable.

    The module's own errors (SyntaxError, ImportError, anything its top level raises) propagate
    unchanged; problems with the entrypoint itself raise EntryError.
    """
    project = Path(project_dir).resolve()
    file, attr = parse_entry(entry)
    rel = Path(file)
    if rel.is_absolute() or ".." in rel.parts:
        raise EntryError(f"entrypoint {entry!r}: the file must be a path inside the project")
    path = project / rel
    if not path.is_file():
        raise EntryError(f"entrypoint {entry!r}: file {file} not found in the project")
    os.chdir(project)
    root = str(project)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    obj: Any = _import_file(rel, path)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise EntryError(f"entrypoint {entry!r}: {file} has no attribute {attr!r}") from None
    if not callable(obj):
        raise EntryError(
            f"entrypoint {entry!r}: {attr} is not callable (it is a {type(obj).__name__})"
        )
    return obj


def _import_file(rel: Path, path: Path) -> Any:
    """Import under the file's natural dotted name (so relative imports and pickles work), unless
    that name is taken by another module; then under a private unique name."""
    parts = rel.with_suffix("").parts
    name = ".".join(parts)
    if all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # The name resolved elsewhere (a package of that name shadows the project's folder);
            # any other missing module is the model's own error.
            if not exc.name or not (name == exc.name or name.startswith(exc.name + ".")):
                raise
        else:
            if _same_file(getattr(module, "__file__", None), path):
                return module
    unique = f"_modelport_entry_{next(_entry_counter)}"
    spec = importlib.util.spec_from_file_location(unique, path)
    if spec is None or spec.loader is None:
        raise EntryError(f"cannot import {rel}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(unique, None)
        raise
    return module


def _same_file(a: str | None, b: Path) -> bool:
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


# --- analysis ------------------------------------------------------------------------------------


class Signature:
    """What the runtime needs to call a function from a request body."""

    __slots__ = (
        "call",
        "doc",
        "form",
        "func",
        "input_schema",
        "input_type",
        "is_async",
        "json_decoder",
        "known_fields",
        "msgpack_decoder",
        "name",
        "output_schema",
        "output_type",
    )

    def __init__(
        self,
        func: Callable[..., Any],
        form: str,
        is_async: bool,
        input_type: Any,
        output_type: Any,
        call: Callable[[Any], Any],
    ) -> None:
        self.func = func
        self.form = form  # "dict" | "params" | "struct"
        self.is_async = is_async
        self.name = getattr(func, "__qualname__", None) or type(func).__qualname__
        self.doc = inspect.getdoc(func)
        self.input_type = input_type
        self.output_type = output_type
        self.call = call  # decoded body -> the function's return value (or coroutine)
        # The top-level names a record type (dataclass, TypedDict, attrs) takes, when its decoder
        # would ignore others: the invoker refuses an unknown one, as for every other form.
        self.known_fields: frozenset[str] | None = None
        self.json_decoder = msgspec.json.Decoder(input_type, dec_hook=dec_hook)
        self.msgpack_decoder = msgspec.msgpack.Decoder(input_type, dec_hook=dec_hook)
        self.input_schema = _schema_or(input_type, {"type": "object"})
        self.output_schema = {} if output_type is Any else _schema_or(output_type, {})

    def params(self) -> list[dict[str, Any]]:
        """The input's top-level fields: name, type (a JSON schema), required, default."""
        props = self.input_schema.get("properties") or {}
        required = set(self.input_schema.get("required") or ())
        out = []
        for name, prop in props.items():
            prop = dict(prop)
            default = prop.pop("default", None)
            out.append(
                {"name": name, "type": prop, "required": name in required, "default": default}
            )
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "function": self.name,
            "doc": self.doc,
            "form": self.form,
            "is_async": self.is_async,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "params": self.params(),
        }


def describe(project_dir: str | os.PathLike[str], entry: str) -> dict[str, Any]:
    """Load the entry and describe it: form, is_async, input/output schema, params."""
    return analyze(load_entry(project_dir, entry)).describe()


def analyze(func: Callable[..., Any]) -> Signature:
    """Derive the call form, decoders and schemas from the function's signature and annotations."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise EntryError(f"cannot read the signature of {func!r}: {exc}") from None
    if _is_generator(func):
        raise EntryError(
            f"{getattr(func, '__qualname__', func)!r} is a generator function: streaming answers "
            "are not supported yet; return the whole result (a list, say) instead"
        )
    params = list(sig.parameters.values())
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            star = "*" if p.kind is p.VAR_POSITIONAL else "**"
            raise EntryError(
                f"{star}{p.name} cannot be filled from a request: take one dict parameter "
                "(the whole request) or named parameters"
            )
    hints = _type_hints(func, sig)
    is_async = _is_async(func)
    ret = hints.get("return", _EMPTY)
    output_type = Any if ret in (_EMPTY, None, type(None)) else ret

    if len(params) == 1:
        ann = hints.get(params[0].name, _EMPTY)
        dict_type = _dict_form(ann)
        if dict_type is not None:
            return Signature(func, "dict", is_async, dict_type, output_type, func)
        record = _strip_annotated(ann)
        if _is_record(record):
            known = None
            if issubclass(record, msgspec.Struct):
                ann = _forbidding(record, ann)
            else:
                info = mi.type_info(record)
                assert isinstance(info, (mi.DataclassType, mi.TypedDictType))  # _is_record's kinds
                known = frozenset(f.encode_name for f in info.fields)
            result = Signature(func, "struct", is_async, ann, output_type, func)
            result.known_fields = known
            return result

    fields: list[Any] = []
    for p in params:
        ann = hints.get(p.name, _EMPTY)
        ann = ann if ann is not _EMPTY and _decodable(ann) else Any
        fields.append((p.name, ann) if p.default is _EMPTY else (p.name, ann, _default(p.default)))
    input_type = msgspec.defstruct(
        _camel(getattr(func, "__name__", None) or type(func).__name__) + "Input",
        fields,
        forbid_unknown_fields=True,
        kw_only=True,
    )
    result = Signature(func, "params", is_async, input_type, output_type, _caller(func, params))
    props = result.input_schema.get("properties") or {}
    for p in params:  # defaults behind a factory (mutable ones) are missing from msgspec's schema
        if p.default is not _EMPTY and p.name in props and "default" not in props[p.name]:
            with contextlib.suppress(Exception):
                props[p.name]["default"] = msgspec.to_builtins(p.default, enc_hook=enc_hook)
    return result


def _caller(func: Callable[..., Any], params: list[inspect.Parameter]) -> Callable[[Any], Any]:
    """Call ``func`` with the fields of a decoded params Struct, passed as the signature wants."""
    kinds = {p.kind for p in params}
    if inspect.Parameter.KEYWORD_ONLY not in kinds:
        astuple = msgspec.structs.astuple
        return lambda obj: func(*astuple(obj))
    if inspect.Parameter.POSITIONAL_ONLY not in kinds:
        asdict = msgspec.structs.asdict
        return lambda obj: func(**asdict(obj))
    positional = [p.name for p in params if p.kind is p.POSITIONAL_ONLY]
    named = [p.name for p in params if p.kind is not p.POSITIONAL_ONLY]

    def call(obj: Any) -> Any:
        return func(*[getattr(obj, n) for n in positional], **{n: getattr(obj, n) for n in named})

    return call


def _forbidding(struct: type[msgspec.Struct], ann: Any) -> Any:
    """``ann`` with its Struct replaced by a subclass that refuses unknown fields (the function
    still gets an instance of its own class); unchanged when the Struct refuses them already."""
    if struct.__struct_config__.forbid_unknown_fields:
        return ann
    strict = types.new_class(struct.__name__, (struct,), {"forbid_unknown_fields": True})
    strict.__module__ = struct.__module__
    strict.__qualname__ = struct.__qualname__
    if typing.get_origin(ann) is typing.Annotated:
        return typing.Annotated[(strict, *ann.__metadata__)]
    return strict


def _is_generator(func: Callable[..., Any]) -> bool:
    target = inspect.unwrap(func) if inspect.isfunction(func) or inspect.ismethod(func) else func
    if not (inspect.isfunction(target) or inspect.ismethod(target)) and not isinstance(
        target, type
    ):
        target = getattr(type(target), "__call__", target)  # noqa: B004 (the method itself)
    return inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target)


def _is_async(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(type(func), "__call__", None)  # noqa: B004 (the method itself)
    return (
        not inspect.isfunction(func)
        and not isinstance(func, type)
        and (inspect.iscoroutinefunction(call))
    )


def _type_hints(func: Callable[..., Any], sig: inspect.Signature) -> dict[str, Any]:
    """Resolved annotations (string ones too); an annotation that cannot be resolved is dropped."""
    target: Any = func
    if inspect.isfunction(func) or inspect.ismethod(func):
        target = inspect.unwrap(func)
    if isinstance(target, type):
        target = target.__init__  # type: ignore[misc]  # the class's own, read for its signature
    elif not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(type(target), "__call__", target)  # noqa: B004 (the method itself)
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:
        pass
    globalns = getattr(inspect.unwrap(target), "__globals__", {})
    hints: dict[str, Any] = {}
    items = [(p.name, p.annotation) for p in sig.parameters.values()]
    items.append(("return", sig.return_annotation))
    for name, ann in items:
        if isinstance(ann, str):
            try:
                ann = eval(ann, dict(globalns))
            except Exception:
                continue
        if ann is not _EMPTY:
            hints[name] = ann
    return hints


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _dict_form(ann: Any) -> Any:
    """The input type when a single parameter takes the whole request object, else None."""
    tp = _strip_annotated(ann)
    if tp in (_EMPTY, Any, dict, collections.abc.Mapping):
        return dict[str, Any]
    origin = typing.get_origin(tp)
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        args = typing.get_args(tp)
        if not args or args[0] is str:
            if len(args) == 2 and _decodable(args[1]):
                # a type made at run time, for msgspec to decode with
                return dict[str, args[1]]  # type: ignore[valid-type]
            return dict[str, Any]
    return None


def _is_record(tp: Any) -> bool:
    if not isinstance(tp, type):
        return False
    is_typeddict = getattr(typing, "is_typeddict", None)
    return (
        issubclass(tp, msgspec.Struct)
        or dataclasses.is_dataclass(tp)
        or hasattr(tp, "__attrs_attrs__")
        or (is_typeddict(tp) if is_typeddict else False)
        or (issubclass(tp, dict) and hasattr(tp, "__total__"))  # typing_extensions.TypedDict
    )


def _decodable(tp: Any) -> bool:
    """True when msgspec can decode (and describe) ``tp``, counting NumPy/pandas types via hooks."""
    try:
        return _supported(mi.type_info(tp), set())
    except Exception:
        return False


def _supported(info: Any, seen: set) -> bool:
    if id(info) in seen:
        return True
    seen.add(id(info))
    if isinstance(info, mi.CustomType):
        return array_lib(info.cls) is not None
    for field in info.__struct_fields__:
        value = getattr(info, field)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, mi.Field):
                item = item.type
            if isinstance(item, mi.Type) and not _supported(item, seen):
                return False
    return True


def _default(value: Any) -> Any:
    """A default msgspec accepts: mutable ones get a copying factory, opaque objects a factory."""
    if isinstance(value, (list, dict, set, bytearray)):
        if not value:
            return value  # msgspec copies empty containers itself
        return msgspec.field(default_factory=functools.partial(copy.deepcopy, value))
    try:
        msgspec.to_builtins(value, enc_hook=enc_hook)
    except Exception:
        return msgspec.field(default_factory=lambda: value)
    return value


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Function"


def _schema_or(tp: Any, fallback: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of ``tp``, its top-level definition inlined; ``fallback`` if impossible."""
    try:
        (top,), defs = msgspec.json.schema_components(
            [tp], schema_hook=schema_hook, ref_template="#/$defs/{name}"
        )
    except Exception:
        return dict(fallback)
    ref = top.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref[len("#/$defs/") :]
        top = dict(defs.get(name, {}))
        rest = {k: v for k, v in defs.items() if k != name}
        if ref.encode() in msgspec.json.encode([top, rest]):  # recursive: keep its definition
            rest[name] = defs[name]
        defs = rest
    if defs:
        top = {**top, "$defs": defs}
    return top
