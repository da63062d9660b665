"""Deployments and replicas: deploy, history, scale, stop, restart, rollback; replica logs."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream

from modelport.api.common import (
    Cursor,
    DbDep,
    DeployerDep,
    Limit,
    PathNumber,
    RowNumber,
    SettingsDep,
    SupervisorDep,
    who,
)
from modelport.errors import DeploymentNotFound, ModelNotDeployed, NotFound, RequestInvalid
from modelport.registry import deployments as rows
from modelport.registry import models as model_rows
from modelport.registry.db import Database
from modelport.registry.paging import clamp_limit, decode_cursor, next_cursor
from modelport.registry.records import (
    DEPLOYMENT_DEFAULTS,
    Deployment,
    Guard,
    Page,
    Placement,
    Replica,
    Traffic,
)
from modelport.registry.rows import DeploymentRow
from modelport.serving.procs import read_tail

ResourceName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_.:/-]*$", max_length=100)]
EnvName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=200)]


Unset = msgspec.UnsetType


def _left_out(setting: str, **bounds: Any) -> msgspec.Meta:
    """A setting's bounds, and its default (DeploymentSettings') said in its description."""
    default = getattr(DEPLOYMENT_DEFAULTS, setting)
    if default is None:
        shown = "none"
    elif isinstance(default, float):
        shown = f"{default:g}"
    else:
        shown = msgspec.json.encode(default).decode().strip('"')
    return msgspec.Meta(
        **bounds, description=f"Default {shown}, or with keep_current the current deployment's."
    )


class DeploymentCreate(msgspec.Struct, forbid_unknown_fields=True):
    """DeploymentSettings' settings (a test keeps the two the same); those left out take its
    defaults, or with ``keep_current`` the current deployment's (its ``env`` too, whose values
    the API never shows), the last one's when the model is stopped."""

    build: RowNumber
    replicas: Annotated[int, _left_out("replicas", ge=1, le=64)] | Unset = msgspec.UNSET
    memory_mb: Annotated[int, _left_out("memory_mb", ge=16, le=1048576)] | Unset | None = (
        msgspec.UNSET
    )
    timeout_s: Annotated[float, _left_out("timeout_s", gt=0, le=86_400)] | Unset = msgspec.UNSET
    max_concurrency: Annotated[int, _left_out("max_concurrency", ge=1, le=1024)] | Unset = (
        msgspec.UNSET
    )
    queue_timeout_s: Annotated[float, _left_out("queue_timeout_s", ge=0, le=3_600)] | Unset = (
        msgspec.UNSET
    )
    max_body_mb: Annotated[float, _left_out("max_body_mb", gt=0, le=1024)] | Unset = msgspec.UNSET
    env: (
        Annotated[dict[EnvName, Annotated[str, msgspec.Meta(max_length=65_536)]], _left_out("env")]
        | Unset
    ) = msgspec.UNSET
    capture_percent: Annotated[float, _left_out("capture_percent", ge=0, le=100)] | Unset = (
        msgspec.UNSET
    )
    capture_max_bytes: (
        Annotated[int, _left_out("capture_max_bytes", ge=0, le=16 * 2**20)] | Unset
    ) = msgspec.UNSET
    network: Annotated[bool, _left_out("network")] | Unset = msgspec.UNSET
    boot_timeout_s: Annotated[float, _left_out("boot_timeout_s", gt=0, le=86_400)] | Unset = (
        msgspec.UNSET
    )
    # On a Ray cluster (MODELPORT_REPLICAS=ray://…): each replica's resources and placement
    cpus: Annotated[float, _left_out("cpus", gt=0, le=1024)] | Unset = msgspec.UNSET
    gpus: Annotated[int, _left_out("gpus", ge=0, le=64)] | Unset = msgspec.UNSET
    resources: (
        Annotated[
            dict[ResourceName, Annotated[float, msgspec.Meta(gt=0, le=1e9)]],
            _left_out("resources", max_length=32),
        ]
        | Unset
    ) = msgspec.UNSET
    placement: Annotated[Placement, _left_out("placement")] | Unset = msgspec.UNSET
    require_replay: Annotated[bool, _left_out("require_replay")] | Unset = msgspec.UNSET
    keep_current: bool = False
    canary_percent: (
        Annotated[
            float,
            msgspec.Meta(
                ge=0,
                le=100,
                description="Add the build as a candidate beside the current deployment, answering "
                "this share of requests (the primary keeps serving the rest).",
            ),
        ]
        | None
    ) = None
    shadow: Annotated[
        bool,
        msgspec.Meta(
            description="Add the build as a candidate that gets a copy of every request after "
            "the primary answered (its answers are recorded, never returned)."
        ),
    ] = False
    sticky_header: (
        Annotated[
            str,
            msgspec.Meta(
                pattern=r"^[A-Za-z0-9-]{1,100}$",
                description="A canary's callers "
                "sticky by this header's value (e.g. X-User-Id): each always on the same build.",
            ),
        ]
        | None
    ) = None
    guard: Guard | None = None
    allow_breaking: Annotated[
        bool,
        msgspec.Meta(
            description="Deploy even when the build's input schema would refuse requests the "
            "serving build takes (else 409 schema.breaking)."
        ),
    ] = False


class TrafficChange(msgspec.Struct, forbid_unknown_fields=True):
    candidate_percent: Annotated[float, msgspec.Meta(ge=0, le=100)]


class PromoteRequest(msgspec.Struct, forbid_unknown_fields=True):
    if_replay_matches: RowNumber | None = None


class BuildTraffic(msgspec.Struct):
    build: int
    role: Literal["primary", "candidate"]
    answered: int
    share_percent: float | None
    requests: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None


class LiveTraffic(msgspec.Struct):
    """The current deployment's split: its candidate, the traffic, and each build's live figures
    (answers since the split serves; requests, errors and latency over the last window_s)."""

    deployment: int
    build: int
    candidate: int | None = None
    candidate_build: int | None = None
    candidate_status: str | None = None
    traffic: Traffic | None = None
    guard: Guard | None = None
    window_s: float = 60.0
    builds: list[BuildTraffic] = []
    shadow: dict[str, int] = {}


class ScaleRequest(msgspec.Struct, forbid_unknown_fields=True):
    replicas: Annotated[int, msgspec.Meta(ge=1, le=64)]


class RollbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    to_build: RowNumber | None = None
    allow_breaking: bool = False


async def _shown(db: Database, row: DeploymentRow, name: str) -> Deployment:
    return await rows.full(db, row, name)


class DeploymentsController(Controller):
    path = "/api/v1/models/{name:str}"
    tags = ["deployments"]
    opt = {"perm": "read"}

    @post("/deployments", opt={"perm": "write"}, status_code=202)
    async def create(
        self,
        request: Request,
        db: DbDep,
        deployer: DeployerDep,
        name: FromPath[str],
        data: JSONBody[DeploymentCreate],
    ) -> Deployment:
        """Deploy a build; replaces the current deployment with no failed request."""
        model = await model_rows.row(db, name)
        given = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
        given.pop("build")
        allow_breaking = given.pop("allow_breaking")
        canary, shadow = given.pop("canary_percent"), given.pop("shadow")
        sticky, guard = given.pop("sticky_header"), given.pop("guard")
        if canary is not None and shadow:
            raise RequestInvalid(
                "A candidate is a canary (canary_percent) or a shadow, not both.", field="shadow"
            )
        if (sticky is not None or guard is not None) and canary is None and not shadow:
            raise RequestInvalid(
                "sticky_header and guard are a candidate's: send canary_percent or shadow.",
                field="sticky_header" if sticky is not None else "guard",
            )
        settings = DEPLOYMENT_DEFAULTS
        if given.pop("keep_current"):
            current = await rows.current(db, model.id)
            if current is None:  # stopped: serve again as it was served last
                current = await rows.latest(db, model.id)
            if current is not None:
                settings = deployer.settings_of(current)
        settings = msgspec.structs.replace(settings, **given)
        if canary is not None or shadow:
            traffic = Traffic(
                "shadow" if shadow else "split",
                100.0 if shadow else canary,
                sticky,
            )
            row = await deployer.add_candidate(
                model,
                data.build,
                settings,
                who(request).actor,
                traffic,
                guard,
                allow_breaking=allow_breaking,
            )
            return await _shown(db, row, name)
        row = await deployer.deploy(
            model, data.build, settings, who(request).actor, allow_breaking=allow_breaking
        )
        return await _shown(db, row, name)

    @get("/deployments")
    async def history(
        self, db: DbDep, name: FromPath[str], limit: Limit = None, cursor: Cursor = None
    ) -> Page[Deployment]:
        """Every deployment of the model, newest first, with its events."""
        model = await model_rows.row(db, name)
        key, size = decode_cursor(cursor, int), clamp_limit(limit)
        found = await rows.history(db, model.id, limit=size, cursor=key)
        nxt = next_cursor(found, size, "id")
        return Page([await _shown(db, r, name) for r in found], nxt)

    @get("/deployments/current")
    async def current(self, db: DbDep, name: FromPath[str]) -> Deployment:
        """The deployment serving (or about to serve) the model."""
        model = await model_rows.row(db, name)
        row = await rows.current(db, model.id)
        if row is None:
            raise ModelNotDeployed(f"Model '{name}' has no deployment.")
        return await _shown(db, row, name)

    @patch("/deployments/current", opt={"perm": "write"})
    async def scale(
        self,
        request: Request,
        db: DbDep,
        deployer: DeployerDep,
        name: FromPath[str],
        data: JSONBody[ScaleRequest],
    ) -> Deployment:
        """Scale the current deployment; recorded as an event of it, not a new deployment."""
        model = await model_rows.row(db, name)
        row = await deployer.scale(model, data.replicas, who(request).actor)
        return await _shown(db, row, name)

    @get("/deployments/current/traffic")
    async def traffic(self, db: DbDep, deployer: DeployerDep, name: FromPath[str]) -> LiveTraffic:
        """The split now: each build's share and its live errors and latency."""
        model = await model_rows.row(db, name)
        row = await rows.current(db, model.id)
        if row is None:
            raise ModelNotDeployed(f"Model '{name}' has no deployment.")
        cand = await rows.candidate(db, row.id)
        shown = LiveTraffic(row.id, row.build_number)
        if cand is not None:
            shown.candidate, shown.candidate_build = cand.id, cand.build_number
            shown.candidate_status = (
                "serving" if deployer.supervisor.candidate(name) else ("starting")
            )
            shown.traffic, shown.guard = rows.traffic_of(cand), rows.guard_of(cand)
        live = deployer.live_traffic(name)
        if live is not None:
            shown.window_s = live["window_s"]
            shown.builds = [msgspec.convert(b, BuildTraffic) for b in live["builds"]]
            shown.shadow = live["shadow"]
        return shown

    @patch("/deployments/current/traffic", opt={"perm": "write"})
    async def set_traffic(
        self,
        request: Request,
        db: DbDep,
        deployer: DeployerDep,
        name: FromPath[str],
        data: JSONBody[TrafficChange],
    ) -> Deployment:
        """Move the split: the candidate's share (a shadow's: the share of requests copied)."""
        model = await model_rows.row(db, name)
        row = await deployer.set_traffic(model, data.candidate_percent, who(request).actor)
        return await _shown(db, row, name)

    @post("/promote", opt={"perm": "write"}, status_code=200)
    async def promote(
        self,
        request: Request,
        db: DbDep,
        deployer: DeployerDep,
        name: FromPath[str],
        data: JSONBody[PromoteRequest | None] = None,
    ) -> Deployment:
        """The candidate takes all the traffic; the old primary drains (no failed request)."""
        model = await model_rows.row(db, name)
        row = await deployer.promote(
            model, who(request).actor, data.if_replay_matches if data else None
        )
        return await _shown(db, row, name)

    @post("/abort", opt={"perm": "write"}, status_code=200)
    async def abort(
        self, request: Request, db: DbDep, deployer: DeployerDep, name: FromPath[str]
    ) -> Deployment:
        """Stop the candidate: the primary takes all the traffic again."""
        model = await model_rows.row(db, name)
        row = await deployer.abort(model, who(request).actor)
        return await _shown(db, row, name)

    @get("/deployments/{deployment_id:int}")
    async def read(self, db: DbDep, name: FromPath[str], deployment_id: PathNumber) -> Deployment:
        """One deployment with its events."""
        model = await model_rows.row(db, name)
        row = await rows.by_id(db, model.id, deployment_id)
        if row is None:
            raise DeploymentNotFound(f"Model '{name}' has no deployment {deployment_id}.")
        return await _shown(db, row, name)

    @post("/rollback", opt={"perm": "write"}, status_code=202)
    async def rollback(
        self,
        request: Request,
        db: DbDep,
        deployer: DeployerDep,
        name: FromPath[str],
        data: JSONBody[RollbackRequest | None] = None,
    ) -> Deployment:
        """Deploy the build that served before the current one (or `to_build`)."""
        model = await model_rows.row(db, name)
        to_build = data.to_build if data else None
        row = await deployer.rollback(
            model, to_build, who(request).actor, allow_breaking=bool(data and data.allow_breaking)
        )
        return await _shown(db, row, name)

    @post("/stop", opt={"perm": "write"}, status_code=200)
    async def stop(
        self, request: Request, db: DbDep, deployer: DeployerDep, name: FromPath[str]
    ) -> Deployment:
        """Stop serving: in-flight requests finish, then the replicas exit."""
        model = await model_rows.row(db, name)
        row = await deployer.stop(model, who(request).actor)
        return await _shown(db, row, name)

    @post("/restart", opt={"perm": "write"}, status_code=202)
    async def restart(
        self, request: Request, db: DbDep, deployer: DeployerDep, name: FromPath[str]
    ) -> Deployment:
        """Fresh replicas for the current deployment, ready before the old ones drain."""
        model = await model_rows.row(db, name)
        row = await deployer.restart(model, who(request).actor)
        return await _shown(db, row, name)

    @get("/replicas")
    async def replicas(
        self, db: DbDep, supervisor: SupervisorDep, name: FromPath[str]
    ) -> Page[Replica]:
        """The replicas serving the model now: state, pid, in flight, served, failed, restarts."""
        await model_rows.row(db, name)
        return Page(supervisor.replicas(name))

    @get("/replicas/{replica_id:str}/logs", media_type="text/plain")
    async def replica_logs(
        self,
        db: DbDep,
        settings: SettingsDep,
        name: FromPath[str],
        replica_id: FromPath[str],
        stream: Annotated[Literal["stdout", "stderr"], QueryParameter(required=False)] = "stdout",
        follow: Annotated[bool, QueryParameter(required=False)] = False,
        tail: Annotated[int, QueryParameter(required=False, ge=0, le=10_000_000)] = 1_000_000,
    ) -> Response:
        """A replica's stdout or stderr (`?follow=1` streams new lines)."""
        await model_rows.row(db, name)
        if not replica_id.startswith(f"{name}-") or "/" in replica_id:
            raise NotFound(f"Model '{name}' has no replica '{replica_id}'.")
        path = settings.logs_dir / "replicas" / f"{replica_id}.{stream}"
        if not path.exists():
            raise NotFound(f"Model '{name}' has no replica '{replica_id}'.")
        if follow:
            return Stream(_follow(path, tail), media_type="text/plain; charset=utf-8")
        data = await asyncio.to_thread(read_tail, path, tail)
        return Response(data, media_type="text/plain; charset=utf-8")


async def _follow(path, tail: int, poll_s: float = 0.25):
    data = await asyncio.to_thread(read_tail, path, tail)
    yield data
    with open(path, "rb") as f:  # noqa: ASYNC230 (a local file: the reads go to a thread)
        f.seek(0, 2)
        while True:
            chunk = await asyncio.to_thread(f.read)
            if chunk:
                yield chunk
                continue
            await asyncio.sleep(poll_s)
            if path.stat().st_size < f.tell():  # the log was trimmed to its tail: start over
                f.seek(0)
