"""A build's dependencies: a uv lock with hashes, one wheel per package, an offline env per lock."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import msgspec

from modelport.builder.wheelhouse import (
    DependencyError,
    Jail,
    Log,
    Wheelhouse,
    build_wheel,
    download,
    file_lock,
    filename_from_url,
    link_or_copy,
    run_uv,
    sha256_file,
    uv_bin,
    uv_env,
)
from modelport.sandboxing import python_paths
from modelport.scratch import scratch_dir

__all__ = [
    "DependencyError",
    "Lock",
    "LockedPackage",
    "env_python",
    "fetch_wheels",
    "find_python",
    "index_args",
    "lock_digest",
    "materialize",
    "resolve",
]

RUNTIME_REQUIREMENT = "msgspec"  # the replica runtime needs it in every environment
COMPLETE_MARKER = ".modelport-complete"  # written last: an env without it is unfinished
DOWNLOAD_THREADS = 4


class _Confined(TypedDict):
    """run_uv's confinement arguments, given as **confined."""

    jail: Jail | None
    read: list[Path]
    write: list[Path]


class LockedPackage(msgspec.Struct, frozen=True):
    name: str  # normalised (PEP 503)
    version: str
    wheel: str  # the wheel's file name
    sha256: str  # hex sha256 of that wheel file
    url: str = ""  # where the wheel, or the sdist it was built from, came from
    sdist_sha256: str = ""  # set when the wheel was built here from that sdist


class Lock(msgspec.Struct):
    python: str  # "3.11"
    text: str  # `uv pip compile --generate-hashes` output, comments dropped, sorted
    packages: list[LockedPackage]  # sorted by name
    digest: str  # "sha256:<hex>" over python + (name, version, wheel sha256) of each package


class _DigestInput(msgspec.Struct, array_like=True):
    python: str
    packages: list[tuple[str, str, str]]


def lock_digest(python: str, packages: Iterable[LockedPackage]) -> str:
    """The same pins and wheels for the same Python give the same digest."""
    rows = sorted((p.name, p.version, p.sha256) for p in packages)
    data = msgspec.json.encode(_DigestInput(python, rows), order="deterministic")
    return "sha256:" + hashlib.sha256(data).hexdigest()


def normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def with_runtime_requirement(requirements_text: str) -> str:
    """The requirements plus `msgspec`, unless a requirement already names it."""
    for line in requirements_text.splitlines():
        line = line.split(" #", 1)[0].strip()
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if match and normalize_name(match[0]) == RUNTIME_REQUIREMENT:
            return requirements_text
    if requirements_text and not requirements_text.endswith("\n"):
        requirements_text += "\n"
    return requirements_text + RUNTIME_REQUIREMENT + "\n"


def normalize_lock_text(text: str) -> str:
    """Drop comments and blank lines; sort the entries (a pin and its `--hash` lines) by name."""
    entries: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and entries:
            entries[-1].append("    " + line.strip())
        else:
            entries.append([line])
    entries.sort(key=lambda e: normalize_name(re.split(r"[=<>!~ @;\[]", e[0], maxsplit=1)[0]))
    return "".join("\n".join(e) + "\n" for e in entries)


def index_args(
    index_url: str | None = None, *, no_index: bool = False, find_links: Iterable[Path | str] = ()
) -> list[str]:
    """uv's index options: the explicit ones, else UV_* from the environment (uv reads those
    itself), else PIP_INDEX_URL / PIP_EXTRA_INDEX_URL, else uv's default, PyPI."""
    env, args = os.environ, []
    if no_index:
        args.append("--no-index")
    elif index_url:
        args += ["--default-index", index_url]
    else:
        if not (env.get("UV_DEFAULT_INDEX") or env.get("UV_INDEX_URL")) and env.get(
            "PIP_INDEX_URL"
        ):
            args += ["--default-index", env["PIP_INDEX_URL"]]
        if not (env.get("UV_INDEX") or env.get("UV_EXTRA_INDEX_URL")):
            for extra in env.get("PIP_EXTRA_INDEX_URL", "").split():
                args += ["--index", extra]
    for link in find_links:
        args += ["--find-links", str(link)]
    return args


def _index_with_credentials(index_url: str | None) -> str | None:
    env = os.environ
    return (
        index_url
        or env.get("UV_DEFAULT_INDEX")
        or env.get("UV_INDEX_URL")
        or env.get("PIP_INDEX_URL")
        or None
    )


def find_python(version: str) -> Path:
    """An installed interpreter for "X.Y": the server's own when it matches, else uv's pick
    among the system's (never a download)."""
    if not re.fullmatch(r"\d+\.\d+", version):
        raise DependencyError(f"a Python version looks like 3.11, not {version!r}")
    if version == f"{sys.version_info[0]}.{sys.version_info[1]}":
        return Path(getattr(sys, "_base_executable", None) or sys.executable)
    found = subprocess.run(
        [uv_bin(), "python", "find", "--system", "--no-config", version],
        check=False,
        capture_output=True,
        text=True,
        env=uv_env(),
        cwd=tempfile.gettempdir(),
    )
    if found.returncode != 0 or not found.stdout.strip():
        raise DependencyError(f"Python {version} is not installed on this server")
    return Path(found.stdout.strip().splitlines()[-1])


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "modelport" / "wheels"


# -- resolve -------------------------------------------------------------------------------


def resolve(
    requirements_text: str,
    python: str,
    *,
    workdir: Path,
    log: Log,
    index_url: str | None = None,
    find_links: Iterable[Path | str] = (),
    no_index: bool = False,
    cache_dir: Path | None = None,
    project_dir: Path | None = None,
    jail: Jail | None = None,
) -> Lock:
    """Lock the requirements (plus msgspec) for `python` with uv: exact pins with hashes, and
    the one wheel per package that this Python installs. A package published only as an sdist
    is built into a wheel here, once per sdist (kept in the wheel cache `cache_dir`), so that
    its wheel's hash is known. `project_dir` is where relative paths in the requirements
    (`-r base.txt`, `./pkg`) point."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    interpreter = find_python(python)
    index = index_args(index_url, no_index=no_index, find_links=find_links)
    cwd = Path(project_dir) if project_dir else workdir
    source = with_runtime_requirement(requirements_text)
    (workdir / "requirements.in").write_text(source)
    compiled = workdir / "requirements.lock"
    # Confined, uv reads the interpreter and writes the work folder (and the project's own copy:
    # a local package's build backend writes its metadata into its folder).
    confined: _Confined = {"jail": jail, "read": _reads(interpreter), "write": [workdir, cwd]}
    run_uv(
        [
            "pip",
            "compile",
            "-",
            "--no-config",
            "--python",
            str(interpreter),
            "--generate-hashes",
            "--no-header",
            "--no-annotate",
            "-o",
            str(compiled),
            *index,
        ],
        log=log,
        cwd=cwd,
        stdin=source,
        **confined,
    )
    text = normalize_lock_text(compiled.read_text())
    compiled.write_text(text)
    # The same requirements held to those pins, as pylock.toml: it names the one file per
    # package that uv installs for this interpreter, with its URL and hash.
    pins = workdir / "pins.txt"
    pins.write_text(
        "".join(
            line.removesuffix(" \\").strip() + "\n"
            for line in text.splitlines()
            if re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*==", line)
        )
    )
    pylock = workdir / "pylock.toml"
    run_uv(
        [
            "pip",
            "compile",
            "-",
            "--no-config",
            "--python",
            str(interpreter),
            "--format",
            "pylock.toml",
            "--quiet",
            "-c",
            str(pins),
            "-o",
            str(pylock),
            *index,
        ],
        log=log,
        cwd=cwd,
        stdin=source,
        **confined,
    )
    house = Wheelhouse(cache_dir or default_cache_dir())
    context = _Context(
        interpreter, index, house, workdir, log, _index_with_credentials(index_url), jail
    )
    packages = sorted(
        (
            _locked(entry, context)
            for entry in tomllib.loads(pylock.read_text()).get("packages", [])
        ),
        key=lambda p: p.name,
    )
    return Lock(python=python, text=text, packages=packages, digest=lock_digest(python, packages))


@dataclass(frozen=True)
class _Context:
    interpreter: Path
    index: list[str]
    house: Wheelhouse
    workdir: Path
    log: Log
    auth: str | None
    jail: Jail | None = None


def _reads(interpreter: Path) -> list[Path]:
    """What a confined uv reads to run this interpreter: its installation (and venv)."""
    return [Path(p) for p in python_paths(interpreter)]


def _ref(item: dict, base: Path) -> str:
    if item.get("url"):
        return item["url"]
    path = Path(item["path"])
    return str(path if path.is_absolute() else (base / path).resolve())


def _locked(entry: dict, ctx: _Context) -> LockedPackage:
    """One pylock.toml entry as a locked wheel: the index's wheel, or one built here."""
    name, version = normalize_name(entry["name"]), str(entry.get("version", ""))
    base = ctx.workdir
    wheels, archive = entry.get("wheels") or [], entry.get("archive")
    if archive and filename_from_url(_ref(archive, base)).endswith(".whl"):
        wheels, archive = [archive], None
    if wheels:
        ref = _ref(wheels[0], base)
        filename = filename_from_url(ref)
        sha256 = (wheels[0].get("hashes") or {}).get("sha256")
        if not sha256:  # an index that publishes no hashes: take the file now and hash it
            path = download(ref, ctx.workdir / "unhashed" / filename, None, auth_from=ctx.auth)
            _, sha256 = ctx.house.put(path)
        return LockedPackage(name, version or _wheel_version(filename), filename, sha256, url=ref)
    if sdist := entry.get("sdist") or archive:
        ref = _ref(sdist, base)
        sdist_sha256 = (sdist.get("hashes") or {}).get("sha256")
        if not sdist_sha256:
            raise DependencyError(f"{name} {version}: the index gave no sha256 for {ref}")
        path, sha256 = ctx.house.wheel_from_sdist(
            ref,
            sdist_sha256,
            interpreter=ctx.interpreter,
            index=ctx.index,
            workdir=ctx.workdir,
            log=ctx.log,
            auth_from=ctx.auth,
            jail=ctx.jail,
            reads=_reads(ctx.interpreter),
        )
        return LockedPackage(
            name,
            version or _wheel_version(path.name),
            path.name,
            sha256,
            url=ref,
            sdist_sha256=sdist_sha256,
        )
    if entry.get("directory"):
        src = Path(_ref(entry["directory"], base))
        ctx.log(f"Building a wheel for {name} from {src}")
        out = Path(tempfile.mkdtemp(prefix="wheel-", dir=ctx.workdir))
        try:
            path, sha256 = ctx.house.put(
                build_wheel(
                    src,
                    interpreter=ctx.interpreter,
                    index=ctx.index,
                    out=out,
                    cwd=ctx.workdir,
                    log=ctx.log,
                    jail=ctx.jail,
                    reads=_reads(ctx.interpreter),
                )
            )
        finally:
            shutil.rmtree(out, ignore_errors=True)
        return LockedPackage(
            name, version or _wheel_version(path.name), path.name, sha256, url=src.as_uri()
        )
    raise DependencyError(
        f"{name}: only packages from an index, file URLs and local folders "
        "can be locked (a VCS requirement cannot be kept as a wheel here)"
    )


def _wheel_version(filename: str) -> str:
    return filename.split("-")[1] if filename.count("-") >= 4 else ""


# -- fetch ---------------------------------------------------------------------------------


def fetch_wheels(
    lock: Lock,
    dest: Path,
    *,
    log: Log,
    index_url: str | None = None,
    find_links: Iterable[Path | str] = (),
    no_index: bool = False,
    cache_dir: Path | None = None,
    jail: Jail | None = None,
) -> list[Path]:
    """Place the lock's wheels in `dest`, one per package (in the lock's order), each checked
    against its sha256: from `dest` itself, the wheel cache, the `find_links` folders, else
    downloaded from where the lock found it. A wheel built from an sdist comes from the cache,
    and is built again only if lost (and must then come out the same)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    find_links = list(find_links)
    house = Wheelhouse(cache_dir or default_cache_dir())
    folders = [Path(f) for f in find_links if "://" not in str(f)]
    paths, missing = [], []
    for pkg in lock.packages:
        target = dest / pkg.wheel
        paths.append(target)
        if target.is_file() and sha256_file(target) == pkg.sha256:
            continue
        found = house.get(pkg.sha256, pkg.wheel) or next(
            (
                f / pkg.wheel
                for f in folders
                if (f / pkg.wheel).is_file() and sha256_file(f / pkg.wheel) == pkg.sha256
            ),
            None,
        )
        if found is not None:
            link_or_copy(found, target)
        else:
            missing.append(pkg)
    if not missing:
        log(f"All {len(paths)} wheels at hand")
        return paths
    guard = threading.Lock()
    auth = _index_with_credentials(index_url)

    def say(line: str) -> None:
        with guard:
            log(line)

    meter = DownloadMeter(say)

    def get(pkg: LockedPackage) -> None:
        if pkg.sdist_sha256:
            interpreter = find_python(lock.python)
            _, sha256 = house.wheel_from_sdist(
                pkg.url,
                pkg.sdist_sha256,
                interpreter=interpreter,
                index=index_args(index_url, no_index=no_index, find_links=find_links),
                workdir=house.root / ".work",
                log=say,
                auth_from=auth,
                jail=jail,
                reads=_reads(interpreter),
            )
            if sha256 != pkg.sha256:
                raise DependencyError(
                    f"{pkg.name} {pkg.version}: the wheel built again from its sdist differs from "
                    "the locked one (its build is not reproducible); lock the requirements again"
                )
        elif not pkg.url:
            raise DependencyError(f"{pkg.name} {pkg.version}: no wheel at hand and no URL")
        else:
            with scratch_dir(house.root, ".incoming-") as incoming:
                house.put(
                    download(
                        pkg.url,
                        incoming / pkg.wheel,
                        pkg.sha256,
                        auth_from=auth,
                        progress=meter.track(pkg.wheel),
                    ),
                    pkg.sha256,
                )
        link_or_copy(house.get(pkg.sha256, pkg.wheel) or _lost(pkg), dest / pkg.wheel)

    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        for future in [pool.submit(get, pkg) for pkg in missing]:
            future.result()
    log(
        f"Fetched {len(missing)} wheels ({megabytes(meter.downloaded)} downloaded); "
        f"{len(paths) - len(missing)} were at hand"
    )
    return paths


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


class DownloadMeter:
    """Progress of the wheel downloads, for the build log: a line when a download starts (with
    its size), one per `step_bytes` downloaded, and one when it is done, with the running total
    of every download so far (they run side by side)."""

    def __init__(self, say: Log, step_bytes: int = 8_000_000) -> None:
        self.say, self.step = say, step_bytes
        self.downloaded = 0
        self._lock = threading.Lock()

    def track(self, name: str):
        shown = {"at": 0, "done": 0}

        def progress(done: int, total: int | None) -> None:
            with self._lock:
                self.downloaded += done - shown["done"]
                shown["done"] = done
                overall = self.downloaded
            size = f" ({megabytes(total)})" if total else ""
            if done == 0:
                self.say(f"Downloading {name}{size}")
            elif total is not None and done >= total:
                self.say(f"  {name}: done · {megabytes(overall)} downloaded in all")
            elif done - shown["at"] >= self.step:
                shown["at"] = done
                of = f" / {megabytes(total)}" if total else ""
                self.say(f"  {name}: {megabytes(done)}{of} · {megabytes(overall)} in all")

        return progress


def _lost(pkg: LockedPackage) -> Path:
    raise DependencyError(f"{pkg.wheel} vanished from the wheel cache")


# -- materialise ---------------------------------------------------------------------------


def _digest_hex(lock_digest: str) -> str:
    hexd = lock_digest.removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", hexd):
        raise ValueError(f"not a lock digest: {lock_digest!r}")
    return hexd


def env_python(env_root: Path, lock_digest: str) -> Path | None:
    """The python of the finished environment for this lock, or None when there is none."""
    env = Path(env_root) / _digest_hex(lock_digest)
    python = env / "bin" / "python"
    return python if (env / COMPLETE_MARKER).is_file() and python.exists() else None


def materialize(
    lock: Lock,
    wheel_dir: Path,
    env_root: Path,
    *,
    log: Log,
    interpreter: Path | None = None,
    compile_bytecode: bool = True,
    jail: Jail | None = None,
) -> Path:
    """The environment for this lock at `env_root/<digest hex>/`, created once and shared by
    every build with the same lock; installed from `wheel_dir` only (no index, offline, every
    wheel's hash checked). It is built under a temporary name and renamed into place when
    finished, under a file lock: a concurrent caller waits, then reuses it; a half-made one is
    removed and built again. Byte-compiled up front (seconds for scikit-learn), as replicas do
    not write bytecode. Returns the environment's python."""
    env_root, hexd = Path(env_root), _digest_hex(lock.digest)
    if found := env_python(env_root, lock.digest):
        log(f"Reusing environment {hexd[:12]}")
        return found
    with file_lock(env_root / f".{hexd}.lock"):
        if found := env_python(env_root, lock.digest):
            log(f"Reusing environment {hexd[:12]}")
            return found
        final = env_root / hexd
        if final.exists():
            log(f"Removing the unfinished environment {hexd[:12]}")
            shutil.rmtree(final)
        for stale in env_root.glob(f".tmp-{hexd}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        wheel_dir = Path(wheel_dir).resolve()
        for pkg in lock.packages:
            if not (wheel_dir / pkg.wheel).is_file():
                raise DependencyError(f"{pkg.wheel} is missing from the build's wheels")
        interpreter = interpreter or find_python(lock.python)
        tmp = env_root / f".tmp-{hexd}-{os.getpid()}"
        try:
            _create_env(lock, wheel_dir, tmp, interpreter, compile_bytecode, log, jail)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fd = os.open(env_root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        log(f"Environment {hexd[:12]} ready")
        return final / "bin" / "python"


def _create_env(
    lock: Lock,
    wheel_dir: Path,
    tmp: Path,
    interpreter: Path,
    compile_bytecode: bool,
    log: Log,
    jail: Jail | None = None,
) -> None:
    log(f"Creating environment {lock.digest[7:19]} for Python {lock.python}")
    tmp.mkdir()  # made here, so that a confined uv may write in it (and nowhere else of env_root)
    confined: _Confined = {"jail": jail, "read": [wheel_dir, *_reads(interpreter)], "write": [tmp]}
    run_uv(
        [
            "venv",
            "--relocatable",
            "--no-config",
            "--no-project",
            "--python",
            str(interpreter),
            str(tmp),
        ],
        log=log,
        cwd=tmp,
        offline=True,
        **confined,
    )
    requirements = tmp / "modelport-requirements.txt"
    requirements.write_text(
        "".join(f"{p.name}=={p.version} --hash=sha256:{p.sha256}\n" for p in lock.packages)
    )
    if lock.packages:
        run_uv(
            [
                "pip",
                "install",
                "--no-config",
                "--python",
                str(tmp / "bin" / "python"),
                "--offline",
                "--no-index",
                "--find-links",
                str(wheel_dir),
                "--no-deps",
                "--require-hashes",
                "-r",
                str(requirements),
                *(["--compile-bytecode"] if compile_bytecode else []),
            ],
            log=log,
            cwd=tmp,
            offline=True,
            **confined,
        )
    (tmp / "modelport-lock.json").write_bytes(msgspec.json.encode(lock))
    with open(tmp / COMPLETE_MARKER, "w") as marker:
        marker.write(lock.digest + "\n")
        marker.flush()
        os.fsync(marker.fileno())
