"""Which server runs how many of a deployment's replicas, when several share a registry.

The live servers (those whose heartbeat is fresh), by name, are put in a ring that starts at a
place given by the model's name (so that one-replica models do not all land on the same
server). ``spread`` (the default) deals the replicas round the ring: with 2 servers, 1 replica
runs on one of them, 2 on both, 3 as 2 + 1. ``pack`` puts them all on the ring's first server.
Every server computes the same answer from the same list; a server whose share is 0 forwards
the model's predictions to those whose share is not. One server alone runs them all.
"""

from __future__ import annotations

import zlib


def shares(model: str, replicas: int, placement: str, nodes: list[str]) -> dict[str, int]:
    """node → the number of the deployment's replicas it runs (every node named, 0 or more)."""
    if not nodes:
        return {}
    ring = sorted(nodes)
    start = zlib.crc32(model.encode()) % len(ring)
    ring = ring[start:] + ring[:start]
    if placement == "pack":
        return {node: (replicas if i == 0 else 0) for i, node in enumerate(ring)}
    base, extra = divmod(replicas, len(ring))
    return {node: base + (1 if i < extra else 0) for i, node in enumerate(ring)}
