"""Iris, version 2: the same classifier, and callers may now ask for rounded probabilities.

A compatible new version of examples/iris: every request version 1 takes is still valid (the new
field `decimals` is optional), so it deploys over version 1 with a one-line note.
"""

import pickle
from pathlib import Path

with open(Path(__file__).parent / "model.pkl", "rb") as f:  # loaded once, when a replica starts
    _saved = pickle.load(f)
MODEL, NAMES = _saved["model"], _saved["names"]


def predict(features: list[list[float]], decimals: int | None = None) -> dict:
    """features: rows of [sepal length, sepal width, petal length, petal width] in cm;
    decimals: round the probabilities to that many places (default: not rounded)."""
    probabilities = MODEL.predict_proba(features)
    best = probabilities.argmax(axis=1)
    chosen = probabilities.max(axis=1)
    return {
        "species": [NAMES[i] for i in best],
        "probability": chosen if decimals is None else chosen.round(decimals),
    }
