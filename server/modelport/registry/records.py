"""The registry's records as they cross module boundaries and leave through the API."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

import msgspec

# The states are spelled in states.py; the records that carry them, here (re-exported).
from modelport.registry.states import BuildStatus as BuildStatus
from modelport.registry.states import DeploymentStatus as DeploymentStatus
from modelport.registry.states import EventKind as EventKind
from modelport.registry.states import ReplicaState as ReplicaState

T = TypeVar("T")

Role = Literal["admin", "deployer", "viewer", "predict"]
MODEL_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"  # a model's name: lowercase, digits, dashes


class Page(msgspec.Struct, Generic[T]):
    items: list[T]
    next: str | None = None


class DeploymentEvent(msgspec.Struct):
    at: str
    kind: EventKind
    actor: str | None = None
    detail: dict[str, Any] = {}


Placement = Literal["spread", "pack"]


class DeploymentSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What a deployment is served with, and each setting's default (docs/api.md): one shape for
    the API (a request's settings left out take these, or with keep_current the current
    deployment's), the registry (a deployment's columns), and serving (GroupSpec is one). Its env
    is in clear: the registry seals it, the API shows its names only."""

    replicas: int = 1
    memory_mb: int | None = None  # resident memory limit per replica; None = no limit
    timeout_s: float = 30.0
    max_concurrency: int = 1
    queue_timeout_s: float = 30.0
    max_body_mb: float = 5.0
    env: dict[str, str] = {}
    capture_percent: float = 0.0  # requests sampled (with their answers) for replay; 0 = none
    capture_max_bytes: int = 65_536  # each captured body is cut to this
    network: bool = True  # False: the replica has no network but its pipe (the sandbox)
    boot_timeout_s: float = 300.0  # import + weights loading until Ready
    # Placed on a Ray cluster (MODELPORT_REPLICAS=ray://…): each replica's resources, and spread
    # (on different nodes) or pack (on the node of the others while it has room)
    cpus: float = 1.0
    gpus: int = 0
    resources: dict[str, float] = {}
    placement: Placement = "spread"
    # A candidate of this deployment (or this deployment as a candidate) is promoted only on a
    # replay report that matches (POST …/promote with if_replay_matches)
    require_replay: bool = False


DEPLOYMENT_DEFAULTS = DeploymentSettings()
SETTING_NAMES: tuple[str, ...] = DeploymentSettings.__struct_fields__


class Traffic(msgspec.Struct):
    """How requests reach a candidate: a share of them (split) or a copy of them (shadow)."""

    mode: Literal["split", "shadow"]
    candidate_percent: float
    sticky_header: str | None = None


class Guard(msgspec.Struct, forbid_unknown_fields=True):
    """A candidate's limits over the last ``window_s`` seconds; broken: its percent goes to 0."""

    max_error_rate: float | None = None
    max_p99_ms: float | None = None
    window_s: float = 60.0


class CandidateOf(msgspec.Struct):
    """The current deployment's candidate, in its shape: its own deployment row."""

    id: int
    build: int
    status: DeploymentStatus


class Deployment(msgspec.Struct):
    id: int
    model: str
    build: int
    status: DeploymentStatus
    replicas: int
    memory_mb: int | None
    timeout_s: float
    max_concurrency: int
    queue_timeout_s: float
    max_body_mb: float
    env_keys: list[str]
    created_by: str
    created_at: str
    finished_at: str | None = None
    reason: str | None = None
    events: list[DeploymentEvent] = []
    capture_percent: float = 0.0
    capture_max_bytes: int = 65_536
    network: bool = True
    boot_timeout_s: float = 300.0
    cpus: float = 1.0
    gpus: int = 0
    resources: dict[str, float] = {}
    placement: Placement = "spread"
    require_replay: bool = False
    # A candidate's own row: the deployment it is the candidate of; on the current deployment,
    # its candidate. ``traffic`` and ``guard`` are the candidate's (on both rows).
    candidate_of: int | None = None
    candidate: CandidateOf | None = None
    traffic: Traffic | None = None
    guard: Guard | None = None


class Model(msgspec.Struct):
    name: str
    description: str
    auth: bool
    owner: str
    created_at: str
    updated_at: str
    deployment: Deployment | None = None
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None


class ModelCreated(Model, kw_only=True):
    access_key: str


class AccessKey(msgspec.Struct):
    access_key: str


class Build(msgspec.Struct, kw_only=True):
    model: str
    number: int
    status: BuildStatus
    digest: str | None
    entrypoint: str
    python: str
    message: str
    labels: dict[str, str]
    created_by: str
    created_at: str
    finished_at: str | None
    error: str | None
    input_schema: dict[str, Any] | None
    output_schema: dict[str, Any] | None
    example_input: Any = None
    example_output: Any = None
    size_bytes: int = 0
    new_bytes: int = 0
    git_commit: str | None = None
    requirements: str | None = None


class ImportedBuild(Build, kw_only=True):
    """An imported build; `access_key` is set, once, when the import created its model."""

    access_key: str | None = None


class Replica(msgspec.Struct):
    id: str
    build: int
    state: ReplicaState
    pid: int | None
    in_flight: int
    served: int
    failed: int
    restarts: int
    started_at: str | None
    late: bool = False  # owes an answer and is silent: not chosen until it answers
    node: str = "local"  # where it runs: this server's name (MODELPORT_NODE), or its Ray node's


class Token(msgspec.Struct):
    id: str
    name: str
    role: Role
    models: list[str]
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    revoked_at: str | None = None


class TokenCreated(Token, kw_only=True):
    token: str


class ReplayDiff(msgspec.Struct):
    """Where a replayed answer differs from the captured one (a report keeps the first ones)."""

    request_id: str
    path: str
    old: Any
    new: Any
    kind: str  # changed | added | removed | type


class AuditEntry(msgspec.Struct):
    id: int
    at: str
    actor: str
    action: str
    model: str | None
    target: str | None
    detail: dict[str, Any]
