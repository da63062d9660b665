#!/usr/bin/env python3
"""The server's instructions per prediction (valgrind's callgrind), for before/after comparisons
that wall time on a busy machine cannot make.

    scripts/bench/instructions.py [--requests 2000] [--replicas 1]

A server of the hot path alone (uvicorn's httptools protocol with the prediction lane, the
gateway with an access key and the metrics recorder, a group of `a + b` replicas; no Litestar)
runs under callgrind with collection off; after a warm-up, collection is switched on for
``--requests`` sequential keep-alive requests from a client in this process, then dumped. Busy
polling is off (spinning would count as work). The replicas run outside valgrind. Figures:
instructions (Ir) of the server process per request, everything it runs included (the event
loop, the kernel's side excepted). Valgrind (Debian's package) is installed when missing.
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


def serve(port: int, tmp: Path, replicas: int) -> None:
    """The server (run under callgrind): prints "ready" once it answers."""
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
            tuning=Tuning(busy_poll_us=0, boot_timeout_s=600),
        )
        spec = GroupSpec(
            model="add",
            build=1,
            python=sys.executable,
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
        print("ready", flush=True)
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
    ap.add_argument("--keep", type=Path, help="copy callgrind's dump here (callgrind_annotate)")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server's own process
    ap.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.tmp, args.replicas)
        return
    if not shutil.which("valgrind"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True)
    with tempfile.TemporaryDirectory(prefix="mp-instr-") as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = Path(tmp) / "callgrind.out"
        proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--serve",
                str(port),
                "--tmp",
                tmp,
                "--replicas",
                str(args.replicas),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 600
            while "ready" not in (proc.stdout.readline() or ""):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start")
            client(port, 300)  # warm-up (imports, caches, the recorder's first bucket)
            subprocess.run(
                ["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True
            )
            client(port, 50)  # the code retranslated with instrumentation
            subprocess.run(
                ["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True
            )
            client(port, args.requests)
            subprocess.run(
                ["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True
            )
            total = 0
            for _ in range(100):  # the dump is written by the server's process
                dumps = list(Path(tmp).glob("callgrind.out.*"))
                found = dumps and re.search(r"^totals: (\d+)", dumps[0].read_text(), re.M)
                if found:
                    total = int(found.group(1))
                    if args.keep:
                        shutil.copy(dumps[0], args.keep)
                    break
                time.sleep(0.1)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        print(
            f"{total / args.requests:,.0f} instructions per request "
            f"({args.requests} requests, {args.replicas} replica(s))"
        )


if __name__ == "__main__":
    main()
