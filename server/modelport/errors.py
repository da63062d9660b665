"""Every error the API can answer with: its HTTP status and code (docs/api.md), and one handler."""

from __future__ import annotations

import errno
import logging
import sqlite3
from pathlib import Path

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from modelport.runtime.invoke import TOO_DEEP, field_of, refused

log = logging.getLogger("modelport")


class ErrorBody(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    field: str | None = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


class ModelportError(Exception):
    """Base: subclasses set `status` and `code`; the message is for people."""

    status = 500
    code = "internal"

    def __init__(self, message: str = "", *, field: str | None = None, headers: dict | None = None):
        super().__init__(message or self.__doc__ or self.code)
        self.message = message or (self.__doc__ or self.code).strip()
        self.field = field
        self.headers: dict[str, str] = dict(headers or {})


class RequestMalformed(ModelportError):
    """The body is not valid JSON or MessagePack, or not an object."""

    status, code = 400, "request.malformed"


class RequestInvalid(ModelportError):
    """The request does not match what this route accepts."""

    status, code = 422, "request.invalid"


class RequestTooLarge(ModelportError):
    """The body is over the size limit."""

    status, code = 413, "request.too_large"


class AuthMissing(ModelportError):
    """No token or key: send `Authorization: Bearer <token>`."""

    status, code = 401, "auth.missing"


class AuthInvalid(ModelportError):
    """The token or key is unknown, expired or revoked."""

    status, code = 401, "auth.invalid"


class AuthDenied(ModelportError):
    """This token or key may not do that."""

    status, code = 403, "auth.denied"


class NotFound(ModelportError):
    """No such thing."""

    status, code = 404, "not_found"


class RouteNotFound(NotFound):
    code = "route.not_found"


class ModelNotFound(NotFound):
    code = "model.not_found"


class BuildNotFound(NotFound):
    code = "build.not_found"


class DeploymentNotFound(NotFound):
    code = "deployment.not_found"


class TokenNotFound(NotFound):
    code = "token.not_found"


class ModelNotDeployed(NotFound):
    code = "model.not_deployed"


class PredictionNotFound(NotFound):
    code = "prediction.not_found"


class ReplayNotFound(NotFound):
    code = "replay.not_found"


class MethodNotAllowed(ModelportError):
    status, code = 405, "method.not_allowed"


class Conflict(ModelportError):
    status, code = 409, "conflict"


class ModelExists(Conflict):
    code = "model.exists"


class ModelActive(Conflict):
    code = "model.active"


class BuildNotReady(Conflict):
    code = "build.not_ready"


class ScaleFailed(Conflict):
    """A replica the scale-up started could not start; the deployment keeps its replicas."""

    code = "deployment.scale_failed"


class CandidateExists(Conflict):
    """The model's current deployment has a candidate already (promote or abort it first)."""

    code = "candidate.exists"


class CandidateNone(Conflict):
    """Promote, abort or a split change, and the current deployment has no candidate."""

    code = "candidate.none"


class SchemaBreaking(Conflict):
    """The build's input schema would refuse requests the serving build takes."""

    code = "schema.breaking"


class ReplayMismatch(Conflict):
    """A promotion gated on a replay report that differs, is not done, or is of other builds."""

    code = "replay.mismatch"


class StoreCorrupt(ModelportError):
    """An object in the artifact store failed its check; run `modelport verify`."""

    status, code = 500, "store.corrupt"


class StoreMissing(ModelportError):
    """An object a build refers to is missing from the artifact store; run `modelport verify`."""

    status, code = 500, "store.missing"


class StoreUnavailable(ModelportError):
    """The artifact store's service (an S3 server) cannot be reached; retry when it is back."""

    status, code = 503, "store.unavailable"


class RegistryUnavailable(ModelportError):
    """The registry's database (PostgreSQL) cannot be reached; retry when it is back."""

    status, code = 503, "registry.unavailable"


class StoreFull(ModelportError):
    """The disk holding the data dir is full (or its quota is used up); nothing was written."""

    status, code = 507, "store.full"


def disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or what caused it, is a full disk or quota: ENOSPC or EDQUOT from a write,
    SQLite's SQLITE_FULL ("database or disk is full") from a registry write."""
    for _ in range(8):  # the chain of causes, a few deep
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.OperationalError) and (
            getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or "database or disk is full" in str(exc)
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def store_full(data_dir: Path | str | None) -> StoreFull:
    where = f"the data dir {data_dir}" if data_dir else "the data dir"
    return StoreFull(
        f"The disk holding {where} is full. Free some room there (modelport gc "
        "removes what no build needs); predictions are served meanwhile."
    )


class ModelBusy(ModelportError):
    status, code = 429, "model.busy"


class RateLimited(ModelportError):
    status, code = 429, "rate.limited"


class ModelFailed(ModelportError):
    status, code = 500, "model.error"


class ModelCrashed(ModelportError):
    status, code = 502, "model.crashed"


class ModelUnavailable(ModelportError):
    status, code = 503, "model.unavailable"


class ModelTimeout(ModelportError):
    status, code = 504, "model.timeout"


def error_json(status: int, code: str, message: str, field: str | None = None) -> bytes:
    return msgspec.json.encode(ErrorEnvelope(ErrorBody(code, message, field)))


def body_refused(exc: Exception, content_type: str = "json") -> ModelportError:
    """A body msgspec could not decode or validate, answered as a replica answers it
    (runtime/invoke.py `refused`): request.malformed, or request.invalid naming the field."""
    failed = refused(exc, content_type)
    kind = RequestMalformed if failed.code == RequestMalformed.code else RequestInvalid
    return kind(failed.message, field=failed.field)


def _from_validation(exc: ValidationException) -> ModelportError:
    """Litestar's body/query validation failure → request.malformed / request.invalid."""
    extra = exc.extra if isinstance(exc.extra, list) and exc.extra else [{}]
    first = extra[0] if isinstance(extra[0], dict) else {}
    message, key = str(first.get("message", exc.detail)), first.get("key")
    if key == "data" and (message.startswith("Expected `object`") or message == "'data'"):
        return RequestMalformed("The body must be a JSON object.")
    return RequestInvalid(message, field=field_of(message, "" if key in (None, "data") else key))


def to_modelport_error(exc: Exception, data_dir: Path | None = None) -> ModelportError:
    if isinstance(exc, ModelportError):
        return exc
    if disk_full(exc):
        log.warning("%s is full: %s", data_dir or "the data dir's disk", exc)
        return store_full(data_dir)
    if isinstance(exc, ValidationException):
        return _from_validation(exc)
    if isinstance(exc, RecursionError) and "deserializ" in str(exc):  # msgspec, on a deep body
        return RequestMalformed(TOO_DEEP)
    if isinstance(exc, OverflowError) and "SQLite INTEGER" in str(exc):  # an id past 2**63 - 1
        return NotFound("Nothing has a number that large.")
    from modelport.registry.db import RegistryUnreachable
    from modelport.store.objects import CorruptObject, ObjectMissing, StoreUnreachable

    if isinstance(exc, RegistryUnreachable):
        log.error("registry: %s", exc)
        return RegistryUnavailable(
            f"The registry is unavailable: {exc}. Predictions go on; try again later."
        )

    if isinstance(exc, CorruptObject):
        log.error("store: %s", exc)
        return StoreCorrupt(
            f"Object {exc.digest} is corrupt ({exc.reason}); it was not served. "
            "Run `modelport verify`."
        )
    if isinstance(exc, StoreUnreachable):
        log.error("store: %s", exc)
        return StoreUnavailable(f"The artifact store is unavailable: {exc}. Try again later.")
    if isinstance(exc, ObjectMissing):
        log.error("store: %s", exc)
        return StoreMissing(
            f"Object {exc.digest} is missing from the store. Run `modelport verify`."
        )
    if isinstance(exc, HTTPException):
        detail = str(exc.detail)
        if exc.status_code == 404:
            return RouteNotFound("No such route.")
        if exc.status_code == 405:  # with the `Allow` header Litestar's router sets
            return MethodNotAllowed("Method not allowed on this route.", headers=exc.headers)
        if exc.status_code == 413:
            return RequestTooLarge(detail)
        if exc.status_code == 400:
            return RequestMalformed(detail)
        err = ModelportError(detail)
        err.status, err.code = exc.status_code, "http.error"
        return err
    log.exception("unhandled error", exc_info=exc)
    return ModelportError("Internal server error; see the server log.")


def handle_exception(request: Request, exc: Exception) -> Response:
    """The one handler: every error becomes {"error": {"code", "message", "field"}}."""
    settings = request.app.state.get("settings")
    err = to_modelport_error(exc, getattr(settings, "data_dir", None))
    return Response(
        content=error_json(err.status, err.code, err.message, err.field),
        status_code=err.status,
        media_type="application/json",
        headers=err.headers or None,
    )
