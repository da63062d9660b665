"""modelport installs as the docs say: a wheel built from this tree holds the web UI and the
replica runtime, and `modelport` runs from a fresh venv with nothing but that wheel installed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


def build_wheel(out: Path) -> Path:
    """`python -m build --wheel` when the build package is there, else `pip wheel --no-deps`."""
    if importlib.util.find_spec("build"):
        command = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)]
    else:
        command = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ]
    subprocess.run(command, check=True, timeout=600, capture_output=True)
    (wheel,) = out.glob("modelport-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_holds_the_web_ui_and_the_runtime_and_runs(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    names = set(zipfile.ZipFile(wheel).namelist())
    committed = subprocess.run(
        ["git", "ls-files", "server/modelport/static", "server/modelport/runtime"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert len(committed) > 10
    missing = [p for p in committed if p.removeprefix("server/") not in names]
    assert not missing, f"the wheel lacks {missing}"
    assert "modelport/static/index.html" in names and "modelport/runtime/worker.py" in names
    assert any(n.startswith("modelport/static/assets/") and n.endswith(".js") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
        check=True,
        timeout=900,
        capture_output=True,
    )
    helped = subprocess.run(
        [str(venv / "bin" / "modelport"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout and "deploy" in helped.stdout
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import modelport.static, modelport.runtime.worker as w; print(w.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert where.returncode == 0 and str(venv) in where.stdout  # the wheel's, not this tree's
