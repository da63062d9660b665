"""Records metrics for the current prediction."""

from modelport import track_metric


def predict(x: float) -> float:
    track_metric("input", x)
    track_metric("doubled", x * 2)
    return x * 2
