"""The registry's rows as its table modules return them: frozen Structs, one per table, read by
attribute. A row is what is stored, with the stored JSON texts decoded (a build's labels and
schemas, a deployment's env, a token's models); what the API shows is in records.py.

`load` makes a row from what a `Database` returns (a dict per row, whichever backend): the
columns a row names are taken (a joined column it does not name is left), each converted to its
field's type (SQLite's 0/1 to a bool, say)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeVar

import msgspec

from modelport.registry.db import Row
from modelport.registry.records import (
    BuildStatus,
    DeploymentStatus,
    Placement,
    ReplayDiff,
    Role,
)

R = TypeVar("R", bound="Stored")


class Stored(msgspec.Struct, frozen=True, kw_only=True):
    """A table's row; ``json_columns``: those stored as JSON text, decoded on load."""

    json_columns: ClassVar[tuple[str, ...]] = ()


def load(kind: type[R], row: Row) -> R:
    """The row Struct of one row the database returned."""
    if kind.json_columns:
        row = dict(row)
        for column in kind.json_columns:
            text = row.get(column)
            if isinstance(text, str | bytes):
                row[column] = msgspec.json.decode(text)
    return msgspec.convert(row, kind, strict=False)


def load_all(kind: type[R], rows: list[Row]) -> list[R]:
    return [load(kind, r) for r in rows]


class ModelRow(Stored, frozen=True, kw_only=True):
    id: int
    name: str
    description: str
    auth: bool
    owner: str
    access_key_hash: str
    next_build: int
    created_at: str
    updated_at: str
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None


class BuildRow(Stored, frozen=True, kw_only=True):
    json_columns = (
        "labels",
        "input_schema",
        "output_schema",
        "example_input",
        "example_output",
    )

    id: int
    model_id: int
    number: int
    status: BuildStatus
    digest: str | None  # the build's content digest, once built
    entrypoint: str
    python: str
    requirements: str | None
    message: str
    labels: dict[str, str]
    created_by: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    input_schema: dict[str, Any] | None
    output_schema: dict[str, Any] | None
    example_input: Any  # None: none given
    example_output: Any
    size_bytes: int
    new_bytes: int
    snapshot: str | None  # store digests: the upload's snapshot, the built manifest
    manifest: str | None
    lock_digest: str | None
    git_commit: str | None


class BuildCount(Stored, frozen=True, kw_only=True):
    """How many builds of a model are in a status (a count, not a table's row)."""

    model: str
    status: BuildStatus
    n: int


class DeploymentRow(Stored, frozen=True, kw_only=True):
    """A deployment as stored: its settings' columns (DeploymentSettings' names, a unit test
    keeps them so) with its env as stored, sealed when env_sealed (deployments.settings_of gives
    the settings in clear)."""

    json_columns = ("env", "resources")

    id: int
    model_id: int
    build_id: int
    build_number: int
    status: DeploymentStatus
    replicas: int
    memory_mb: int | None
    timeout_s: float
    max_concurrency: int
    queue_timeout_s: float
    max_body_mb: float
    env: dict[str, str]
    env_sealed: bool
    capture_percent: float
    capture_max_bytes: int
    network: bool
    boot_timeout_s: float
    cpus: float
    gpus: int
    resources: dict[str, float]
    placement: Placement
    require_replay: bool
    created_by: str
    created_at: str
    finished_at: str | None
    reason: str | None
    node: str | None = None  # the server that rolls it out (several on one registry)
    # A candidate (status candidate): the deployment it is the candidate of, its traffic
    # (split | shadow, its percent, the sticky header) and its guard (JSON)
    candidate_of: int | None = None
    traffic_mode: Literal["split", "shadow"] | None = None
    candidate_percent: float = 0.0
    sticky_header: str | None = None
    guard: str | None = None


class NamedDeploymentRow(DeploymentRow, frozen=True, kw_only=True):
    """A deployment with its model's name (the queries over every model's deployments)."""

    model: str


class TokenRow(Stored, frozen=True, kw_only=True):
    json_columns = ("models",)

    id: str
    name: str
    role: Role
    models: list[str]
    hash: str  # of the secret, which is never stored
    created_by: str | None
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    revoked_at: str | None


class CaptureRow(Stored, frozen=True, kw_only=True):
    """A sampled request and its answer (``request``/``response``: the bytes as they came, cut
    to the deployment's capture_max_bytes when ``truncated``), or one side of a shadow's pair."""

    id: int
    model_id: int
    build: int
    request_id: str
    at: float  # unix seconds
    status: int
    latency_s: float
    request: bytes
    response: bytes
    truncated: bool
    source: Literal["sample", "shadow"] = "sample"


class ShadowPair(msgspec.Struct, frozen=True, kw_only=True):
    """A shadow's pair (two captures joined, not a table's row): the primary's capture and the
    candidate's of the same request."""

    old: CaptureRow
    new: CaptureRow


class ReplayReportRow(Stored, frozen=True, kw_only=True):
    """A replay's report: what was asked (builds, window, tolerances), then the counts, each
    side's p50 and the first diffs once done, or why it failed. Times are unix seconds."""

    json_columns = ("diffs",)

    id: int
    model_id: int
    from_build: int
    to_build: int
    source: Literal["capture", "shadow"]
    status: Literal["running", "done", "failed"]
    since: float
    until: float
    max_requests: int
    rtol: float
    atol: float
    replayed: int
    equal: int
    different: int
    skipped: int
    errors_from: int
    errors_to: int
    p50_ms_from: float | None
    p50_ms_to: float | None
    diffs: list[ReplayDiff]
    error: str | None
    created_by: str
    at: float
    finished_at: float | None
    node: str = ""  # the server that runs it (several on one registry)


class TrackedRow(Stored, frozen=True, kw_only=True):
    """What `track_metric` recorded for one prediction, with the delayed metrics merged in
    (a value that was not finite is stored as JSON's null)."""

    json_columns = ("metrics",)

    id: int
    model_id: int
    request_id: str
    build: int | None  # None: only delayed metrics came for this request id
    at: float
    metrics: dict[str, float | None]


class MetricPointRow(Stored, frozen=True, kw_only=True):
    """One point of a monitoring series: a (model, build) over ``res`` seconds from ``t``, its
    counters, and its latency histogram as the monitor encodes it (``hist``, msgpack)."""

    model_id: int
    build: int
    res: int
    t: int
    requests: int
    errors: int
    server_errors: int
    latency_s: float
    hist: bytes | None
    request_bytes: int
    response_bytes: int
    cpu_s: float
    memory_bytes: int
