"""builder/deps.py with real uv and real environments, on tiny packages made here (no index)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from modelport.builder import deps
from modelport.builder.wheelhouse import sha256_file

from tests.conftest import _tiny_package, base_wheels

OFFLINE_INDEX = "http://127.0.0.1:9/nonexistent"
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    def count(self, fragment: str) -> int:  # type: ignore[override]
        return sum(fragment in line for line in self)


@pytest.fixture(scope="module", autouse=True)
def uv_cache(tmp_path_factory: pytest.TempPathFactory):
    """uv's cache for this module only, so what we see is not something left from before."""
    mp = pytest.MonkeyPatch()
    mp.setenv("UV_CACHE_DIR", str(tmp_path_factory.mktemp("uv-cache")))
    yield
    mp.undo()


def _project(root: Path, name: str, version: str) -> Path:
    return _tiny_package(root, name, version)


@pytest.fixture(scope="session")
def links(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A find-links folder: msgspec's wheel and flit_core's (from the tests' wheel folder),
    tinypkg 1.0 and 2.0 as wheels, sdonly 1.0 as an sdist only."""
    links = base_wheels(tmp_path_factory.mktemp("links"))
    src = tmp_path_factory.mktemp("src")
    offline = ["--no-index", "--find-links", str(links), "--out-dir", str(links)]
    for name, ver, kind in [
        ("tinypkg", "1.0", "--wheel"),
        ("tinypkg", "2.0", "--wheel"),
        ("sdonly", "1.0", "--sdist"),
    ]:
        subprocess.run(
            [deps.uv_bin(), "build", "-q", kind, *offline, str(_project(src, name, ver))],
            check=True,
        )
    return links


def _resolve(requirements: str, tmp: Path, links: Path, log=None, **kw) -> deps.Lock:
    kw.setdefault("cache_dir", tmp / "wheelhouse")
    return deps.resolve(
        requirements,
        PY,
        workdir=tmp / "work",
        log=Log() if log is None else log,
        no_index=True,
        find_links=[links],
        **kw,
    )


def _ready(requirements: str, tmp: Path, links: Path) -> tuple[deps.Lock, Path]:
    lock = _resolve(requirements, tmp, links)
    deps.fetch_wheels(lock, tmp / "wheels", log=Log(), cache_dir=tmp / "wheelhouse")
    return lock, tmp / "wheels"


def _run(python: Path, code: str) -> str:
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_lock_is_exact_deterministic_and_holds_msgspec(tmp_path: Path, links: Path) -> None:
    log = Log()
    one = _resolve("tinypkg\n", tmp_path / "a", links, log)
    two = _resolve("tinypkg\n", tmp_path / "b", links)
    assert one.digest == two.digest and one.text == two.text and one.digest.startswith("sha256:")
    assert [p.name for p in one.packages] == ["msgspec", "tinypkg"]
    tiny = one.packages[1]
    assert (tiny.version, tiny.wheel) == ("2.0", "tinypkg-2.0-py2.py3-none-any.whl")
    assert tiny.sha256 == sha256_file(links / tiny.wheel)
    assert "tinypkg==2.0 \\\n    --hash=sha256:" + tiny.sha256 in one.text
    assert "#" not in one.text
    assert log.count("Resolved 2 packages") == 1 and "tinypkg==2.0" in log
    assert _resolve("tinypkg==1.0\n", tmp_path / "c", links).digest != one.digest


def test_msgspec_added_only_when_not_named() -> None:
    assert deps.with_runtime_requirement("") == "msgspec\n"
    assert deps.with_runtime_requirement("numpy") == "numpy\nmsgspec\n"
    for named in ("msgspec==0.18", "MsgSpec>=0.18 ; python_version>'3'", "msgspec[yaml]"):
        assert deps.with_runtime_requirement(named + "\n") == named + "\n"


def test_empty_requirements_give_an_env_with_just_msgspec(tmp_path: Path, links: Path) -> None:
    lock, wheels = _ready("", tmp_path, links)
    assert [p.name for p in lock.packages] == ["msgspec"]
    python = deps.materialize(lock, wheels, tmp_path / "envs", log=Log())
    names = _run(
        python,
        "import importlib.metadata as m; print(sorted(d.metadata['Name'] "
        "for d in m.distributions()))",
    )
    assert names == "['msgspec']"


def test_same_lock_shares_one_env_created_once(tmp_path: Path, links: Path) -> None:
    lock, wheels = _ready("tinypkg==1.0\n", tmp_path, links)
    env_root = tmp_path / "envs"
    assert deps.env_python(env_root, lock.digest) is None
    log = Log()
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(deps.materialize(lock, wheels, env_root, log=log))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    again = deps.materialize(lock, wheels, env_root, log=log)
    assert len({*results, again}) == 1
    assert again == env_root / lock.digest.removeprefix("sha256:") / "bin" / "python"
    assert deps.env_python(env_root, lock.digest) == again
    assert log.count("Creating environment") == 1 and log.count("Reusing environment") == 3
    assert log.count("+ tinypkg==1.0") == 1
    assert [p.name for p in env_root.iterdir() if not p.name.startswith(".")] == [
        again.parent.parent.name
    ]
    assert _run(again, "import tinypkg; print(tinypkg.VERSION)") == "1.0"


def test_conflicting_pins_live_side_by_side(tmp_path: Path, links: Path) -> None:
    env_root = tmp_path / "envs"
    envs = {}
    for ver in ("1.0", "2.0"):
        lock, wheels = _ready(f"tinypkg=={ver}\n", tmp_path / ver, links)
        envs[ver] = deps.materialize(lock, wheels, env_root, log=Log())
    assert envs["1.0"] != envs["2.0"]
    for ver, python in envs.items():
        assert _run(python, "import tinypkg, msgspec; print(tinypkg.VERSION)") == ver


def test_materialise_needs_no_index(
    tmp_path: Path, links: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock, _ = _ready("tinypkg==2.0\nsdonly\n", tmp_path, links)
    for var in ("UV_INDEX_URL", "PIP_INDEX_URL", "UV_DEFAULT_INDEX"):
        monkeypatch.setenv(var, OFFLINE_INDEX)
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "empty-uv-cache"))
    # Re-creating a build elsewhere: its stored wheels (here: the wheel cache) are all there is.
    stored = deps.fetch_wheels(
        lock, tmp_path / "restored", log=Log(), cache_dir=tmp_path / "wheelhouse"
    )
    assert sorted(p.name for p in stored) == sorted(p.wheel for p in lock.packages)
    python = deps.materialize(lock, tmp_path / "restored", tmp_path / "envs", log=Log())
    assert _run(python, "import tinypkg, sdonly, msgspec; print(tinypkg.VERSION)") == "2.0"


def test_unresolvable_requirement_raises_uvs_message(tmp_path: Path, links: Path) -> None:
    with pytest.raises(deps.DependencyError) as err:
        _resolve("tinypkg==3.0\n", tmp_path, links)
    assert "No solution found" in err.value.message and "tinypkg==3.0" in err.value.message
    with pytest.raises(deps.DependencyError) as err:
        _resolve("no-such-package-anywhere\n", tmp_path, links)
    assert "no-such-package-anywhere was not found" in err.value.message
    with pytest.raises(deps.DependencyError) as err:
        _resolve("tinypkg >= = 1\n", tmp_path, links)
    assert "in the requirements" in err.value.message


def test_a_half_built_env_is_rebuilt(tmp_path: Path, links: Path) -> None:
    lock, wheels = _ready("tinypkg==1.0\n", tmp_path, links)
    env_root = tmp_path / "envs"
    half = env_root / lock.digest.removeprefix("sha256:")
    (half / "bin").mkdir(parents=True)
    (half / "bin" / "python").write_text("not a python")
    assert deps.env_python(env_root, lock.digest) is None
    log = Log()
    python = deps.materialize(lock, wheels, env_root, log=log)
    assert log.count("Removing the unfinished environment") == 1
    assert _run(python, "import tinypkg; print(tinypkg.VERSION)") == "1.0"
    assert deps.env_python(env_root, lock.digest) == python


def test_a_tampered_wheel_is_refused(tmp_path: Path, links: Path) -> None:
    lock, wheels = _ready("tinypkg==1.0\n", tmp_path, links)
    wheel = wheels / "tinypkg-1.0-py2.py3-none-any.whl"
    data = wheel.read_bytes()
    wheel.unlink()  # it is a hard link into the wheel cache: write a new file
    wheel.write_bytes(data + b"\0")
    with pytest.raises(deps.DependencyError) as err:
        deps.materialize(lock, wheels, tmp_path / "envs", log=Log())
    assert "Hash mismatch" in err.value.message
    assert deps.env_python(tmp_path / "envs", lock.digest) is None
    assert not list((tmp_path / "envs").glob(".tmp-*"))


def test_an_sdist_is_built_to_a_wheel_once(tmp_path: Path, links: Path) -> None:
    first_log, second_log = Log(), Log()
    first = _resolve("sdonly\n", tmp_path / "a", links, first_log, cache_dir=tmp_path / "house")
    second = _resolve("sdonly\n", tmp_path / "b", links, second_log, cache_dir=tmp_path / "house")
    sd = first.packages[-1]
    assert sd.name == "sdonly" and sd.wheel.endswith(".whl") and sd.sdist_sha256
    assert sd.sdist_sha256 == sha256_file(links / "sdonly-1.0.tar.gz") != sd.sha256
    assert first_log.count("Building a wheel from sdonly-1.0.tar.gz") == 1
    assert second_log.count("Building") == 0 and first.digest == second.digest
    wheels = deps.fetch_wheels(second, tmp_path / "wheels", log=Log(), cache_dir=tmp_path / "house")
    assert sha256_file(tmp_path / "wheels" / sd.wheel) == sd.sha256 and len(wheels) == 2
    python = deps.materialize(second, tmp_path / "wheels", tmp_path / "envs", log=Log())
    assert _run(python, "import sdonly; print(sdonly.VERSION)") == "1.0"
    # The wheel cache lost: fetching builds the sdist again, to the very same wheel.
    log = Log()
    deps.fetch_wheels(
        second,
        tmp_path / "again",
        log=log,
        cache_dir=tmp_path / "lost",
        no_index=True,
        find_links=[links],
    )
    assert log.count("Building a wheel from sdonly-1.0.tar.gz") == 1
    assert sha256_file(tmp_path / "again" / sd.wheel) == sd.sha256


def test_index_options_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "UV_INDEX_URL",
        "UV_DEFAULT_INDEX",
        "UV_INDEX",
        "UV_EXTRA_INDEX_URL",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    assert deps.index_args() == []
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://a/simple https://b/simple")
    assert deps.index_args() == [
        "--default-index",
        "https://mirror/simple",
        "--index",
        "https://a/simple",
        "--index",
        "https://b/simple",
    ]
    monkeypatch.setenv("UV_INDEX_URL", "https://uv/simple")  # uv reads its own variables
    monkeypatch.setenv("UV_EXTRA_INDEX_URL", "https://uv-extra/simple")
    assert deps.index_args() == []
    assert deps.index_args("https://x/simple", find_links=["/w"]) == [
        "--default-index",
        "https://x/simple",
        "--find-links",
        "/w",
    ]
    assert deps.index_args("https://x/simple", no_index=True) == ["--no-index"]


@pytest.mark.slow
def test_a_real_package_from_the_index(tmp_path: Path) -> None:
    """The real path: `six` from the configured package index, fetched, installed offline."""
    log = Log()
    lock = deps.resolve(
        "six\n", PY, workdir=tmp_path / "work", log=log, cache_dir=tmp_path / "wheelhouse"
    )
    six = next(p for p in lock.packages if p.name == "six")
    assert six.wheel.endswith("-py2.py3-none-any.whl") and six.url.startswith(
        ("https:", "http:", "file:")
    )
    wheels = deps.fetch_wheels(
        lock, tmp_path / "wheels", log=log, cache_dir=tmp_path / "wheelhouse"
    )
    assert {w.name for w in wheels} == {p.wheel for p in lock.packages}
    for pkg in lock.packages:
        assert sha256_file(tmp_path / "wheels" / pkg.wheel) == pkg.sha256
    python = deps.materialize(lock, tmp_path / "wheels", tmp_path / "envs", log=log)
    assert _run(python, "import six; print(six.__version__)") == six.version


def test_a_download_shows_its_progress_in_bytes(tmp_path: Path, links: Path) -> None:
    """Wheels fetched over HTTP (a real server on loopback) say their size, their progress and
    the total, so a first deploy of a large model does not look stuck."""
    import functools
    import http.server

    wheel = next(links.glob("tinypkg-1.0-*.whl"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(links))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{wheel.name}"
        pkg = deps.LockedPackage("tinypkg", "1.0", wheel.name, sha256_file(wheel), url=url)
        lock = deps.Lock(python=PY, text="", packages=[pkg], digest="sha256:" + "0" * 64)
        log = Log()
        deps.fetch_wheels(lock, tmp_path / "wheels", log=log, cache_dir=tmp_path / "wheelhouse")
    finally:
        server.shutdown()
        server.server_close()
    size = deps.megabytes(wheel.stat().st_size)
    assert f"Downloading {wheel.name} ({size})" in log
    assert f"  {wheel.name}: done · {size} downloaded in all" in log
    assert log.count(f"Fetched 1 wheels ({size} downloaded)") == 1
    assert sha256_file(tmp_path / "wheels" / wheel.name) == pkg.sha256


def test_the_download_meter_reports_every_step_and_the_running_total() -> None:
    log = Log()
    meter = deps.DownloadMeter(log, step_bytes=4_000_000)
    a, b = meter.track("a.whl"), meter.track("b.whl")
    a(0, 10_000_000)
    b(0, None)
    for done in (2_000_000, 4_000_000, 6_000_000, 8_000_000):
        a(done, 10_000_000)
    b(5_000_000, None)
    a(10_000_000, 10_000_000)
    assert log == [
        "Downloading a.whl (10.0 MB)",
        "Downloading b.whl",
        "  a.whl: 4.0 MB / 10.0 MB · 4.0 MB in all",
        "  a.whl: 8.0 MB / 10.0 MB · 8.0 MB in all",
        "  b.whl: 5.0 MB · 13.0 MB in all",
        "  a.whl: done · 15.0 MB downloaded in all",
    ]
    assert meter.downloaded == 15_000_000


EVIL_BACKEND = """
import os

def _seen():
    try:
        return "read: " + open({secret!r}).read()
    except Exception as exc:
        return f"refused: {{type(exc).__name__}}"

def get_requires_for_build_wheel(config_settings=None):
    return []

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    raise RuntimeError("the backend " + _seen() + " env " + os.environ.get("SERVER_SECRET", "-"))

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("the backend " + _seen() + " env " + os.environ.get("SERVER_SECRET", "-"))
"""


@pytest.mark.skipif(
    "landlock" not in __import__("modelport.runtime.sandbox").runtime.sandbox.probe(),
    reason="this kernel has no Landlock",
)
def test_a_confined_uv_locks_builds_and_installs_but_reads_no_secret(
    tmp_path: Path, links: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every uv run of a build through the sandbox's jail: an sdist built, an environment
    installed; a package's own build backend cannot read a file beside the build's folders,
    nor the server's environment."""
    from modelport.sandboxing import Sandbox

    data = tmp_path / "data"
    (data / "projects" / "p").mkdir(parents=True)
    secret = data / "admin.token"
    secret.write_text("mp_tok_the-secret\n")
    monkeypatch.setenv("SERVER_SECRET", "cloud-credential")
    jail = Sandbox(data).uv_jail(index_url=None, find_links=[links], no_index=True)
    lock = _resolve("sdonly\n", data / "a", links, jail=jail, cache_dir=data / "house")
    assert [p.name for p in lock.packages] == ["msgspec", "sdonly"]
    deps.fetch_wheels(lock, data / "wheels", log=Log(), cache_dir=data / "house", jail=jail)
    python = deps.materialize(lock, data / "wheels", data / "envs", log=Log(), jail=jail)
    assert _run(python, "import sdonly; print(sdonly.VERSION)") == "1.0"

    project = data / "projects" / "p"
    (project / "evilpkg").mkdir()
    (project / "evilpkg" / "backend.py").write_text(EVIL_BACKEND.format(secret=str(secret)))
    (project / "evilpkg" / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        '[project]\nname = "evilpkg"\nversion = "1.0"\n'
    )
    log = Log()
    with pytest.raises(deps.DependencyError, match="build_wheel"):
        _resolve("./evilpkg\n", data / "b", links, log, jail=jail, project_dir=project)
    assert log.count("the backend refused: PermissionError env -")
    assert not log.count("the-secret") and not log.count("cloud-credential")
    # the same backend unconfined reads it: the attack is real
    log = Log()
    with pytest.raises(deps.DependencyError):
        _resolve("./evilpkg\n", data / "c", links, log, project_dir=project)
    assert log.count("the backend read: mp_tok_the-secret") and log.count("cloud-credential")
