"""GET /api/v1/health: is the server up, and which version; GET /models/{name}/ready: can this
model answer now (a probe for a load balancer or Kubernetes, so it needs no token)."""

from __future__ import annotations

import asyncio
import time

import msgspec
from litestar import Request, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath

from modelport import __version__
from modelport.api.common import RoutesDep, SandboxDep, SettingsDep
from modelport.auth import identity_of
from modelport.builder import rlang
from modelport.errors import ErrorEnvelope, ModelNotFound, ModelUnavailable


class Health(msgspec.Struct):
    status: str
    version: str
    sandbox: list[str]  # the protections replicas and builds run under; [] when none
    r: str | None = None  # the R version R functions build and run with; None: no usable R
    node: str = ""  # this server's name (MODELPORT_NODE) among those sharing a registry


_R_CHECK_S = 60.0


class _RCheck:
    """The machine's R version, for health: running R to ask takes half a second, so it is
    asked in the background (from the server's start, then at most once a minute) and health
    answers with the last answer at once; only a health request before the first answer waits."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, str | None]] = {}  # Rscript -> (checked at, version)
        self._asking: dict[str, asyncio.Task[str | None]] = {}

    def ask(self, rscript: str) -> asyncio.Task[str | None]:
        task = self._asking.get(rscript)
        if task is None:
            self._asking[rscript] = task = asyncio.ensure_future(self._probe(rscript))
        return task

    async def _probe(self, rscript: str) -> str | None:
        try:
            version: str | None = (await asyncio.to_thread(rlang.find_r, rscript)).version
        except rlang.RMissing:
            version = None
        finally:
            self._asking.pop(rscript, None)
        self._seen[rscript] = (time.monotonic(), version)
        return version

    async def version(self, rscript: str) -> str | None:
        seen = self._seen.get(rscript)
        if seen is None:
            return await asyncio.shield(self.ask(rscript))
        if time.monotonic() - seen[0] > _R_CHECK_S:
            self.ask(rscript)
        return seen[1]


r_check = _RCheck()


@get("/api/v1/health", opt={"perm": "public"}, tags=["health"])
async def health(sandbox: SandboxDep, settings: SettingsDep) -> Health:
    """Liveness, the sandbox replicas and builds run in, and whether R functions can be served
    (the R version): answers without a token."""
    r = await r_check.version(settings.rscript)
    return Health("ok", __version__, list(sandbox.protections), r, settings.node)


class WhoAmI(msgspec.Struct):
    id: str
    name: str
    role: str
    models: list[str]
    expires_at: str | None


@get("/api/v1/whoami", opt={"perm": "any"}, tags=["health"])
async def whoami(request: Request) -> WhoAmI:
    """The token this request came with: its name, role and (for predict tokens) models."""
    me = identity_of(request)
    return WhoAmI(me.id, me.name, me.role, list(me.models), me.expires_at)


class ModelReady(msgspec.Struct):
    ready: bool
    build: int
    replicas_ready: int


@get(
    "/models/{name:str}/ready",
    opt={"perm": "public"},
    tags=["health"],
    responses={
        503: ResponseSpec(
            data_container=ErrorEnvelope,
            generate_examples=False,
            description="`model.unavailable`: not deployed, or no replica is ready",
        )
    },
)
async def model_ready(routes: RoutesDep, name: FromPath[str]) -> ModelReady:
    """200 while at least one replica of the model's serving build is ready; 503
    `model.unavailable` otherwise (not deployed, starting, every replica down); 404 for a model
    that does not exist. It says no more than a prediction's own answer would."""
    if name not in routes:
        raise ModelNotFound(f"No model named '{name}'.")
    group = routes.group(name)
    if group is None:
        raise ModelUnavailable(f"Model '{name}' is not deployed.")
    ready = sum(1 for r in group.replicas if r.state == "ready")
    if not ready:
        raise ModelUnavailable(
            f"Model '{name}' has no ready replica (build {group.spec.build}, {group.state})."
        )
    return ModelReady(True, group.spec.build, ready)
