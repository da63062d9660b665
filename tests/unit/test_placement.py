"""How a deployment's replicas are dealt over the servers sharing a registry."""

from __future__ import annotations

from modelport.serving.placement import shares


def test_spread_deals_the_replicas_round_the_servers_and_pack_puts_them_on_one():
    nodes = ["b", "a", "c"]
    for replicas in range(0, 8):
        spread = shares("m", replicas, "spread", nodes)
        assert set(spread) == {"a", "b", "c"} and sum(spread.values()) == replicas
        assert max(spread.values()) - min(spread.values()) <= 1
        packed = shares("m", replicas, "pack", nodes)
        assert sum(packed.values()) == replicas and sorted(packed.values())[:2] == [0, 0]


def test_every_server_computes_the_same_and_models_start_at_different_servers():
    assert shares("m", 1, "spread", ["a", "b"]) == shares("m", 1, "spread", ["b", "a"])
    firsts = {
        next(n for n, c in shares(f"m{i}", 1, "spread", ["a", "b"]).items() if c) for i in range(20)
    }
    assert firsts == {"a", "b"}  # one-replica models do not all land on one server
    assert shares("m", 3, "spread", []) == {}
    assert shares("m", 3, "spread", ["a"]) == {"a": 3}
