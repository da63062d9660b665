"""Sleeps `seconds` (0.2 by default), then answers with its pid."""

import os
import time


def predict(seconds: float = 0.2) -> dict:
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid()}
