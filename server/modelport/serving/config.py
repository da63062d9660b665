"""What a replica group serves (GroupSpec), the supervisor's timings (Tuning), what it reports:
its state (GroupState), its events (GroupEvent), GroupInfo."""

from __future__ import annotations

from typing import Literal

import msgspec

from modelport.registry.records import DeploymentSettings, Replica

__all__ = ["GroupEvent", "GroupInfo", "GroupSpec", "GroupState", "ReplicaInfo", "Tuning"]

# starting → running → draining → stopped; starting → stopped when its start is interrupted;
# failed: could not start, or gave up restarting (replicas still alive keep serving).
GroupState = Literal["starting", "running", "draining", "stopped", "failed"]

# What a group tells its on_change hook, each with a JSON-able detail dict.
GroupEvent = Literal[
    "group.starting",
    "group.ready",
    "group.failed",
    "group.scaled",
    "group.draining",
    "group.stopped",
    "replica.ready",
    "replica.crashed",
    "replica.late",
    "replica.back",
]

MiB = 1024 * 1024


class GroupSpec(DeploymentSettings, kw_only=True, frozen=True):
    """One deployment as the supervisor runs it: a build, where its code and interpreter are, and
    the deployment's settings (DeploymentSettings, with their defaults)."""

    model: str
    build: int
    python: str  # the build environment's interpreter
    project: str  # the build's project folder (the replica's cwd)
    entry: str  # path/to/file.py:function
    digest: str = ""
    deployment_id: str = ""  # opaque to serving; handed back in hooks
    max_queue: int = 1000  # requests waiting for a free replica before 429 at once
    rscript: str = ""  # an R function: the Rscript that runs it (the worker relays to R)
    # an R function: its build's R package library, read-only
    r_libs: list[str] = msgspec.field(default_factory=list)
    manifest: str = ""  # the build's manifest object in the store (a Ray node makes it from it)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MiB)


class Tuning(msgspec.Struct, kw_only=True, frozen=True):
    """Timings of the supervisor; tests shorten them."""

    boot_timeout_s: float | None = None  # tests: overrides every deployment's boot_timeout_s
    stop_grace_s: float = 10.0  # SIGTERM → this → SIGKILL
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 30.0  # idle and silent this long → hung → recycled
    rss_interval_s: float = 0.5  # memory_mb polling
    log_max_bytes: int = 10 * MiB
    log_keep_bytes: int = 1 * MiB
    log_check_s: float = 10.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    flap_max_crashes: int = 5
    flap_window_s: float = 60.0
    healthy_after_s: float = 30.0
    busy_poll_us: int = 250  # polling window instead of sleeping (modelport.runtime.busy_poll)
    # The longest answer a replica may send (MODELPORT_MAX_RESPONSE_MB): the server holds at most
    # this much of one frame; a replica that sends more is recycled.
    max_response_bytes: int = 64 * MiB


ReplicaInfo = Replica  # the replica shape, as the API shows it


class GroupInfo(msgspec.Struct):
    model: str
    build: int
    deployment_id: str
    state: GroupState
    reason: str | None
    replicas: list[ReplicaInfo]
