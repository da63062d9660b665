"""The server's side of the sandbox: what a replica, a build's inspect step and a uv run may touch.

The confining itself happens in the child (modelport.runtime.sandbox); here are the policies (pure
functions of paths, tested without processes) and the command line that starts a program confined.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import modelport
from modelport.runtime import sandbox
from modelport.runtime.sandbox import Policy

__all__ = [
    "Policy",
    "Sandbox",
    "index_ports",
    "inspect_policy",
    "python_paths",
    "r_paths",
    "replica_policy",
    "uv_policy",
]

log = logging.getLogger("modelport")

# What every confined program may read: the system's programs and libraries, the few files of
# /etc that libc, OpenSSL, time zones and name lookups read (not /etc wholesale: /etc/shadow,
# /etc/ssl/private and the like stay shut), CPU and memory facts, and a handful of devices.
SYSTEM_READ = (
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ld.so.preload",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ssl/cert.pem",
    "/etc/pki/tls/certs",
    "/etc/pki/ca-trust/extracted",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/crypto-policies",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/locale.alias",
    "/etc/locale.conf",
    "/etc/default/locale",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/networks",
    "/etc/passwd",
    "/etc/group",
    "/etc/mime.types",
    "/etc/magic",
    "/etc/os-release",
    "/etc/debian_version",
    "/etc/fonts",
    "/etc/alternatives",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/loadavg",
    "/proc/uptime",
    "/proc/version",
    "/proc/sys/kernel/osrelease",
    "/proc/sys/kernel/random",
    "/proc/sys/vm/overcommit_memory",
    "/sys/devices/system/cpu",
    "/sys/devices/system/node",
    "/sys/fs/cgroup",
    "/sys/kernel/mm/transparent_hugepage",
)
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")  # read and write
RUNTIME_ROOT = Path(modelport.__file__).resolve().parent.parent  # holds the server's modelport/


@functools.lru_cache(maxsize=64)
def python_paths(python: str | Path) -> tuple[str, ...]:
    """The folders an interpreter reads: its virtual environment (if it is one) and the
    installation it runs (``<prefix>/bin/python3.X`` → ``<prefix>``). Reads a symlink and
    pyvenv.cfg: cached."""
    exe = Path(python)
    found: list[Path] = []
    if (exe.parent.parent / "pyvenv.cfg").is_file():
        found.append(exe.parent.parent)
    real = exe.resolve()
    found.append(real.parent.parent if real.parent.name == "bin" else real.parent)
    return tuple(dict.fromkeys(str(p) for p in found))


@functools.lru_cache(maxsize=8)
def r_paths(rscript: str) -> tuple[str, ...]:
    """What an R replica reads besides the system: R's configuration (/etc/R: Renviron names
    the site libraries) and the installation its Rscript belongs to (``<prefix>/bin/Rscript``
    → ``<prefix>``; under /usr for Debian's R). Resolves a symlink: cached."""
    found = shutil.which(rscript)
    if found is None:
        return ("/etc/R",)
    real = Path(found).resolve()
    return tuple(
        dict.fromkeys(
            ("/etc/R", str(real.parent.parent if real.parent.name == "bin" else real.parent))
        )
    )


def replica_policy(
    *,
    python: str | Path,
    project: Path,
    runtime_dir: Path,
    tmp: Path,
    network: bool,
    also_read: Iterable[str | Path] = (),
) -> Policy:
    """A replica: read its project folder, its environment and interpreter, the runtime and the
    system (and ``also_read``: R's paths and library for an R function); write its own temp
    dir; no network but its pipe unless the deployment allows it (then any: Landlock can only
    allow-list ports, and the API is no use without a token)."""
    read = (
        *SYSTEM_READ,
        *python_paths(python),
        str(runtime_dir),
        str(project),
        *(str(p) for p in also_read),
    )
    return Policy(read=read, write=(*DEVICES, str(tmp)), connect=None if network else ())


def inspect_policy(
    *,
    python: str | Path,
    project: Path,
    runtime_dir: Path,
    tmp: Path,
    also_read: Iterable[str | Path] = (),
) -> Policy:
    """A build's inspect step (it imports the model): as a replica with no network."""
    return replica_policy(
        python=python,
        project=project,
        runtime_dir=runtime_dir,
        tmp=tmp,
        network=False,
        also_read=also_read,
    )


def uv_policy(
    *,
    uv: str | Path,
    read: Iterable[str | Path],
    write: Iterable[str | Path],
    ports: Sequence[int] | None,
) -> Policy:
    """A uv run (it may run build backends: a package's own code): read the system, uv and
    ``read``; write ``write`` (its work folder and cache); TCP to ``ports`` only (None: no
    network at all)."""
    reads = (*SYSTEM_READ, str(Path(uv).resolve().parent), *(str(p) for p in read))
    return Policy(
        read=tuple(dict.fromkeys(reads)),
        write=(*DEVICES, *dict.fromkeys(str(p) for p in write)),
        connect=() if ports is None else tuple(sorted(set(ports))),
    )


_DEFAULT_PORTS = {"https": 443, "http": 80}
PYPI = "https://pypi.org/simple"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _port(url: str) -> int | None:
    parts = urllib.parse.urlsplit(url.split("=", 1)[1] if "=" in url.split("://", 1)[0] else url)
    try:
        return parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None


def index_ports(
    index_url: str | None,
    find_links: Iterable[str | Path],
    no_index: bool,
    env: Mapping[str, str] = os.environ,
) -> tuple[int, ...] | None:
    """The TCP ports uv may need: the package index's (uv's own settings, pip's, else PyPI's
    443), remote find-links and proxies. None when it needs none (no index, local folders)."""
    urls = [str(f) for f in find_links if "://" in str(f)]
    urls += env.get("UV_FIND_LINKS", "").replace(",", " ").split()
    if not no_index:
        urls.append(
            index_url
            or env.get("UV_DEFAULT_INDEX")
            or env.get("UV_INDEX_URL")
            or env.get("PIP_INDEX_URL")
            or PYPI
        )
        for key in ("UV_INDEX", "UV_EXTRA_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
            urls += env.get(key, "").split()
    urls = [u for u in urls if "://" in u]
    if urls:
        urls += [env[k] for k in PROXY_VARS if env.get(k)]
    ports = {p for p in map(_port, urls) if p}
    return tuple(sorted(ports)) or None


def uv_cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where uv keeps its cache (its own rule), so that a confined uv may write there."""
    if env.get("UV_CACHE_DIR"):
        return Path(env["UV_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "uv"


class Sandbox:
    """The server's sandbox: on unless MODELPORT_SANDBOX=off, what this kernel gives
    (``protections``, as the health route lists them), and the command lines of confined
    programs. Private temp dirs live under ``<data dir>/run/tmp``."""

    def __init__(self, data_dir: Path, enabled: bool = True) -> None:
        self.data_dir = data_dir
        self.enabled = enabled and sys.platform.startswith("linux")
        self.protections = sandbox.probe() if self.enabled else []
        self.tmp_root = data_dir / "run" / "tmp"

    def command(
        self,
        python: str | Path,
        policy: Policy,
        argv: Sequence[str],
        *,
        runtime_dir: Path = RUNTIME_ROOT,
        supervise: bool = False,
    ) -> list[str]:
        """``argv`` started confined by ``policy`` through ``python`` running our launcher
        (isolated: no site-packages, no PYTHON* variables, not even the working folder on its
        path, so a project cannot replace it); as given when the sandbox is off."""
        if not self.enabled:
            return list(argv)
        boot = (
            f"import sys; sys.path.insert(0, {str(runtime_dir)!r}); "
            "from modelport.runtime.sandbox import main; sys.exit(main())"
        )
        return [
            str(python),
            "-I",
            "-S",
            "-c",
            boot,
            "exec",
            "--parent",
            str(os.getpid()),
            *(["--supervise"] if supervise else []),
            "--policy",
            policy.encode(),
            "--",
            *argv,
        ]

    def uv_jail(self, *, index_url: str | None, find_links: Sequence[str | Path], no_index: bool):
        """The jail of a build's uv runs (builder/wheelhouse.py's Jail), or None when off: uv
        reads the system, itself, the local find-links folders and what it is given; writes its
        cache and what it is given; TCP only to the index's ports when it needs the index, no
        socket at all when not. Its launcher stays as its parent, so that everything it started
        (build backends) dies with it, or with the server."""
        if not self.enabled:
            return None
        ports = index_ports(index_url, find_links, no_index)
        folders = [Path(f) for f in find_links if "://" not in str(f)]
        cache = uv_cache_dir()

        def jail(
            argv: list[str], read: Sequence[Path], write: Sequence[Path], network: bool
        ) -> tuple[list[str], dict[str, str]]:
            cache.mkdir(parents=True, exist_ok=True)
            policy = uv_policy(
                uv=argv[0],
                read=[*folders, *read],
                write=[cache, *write],
                ports=ports if network else None,
            )
            env = {"UV_CACHE_DIR": str(cache), "TMPDIR": str(write[0] if write else cache)}
            return self.command(sys.executable, policy, argv, supervise=True), env

        return jail

    def fresh_tmp(self, name: str) -> Path:
        """An empty private temp dir ``<data dir>/run/tmp/<name>`` (blocking)."""
        path = self.tmp_root / name
        shutil.rmtree(path, ignore_errors=True)
        self.tmp_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.mkdir(mode=0o700)
        return path

    def clear_tmp(self) -> None:
        """Every private temp dir left by a previous run (blocking)."""
        shutil.rmtree(self.tmp_root, ignore_errors=True)

    def exposed(self, paths: Iterable[str | Path]) -> list[str]:
        """Those of ``paths`` that hold the data dir: a confined program could read it all."""
        data = self.data_dir.resolve()
        return [str(p) for p in paths if data == Path(p) or Path(p) in data.parents]

    def report(self) -> None:
        """One line at start: what holds, or a loud warning saying what does not."""
        if not self.enabled:
            log.warning(
                "sandbox: OFF (MODELPORT_SANDBOX=off): replicas and builds run with "
                "every right of the server's user: they can read the admin token, the "
                "registry and every model's files"
            )
            return
        names = ", ".join(self.protections) or "none"
        if "landlock" not in self.protections:
            log.warning(
                "sandbox: %s — NO LANDLOCK on this kernel (Linux 5.13+ with "
                "CONFIG_SECURITY_LANDLOCK and lsm=landlock): replicas and builds can read "
                "every file the server's user can (the admin token, the registry, other "
                "models' files); run the server as a dedicated user, or on a kernel "
                "with Landlock",
                names,
            )
        else:
            log.info(
                "sandbox: %s (Landlock ABI %d): replicas and builds read only their own "
                "folders, write only their temp dir",
                names,
                sandbox.landlock_abi(),
            )
        exposed = self.exposed([*SYSTEM_READ, *python_paths(sys.executable)])
        if exposed:
            log.warning(
                "sandbox: the data dir %s is under %s, which confined programs may "
                "read: move it elsewhere",
                self.data_dir,
                ", ".join(exposed),
            )
