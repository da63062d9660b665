"""The layering rules, checked on the import statements of server/modelport (docs/architecture.md):
what runs inside a model's environment imports nothing else of modelport; the registry and the
store know nothing of the layers above them; no controller imports another; the prediction path
touches no database."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "server"
PACKAGE = ROOT / "modelport"


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """Every module an import statement of the file names, relative ones resolved."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{alias.name}" for alias in node.names}  # `from pkg import mod`
    return found


GRAPH = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _violations(
    source: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()
) -> list[str]:
    out = []
    for module, names in sorted(GRAPH.items()):
        if module != source and not module.startswith(source + "."):
            continue
        for name in sorted(names):
            if any(name == f or name.startswith(f + ".") for f in forbidden) and not any(
                name == a or name.startswith(a + ".") for a in allowed
            ):
                out.append(f"{module} imports {name}")
    return out


def test_the_graph_is_read():
    assert len(GRAPH) > 60
    assert "modelport.registry.db" in GRAPH["modelport.app"]


def test_the_runtime_imports_nothing_else_of_modelport():
    # It runs inside the model's own environment, where only the runtime folder is on the path.
    assert _violations("modelport.runtime", ("modelport",), ("modelport.runtime",)) == []


@pytest.mark.parametrize("layer", ["modelport.registry", "modelport.store"])
def test_the_registry_and_store_know_nothing_above_them(layer):
    above = (
        "modelport.api",
        "modelport.gateway",
        "modelport.serving",
        "modelport.builder",
        "modelport.cli",
        "modelport.app",
        "modelport.client",
    )
    assert _violations(layer, above) == []


def test_no_controller_imports_another():
    shared = ("modelport.api.common", "modelport.api.openapi")
    for module in GRAPH:
        if module.startswith("modelport.api.") and module not in shared:
            others = tuple(
                m
                for m in GRAPH
                if m.startswith("modelport.api.") and m not in shared and m != module
            )
            assert _violations(module, others) == [], module


# The modules a prediction runs through, from the HTTP parser to the replica's pipe and back, and
# the counting of its result. (The registry's rows and states are plain data, no database.)
PREDICTION_PATH = (
    "modelport.gateway",
    "modelport.serving.balancer",
    "modelport.serving.group",
    "modelport.serving.lateness",
    "modelport.serving.pipe",
    "modelport.serving.poller",
    "modelport.serving.replica",
    "modelport.serving.supervisor",
    "modelport.observability.metrics",
)


@pytest.mark.parametrize("module", PREDICTION_PATH)
def test_the_prediction_path_touches_no_database(module):
    databases = ("modelport.registry", "aiosqlite", "sqlite3", "asyncpg")
    data = ("modelport.registry.records", "modelport.registry.rows", "modelport.registry.states")
    assert module in GRAPH or any(m.startswith(module + ".") for m in GRAPH), module
    assert _violations(module, databases, data) == []


def test_no_module_is_named_as_the_standard_library_names_its_own():
    # A module named like the standard library's (gc, inspect, copy, …) reads as that one at a
    # glance, and shadows it wherever its folder is put on the path (a script run from there).
    # gateway/http.py keeps its name: it is the gateway's HTTP protocol, only ever imported by
    # its package's name (nothing runs a script from gateway/).
    shadowing = sorted(
        module
        for module in GRAPH
        if module.rpartition(".")[2] in sys.stdlib_module_names
        and module != "modelport.gateway.http"
    )
    assert shadowing == []
