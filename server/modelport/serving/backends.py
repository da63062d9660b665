"""Where a group's replicas run (MODELPORT_REPLICAS): ``local`` subprocesses of this server (the
default) or actors placed on a Ray cluster (``ray://head:port``, ``serving/ray_replicas.py``).
Either way a replica is a ``Replica`` the balancer calls through its pipe; only how it is
started, watched and ended differs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .group import ReplicaGroup
    from .replica import Replica

__all__ = ["BackendUnavailable", "LocalBackend", "ReplicaBackend", "parse_replicas_url"]


class BackendUnavailable(Exception):
    """Where replicas should run cannot be reached (the Ray head, at the server's start)."""


class ReplicaBackend(ABC):
    """Makes a group's replicas (the group decides when to start, restart and stop them)."""

    name: str

    async def open(self) -> None:
        """At the server's start (a Ray backend joins its cluster here)."""
        return

    async def close(self) -> None:
        """At the server's stop, after every group has stopped."""
        return

    @abstractmethod
    def replica(self, group: ReplicaGroup, rid: str, slot: int) -> Replica:
        """A new replica of ``group`` (not started: the group calls ``spawn()``)."""


class LocalBackend(ReplicaBackend):
    """Replicas as subprocesses of this server, on a socketpair each; their node is this
    server's name (MODELPORT_NODE)."""

    name = "local"

    def __init__(self, node: str = "local") -> None:
        self.node = node

    def replica(self, group: ReplicaGroup, rid: str, slot: int) -> Replica:
        made = group.local_replica(rid, slot)
        made.node = self.node
        return made


def parse_replicas_url(value: str) -> str | None:
    """MODELPORT_REPLICAS: None for ``local``, the head's ``host:port`` for ``ray://host:port``;
    ValueError saying why otherwise."""
    text = value.strip()
    if text in ("", "local"):
        return None
    if not text.startswith("ray://"):
        raise ValueError(f"{value!r} is neither local nor ray://host:port")
    address = text.removeprefix("ray://").rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: the head's address is ray://host:port (e.g. ray://head:6379)")
    return address
