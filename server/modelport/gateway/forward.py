"""Predictions for a model this server hosts no replica of, sent on to a server that does.

Servers sharing a registry each run the replicas assigned to them (serving/placement.py); the
others forward: the same request (path, query, body, the caller's headers) to the prediction
path of a hosting server at its advertised address, with ``X-Modelport-Forwarded`` naming this
server — a request carrying it is never forwarded again (no loops: it is answered where it
lands). The answer goes back as the host sent it, its headers kept (but hop-by-hop ones). A
host that cannot be reached or answers 503 is skipped for the next one; none left: 503
model.unavailable naming the model.
"""

from __future__ import annotations

import itertools
import logging

import httpx

from modelport.errors import ModelUnavailable

log = logging.getLogger("modelport.gateway")

FORWARDED = b"x-modelport-forwarded"
_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"host"})
_PASSED = frozenset({b"content-type", b"accept", b"authorization", b"x-request-id"})

Headers = list[tuple[bytes, bytes]]


def forwarded(headers: Headers) -> bool:
    """Whether the request came from another server of the registry already."""
    return any(key == FORWARDED for key, _ in headers)


class Forwarder:
    """One pooled HTTP client for every host; ``hosts`` (model → the advertised addresses of
    the other servers hosting it) is the deployer's, kept current by it."""

    def __init__(self, node: str, hosts: dict[str, list[str]], timeout_s: float = 330.0) -> None:
        self.node = node.encode()
        self.hosts = hosts
        self._turn = itertools.count()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=2.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
        )

    def can(self, model: str) -> bool:
        return bool(self.hosts.get(model))

    async def send(
        self, model: str, path: str, query: bytes, headers: Headers, body: bytes
    ) -> tuple[int, Headers, bytes]:
        hosts = self.hosts.get(model) or []
        if not hosts:
            raise ModelUnavailable(f"No server hosts a replica of model '{model}' now.")
        start = next(self._turn) % len(hosts)
        sent = [(k, v) for k, v in headers if k in _PASSED]
        sent.append((FORWARDED, self.node))
        url_tail = path + ("?" + query.decode("latin-1") if query else "")
        last = ""
        for host in hosts[start:] + hosts[:start]:
            try:
                r = await self._client.post(host + url_tail, content=body, headers=sent)
            except httpx.TransportError as exc:
                last = f"{host}: {type(exc).__name__}"
                log.warning("forwarding a prediction of %s to %s failed: %s", model, host, exc)
                continue
            if r.status_code == 503 and host is not hosts[start - 1]:
                last = f"{host}: 503"
                continue
            kept = [(k, v) for k, v in r.headers.raw if k.lower() not in _HOP]
            kept.append((b"content-length", str(len(r.content)).encode()))
            return r.status_code, kept, r.content
        raise ModelUnavailable(
            f"No server hosting model '{model}' answered ({last}); try again shortly."
        )

    async def close(self) -> None:
        await self._client.aclose()
