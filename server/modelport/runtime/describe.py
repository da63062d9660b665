"""Inspect an entry inside a build's environment; print one JSON object: its description or failure.

    python -m modelport.runtime.describe --project DIR --entry FILE:FUNC [--example-input JSON]

stdout: {"ok": true, "describe": {...}, "example_output": <value or null>, "example_metrics": {...}}
     or {"ok": false, "stage": "entry|import|example_validate|example_call",
         "error": "ExceptionType: message", "field": <path or null>}
Exit code 0 when ok, 1 when not. The model's own output (prints, warnings) goes to stderr, as do
tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback
from typing import Any, BinaryIO

import msgspec

from .invoke import CallFailed, Invoker, error_text
from .rbridge import RBootError, RFunction, is_r_entry
from .signature import EntryError, analyze, load_entry

__all__ = ["inspect_entry", "main"]


def _failure(stage: str, error: str, field: str | None = None) -> dict[str, Any]:
    return {"ok": False, "stage": stage, "error": error, "field": field}


def _cause_text(exc: CallFailed) -> str:
    cause = exc.__cause__
    return error_text(cause) if cause is not None else exc.message


def inspect_entry(project: str, entry: str, example_input: str | None = None) -> dict[str, Any]:
    """Load, describe and (with an example) call the entry; the result as a JSON-able dict."""
    if is_r_entry(entry):
        return _inspect_r(project, entry, example_input)
    try:
        func = load_entry(project, entry)
    except EntryError as exc:
        return _failure("entry", error_text(exc))
    except (Exception, SystemExit) as exc:
        traceback.print_exc()
        return _failure("import", error_text(exc))
    try:
        invoker = Invoker(analyze(func))
        described = invoker.sig.describe()
    except Exception as exc:
        traceback.print_exc()
        return _failure("entry", error_text(exc))
    out: dict[str, Any] = {
        "ok": True,
        "describe": described,
        "example_output": None,
        "example_metrics": {},
    }
    if example_input is None:
        return out
    body = example_input.encode()
    try:
        args = invoker.decode(body, "json")
    except CallFailed as exc:
        return _failure("example_validate", _cause_text(exc), exc.field)
    del args  # decoded again by run(), exactly as a request would be
    try:
        if invoker.sig.is_async:
            encoded, metrics = asyncio.run(invoker.run_async(body))
        else:
            encoded, metrics = invoker.run(body)
    except CallFailed as exc:
        return _failure("example_call", _cause_text(exc))
    except (Exception, SystemExit) as exc:
        traceback.print_exc()
        return _failure("example_call", error_text(exc))
    out["example_output"] = msgspec.json.decode(encoded)
    out["example_metrics"] = metrics
    return out


def _inspect_r(project: str, entry: str, example_input: str | None) -> dict[str, Any]:
    """An R function: its R process sources the file and describes the function, as a replica's
    does; the example goes through it as a request would."""
    try:
        func = RFunction(project, entry)
    except (EntryError, RBootError) as exc:
        text = str(exc)
        stage = (
            "entry" if isinstance(exc, EntryError) or text.startswith("entrypoint") else "import"
        )
        return _failure(stage, text.removeprefix("entrypoint: "))
    try:
        out: dict[str, Any] = {
            "ok": True,
            "describe": func.sig.describe(),
            "example_output": None,
            "example_metrics": {},
            "r_version": func.described["r_version"],
        }
        if example_input is None:
            return out
        body = example_input.encode()
        try:
            func._decode(body, "json")
        except CallFailed as exc:
            return _failure("example_validate", _cause_text(exc), exc.field)
        try:
            encoded, metrics = func.call(body)
        except CallFailed as exc:
            return _failure("example_call", exc.message)
        out["example_output"] = msgspec.json.decode(encoded)
        out["example_metrics"] = metrics
        return out
    finally:
        func.close()


def _claim_stdout() -> BinaryIO:
    """Keep the real stdout for the result; everything else written to fd 1 goes to stderr."""
    sys.stdout.flush()
    real = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return real


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m modelport.runtime.describe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--project", required=True)
    p.add_argument("--entry", required=True, help="path/to/file.py:function")
    p.add_argument("--example-input", default=None, help="a JSON object to call the function with")
    args = p.parse_args(argv)
    real = _claim_stdout()
    try:
        result = inspect_entry(args.project, args.entry, args.example_input)
    except BaseException as exc:  # a bug here must still answer in the agreed shape
        traceback.print_exc()
        result = _failure("entry", error_text(exc))
    sys.stderr.flush()
    try:
        data = msgspec.json.encode(result)
    except Exception as exc:
        data = msgspec.json.encode(_failure("example_call", error_text(exc)))
    real.write(data + b"\n")
    real.flush()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
