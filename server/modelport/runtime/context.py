"""Per-call context in a replica: `track_metric` records named numbers for the current call."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["current_metrics", "track_metric"]

# The dict of the call being served, or None outside a call (and outside a replica): a no-op then.
_METRICS: ContextVar[dict[str, float] | None] = ContextVar("modelport_metrics", default=None)


def track_metric(name: str, value: float) -> None:
    """Record ``value`` under ``name`` for the current prediction (the last value for a name wins).

    Outside a replica, or outside a call, this does nothing.
    """
    metrics = _METRICS.get()
    if metrics is None:
        return
    if not isinstance(name, str):
        raise TypeError(f"track_metric name must be a str, not {type(name).__name__}")
    try:
        metrics[name] = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"track_metric value for {name!r} must be a number, not {type(value).__name__}"
        ) from None


def current_metrics() -> dict[str, float] | None:
    """The metrics recorded so far for the current call, or None outside a call."""
    return _METRICS.get()
