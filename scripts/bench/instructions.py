#!/usr/bin/env python3
"""The server's instructions per prediction (valgrind's callgrind), for before/after comparisons
that wall time on a busy machine cannot make.

    scripts/bench/instructions.py [--requests 2000] [--replicas 1] [--side server|replica]

A server of the hot path alone (uvicorn's httptools protocol with the prediction lane, the
gateway with an access key and the metrics recorder, a group of `a + b` replicas; no Litestar)
runs under callgrind with collection off; after a warm-up, collection is switched on for
``--requests`` sequential keep-alive requests from a client in this process, then dumped. Busy
polling is off (spinning would count as work), and so are pings and log checks (periodic work,
whose share per request would follow the machine's load); the figure is also given without the
remaining timer callbacks, for the same reason. With ``--side server`` (the default)
the server runs under valgrind and the replicas outside it; with ``--side replica`` the one
replica does (``--replicas 1``: it takes every request) and the server runs as usual. Figures:
instructions (Ir) of that process per request, everything it runs included (the event loop; not
the kernel's side: a system call's own cost, seccomp's filter among it, is not counted). Valgrind
(Debian's package) is installed when missing. ``--keep FILE`` keeps callgrind's dump for
``callgrind_annotate`` (per C function; Python functions show as the interpreter's).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEY = "mp_key_instructions"
BODY = b'{"a": 1.5, "b": 2.25}'


def serve(port: int, tmp: Path, replicas: int, python: str) -> None:
    """The server (run under callgrind, or with its replicas run by ``python``, a wrapper that
    runs them under it): prints "ready" and its replicas' pids once it answers."""
    sys.path.insert(0, str(ROOT / "server"))
    import uvicorn
    import uvloop
    from modelport.auth import Auth, hash_secret
    from modelport.gateway.http import PredictionProtocol
    from modelport.gateway.predict import Gateway
    from modelport.gateway.routes import Routes
    from modelport.observability.metrics import Recorder
    from modelport.runtime_home import ensure_runtime
    from modelport.serving.config import GroupSpec, Tuning
    from modelport.serving.supervisor import Supervisor

    async def fallback(scope, receive, send):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        sup = Supervisor(
            runtime_dir=ensure_runtime(tmp),
            logs_dir=tmp / "logs",
            # no pings or log checks during the run: periodic work, whose share of a request
            # would follow how long the run takes (the machine's load), not the request's path
            tuning=Tuning(
                busy_poll_us=0, boot_timeout_s=600, ping_interval_s=3600, log_check_s=3600
            ),
        )
        spec = GroupSpec(
            model="add",
            build=1,
            python=python,
            project=str(ROOT / "tests/models/add"),
            entry="model.py:predict",
            digest="sha256:" + "ab" * 32,
            replicas=replicas,
        )
        await sup.deploy(spec)
        routes = Routes(sup)
        routes.set_model("add", auth=True)
        auth = Auth(None)
        auth.remember_key("add", hash_secret(KEY))
        recorder = Recorder(known=lambda name: name == "add", current_build=lambda name: 1)
        gateway = Gateway(fallback, routes, auth, on_result=recorder.on_result)
        protocol = type("Protocol", (PredictionProtocol,), {"gateway": gateway})
        config = uvicorn.Config(
            gateway,
            host="127.0.0.1",
            port=port,
            loop="none",
            http=protocol,
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        pids = [r.pid for g in sup.groups for r in g.replicas]
        print("ready", *pids, flush=True)
        await task
        await sup.shutdown(5)

    uvloop.run(main())


def client(port: int, n: int) -> None:
    request = (
        b"POST /models/add/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
        % (KEY.encode(), len(BODY), BODY)
    )
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for _ in range(n):
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"3.75"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("the server closed the connection")
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data[:200]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--side", choices=("server", "replica"), default="server")
    ap.add_argument("--keep", type=Path, help="copy callgrind's dump here (callgrind_annotate)")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server's own process
    ap.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.tmp, args.replicas, args.python)
        return
    if not shutil.which("valgrind"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True)
    with tempfile.TemporaryDirectory(prefix="mp-instr-") as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = Path(tmp) / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        python = sys.executable
        if args.side == "replica":  # the replicas' interpreter: valgrind running this Python
            wrapper = Path(tmp) / "python-under-callgrind"
            wrapper.write_text(
                f"#!/bin/sh\nexec {' '.join(valgrind)} --callgrind-out-file={out} "
                f'{sys.executable} "$@"\n'
            )
            wrapper.chmod(0o755)
            valgrind, python = [], str(wrapper)
        else:
            valgrind.append(f"--callgrind-out-file={out}")
        proc = subprocess.Popen(
            [
                *valgrind,
                sys.executable,
                __file__,
                "--serve",
                str(port),
                "--tmp",
                tmp,
                "--replicas",
                str(args.replicas),
                "--python",
                python,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 600
            while not (line := proc.stdout.readline() or "").startswith("ready"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start")
            measured = str(proc.pid) if args.side == "server" else line.split()[1]
            client(port, 300)  # warm-up (imports, caches, the recorder's first bucket)
            subprocess.run(
                ["callgrind_control", "-i", "on", measured], check=True, capture_output=True
            )
            client(port, 50)  # the code retranslated with instrumentation
            subprocess.run(["callgrind_control", "-z", measured], check=True, capture_output=True)
            client(port, args.requests)
            subprocess.run(["callgrind_control", "-d", measured], check=True, capture_output=True)
            total = timers = 0
            for _ in range(100):  # the dump is written by the measured process
                dumps = list(Path(tmp).glob("callgrind.out.*"))
                found = dumps and re.search(r"^totals: (\d+)", dumps[0].read_text(), re.M)
                if found:
                    total = int(found.group(1))
                    timers = timer_callbacks(dumps[0])
                    if args.keep:
                        shutil.copy(dumps[0], args.keep)
                    break
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
        print(
            f"{total / args.requests:,.0f} instructions per request in the {args.side} "
            f"({args.requests} requests, {args.replicas} replica(s)); "
            f"{(total - timers) / args.requests:,.0f} without timer callbacks"
        )


def timer_callbacks(dump: Path) -> int:
    """The instructions run by the event loop's timers (uvloop's TimerHandle._run, inclusive):
    periodic work (the lateness check, the sweeper, watchdogs) whose share per request grows
    with how long the run takes under valgrind, i.e. with the machine's load: the total without
    it is the figure to compare (the total moved by ±3k per request between runs here; this, by
    0.6k at most)."""
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(dump)],
        capture_output=True,
        text=True,
    ).stdout
    found = re.search(r"^\s*([\d,]+) .*:__pyx_f_6uvloop_4loop_11TimerHandle__run \[", out, re.M)
    return int(found.group(1).replace(",", "")) if found else 0


if __name__ == "__main__":
    main()
