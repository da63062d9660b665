"""One Settings Struct: command-line flags, environment and defaults in one place."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import msgspec

DEFAULT_URL = "http://127.0.0.1:8000"


def resolve_data_dir(flag: str | Path | None = None) -> Path:
    """In this order: the flag, else MODELPORT_HOME, else ./artifacts."""
    chosen = flag or os.environ.get("MODELPORT_HOME") or "artifacts"
    return Path(chosen).expanduser().resolve()


class Settings(msgspec.Struct, kw_only=True):
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    log_format: str = "text"  # "text" | "json"
    log_level: str = "info"
    # Builds
    build_workers: int = 2
    archive_max_bytes: int = 2 * 1024**3
    archive_max_expanded_bytes: int = 8 * 1024**3
    archive_max_ratio: int = 200
    index_url: str | None = None  # MODELPORT_INDEX_URL; else uv's own configuration
    find_links: list[str] = []  # MODELPORT_FIND_LINKS (os.pathsep-separated): local wheel folders
    no_index: bool = False  # MODELPORT_NO_INDEX=1: only find_links, never an index
    # The longest answer a replica may send (MODELPORT_MAX_RESPONSE_MB); past it, recycled
    max_response_mb: int = 64
    # Busy polling window (µs) of the server and replicas; 0 = off (modelport.runtime.busy_poll)
    busy_poll_us: int = 250
    # Monitoring: MODELPORT_METRICS=0 stops counting predictions (the serving benchmark's baseline)
    metrics: bool = True
    # Replicas and builds confined by the kernel (modelport.sandboxing); MODELPORT_SANDBOX=off
    # runs them with the server's rights (the benchmark's baseline, troubleshooting)
    sandbox: bool = True
    # R functions: the Rscript that runs them (MODELPORT_RSCRIPT; else the one on PATH) and the
    # CRAN-like repositories their r-requirements.txt resolves against (MODELPORT_R_REPOS)
    rscript: str = "Rscript"
    r_repos: list[str] = msgspec.field(default_factory=lambda: ["https://cloud.r-project.org"])
    # Captured requests and replay reports (they may hold personal data) are deleted after this
    # many days (MODELPORT_CAPTURE_RETENTION_DAYS)
    capture_retention_days: int = 14
    # Web
    cors_origins: list[str] = []
    # The artifact store: None for the local one in the data dir; MODELPORT_STORE_URL
    # (s3://bucket/prefix?endpoint=…&region=…) for an S3 bucket, cached in store_dir
    store_url: str | None = None
    # The registry: None for the data dir's SQLite file; MODELPORT_DATABASE_URL
    # (postgresql://user@host:5432/database) for a PostgreSQL database several servers share
    database_url: str | None = None
    # The key that seals deployment env values: None for the data dir's secret.key (made at the
    # first start); MODELPORT_SECRET_KEY_FILE for one every server sharing a registry reads
    secret_key_file: Path | None = None
    # This server's name among those sharing a registry (MODELPORT_NODE; else the host name):
    # in health, and the node a replica runs on
    node: str = msgspec.field(default_factory=socket.gethostname)
    # Where replicas run: None here (MODELPORT_REPLICAS=local), or the Ray cluster's head address
    # host:port (MODELPORT_REPLICAS=ray://host:port), which the server joins as a driver
    replicas: str | None = None
    # The server↔replica link of replicas on Ray nodes in TLS 1.3 (MODELPORT_REPLICA_TLS=on): a
    # key and certificate made for each replica start, the only one the server then trusts
    replica_tls: bool = False
    # Servers sharing a PostgreSQL registry hear each other's changes at once (LISTEN/NOTIFY) and
    # reload everything from it every reconcile_s seconds besides (MODELPORT_RECONCILE_S)
    reconcile_s: int = 10
    # Where other servers of the registry reach this one (MODELPORT_ADVERTISE_URL, forwarded
    # predictions); default http://host:port as it binds
    advertise_url: str | None = None

    @property
    def registry_path(self) -> Path:
        return self.data_dir / "registry.sqlite3"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def envs_dir(self) -> Path:
        return self.data_dir / "envs"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"  # uploads and exports while they stream (temp files)

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin.token"

    @property
    def secret_key_path(self) -> Path:
        """The key that seals deployment env values in the registry (registry/sealed.py)."""
        return self.secret_key_file or self.data_dir / "secret.key"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "server.lock"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """Settings from MODELPORT_* environment variables, then explicit overrides."""
        env = os.environ
        values: dict = {}
        if "MODELPORT_INDEX_URL" in env:
            values["index_url"] = env["MODELPORT_INDEX_URL"]
        if "MODELPORT_CORS_ORIGINS" in env:
            values["cors_origins"] = [o for o in env["MODELPORT_CORS_ORIGINS"].split(",") if o]
        if env.get("MODELPORT_FIND_LINKS"):
            values["find_links"] = [p for p in env["MODELPORT_FIND_LINKS"].split(os.pathsep) if p]
        if env.get("MODELPORT_NO_INDEX", "") not in ("", "0", "false"):
            values["no_index"] = True
        if env.get("MODELPORT_STORE_URL"):
            values["store_url"] = store_url(env["MODELPORT_STORE_URL"])
        if env.get("MODELPORT_DATABASE_URL"):
            values["database_url"] = database_url(env["MODELPORT_DATABASE_URL"])
        if "MODELPORT_NODE" in env:
            values["node"] = node_name(env["MODELPORT_NODE"])
        if env.get("MODELPORT_REPLICAS"):
            values["replicas"] = replicas_url(env["MODELPORT_REPLICAS"])
        if env.get("MODELPORT_SECRET_KEY_FILE"):
            values["secret_key_file"] = Path(env["MODELPORT_SECRET_KEY_FILE"]).expanduser()
        if env.get("MODELPORT_ADVERTISE_URL"):
            values["advertise_url"] = advertise_url(env["MODELPORT_ADVERTISE_URL"])
        if env.get("MODELPORT_RSCRIPT"):
            values["rscript"] = env["MODELPORT_RSCRIPT"]
        if env.get("MODELPORT_R_REPOS"):
            values["r_repos"] = [
                u.strip() for u in env["MODELPORT_R_REPOS"].split(",") if u.strip()
            ]
        for key, least in ENV_NUMBERS:
            found = env_number(f"MODELPORT_{key.upper()}", int, least)
            if found is not None:
                values[key] = found
        if env.get("MODELPORT_METRICS", "") in ("0", "false"):
            values["metrics"] = False
        tls = env.get("MODELPORT_REPLICA_TLS", "").strip().lower()
        if tls in ("on", "1", "true", "yes"):
            values["replica_tls"] = True
        elif tls not in ("", "off", "0", "false", "no"):
            raise SettingError(
                f"MODELPORT_REPLICA_TLS must be on or off, not {env['MODELPORT_REPLICA_TLS']!r}"
            )
        switch = env.get("MODELPORT_SANDBOX", "").strip().lower()
        if switch in ("off", "0", "false", "no"):
            values["sandbox"] = False
        elif switch not in ("", "on", "1", "true", "yes"):
            raise SettingError(
                f"MODELPORT_SANDBOX must be on or off, not {env['MODELPORT_SANDBOX']!r}"
            )
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["data_dir"] = resolve_data_dir(values.get("data_dir"))
        return cls(**values)


def store_url(url: str) -> str:
    """MODELPORT_STORE_URL checked now: a wrong one stops the server at once, naming it."""
    from modelport.store.backends import check_url

    try:
        return check_url(url)
    except ValueError as exc:
        raise SettingError(f"MODELPORT_STORE_URL: {exc}") from None


def advertise_url(url: str) -> str:
    """MODELPORT_ADVERTISE_URL: http(s)://host:port, without a path."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
        raise SettingError(
            f"MODELPORT_ADVERTISE_URL must be http://host:port (how other servers reach this "
            f"one), not {url!r}"
        )
    return url.rstrip("/")


def node_name(name: str) -> str:
    """MODELPORT_NODE: a name that fits a label, a log line and a URL unchanged."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name):
        raise SettingError(
            f"MODELPORT_NODE must be 1-63 letters, digits, '.', '_' or '-', not {name!r}"
        )
    return name


def database_url(url: str) -> str:
    """MODELPORT_DATABASE_URL checked now: a wrong one stops the server at once, naming it."""
    from modelport.registry.backends import check_url

    try:
        return check_url(url)
    except ValueError as exc:
        raise SettingError(f"MODELPORT_DATABASE_URL: {exc}") from None


def replicas_url(value: str) -> str | None:
    """MODELPORT_REPLICAS checked now: local, or ray://host:port (the head's address)."""
    from modelport.serving.backends import parse_replicas_url

    try:
        return parse_replicas_url(value)
    except ValueError as exc:
        raise SettingError(f"MODELPORT_REPLICAS: {exc}") from None


# Whole-number settings read from MODELPORT_<KEY>, with their least value.
ENV_NUMBERS = (
    ("archive_max_bytes", 1),
    ("archive_max_expanded_bytes", 1),
    ("archive_max_ratio", 1),
    ("busy_poll_us", 0),
    ("build_workers", 1),
    ("capture_retention_days", 1),
    ("max_response_mb", 1),
    ("reconcile_s", 1),
)


class SettingError(ValueError):
    """A MODELPORT_* environment variable holds a value the server cannot use."""


def env_number(name: str, kind: type = int, least: float = 0):
    """The number in environment variable ``name`` (None when unset); SettingError naming it
    when it is not a ``kind`` of at least ``least``."""
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value < least or value != value:
        what = "a whole number" if kind is int else "a number"
        raise SettingError(f"{name} must be {what} of at least {least:g}, not {text!r}")
    return value
