"""Exit statuses described as gunicorn does."""

from __future__ import annotations

from modelport.serving.procs import describe_exit


def test_describe_exit():
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-9) == "killed by SIGKILL (perhaps out of memory?)"
    assert describe_exit(-15) == "killed by SIGTERM"
    assert describe_exit(-200) == "killed by signal 200"
