"""The docs keep up with the code: every CLI verb and option in docs/cli.md, every environment
variable of the server in the README."""

from __future__ import annotations

import re
from pathlib import Path

import click
from modelport.cli import main
from modelport.settings import ENV_NUMBERS

ROOT = Path(__file__).resolve().parents[2]
COMMON = {"--url", "--token", "--data-dir", "--json", "--help"}


def commands(group: click.Group, path: str = "modelport"):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from commands(cmd, f"{path} {name}")
        else:
            yield f"{path} {name}", cmd


def sections(text: str) -> dict[str, str]:
    """docs/cli.md by `### \\`modelport verb …\\`` heading: the verb → its section's text."""
    found = {}
    parts = re.split(r"^### `(modelport [a-z0-9 -]+?)(?: [A-Z].*)?`$", text, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        found[heading.strip()] = body
    return found


def test_every_verb_and_option_is_in_the_cli_reference():
    docs = sections((ROOT / "docs/cli.md").read_text())
    missing = []
    for path, cmd in commands(main):
        if path not in docs:
            missing.append(path)
            continue
        for param in cmd.params:
            if isinstance(param, click.Option):
                for opt in param.opts:
                    if opt.startswith("--") and opt not in COMMON and f"`{opt}" not in docs[path]:
                        missing.append(f"{path} {opt}")
    assert not missing, f"docs/cli.md does not describe: {missing}"


def test_every_environment_variable_of_the_server_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    source = "\n".join(p.read_text() for p in (ROOT / "server/modelport").rglob("*.py"))
    names = set(re.findall(r"MODELPORT_[A-Z_]+[A-Z]", source))
    names |= {f"MODELPORT_{key.upper()}" for key, _ in ENV_NUMBERS}
    missing = sorted(n for n in names if f"`{n}`" not in readme and f"`{n}=" not in readme)
    assert not missing, f"README.md's Settings do not name: {missing}"


def test_the_docs_install_modelport_as_it_really_installs():
    """modelport is not on PyPI: no doc may tell a newcomer to `pip install modelport`."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    wrong = [p.name for p in docs if "pip install modelport" in p.read_text()]
    assert not wrong, f"these say `pip install modelport`, which does not exist: {wrong}"
    readme = (ROOT / "README.md").read_text()
    assert "pip install ." in readme and "python -m build" in readme
