"""Pins packaging 23.2; deployed beside pins-new, which pins 26.3: each in its own environment."""

import packaging
from packaging.version import Version


def predict(version: str) -> dict:
    return {"packaging": packaging.__version__, "is_prerelease": Version(version).is_prerelease}
