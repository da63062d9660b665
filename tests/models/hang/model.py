"""Never returns when asked to hang; otherwise answers with its pid."""

import os
import time


def predict(args):
    if args.get("hang"):
        while True:
            time.sleep(3600)
    return {"pid": os.getpid()}
