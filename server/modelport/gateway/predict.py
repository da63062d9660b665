"""The prediction hot path as a raw ASGI app in front of the management app: bytes in, bytes out."""

from __future__ import annotations

import enum
import itertools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Literal, cast
from urllib.parse import parse_qs

import msgspec

from modelport.auth import Auth, hash_secret
from modelport.errors import (
    AuthDenied,
    AuthInvalid,
    AuthMissing,
    ModelNotDeployed,
    ModelNotFound,
    ModelportError,
    ModelUnavailable,
    RateLimited,
    RequestTooLarge,
    body_refused,
    error_json,
)
from modelport.runtime.protocol import Result
from modelport.serving.balancer import Draining
from modelport.serving.poller import Poller

from .forward import Forwarder, forwarded
from .ratelimit import RateLimit
from .routes import Routes

if TYPE_CHECKING:
    from modelport.runtime.protocol import Failure
    from modelport.serving.replica import Replica
    from modelport.serving.supervisor import ReplicaGroup
    from modelport.serving.traffic import Traffic

__all__ = ["BY_KEY", "Answer", "Gateway", "OnResult", "Outcome", "Target"]

log = logging.getLogger("modelport.gateway")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# the app behind: Litestar, whose scope, receive and send are TypedDicts of the same ASGI
# messages (a Callable of Scope would not accept it)
ASGIApp = Callable[..., Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, Headers, bytes]  # status, headers (lowercase name, value), body


class _Route(enum.Enum):
    BY_KEY = "POST /model"


# The model a prediction is for: the path's name (POST /models/{name}/predict), or BY_KEY for
# POST /model, whose access key names it.
BY_KEY: Final = _Route.BY_KEY
Target = str | Literal[_Route.BY_KEY]


class Outcome(msgspec.Struct, gc=False):
    """One prediction as the gateway answered it, for ``on_result``. ``build`` is that of the
    group that took it (None when it was refused before one was chosen); ``group`` and
    ``replica`` are None when the request never reached them; ``body`` and ``out`` are the
    request and response bodies as sent (b"" when not read). A POST /model refused before its key
    named a model has no outcome. (A Struct, made in C: made, read and freed in 3.6k instructions,
    5.7k for a __slots__ class; untracked by the cyclic GC, as nothing it holds refers back.)"""

    model: str
    build: int | None = None
    status: int = 0
    seconds: float = 0.0
    request_id: str = ""
    metrics: dict[str, Any] = {}
    group: ReplicaGroup | None = None
    replica: Replica | None = None
    body: bytes = b""
    out: bytes = b""


# Called after every prediction, synchronously (keep it to in-memory counting).
OnResult = Callable[[Outcome], None]

MiB = 1024 * 1024
_MAX_DIGESTS = 4096  # Authorization headers whose secret's hash is remembered (_digest_of)
_PREDICT_ROLES = frozenset({"predict", "deployer", "admin"})
_JSON = (b"content-type", b"application/json")
_MSGPACK = (b"content-type", b"application/msgpack")
_ID_CHARS = bytes(range(0x21, 0x7F))  # a client's X-Request-Id: visible ASCII only


class _ClouderaRequest(msgspec.Struct):
    """POST /model: the inner ``request`` is forwarded as the bytes it came in, never re-encoded."""

    request: msgspec.Raw
    accessKey: str | None = None


class _ClientGone(Exception):
    pass


_cloudera_json = msgspec.json.Decoder(_ClouderaRequest).decode
_cloudera_msgpack = msgspec.msgpack.Decoder(_ClouderaRequest).decode
_msgpack_encode = msgspec.msgpack.encode


class Gateway:
    """Handles ``POST /models/{name}/predict`` and ``POST /model``; every other request goes to
    ``app`` (Litestar). ``auth`` answers for keys and tokens from its in-memory caches."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Routes,
        auth: Auth,
        *,
        default_max_body_mb: float = 5.0,
        on_result: OnResult | None = None,
        poller: Poller | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.app, self.routes, self.auth = app, routes, auth
        self.forwarder = forwarder  # servers sharing a registry: to the hosts of a model
        self.poller = poller or Poller(0)  # the supervisor's: see modelport.serving.poller
        self._limits = routes.limits  # model → RateLimit, only for models that have one
        self.default_max_body = int(default_max_body_mb * MiB)
        self.on_result = on_result
        self._ids = itertools.count(1)
        self._digests: dict[int, str] = {}  # hash(Authorization header) → its secret's sha256
        self._id_prefix = os.urandom(4).hex() + "-"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            target: Target | None = None
            if path[:8] == "/models/" and path[-8:] == "/predict":
                name = path[8:-8]
                if name and "/" not in name:
                    target = name
            elif path == "/model":
                target = BY_KEY
            if target is not None:
                answer = await self.answer(scope, target, receive=receive)
                if answer is not None:
                    status, headers, out = answer
                    await send(
                        {"type": "http.response.start", "status": status, "headers": headers}
                    )
                    await send({"type": "http.response.body", "body": out})
                return
        await self.app(scope, receive, send)

    async def answer(
        self,
        scope: Scope,
        target: Target,
        given: bytes | None = None,
        receive: Receive | None = None,
    ) -> Answer | None:
        """One prediction: its status, headers and body (None when the client went away while
        sending), its outcome recorded. The body is given whole or read with ``receive``."""
        handled = await self.handle(scope, target, given, receive)
        if handled is None:
            return None
        answer, outcome = handled
        if outcome is not None and self.on_result is not None:
            self.on_result(outcome)
        return answer

    async def handle(
        self,
        scope: Scope,
        target: Target,
        given: bytes | None = None,
        receive: Receive | None = None,
    ) -> tuple[Answer, Outcome | None] | None:
        """``answer`` without the recording: the answer and its outcome for ``on_result`` (None
        without a hook, or when POST /model's key named no model), which the HTTP lane records
        once the answer is written, so that the client does not wait for the counting."""
        ctype, accept, authz, length, rid = _headers(scope["headers"])
        if not rid or len(rid) > 128 or rid.translate(None, _ID_CHARS):
            request_id = self._id_prefix + format(next(self._ids), "x")
            rid = request_id.encode()
        else:
            request_id = rid.decode()
        content_type = _kind(ctype)
        wants = _kind(accept)
        started = time.perf_counter() if self.on_result is not None else 0.0
        # What the answer and the outcome are made of, as far as the request got:
        model = None if target is BY_KEY else target  # POST /model: once its key names one
        group: ReplicaGroup | None = None
        replica: Replica | None = None
        msg: Result | Failure | None = None
        body = b""  # as read, once it is
        envelope = b""  # POST /model: the whole body (forwarded as it came)
        traffic: Traffic | None = None
        primary: ReplicaGroup | None = None
        opened = 0  # the candidate's call in flight (its guard's), when it answers this one
        try:
            if model is None:
                model, body, content_type, caller, envelope = await self._cloudera(
                    scope, receive, given, length, content_type, authz
                )
                group = self._admit_by_key(model, caller)
            else:
                group = self._admit(model, authz, scope)
                if given is None:
                    body = await _read(receive, length, group.max_body)
                    group = self._group(model)  # it may have been switched meanwhile
                else:
                    body = _whole(given, length, group.max_body)
            if not group.replicas:  # none here: the model's replicas run on other servers
                # (POST /model: the request as it came, accessKey and all, to the host's /model)
                sent = await self._forward(model, scope, body if target is not BY_KEY else envelope)
                if sent is not None:
                    return sent, None  # (the host that answered counts it)
            traffic = group.traffic  # None unless the model has a candidate
            if traffic is not None:
                primary = group
                if not started:
                    started = time.perf_counter()
                if traffic.split and traffic.pick(scope["headers"]):
                    group = traffic.group
                    opened = traffic.begin()
            try:
                replica, msg = await group.call(body, content_type, wants, request_id)
            except Draining:  # replaced while we were on our way: follow the route
                group, replica, msg = await self._follow(
                    model, group, body, content_type, wants, rid
                )
            status, headers, out = _reply(msg, group, replica, wants, rid, target is BY_KEY)
        except _ClientGone:
            if opened and traffic is not None:
                traffic.end(opened)
            return None
        except ModelportError as exc:
            status, headers, out = _refusal(exc, rid, group, replica)
        except Exception:
            log.exception("prediction failed inside the gateway")
            status = 500
            out = error_json(500, "internal", "Internal server error.")
            headers = _error_headers(out, rid, group, replica, None)
        outcome = None
        if traffic is not None and model is not None:
            seconds = time.perf_counter() - started
            if opened:
                traffic.end(opened)
            traffic.seen(group is not primary, status, seconds)
            if traffic.shadow and group is primary:
                traffic.mirror(model, body, content_type, wants, request_id, status, out, seconds)
        if self.on_result is not None and model is not None:
            outcome = Outcome(
                model,
                group.spec.build if group is not None else None,
                status,
                time.perf_counter() - started,
                request_id,
                msg.metrics if type(msg) is Result else {},
                group,
                replica,
                body,
                out,
            )
        return (status, headers, out), outcome

    async def _forward(self, model: str, scope: Scope, body: bytes) -> Answer | None:
        """A prediction of a model this server runs no replica of, sent to one that does (the
        same path, its answer as that server gave it); None to answer here (a request that was
        forwarded already, or no other server hosts it: then the model is unavailable)."""
        headers = scope["headers"]
        if self.forwarder is None or forwarded(headers) or not self.forwarder.can(model):
            raise ModelUnavailable(f"No replica of model '{model}' runs on this server now.")
        return await self.forwarder.send(
            model, scope["path"], scope.get("query_string") or b"", headers, body
        )

    def _admit(self, name: str, authz: bytes, scope: Scope) -> ReplicaGroup:
        """POST /models/{name}/predict: the model's group, once the caller may call it (its key
        or token, the rate limit)."""
        flag = self.routes.auth_flag(name)
        if flag is None:
            raise ModelNotFound(f"No model named '{name}'.")
        caller = self._authorize(name, authz) if flag else None
        limit = self._limits.get(name)
        if limit is not None:
            _throttle(limit, caller or _address(scope))
        return self._group(name)

    def _admit_by_key(self, name: str, caller: str) -> ReplicaGroup:
        """POST /model, its key checked (``_cloudera``): the group, within the rate limit."""
        limit = self._limits.get(name)
        if limit is not None:
            _throttle(limit, caller)
        return self._group(name)

    def _group(self, name: str) -> ReplicaGroup:
        group = self.routes.group(name)
        if group is None:
            raise ModelNotDeployed(f"Model '{name}' has no deployment.")
        return group

    async def _follow(
        self, name: str, group: ReplicaGroup, body: bytes, content_type: str, wants: str, rid: bytes
    ) -> tuple[ReplicaGroup, Replica, Result | Failure]:
        """The model's group was replaced while the request was on its way: call the new one."""
        for _ in range(2):
            newer = self.routes.group(name)
            if newer is None or newer is group:
                break
            group = newer
            try:
                replica, msg = await group.call(body, content_type, wants, rid.decode())
                return group, replica, msg
            except Draining:
                continue
        raise ModelUnavailable(f"Model '{name}' is stopping.")

    def _authorize(self, name: str, header: bytes) -> str:
        """The caller's key or token hash, once it may call ``name``; else auth.* errors."""
        digest = self._digests.get(hash(header))
        if digest is None:
            digest = self._digest_of(header)
        owner = self.auth.key_model_hashed(digest)
        if owner is not None:
            if owner == name:
                return digest
            raise AuthDenied(f"This is the access key of another model, not of '{name}'.")
        identity = self.auth.token_identity_hashed(digest)
        if identity.role not in _PREDICT_ROLES:
            raise AuthDenied(f"A token of role '{identity.role}' may not call models.")
        if identity.role == "predict" and identity.models and name not in identity.models:
            raise AuthDenied(f"This token may not call model '{name}'.")
        return digest

    def _digest_of(self, header: bytes) -> str:
        """The sha256 of the secret in an ``Authorization: Bearer`` header, remembered by the
        header's hash() for its next requests: a client sends the same header again and again,
        and its sha256 (decoding, splitting, hashing) was 7k instructions of every prediction.
        No secret is kept: the key of the table is Python's SipHash of the header, keyed by this
        process's random hash seed, which no caller can see or aim a collision at. A digest is
        checked against the live keys and tokens on every request: a key rotated or a token
        revoked is refused at once, cached or not."""
        if not header:
            raise AuthMissing("Send `Authorization: Bearer <the model's access key or a token>`.")
        scheme, _, secret = header.decode("latin-1").partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise AuthInvalid("Send the key as `Authorization: Bearer <key>`.")
        digest = hash_secret(secret)
        if len(self._digests) >= _MAX_DIGESTS:  # many callers: start again rather than grow
            self._digests.clear()
        self._digests[hash(header)] = digest
        return digest

    async def _cloudera(
        self,
        scope: Scope,
        receive: Receive | None,
        raw: bytes | None,
        length: int,
        content_type: str,
        authz: bytes,
    ) -> tuple[str, bytes, str, str, bytes]:
        """POST /model: the model named by the access key, the inner request's bytes, its content
        type, the key's hash and the whole body as it came."""
        key = None
        query = scope.get("query_string")
        if query and query.find(b"accessKey") >= 0:  # (find, not `in`: see _kind)
            key = (parse_qs(query.decode("latin-1")).get("accessKey") or [None])[0]
        name = self.auth.key_model(key) if key else None
        limit = self._group(name).max_body if name else self.routes.max_body(self.default_max_body)
        raw = await _read(receive, length, limit) if raw is None else _whole(raw, length, limit)
        try:
            req = (_cloudera_msgpack if content_type == "msgpack" else _cloudera_json)(raw)
        except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError is a DecodeError
            raise body_refused(exc, content_type) from None
        key = key or req.accessKey
        if not key and authz[:7].lower() == b"bearer ":
            key = authz[7:].decode("latin-1").strip()
        if not key:
            raise AuthMissing("Send the model's access key as `accessKey`.")
        digest = hash_secret(key)
        name = self.auth.key_model_hashed(digest)
        if name is None:
            raise AuthInvalid("The access key is unknown or was rotated.")
        if self.routes.auth_flag(name) is None:
            raise ModelNotFound("The model of this access key no longer exists.")
        if len(raw) > self._group(name).max_body:
            raise RequestTooLarge(f"The body is over {self._group(name).max_body} bytes.")
        return name, bytes(req.request), content_type, digest, raw


def _headers(headers: Headers) -> tuple[bytes, bytes, bytes, int, bytes]:
    """The request headers a prediction reads: content type, accept, authorization, content
    length (-1: none or not a number) and X-Request-Id."""
    ctype = accept = authz = rid = b""
    length = -1
    for key, value in headers:
        if key == b"content-type":
            ctype = value
        elif key == b"accept":
            accept = value
        elif key == b"authorization":
            authz = value
        elif key == b"content-length":
            length = int(value) if value.isdigit() else -1
        elif key == b"x-request-id":
            rid = value
    return ctype, accept, authz, length, rid


def _reply(
    msg: Result | Failure,
    group: ReplicaGroup,
    replica: Replica,
    wants: str,
    rid: bytes,
    by_key: bool,
) -> Answer:
    """The replica's answer as the client gets it."""
    if type(msg) is Result:
        out = msg.body
        if by_key:
            out = _cloudera_body(out, replica.id_bytes, wants)
        headers = [
            _MSGPACK if wants == "msgpack" else _JSON,
            (b"content-length", str(len(out)).encode()),
            *group.headers,
            (b"x-replica-id", replica.id_bytes),
            (b"x-request-id", rid),
        ]
        return 200, headers, out
    failed = cast("Failure", msg)  # not a Result: the replica's Failure
    out = error_json(failed.status, failed.code, failed.message, failed.field)
    return failed.status, _error_headers(out, rid, group, replica, None), out


def _refusal(
    exc: ModelportError, rid: bytes, group: ReplicaGroup | None, replica: Replica | None
) -> Answer:
    """An error of ours (auth, limits, routing, the replica's fate) as the client gets it."""
    extra = exc.headers
    if exc.status == 413:  # the rest of the body is not read: do not keep the connection
        extra = {**extra, "Connection": "close"}
    out = error_json(exc.status, exc.code, exc.message, exc.field)
    return exc.status, _error_headers(out, rid, group, replica, extra), out


def _kind(header: bytes) -> str:
    """A Content-Type's or an Accept's body format: msgpack when it names it, else JSON."""
    if not header or header == b"application/json":  # the usual ones: no search
        return "json"
    # find, not `in`: `x in some_bytes` first tries x as an int, and the TypeError it makes and
    # drops costs ~2k instructions
    return "msgpack" if header.find(b"msgpack") >= 0 else "json"


def _address(scope: Scope) -> str:
    """Who calls a model whose auth is off: the client's IP address (the peer, not a header)."""
    client = scope.get("client")
    return "ip:" + client[0] if client else "ip:?"


def _throttle(limit: RateLimit, caller: str) -> None:
    wait = limit.take(caller)
    if wait:
        # A registry written before the rate's lower bound may hold a tiny rate: the wait is then
        # astronomically long (or inf), which Retry-After states as a day at most.
        retry = max(1, math.ceil(min(wait, 86_400.0)))
        raise RateLimited(
            f"Over this model's rate limit of {limit.rate:g} requests a second (burst "
            f"{limit.burst:g}) for this key; retry in {retry} s.",
            headers={"Retry-After": str(retry)},
        )


def _whole(body: bytes, length: int, limit: int) -> bytes:
    """A body received whole, refused (413) past ``limit`` bytes, as ``_read`` would."""
    if length > limit:
        raise RequestTooLarge(f"The body is {length} bytes, over the limit of {limit} bytes.")
    if len(body) > limit:
        raise RequestTooLarge(f"The body is over the limit of {limit} bytes.")
    return body


async def _read(receive: Receive | None, length: int, limit: int) -> bytes:
    """The whole body, refusing (413) past ``limit`` bytes before reading it all."""
    if length > limit:
        raise RequestTooLarge(f"The body is {length} bytes, over the limit of {limit} bytes.")
    if receive is None:  # answer() is given either the body or a way to read it
        raise TypeError("neither the body nor receive was given")
    msg = await receive()
    if msg["type"] == "http.disconnect":
        raise _ClientGone()
    body: bytes = msg.get("body", b"")
    if not msg.get("more_body", False):
        if len(body) > limit:
            raise RequestTooLarge(f"The body is over the limit of {limit} bytes.")
        return body
    chunks, size = [body], len(body)
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise _ClientGone()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"The body is over the limit of {limit} bytes.")
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(chunks)


def _cloudera_body(out: bytes, replica_id: bytes, wants: str) -> bytes:
    if wants == "msgpack":
        return _msgpack_encode(
            {"success": True, "response": msgspec.Raw(out), "ReplicaID": replica_id.decode()}
        )
    return b'{"success":true,"response":' + out + b',"ReplicaID":"' + replica_id + b'"}'


def _error_headers(
    body: bytes,
    rid: bytes,
    group: ReplicaGroup | None,
    replica: Replica | None,
    extra: dict[str, str] | None,
) -> Headers:
    headers: Headers = [_JSON, (b"content-length", str(len(body)).encode()), (b"x-request-id", rid)]
    if group is not None:
        headers += group.headers
    if replica is not None:
        headers.append((b"x-replica-id", replica.id_bytes))
    if extra:
        headers += [(k.lower().encode(), str(v).encode()) for k, v in extra.items()]
    return headers
