"""Cloudera style: the request object as a dict, echoed with the replica's pid."""

import os


def predict(args):
    return {"echo": args, "pid": os.getpid()}
