"""Pins packaging 26.3; deployed beside pins-old, which pins 23.2: each in its own environment."""

import packaging
from packaging.version import Version


def predict(version: str) -> dict:
    return {"packaging": packaging.__version__, "is_prerelease": Version(version).is_prerelease}
