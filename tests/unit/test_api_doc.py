"""docs/api.md keeps up with the server: every route of the app's own route table, every error
code the server can answer and every field of the shapes it sends are named there."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import modelport.errors
import msgspec
from modelport.app import create_app
from modelport.registry import records
from modelport.settings import Settings
from modelport.store import archive

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs/api.md").read_text()


def _routes(app):
    for route in app.routes:
        path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", route.path)
        for handler in getattr(route, "route_handlers", []):
            for method in sorted(handler.http_methods - {"HEAD", "OPTIONS"}):
                yield method, path


def test_every_route_is_in_the_api_reference(tmp_path):
    app = create_app(Settings(data_dir=tmp_path))
    routes = set(_routes(app)) | {("POST", "/models/{name}/predict"), ("POST", "/model")}
    assert len(routes) > 40
    missing = []
    for method, path in sorted(routes):
        if (method == "GET" and path not in DOC) or (
            method != "GET" and f"{method} {path}" not in DOC
        ):  # the SPA's pages and files are listed by path
            missing.append(f"{method} {path}")
    assert not missing, f"docs/api.md does not name these routes: {missing}"


def _codes() -> set[str]:
    found = set()
    for module in (modelport.errors, archive):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            code = getattr(cls, "code", None)
            if isinstance(code, str) and issubclass(cls, Exception):
                found.add(code)
    source = "\n".join(p.read_text() for p in (ROOT / "server/modelport").rglob("*.py"))
    found |= set(re.findall(r'\bcode = "([a-z_.]+)"', source))
    found |= set(re.findall(r'err\.code = \S+, "([a-z_.]+)"', source))
    return found


def test_every_error_code_is_in_the_api_reference():
    codes = _codes()
    assert {"model.not_found", "request.invalid", "archive.unsafe"} <= codes
    missing = sorted(c for c in codes if f"`{c}`" not in DOC)
    assert not missing, f"docs/api.md does not name these error codes: {missing}"


def test_every_field_of_every_shape_is_in_the_api_reference():
    from modelport.api import admin, replays
    from modelport.builder import projects

    missing = []
    shapes = [
        (records, name)
        for name in (
            "Model",
            "ModelCreated",
            "Build",
            "ImportedBuild",
            "Deployment",
            "DeploymentEvent",
            "Replica",
            "Token",
            "TokenCreated",
            "AuditEntry",
        )
    ]
    shapes += [
        (admin, "StoreStatus"),
        (admin, "VerifyResult"),
        (admin, "GcDone"),
        (projects, "Folder"),
        (projects, "Tampered"),
        (replays, "ReplayReport"),
        (replays, "ReplayDiff"),
    ]
    for module, name in shapes:
        for field in msgspec.structs.fields(getattr(module, name)):
            if not re.search(rf"\b{re.escape(field.encode_name)}\b", DOC):
                missing.append(f"{name}.{field.encode_name}")
    assert not missing, f"docs/api.md does not name these fields: {missing}"
