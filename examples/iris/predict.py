"""Iris species from four measurements: a scikit-learn model whose parameters ship as a pickle."""

import pickle
from pathlib import Path

with open(Path(__file__).parent / "model.pkl", "rb") as f:  # loaded once, when a replica starts
    _saved = pickle.load(f)
MODEL, NAMES = _saved["model"], _saved["names"]


def predict(features: list[list[float]]) -> dict:
    """features: rows of [sepal length, sepal width, petal length, petal width] in cm."""
    probabilities = MODEL.predict_proba(features)
    best = probabilities.argmax(axis=1)
    return {
        "species": [NAMES[i] for i in best],
        "probability": probabilities.max(axis=1),  # a NumPy array: sent as a JSON list
    }
