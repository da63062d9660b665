"""Wheels: a content-addressed local cache, hash-checked downloads, sdists built once with uv."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from modelport.scratch import scratch_dir

Log = Callable[[str], None]
# Confines a uv run (modelport.sandboxing.Sandbox.uv_jail): (argv, folders it reads, folders it
# writes, whether it needs the index) → the confined argv and the variables to add.
Jail = Callable[[list[str], Sequence[Path], Sequence[Path], bool], tuple[list[str], dict[str, str]]]
CHUNK = 1 << 20
REPRODUCIBLE_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip file can hold
# Index settings uv would read from the environment; dropped where no index may be used.
INDEX_ENV = ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS")


class DependencyError(Exception):
    """Requirements that cannot be locked, fetched, built or installed; `message` holds uv's
    own words (or ours, when uv was not the one to fail)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- uv ------------------------------------------------------------------------------------


def uv_bin() -> str:
    import uv

    return uv.find_uv_bin()


def uv_env(offline: bool = False, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment uv runs in: the server's own (so UV_* settings count), never a Python
    download, no colours; `offline` also drops every index setting."""
    env = dict(os.environ) | (extra or {})
    env.update(NO_COLOR="1", UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
    env.pop("VIRTUAL_ENV", None)
    if offline:
        for key in INDEX_ENV:
            env.pop(key, None)
        env["UV_OFFLINE"] = "1"
    return env


# What a confined uv keeps of the server's environment: its own and pip's index settings,
# proxies, certificates, locale. The rest (the server's settings, any cloud credentials) would be
# read by the build backends uv runs.
UV_KEPT = (
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TERM",
    "NO_COLOR",
    "SOURCE_DATE_EPOCH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NETRC",
)
UV_KEPT_PREFIXES = ("UV_", "PIP_", "LC_")


def confined_env(env: dict[str, str]) -> dict[str, str]:
    """`env` less what a confined uv (and the code it runs) has no need of."""
    return {
        k: v
        for k, v in env.items()
        if k in UV_KEPT or k.startswith(UV_KEPT_PREFIXES) or k.lower().endswith("_proxy")
    }


def run_uv(
    args: list[str],
    *,
    log: Log,
    cwd: Path,
    stdin: str | None = None,
    offline: bool = False,
    extra_env: dict[str, str] | None = None,
    jail: Jail | None = None,
    read: Sequence[Path] = (),
    write: Sequence[Path] = (),
) -> None:
    """Run uv, sending each line it prints to `log` (pins yes, their hashes no); a failure
    raises DependencyError with uv's error text. With a `jail`, uv runs confined: it reads
    `cwd`, `read` and the system, writes only `write` and its cache, reaches the index only when
    not `offline`, and gets only the variables it needs (uv runs build backends: a package's
    own code)."""
    argv, env = [uv_bin(), *args], uv_env(offline, extra_env)
    if jail is not None:
        argv, more = jail(argv, [cwd, *read], write, not offline)
        env = confined_env(env) | more
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own group: the sandbox's launcher kills what it leaves
    )
    if stdin is not None:

        def feed() -> None:
            try:
                proc.stdin.write(stdin)  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass

        threading.Thread(target=feed, daemon=True).start()
    lines: list[str] = []
    for line in proc.stdout:  # type: ignore[union-attr]
        line = line.rstrip("\n")
        lines.append(line)
        if not line.lstrip().startswith(("--hash=", "Activate with:")):
            log(line.removesuffix(" \\"))
    if proc.wait() != 0:
        text = _error_text(lines) or f"uv {args[0]} failed (exit {proc.returncode})"
        raise DependencyError(text.replace("in `-`", "in the requirements"))


def _error_text(lines: list[str]) -> str:
    """uv's error, from its first `error:` or `×` line on."""
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("error:", "×")):
            return "\n".join(lines[i:]).strip()
    return "\n".join(lines).strip()


def build_wheel(
    source: Path,
    *,
    interpreter: Path,
    index: list[str],
    out: Path,
    cwd: Path,
    log: Log,
    jail: Jail | None = None,
    reads: Sequence[Path] = (),
) -> Path:
    """Build one wheel from an sdist or a project folder with `uv build` (isolated, its build
    requirements from `index`); with SOURCE_DATE_EPOCH set, most backends (setuptools, flit,
    hatchling) then give the same bytes when the same source is built again."""
    run_uv(
        [
            "build",
            "--wheel",
            "--no-config",
            "--python",
            str(interpreter),
            "--out-dir",
            str(out),
            *index,
            str(source),
        ],
        log=log,
        cwd=cwd,
        extra_env={"SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", REPRODUCIBLE_EPOCH)},
        # a folder is built in place (setuptools writes build/ and *.egg-info into it)
        jail=jail,
        read=[*reads],
        write=[cwd, out, *([source] if source.is_dir() else [])],
    )
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise DependencyError(f"building {source.name} gave {len(wheels)} wheels, not one")
    return wheels[0]


# -- files ---------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """Place `src` at `dst` (atomically replacing it): a hard link when possible, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock held on `path` (created if needed), across threads and processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def filename_from_url(url: str) -> str:
    """The file name a URL points at (percent-decoded: `torch-2.1%2Bcpu-…` → `torch-2.1+cpu-…`)."""
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


def download(
    url: str,
    dest: Path,
    sha256: str | None,
    *,
    auth_from: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Fetch `url` (http, https, file or a plain path) to `dest`, checking its sha256 when one
    is given; the file is renamed into place only once it matches. `auth_from` is an index URL
    whose `user:password@` is sent along to files on the same host. `progress(done, total)` is
    called once the size is known and after every chunk (total None when the server gives no
    Content-Length)."""
    parts = urllib.parse.urlsplit(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if parts.scheme in ("", "file"):
        src = Path(urllib.request.url2pathname(parts.path)) if parts.scheme else Path(url)
        if not src.is_file():
            raise DependencyError(f"{src} does not exist")
        got = sha256_file(src)
        if sha256 and got != sha256:
            raise DependencyError(f"hash mismatch for {src}: expected sha256:{sha256}, got {got}")
        link_or_copy(src, dest)
        return dest
    request = urllib.request.Request(url, headers={"User-Agent": "modelport"})
    index = urllib.parse.urlsplit(auth_from or "")
    if index.username and index.hostname == parts.hostname:
        user, password = (
            urllib.parse.unquote(index.username),
            urllib.parse.unquote(index.password or ""),
        )
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        timeout = float(os.environ.get("UV_HTTP_TIMEOUT") or 120)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            if progress is not None:
                progress(0, total)
            while chunk := resp.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        if sha256 and h.hexdigest() != sha256:
            raise DependencyError(
                f"hash mismatch for {url}: expected sha256:{sha256}, got {h.hexdigest()}"
            )
        os.replace(tmp, dest)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise DependencyError(f"cannot download {url}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# -- the cache -----------------------------------------------------------------------------


class Wheelhouse:
    """Wheels kept by content: `<root>/<sha[:2]>/<sha>/<filename>`, written once, never changed.

    `<root>/built/<sdist sha256>` names the wheel built from that sdist, so an sdist is built
    once and every later lock of the same release gets the very same wheel (and so the same
    lock digest and the same environment).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _dir(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def get(self, sha256: str, filename: str) -> Path | None:
        """The cached wheel with this content and name, or None."""
        path = self._dir(sha256) / filename
        return path if path.is_file() else None

    def put(self, path: Path, sha256: str | None = None) -> tuple[Path, str]:
        """Add a wheel file (linked or copied); returns its path in the house and its sha256."""
        sha256 = sha256 or sha256_file(path)
        target = self._dir(sha256) / path.name
        if not target.is_file():
            link_or_copy(path, target)
        return target, sha256

    def built_from(self, sdist_sha256: str) -> tuple[Path, str] | None:
        """The wheel built earlier from this sdist, as (path, sha256), or None."""
        try:
            sha256, filename = (self.root / "built" / sdist_sha256).read_text().split(maxsplit=1)
        except (OSError, ValueError):
            return None
        path = self.get(sha256, filename.strip())
        return (path, sha256) if path else None

    def wheel_from_sdist(
        self,
        url: str,
        sdist_sha256: str,
        *,
        interpreter: Path,
        index: list[str],
        workdir: Path,
        log: Log,
        auth_from: str | None = None,
        jail: Jail | None = None,
        reads: Sequence[Path] = (),
    ) -> tuple[Path, str]:
        """The wheel built from this sdist: the one built before, else built now (the sdist
        checked against its hash) and kept. Returns (path in the house, sha256)."""
        with file_lock(self.root / "built" / f".{sdist_sha256}.lock"):
            if built := self.built_from(sdist_sha256):
                log(f"Using the wheel built before from {filename_from_url(url)}: {built[0].name}")
                return built
            with scratch_dir(workdir, "sdist-") as tmp:
                sdist = download(
                    url, tmp / filename_from_url(url), sdist_sha256, auth_from=auth_from
                )
                log(f"Building a wheel from {sdist.name}")
                wheel = build_wheel(
                    sdist,
                    interpreter=interpreter,
                    index=index,
                    out=tmp / "out",
                    cwd=tmp,
                    log=log,
                    jail=jail,
                    reads=reads,
                )
                path, sha256 = self.put(wheel)
            record = self.root / "built" / sdist_sha256
            tmp_record = record.with_name(f".{record.name}.{os.getpid()}.tmp")
            tmp_record.write_text(f"{sha256} {path.name}\n")
            os.replace(tmp_record, record)
            return path, sha256
