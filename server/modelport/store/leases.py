"""Leases: digests a build holds out of gc's reach while it runs, in this process."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from modelport.store.objects import parse_digest

__all__ = ["Lease", "LeaseTable"]


class Lease:
    """Keeps digests out of gc's reach while held, in this process.

    Every object put through the store while a lease is held joins it, whoever put it: a build
    takes a lease, puts its files, records its manifest, then releases. Across processes (and
    servers), gc's grace period is the protection.
    """

    def __init__(self, table: LeaseTable, digests: set[str]) -> None:
        self._table, self.digests = table, digests

    def add(self, digest: str) -> None:
        self._table._add(self, parse_digest(digest))

    def release(self) -> None:
        self._table._release(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LeaseTable:
    """The leases of one store, and the lock that makes a put's install and gc's removal of the
    same object one step each: an object is either installed (and joins every lease held) before
    gc looks at it, or removed before the put installs it again. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: set[Lease] = set()

    def lease(self, digests: Iterable[str] = ()) -> Lease:
        """Hold `digests`, and everything installed while held, out of gc's reach until released."""
        lease = Lease(self, {parse_digest(d) for d in digests})
        with self._lock:
            self._leases.add(lease)
        return lease

    @contextmanager
    def installing(self, hexd: str) -> Iterator[None]:
        """For a put: inside the block, `hexd` has joined every lease held and gc cannot remove
        it; install (or refresh) the object there."""
        with self._lock:
            for lease in self._leases:
                lease.digests.add(hexd)
            yield

    @contextmanager
    def removing(self, hexd: str) -> Iterator[bool]:
        """For gc: yields whether `hexd` may go (no lease holds it); remove it inside the block,
        where no put can install it meanwhile."""
        with self._lock:
            yield not any(hexd in lease.digests for lease in self._leases)

    def _add(self, lease: Lease, hexd: str) -> None:
        with self._lock:
            lease.digests.add(hexd)

    def _release(self, lease: Lease) -> None:
        with self._lock:
            self._leases.discard(lease)
