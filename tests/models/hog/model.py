"""Allocates (and touches) `mb` MiB, then holds it for a while."""

import os
import time


def predict(mb: int = 0, hold_s: float = 5.0) -> dict:
    block = bytearray(b"\x01") * (mb * 1024 * 1024)
    time.sleep(hold_s)
    return {"held": len(block), "pid": os.getpid()}
