"""Dies mid-request (os._exit) when asked to; otherwise answers with its pid."""

import os
import time


def predict(args):
    if args.get("crash"):
        time.sleep(float(args.get("after", 0)))
        os._exit(7)
    return {"pid": os.getpid()}
