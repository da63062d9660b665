"""Dies while importing, without a Python exception (as a crashing C extension would)."""

import os
import sys

print("loading the weights failed: corrupt file", file=sys.stderr, flush=True)
os._exit(9)


def predict(args):
    return args
