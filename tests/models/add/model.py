"""Typed parameters: a + b."""

import os

print(f"add: loaded in pid {os.getpid()}", flush=True)


def predict(a: float, b: float = 0.0) -> float:
    return a + b
