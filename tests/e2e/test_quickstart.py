"""The README's quickstart, run line by line as a newcomer would (a real server; the wheels its
builds need from the tests' wheel folder, which scripts/install-test-deps fills: no index)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import msgspec
import pytest

from tests.conftest import ROOT


def quickstart_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quickstart") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def run(line: str, env: dict) -> subprocess.CompletedProcess:
    line = line.replace(".venv/bin/modelport", shlex.quote(sys.executable) + " -m modelport.cli")
    return subprocess.run(
        ["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_readme_quickstart(server):
    env = {**server.env, "MODELPORT_URL": server.url}
    outputs = []
    for line in quickstart_lines():
        done = run(line, env)
        if "# refused: schema.breaking" in line:  # the incompatible one: refused, and says why
            assert done.returncode == 1, f"{line}\n{done.stdout}\n{done.stderr}"
            assert "schema.breaking" in done.stderr and "features" in done.stderr
            assert "--allow-breaking" in done.stderr
        else:
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        outputs.append(done)
    prediction = msgspec.json.decode(outputs[1].stdout)
    assert prediction["species"] == ["setosa"] and 0.5 < prediction["probability"][0] <= 1
    assert "new optional field 'decimals'" in outputs[2].stderr  # the compatible one's note
    rounded = msgspec.json.decode(outputs[3].stdout)["probability"][0]
    assert rounded == round(rounded, 2) and 0.5 < rounded <= 1
    history = run(".venv/bin/modelport deployments iris --json", env)
    items = msgspec.json.decode(history.stdout)["items"]
    assert [i["build"] for i in items] == [1, 2, 1]
    back = run(".venv/bin/modelport predict iris '{\"features\": [[6.7, 3.0, 5.2, 2.3]]}'", env)
    assert msgspec.json.decode(back.stdout)["species"] == ["virginica"]


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert "modelport serve" in first_block[0]
    assert first_block[1].split()[0] == "scripts/test"
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("exec bash scripts/test")
