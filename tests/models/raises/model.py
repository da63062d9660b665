"""The function raises."""


def predict(x: int) -> int:
    raise ValueError(f"cannot handle {x}")
