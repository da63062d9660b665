"""Where the CLI finds a server's token: small files under the user's config dir, one a server.

A running `modelport serve` writes ``<config>/modelport/servers/<host>-<port>.json`` (its URL,
its data dir, its pid) and removes it when it stops, so that the CLI, given only a loopback URL,
finds that server's ``admin.token`` wherever its data dir is. ``modelport login URL`` writes the
same file with a token, for a server on another machine. ``<config>`` is ``$XDG_CONFIG_HOME``,
else ``~/.config``. Files 0600, folders 0700: a token is a secret.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
ANY_ADDRESS = ("0.0.0.0", "::")  # a server bound to every address answers on loopback too


class ServerRecord(msgspec.Struct, omit_defaults=True):
    url: str
    data_dir: str | None = None
    pid: int | None = None
    token: str | None = None


def servers_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "modelport" / "servers"


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    default = 443 if parts.scheme == "https" else 80
    return (parts.hostname or "127.0.0.1"), (parts.port or default)


def record_path(host: str, port: int) -> Path:
    return servers_dir() / f"{re.sub(r'[^A-Za-z0-9.-]', '_', host)}-{port}.json"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def candidates(url: str) -> list[Path]:
    """The files that may describe the server at ``url``, most specific first."""
    host, port = host_port(url)
    hosts = [host]
    if is_loopback(host):
        hosts += [h for h in (*LOOPBACK_NAMES, *ANY_ADDRESS) if h != host]
    return [record_path(h, port) for h in hosts]


def read(path: Path) -> ServerRecord | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=ServerRecord)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def write(path: Path, record: ServerRecord) -> Path:
    """Atomically, mode 0600 from the first byte (the folder 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(record)) + b"\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def announce(host: str, port: int, url: str, data_dir: Path) -> Path:
    """What a server writes once it listens; a token stored by `login` for it is kept."""
    path = record_path(host, port)
    old = read(path)
    return write(
        path,
        ServerRecord(
            url=url, data_dir=str(data_dir), pid=os.getpid(), token=old.token if old else None
        ),
    )


def withdraw(path: Path) -> None:
    """At a clean stop: the file goes, unless another server has written it since (or a token
    stored by `login` is in it, which stays)."""
    record = read(path)
    if record is None or record.pid != os.getpid():
        return
    if record.token:
        write(path, ServerRecord(url=record.url, token=record.token))
    else:
        path.unlink(missing_ok=True)


def login(url: str, token: str) -> Path:
    host, port = host_port(url)
    path = record_path(host, port)
    old = read(path)
    record = ServerRecord(
        url=url.rstrip("/"),
        data_dir=old.data_dir if old else None,
        pid=old.pid if old else None,
        token=token,
    )
    return write(path, record)


def find_token(url: str) -> tuple[str | None, list[str]]:
    """The token for the server at ``url`` from these files, and every place looked at."""
    looked: list[str] = []
    host, _ = host_port(url)
    for i, path in enumerate(candidates(url)):
        record = read(path)
        if i == 0 or record is not None:  # the loopback aliases only when there
            looked.append(str(path))
        if record is None:
            continue
        if record.token:
            return record.token, looked
        if record.data_dir and is_loopback(host):
            token_file = Path(record.data_dir) / "admin.token"
            looked.append(str(token_file))
            try:
                token = token_file.read_text().strip()
            except OSError:
                token = ""
            if token:
                return token, looked
    return None, looked
