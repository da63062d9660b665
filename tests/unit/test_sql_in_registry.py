"""Every SQL statement of the server lives in registry/ (docs/architecture.md, "The registry"):
a string literal anywhere else in server/modelport that reads as SQL fails this test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "server" / "modelport"
REGISTRY = PACKAGE / "registry"

# The statements' opening words, as the registry spells them (upper case): prose that happens to
# say "update" or "select ... from" is not SQL.
SQL = re.compile(
    r"\b(?:SELECT\b.*\bFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|REPLACE\s+INTO"
    r"|(?:CREATE|DROP)\s+(?:TABLE|INDEX|UNIQUE\s+INDEX|VIEW|TRIGGER)|ALTER\s+TABLE"
    r"|PRAGMA\s+\w+|BEGIN\s+(?:IMMEDIATE|EXCLUSIVE|DEFERRED)|VACUUM\b"
    r"|WHERE\s+\w+(?:\.\w+)?\s*(?:=|IN|<|>|IS)\s*|ORDER\s+BY\s+\w+|GROUP\s+BY\s+\w+)",
    re.DOTALL,
)


def sql_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string constant (f-strings' literal parts too) that reads as SQL."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):  # its literal parts with a stand-in for each value
            text = "".join(
                v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "x"
                for v in node.values
            )
        else:
            continue
        if SQL.search(text):
            found.append((node.lineno, text))
    return found


def test_the_rule_finds_sql_and_leaves_prose():
    sql = [
        'db.one("SELECT * FROM builds WHERE id = ?", (1,))',
        'f"UPDATE deployments SET {sets} WHERE id = ?"',
        '"DELETE FROM captures"',
        '("INSERT INTO audit (at) "\n "VALUES (?)")',
        'x = f"SELECT {cols}" f" FROM t"',  # split over the parts of an f-string
        '" WHERE model_id = ? AND t < ?"',  # a fragment of a statement built up
        'conn.execute("PRAGMA journal_mode=WAL")',
        '"CREATE TABLE t (id INTEGER)"',
    ]
    for text in sql:
        assert sql_literals(text), text
    prose = [
        '"""Update the model\'s settings; select a build from the list."""',
        '"Where the build is, and what it holds"',
        '"DELETE the folder"',
        'log.info("order by arrival")',
    ]
    for text in prose:
        assert not sql_literals(text), text


def _outside_registry() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if REGISTRY not in p.parents)


def test_the_walk_sees_the_server():
    files = _outside_registry()
    assert len(files) > 50
    assert PACKAGE / "serving" / "deployer.py" in files


@pytest.mark.parametrize("path", _outside_registry(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_sql_outside_the_registry(path):
    found = sql_literals(path.read_text())
    assert found == [], (
        f"{path.relative_to(PACKAGE)} holds SQL; give the query a function in registry/ "
        f"(lines {[line for line, _ in found]})"
    )
