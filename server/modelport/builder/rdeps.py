"""An R project's packages: r-requirements.txt resolved against CRAN-like repositories, locked with
the sha256 of each source tarball, and installed offline (R CMD INSTALL) into a library per lock."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from modelport.builder.rlang import RInfo
from modelport.scratch import scratch_dir

__all__ = [
    "RDependencyError",
    "RLock",
    "RPackage",
    "description_imports",
    "fetch",
    "install",
    "library_path",
    "lock_text",
    "parse_requirements",
    "r_lock_digest",
    "read_index",
    "resolve",
]

R_REQUIREMENTS = "r-requirements.txt"
COMPLETE_MARKER = ".modelport-complete"
INSTALL_TIMEOUT_S = 1800
# Names that are R itself: never a package to fetch.
_BASE = frozenset(
    {
        "R",
        "base",
        "compiler",
        "datasets",
        "graphics",
        "grDevices",
        "grid",
        "methods",
        "parallel",
        "splines",
        "stats",
        "stats4",
        "tcltk",
        "tools",
        "utils",
    }
)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9.]*$")

Log = Callable[[str], None]


class RDependencyError(Exception):
    """An R package cannot be resolved, fetched or installed; the message says which."""


class RPackage(msgspec.Struct, frozen=True):
    name: str
    version: str
    sha256: str = ""  # of the source tarball; "" for a package of the machine's R
    filename: str = ""  # name_version.tar.gz
    url: str = ""  # where the tarball came from
    machine: bool = False  # used as the machine's R has it (base, recommended, r-cran-*)


class RLock(msgspec.Struct):
    r_version: str
    packages: list[RPackage]  # sorted by name; install order is derived from `depends`
    order: list[str]  # the packages to install, dependencies first
    digest: str


def r_lock_digest(r_version: str, packages: Sequence[RPackage]) -> str:
    rows = sorted((p.name, p.version, p.sha256, p.machine) for p in packages)
    data = msgspec.json.encode([r_version, rows], order="deterministic")
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_requirements(text: str) -> list[tuple[str, str | None]]:
    """``name`` or ``name==version`` a line (``#`` comments, blank lines); RDependencyError for
    anything else."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = (part.strip() for part in line.partition("=="))
        if not _NAME.match(name) or (sep and not re.match(r"^[0-9][0-9.\-]*$", version)):
            raise RDependencyError(
                f"{R_REQUIREMENTS} line {number}: {raw.strip()!r} is not `name` or `name==version`"
            )
        out.append((name, version or None))
    return out


def description_imports(text: str) -> list[tuple[str, str | None]]:
    """The packages a project's DESCRIPTION file names in Depends and Imports (unpinned)."""
    records = _dcf(text)
    fields = records[0] if records else {}
    names = [n for key in ("Depends", "Imports") for n in _names(fields.get(key, ""))]
    return [(n, None) for n in dict.fromkeys(names)]


def _dcf(text: str) -> list[dict[str, str]]:
    """Records of a Debian-control-format file (PACKAGES, DESCRIPTION)."""
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                records.append(current)
            current, key = {}, None
        elif line[:1] in (" ", "\t") and key:
            current[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            current[key] = value.strip()
    if current:
        records.append(current)
    return records


def _names(field: str) -> list[str]:
    """Package names of a Depends/Imports/LinkingTo field (versions in parentheses dropped)."""
    out = []
    for item in field.split(","):
        name = re.sub(r"\(.*?\)", "", item).strip()
        if name and name not in _BASE:
            out.append(name)
    return out


def _fetch(url: str, timeout: float = 60) -> bytes:
    if url.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).read_bytes()
    with urllib.request.urlopen(url, timeout=timeout) as response:  # the configured repos
        return response.read()


def read_index(repo: str) -> dict[str, dict[str, str]]:
    """A repository's source packages (``src/contrib/PACKAGES``) by name."""
    url = repo.rstrip("/") + "/src/contrib/PACKAGES"
    try:
        text = _fetch(url).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        raise RDependencyError(f"cannot read the R repository {repo}: {exc}") from None
    return {r["Package"]: {**r, "_repo": repo} for r in _dcf(text) if "Package" in r}


def resolve(
    requirements: list[tuple[str, str | None]], info: RInfo, repos: Sequence[str], log: Log
) -> tuple[list[RPackage], list[str]]:
    """Every package the requirements need (with their Depends/Imports/LinkingTo): the machine's
    R's own where it has them (a pinned version must match), else from the first repository
    that has them. Returns the packages (sorted) and the install order of those fetched."""
    indexes = [read_index(r) for r in repos] if repos else []
    pins = dict(requirements)
    chosen: dict[str, RPackage] = {}
    deps: dict[str, list[str]] = {}
    todo = [name for name, _ in requirements]
    while todo:
        name = todo.pop(0)
        if name in chosen or name in _BASE:
            continue
        pin = pins.get(name)
        have = info.machine.get(name)
        if have is not None and (pin is None or pin == have):
            chosen[name] = RPackage(name, have, machine=True)
            continue
        record = next(
            (
                ix[name]
                for ix in indexes
                if name in ix and (pin is None or ix[name].get("Version") == pin)
            ),
            None,
        )
        if record is None:
            where = ", ".join(repos) or "(none: MODELPORT_R_REPOS is empty)"
            found = [ix[name].get("Version", "?") for ix in indexes if name in ix]
            what = f"R package '{name}'" + (f" version {pin}" if pin else "")
            extra = f" (the repositories have {', '.join(found)})" if found else ""
            raise RDependencyError(f"{what} is not in the R repositories {where}{extra}")
        version = record["Version"]
        filename = f"{name}_{version}.tar.gz"
        chosen[name] = RPackage(
            name, version, "", filename, record["_repo"].rstrip("/") + "/src/contrib/" + filename
        )
        deps[name] = [
            n
            for field in ("Depends", "Imports", "LinkingTo")
            for n in _names(record.get(field, ""))
        ]
        todo.extend(deps[name])
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order or name not in deps:
            return
        if name in path:
            raise RDependencyError(
                f"R packages depend on each other in a cycle: {' -> '.join((*path, name))}"
            )
        for dep in deps[name]:
            visit(dep, (*path, name))
        order.append(name)

    for name in sorted(deps):
        visit(name, ())
    return sorted(chosen.values(), key=lambda p: p.name), order


def fetch(packages: list[RPackage], folder: Path, log: Log) -> list[tuple[RPackage, Path]]:
    """The source tarballs of the packages that are not the machine's, with their sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for pkg in packages:
        if pkg.machine:
            continue
        try:
            data = _fetch(pkg.url, timeout=300)
        except (OSError, ValueError) as exc:
            raise RDependencyError(f"cannot fetch {pkg.url}: {exc}") from None
        path = folder / pkg.filename
        path.write_bytes(data)
        out.append((msgspec.structs.replace(pkg, sha256=hashlib.sha256(data).hexdigest()), path))
        log(f"  fetched {pkg.filename} ({len(data)} bytes)")
    return out


def library_path(root: Path, lock_digest: str) -> Path:
    return root / lock_digest.removeprefix("sha256:")[:32]


def install(
    lock: RLock,
    tarballs: dict[str, Path],
    rscript: str,
    root: Path,
    log: Log,
    confine: Callable[[list[str], Path, Path], list[str]] | None = None,
) -> Path:
    """The lock's library, made once: each fetched package installed from its stored tarball
    (``R CMD INSTALL``, no network) in dependency order, then checked: every package's
    DESCRIPTION names the locked version. ``confine`` wraps a command line (argv, the library
    folder being made, its temp dir) to run it in the sandbox."""
    target = library_path(root, lock.digest)
    if (target / COMPLETE_MARKER).is_file():
        log(f"  reusing R library {lock.digest[7:19]}")
        return target
    found = shutil.which(rscript)
    r_bin = shutil.which("R", path=str(Path(found).parent)) if found else None
    if r_bin is None:
        raise RDependencyError(f"no R next to {rscript!r} to install R packages with")
    root.mkdir(parents=True, exist_ok=True)
    by_name = {p.name: p for p in lock.packages}
    with scratch_dir(root, ".tmp-") as work:
        lib, tmp = work / "lib", work / "tmp"
        lib.mkdir()
        tmp.mkdir()
        for name in lock.order:
            argv = [
                r_bin,
                "CMD",
                "INSTALL",
                "--no-docs",
                "--no-html",
                "--no-multiarch",
                "--library=" + str(lib),
                str(tarballs[name]),
            ]
            if confine is not None:
                argv = confine(argv, lib, tmp)
            env = {k: os.environ[k] for k in ("PATH",) if k in os.environ}
            env.update(
                LANG="C.UTF-8",
                LC_ALL="C.UTF-8",
                TMPDIR=str(tmp),
                HOME=str(tmp),
                R_LIBS=str(lib),
                R_LIBS_USER=str(lib),
            )
            log(f"  $ R CMD INSTALL {tarballs[name].name}")
            try:
                done = subprocess.run(
                    argv,
                    env=env,
                    capture_output=True,
                    stdin=subprocess.DEVNULL,
                    timeout=INSTALL_TIMEOUT_S,
                    check=False,
                    cwd=tmp,
                )
            except subprocess.TimeoutExpired:
                raise RDependencyError(
                    f"R CMD INSTALL {name} took over {INSTALL_TIMEOUT_S}s"
                ) from None
            text = (done.stdout + done.stderr).decode(errors="replace").strip()
            if done.returncode != 0:
                log(text[-4000:])
                raise RDependencyError(
                    f"R CMD INSTALL {name} failed (exit {done.returncode}): "
                    f"{text.splitlines()[-1] if text else ''}"
                )
        for name in lock.order:  # what got installed, not what the installer said
            desc = lib / name / "DESCRIPTION"
            try:
                fields = _dcf(desc.read_text(encoding="utf-8", errors="replace"))[0]
            except (OSError, IndexError):
                raise RDependencyError(
                    f"R package {name} is not in the library after its install"
                ) from None
            if fields.get("Version") != by_name[name].version:
                raise RDependencyError(
                    f"R package {name}: installed {fields.get('Version')}, "
                    f"locked {by_name[name].version}"
                )
        (lib / COMPLETE_MARKER).write_text(lock.digest + "\n")
        try:
            os.rename(lib, target)
        except OSError:
            if not (target / COMPLETE_MARKER).is_file():
                raise
        log(f"  R library {lock.digest[7:19]}: {', '.join(lock.order) or 'nothing to install'}")
    return target


def lock_text(lock: RLock) -> str:
    """The R packages' lines of the build's lock text (comments: uv never reads them)."""
    return "".join(
        f"# R package: {p.name}=={p.version} (the machine's R)\n"
        if p.machine
        else f"# R package: {p.name}=={p.version} sha256:{p.sha256}\n"
        for p in lock.packages
    )
