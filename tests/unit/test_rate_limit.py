"""The per-caller token bucket with an injected clock: burst, refill, wait, sweep."""

from __future__ import annotations

import pytest
from modelport.gateway.ratelimit import RateLimit, default_burst
from modelport.gateway.routes import Routes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate():
    clock = Clock()
    limit = RateLimit(2.0, 3, clock=clock)
    assert [limit.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.take("k") == pytest.approx(0.5)  # one token comes back in 1/rate s
    clock.now += 0.25
    assert limit.take("k") == pytest.approx(0.25)  # refused calls spend nothing
    clock.now += 0.25
    assert limit.take("k") == 0.0
    assert limit.take("k") == pytest.approx(0.5)
    clock.now += 60  # never more than the burst, however long the caller was away
    assert [limit.take("k") == 0.0 for _ in range(4)] == [True, True, True, False]


def test_callers_have_their_own_buckets():
    limit = RateLimit(0.5, 1, clock=Clock())
    assert limit.take("a") == 0.0 and limit.take("a") == pytest.approx(2.0)
    assert limit.take("b") == 0.0


def test_default_burst_is_one_seconds_worth():
    assert [default_burst(r) for r in (0.01, 1, 2.5, 100)] == [1, 1, 3, 100]
    assert RateLimit(2.5).burst == 3
    with pytest.raises(ValueError):
        RateLimit(0)


def test_sweep_drops_only_full_buckets():
    clock = Clock()
    limit = RateLimit(1.0, 2, clock=clock)
    limit.take("busy")
    limit.take("busy")  # empty: must survive any sweep
    for i in range(4095):
        limit.take(f"idle-{i}")
    clock.now += 1.5  # the idle ones (1 token left) are full again; "busy" is not
    limit.take("newcomer")  # 4,096 buckets: swept before this one is added
    assert len(limit) == 2
    assert limit.take("busy") == 0.0 and limit.take("busy") == pytest.approx(0.5)  # kept its count


def test_routes_keep_buckets_when_the_limit_is_unchanged():
    routes = Routes()
    routes.set_model("m", auth=True)
    assert "m" in routes and "m" not in routes.limits
    routes.set_model("m", rate_limit_per_s=0.01, rate_limit_burst=1)
    first = routes.limits["m"]
    first.take("k")
    routes.set_model("m", auth=False, rate_limit_per_s=0.01, rate_limit_burst=1)
    assert routes.limits["m"] is first and routes.auth_flag("m") is False
    routes.set_model("m", rate_limit_per_s=0.01, rate_limit_burst=2)
    assert routes.limits["m"] is not first
    routes.set_model("m")
    assert "m" not in routes.limits
    routes.set_model("m", rate_limit_per_s=1.0)
    routes.drop_model("m")
    assert "m" not in routes.limits and "m" not in routes
