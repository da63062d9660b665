"""The smallest model: typed parameters become the endpoint's input schema."""

from modelport import track_metric


def predict(a: float, b: float = 0.0) -> float:
    track_metric("magnitude", abs(a) + abs(b))
    return a + b
