"""Temp files and folders on real disk: a sweep removes those nobody holds, never a live one."""

from __future__ import annotations

import os
import time

from modelport.builder.wheelhouse import file_lock
from modelport.scratch import scratch_dir, scratch_file, sweep


def test_a_sweep_removes_dead_writers_temps_and_keeps_held_ones(tmp_path):
    data = tmp_path / "data"
    (data / "uploads").mkdir(parents=True)
    dead_upload = data / "uploads" / "upload-dead"
    dead_upload.write_bytes(b"x" * 5000)
    dead_build = data / ".build-dead"
    (dead_build / "wheels").mkdir(parents=True)
    (dead_build / "wheels" / "a.whl").write_bytes(b"y" * 3000)
    os.chmod(dead_build / "wheels", 0o555)  # read-only inside, as environments are
    (data / "projects").mkdir()
    (data / "projects" / "abc123").mkdir()  # a finished project folder is no temp
    (data / "envs" / ".tmp-feed-123").mkdir(parents=True)
    (data / "envs" / ".tmp-beef-456").mkdir()
    with (
        scratch_dir(data, ".build-") as live_build,
        scratch_dir(data / "projects", ".tmp-") as staging,
        file_lock(data / "envs" / ".beef.lock"),
    ):
        fd, live_upload = scratch_file(data / "uploads", "upload-")
        try:
            swept = sweep(data)
            assert live_build.is_dir() and staging.is_dir() and live_upload.exists()
            assert (data / "envs" / ".tmp-beef-456").is_dir()  # its environment's lock is held
        finally:
            os.close(fd)
    assert swept.removed == 3 and swept.freed_bytes == 8000
    assert not dead_upload.exists() and not dead_build.exists()
    assert not (data / "envs" / ".tmp-feed-123").exists()
    assert (data / "projects" / "abc123").is_dir()
    assert not live_build.exists() and not staging.exists()  # the blocks removed their own
    assert sweep(data).removed == 2  # the upload let go, and the environment's temp


def test_a_grace_keeps_young_temps(tmp_path):
    (tmp_path / "uploads").mkdir()
    young = tmp_path / "uploads" / "upload-young"
    young.write_bytes(b"")
    old = tmp_path / "uploads" / "upload-old"
    old.write_bytes(b"")
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert sweep(tmp_path, grace_s=60).removed == 1
    assert young.exists() and not old.exists()
