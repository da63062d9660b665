"""The states the registry stores, each spelled once: a build's status, a deployment's status and
the kinds of event in its history, a replica's state as the API shows it; and the one table a
deployment's status follows from its events (``status_after``: pure, the registry applies it to
every write). The strings are the stored ones and the API's (docs/api.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, get_args

BuildStatus = Literal["queued", "building", "built", "failed"]
UNFINISHED_BUILD: Final[tuple[BuildStatus, ...]] = ("queued", "building")

ReplicaState = Literal["starting", "ready", "draining", "exited", "crashed"]
GONE_REPLICA: Final[tuple[ReplicaState, ...]] = ("exited", "crashed")  # no process

DeploymentStatus = Literal[
    "pending", "deploying", "deployed", "failed", "stopping", "stopped", "candidate"
]
DEPLOYMENT_STATUSES: Final[tuple[DeploymentStatus, ...]] = get_args(DeploymentStatus)
# Those that may serve or are on their way to: a model has at most one (the newest, after the
# switch's write) that the API calls current.
ACTIVE_DEPLOYMENT: Final[tuple[DeploymentStatus, ...]] = (
    "pending",
    "deploying",
    "deployed",
    "stopping",
)
FINISHED_DEPLOYMENT: Final[tuple[DeploymentStatus, ...]] = ("failed", "stopped")  # finished_at
# A candidate (a canary or a shadow beside the current deployment, its ``candidate_of``): its own
# row and replica group, never the model's current deployment until it is promoted.
CANDIDATE: Final[DeploymentStatus] = "candidate"

# Every kind of event a deployment's history holds.
EventKind = Literal[
    # moves of its status
    "created",  # recorded → pending
    "deploying",  # its rollout started: replicas starting
    "deployed",  # ready and switched to, in the write that stops what it replaces
    "replaced",  # a newer deployment took the traffic
    "stopping",  # a stop: in-flight calls finish
    "stopped",
    "interrupted",  # made way (a stop, a newer deployment; the server's restart) before serving
    "failed",  # could not start, or could not be restored after the server's restart
    # history only: the status stays
    "scaled",
    "scale_failed",
    "restarting",
    "restarted",
    "restart_interrupted",
    "restart_failed",
    "restoring",  # the server restarted: its replicas start again
    "restored",
    "group.failed",  # the replica group's own events (serving's), recorded as they come
    "replica.crashed",
    # a candidate's own row
    "candidate.created",  # recorded → candidate (its replicas start beside the primary's)
    "promoted",  # it took all the traffic: deployed, in the write that replaces the primary
    "aborted",  # it stopped (an abort, the guard's): the primary keeps serving alone
    # the current deployment's history (and the candidate's): who served which share when
    "candidate.added",  # a candidate build started beside it: mode, percent, sticky_header, guard
    "candidate.ready",  # its replicas are ready: the split serves from now
    "candidate.failed",  # its replicas could not start: the primary kept serving alone
    "traffic",  # the split changed: candidate_percent (by a person, or the guard)
    "guard.tripped",  # the candidate broke its guard: candidate_percent went to 0, and why
    # another server sharing the registry, of its share of a rollout or a restart (detail:
    # server, replicas; error; restart: the restarting event's time): the rolling-out server
    # switches (or says restarted) once every server with a share is ready
    "server.ready",  # its share of the deployment being rolled out started, unrouted
    "server.failed",  # its share could not start: the deployment fails, nothing switches
    "server.restarted",  # its share of the restart renewed
    "server.restart_failed",  # its share could not be renewed (its replicas before keep serving)
]
EVENT_KINDS: Final[tuple[EventKind, ...]] = get_args(EventKind)

_BEFORE_SERVING: Final[tuple[DeploymentStatus, ...]] = ("pending", "deploying")
# A finished deployment told of later (its own server's late report after another server, or a
# stop, finished it): the event is recorded, the status stays. Never a switch to it ("deployed").
_LATE: Final[Mapping[DeploymentStatus | None, DeploymentStatus]] = {
    "failed": "failed",
    "stopped": "stopped",
}

# kind → {status before → status after}; None: the event is history only (any status, unchanged).
# The status before a deployment exists is None.
LEADS_TO: Final[Mapping[EventKind, Mapping[DeploymentStatus | None, DeploymentStatus] | None]] = {
    "created": {None: "pending"},
    "deploying": {"pending": "deploying", **_LATE},
    "deployed": dict.fromkeys(_BEFORE_SERVING, "deployed"),
    "replaced": {**dict.fromkeys((*ACTIVE_DEPLOYMENT, CANDIDATE), "stopped"), **_LATE},
    "stopping": {"deployed": "stopping", **_LATE},
    "stopped": {"stopping": "stopped", **_LATE},
    # deployed: a restore interrupted while its replicas start again
    "interrupted": {
        **dict.fromkeys((*_BEFORE_SERVING, "deployed", CANDIDATE), "stopped"),
        **_LATE,
    },
    # deployed: a restore that could not start its replicas
    "failed": {**dict.fromkeys((*_BEFORE_SERVING, "deployed", CANDIDATE), "failed"), **_LATE},
    "scaled": None,
    "scale_failed": None,
    "restarting": None,
    "restarted": None,
    "restart_interrupted": None,
    "restart_failed": None,
    "restoring": None,
    "restored": None,
    "group.failed": None,
    "replica.crashed": None,
    "candidate.created": {None: CANDIDATE},
    "promoted": {CANDIDATE: "deployed"},
    "aborted": {CANDIDATE: "stopped", **_LATE},
    "candidate.added": None,
    "candidate.ready": None,
    "candidate.failed": None,
    "traffic": None,
    "guard.tripped": None,
    "server.ready": None,
    "server.failed": None,
    "server.restarted": None,
    "server.restart_failed": None,
}

# What differs when the server's restart is the cause (the restore at startup): a deployment
# that never took traffic is failed, not stopped — no one asked for it to go.
AT_RESTART: Final[Mapping[EventKind, Mapping[DeploymentStatus | None, DeploymentStatus]]] = {
    "interrupted": {**dict.fromkeys(_BEFORE_SERVING, "failed"), CANDIDATE: "stopped"},
}


class IllegalMove(ValueError):
    """An event the table has no move for from a deployment's status."""


def status_after(
    status: DeploymentStatus | None, kind: EventKind, *, at_restart: bool = False
) -> DeploymentStatus:
    """The status a deployment in ``status`` (None: not created yet) has after an event of
    ``kind``; ``at_restart``: the server's restart is the cause. IllegalMove when it cannot be."""
    moves = AT_RESTART.get(kind) if at_restart else None
    if moves is None:
        moves = LEADS_TO[kind]
    if moves is None:  # history only
        if status is None:
            raise IllegalMove(f"a {kind!r} event of a deployment not created yet")
        return status
    after = moves.get(status)
    if after is None:
        raise IllegalMove(
            f"a {kind!r} event cannot happen to a deployment {status or 'not created'}"
        )
    return after


def finishes(status: DeploymentStatus, after: DeploymentStatus) -> bool:
    """The move ends the deployment (its finished_at is set)."""
    return after != status and after in FINISHED_DEPLOYMENT


def moving(kind: EventKind) -> tuple[DeploymentStatus, ...]:
    """The statuses an event of ``kind`` moves a deployment from (to another status)."""
    moves = LEADS_TO[kind] or {}
    return tuple(s for s, after in moves.items() if s is not None and after != s)
