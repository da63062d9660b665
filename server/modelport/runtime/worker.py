"""A replica process: import the model once, then serve Calls from the server over a socket.

    python -u -m modelport.runtime.worker --project DIR --entry FILE:FUNC
        (--socket PATH | --fd N | --listen-fd N) [--max-concurrency N]
        [--loop auto|uvloop|asyncio] [--busy-poll-us N] [--max-call-bytes N]
        [--max-result-bytes N]

With --listen-fd (a replica on another node than the server: an inherited, listening TCP
socket), the worker reads its secret from the first line of stdin, then serves the first
connection whose first frame is a Hello with that secret; a connection without it is closed
(nothing is run for it) and the worker waits for the next one. Once one is in, it listens no
more. With --tls as well, stdin holds after that line this start's own certificate and key (PEM,
made by the server, which trusts only that certificate): the connection is TLS 1.3 first, and
the Hello comes inside it.

Exit codes: 0 stopped (end of stream, SIGTERM/SIGINT after in-flight calls finish),
2 bad command line, 3 boot failure (import or entry error; Boot was sent — do not restart),
4 cannot connect to the server's socket (or no secret on stdin with --listen-fd).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hmac
import os
import signal
import socket
import sys
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .busy_poll import Gap, Spinner
from .invoke import BUSY, Invoker, error_text
from .protocol import (
    MAX_FRAME,
    Boot,
    Call,
    Failure,
    FrameReader,
    Hello,
    MessageProtocol,
    Ping,
    Pong,
    ProtocolError,
    Ready,
    Result,
    encode_frame,
    recv_frame,
    send_frame,
)
from .rbridge import RFunction, is_r_entry
from .signature import analyze, load_entry

__all__ = ["EXIT_BOOT", "EXIT_CONNECT", "EXIT_OK", "EXIT_USAGE", "main", "serve"]

_clock = time.perf_counter

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BOOT = 3
EXIT_CONNECT = 4


class _Replica(MessageProtocol):
    """Dispatches frames: Calls run inline (sync, max_concurrency 1), in threads, or as tasks."""

    def __init__(
        self,
        invoker: Invoker | RFunction,
        max_concurrency: int,
        done: asyncio.Future[None],
        busy_poll_s: float = 0.0,
        max_call: int = MAX_FRAME,
        skew: float = 0.0,
    ) -> None:
        super().__init__(max_call)
        self.invoker = invoker
        # This machine's time.monotonic() less the server's (a replica on another node): a
        # Call's start_by, in the server's clock, is moved into ours as it arrives. 0 locally.
        self.skew = skew
        # An R function's calls are relayed to its R process as they come (rbridge.RFunction);
        # a Python function's run here: inline, in threads, or as tasks.
        self.r = r = invoker if isinstance(invoker, RFunction) else None
        self.handle = invoker.handle if isinstance(invoker, Invoker) else None
        self.is_async = invoker.sig.is_async
        self.inline = max_concurrency <= 1 and not self.is_async and r is None
        self.pool = (
            ThreadPoolExecutor(max_concurrency, thread_name_prefix="predict")
            if not self.is_async and not self.inline and r is None
            else None
        )
        self.limit = asyncio.Semaphore(max_concurrency) if self.is_async else None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.done = done
        self.served = 0
        self.in_flight = 0
        self.draining = False
        # Inline: poll for the next call for a short while after answering one, when the server
        # had no other call out and calls have been coming that close together (see busy_poll).
        self.poll = self.inline and busy_poll_s > 0
        self.gap = Gap(busy_poll_s)
        self.spinner = Spinner()
        self.child_rss = r.child_rss_kb if r is not None else None  # an R function's R process

    # -- frames -----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.r is not None:
            self.r.flush()  # the calls of this read go to R in one write

    def message_received(self, msg: Any) -> None:
        kind = type(msg)
        if kind is Call:
            if self.skew and msg.start_by:
                msg.start_by += self.skew
            if self.poll:
                self.gap.stop(_clock())
            if self.draining:
                self.send(Failure(msg.id, 503, "model.unavailable", "the replica is stopping"))
            elif msg.start_by and time.monotonic() > msg.start_by:
                self.send(Failure(msg.id, 429, "model.busy", BUSY))
            elif self.r is not None:
                self.in_flight += 1
                self.r.submit(msg)
            elif self.inline:
                self.in_flight = 1
                out = self.handle(msg)  # type: ignore[misc]
                self.in_flight = 0
                self.served += 1
                self.send(out)
                if self.poll and msg.poll:
                    now = _clock()
                    window = self.gap.start(now, msg.turns)
                    if window:
                        self.spinner.spin(asyncio.get_running_loop(), now + window)
            elif self.is_async:
                self.in_flight += 1
                task = asyncio.get_running_loop().create_task(self._run_async(msg))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            else:
                self.in_flight += 1
                fut = self.pool.submit(self.handle, msg)  # type: ignore[union-attr, arg-type]
                loop = asyncio.get_running_loop()

                def done(f: Future[Any], i: int = msg.id) -> None:
                    loop.call_soon_threadsafe(self._finished, i, f)

                fut.add_done_callback(done)
        elif kind is Ping:
            child = self.child_rss
            self.send(
                Pong(
                    msg.id,
                    self.served,
                    self.in_flight,
                    rss_kb() + (child() if child is not None else 0),
                )
            )
        else:
            print(f"modelport worker: ignoring unexpected {kind.__name__} frame", file=sys.stderr)

    async def _run_async(self, call: Call) -> None:
        try:
            async with self.limit:  # type: ignore[union-attr]
                out = await self.invoker.handle_async(call)  # type: ignore[union-attr]
        except BaseException as exc:  # cancelled, or the model raised SystemExit
            out = Failure(call.id, 500, "model.error", error_text(exc))
        self._complete(out)

    def _finished(self, call_id: int, fut: Future[Any]) -> None:
        try:
            out = fut.result()
        except BaseException as exc:  # SystemExit/KeyboardInterrupt raised by the model in a thread
            out = Failure(call_id, 500, "model.error", error_text(exc))
        self._complete(out)

    def relayed(self, answers: list[Result | Failure]) -> None:
        """Answers from the R process, in the order of the calls."""
        self.in_flight -= len(answers)
        self.served += len(answers)
        self.send_all(answers)
        if self.draining and self.in_flight == 0:
            self._close()

    def _complete(self, out: Result | Failure) -> None:
        self.in_flight -= 1
        self.served += 1
        self.send(out)
        if self.draining and self.in_flight == 0:
            self._close()

    def protocol_error(self, exc: Exception) -> None:
        print(f"modelport worker: {exc}; closing the connection", file=sys.stderr)
        super().protocol_error(exc)  # type: ignore[arg-type]

    # -- lifecycle --------------------------------------------------------------------------------

    def drain(self) -> None:
        """SIGTERM/SIGINT: answer new Calls with 503, finish the in-flight ones, then stop."""
        self.draining = True
        if self.in_flight == 0:
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered first

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def serve(
    sock: socket.socket,
    invoker: Invoker | RFunction,
    max_concurrency: int = 1,
    loop_kind: str = "auto",
    busy_poll_s: float = 0.0,
    max_call: int = MAX_FRAME,
    skew: float = 0.0,
    link: tuple[asyncio.AbstractEventLoop, asyncio.Transport] | None = None,
) -> int:
    """Serve Calls on ``sock`` until the server closes it or a stop signal; return the exit code.
    A frame longer than ``max_call`` bytes is a broken stream: the connection is closed.
    ``link``: a TLS connection already open on its loop (``sock`` is then unused)."""
    loop = link[0] if link is not None else _new_loop(loop_kind)
    asyncio.set_event_loop(loop)
    done: asyncio.Future[None] = loop.create_future()
    replica = _Replica(invoker, max_concurrency, done, busy_poll_s, max_call, skew)
    if replica.r is not None:
        replica.r.start(loop, replica.relayed)
    if link is not None:
        link[1].set_protocol(replica)
        replica.connection_made(link[1])
    else:
        unix = sock.family == socket.AF_UNIX
        connect = loop.create_unix_connection if unix else loop.create_connection
        loop.run_until_complete(connect(lambda: replica, sock=sock))
    for signum in (signal.SIGTERM, signal.SIGINT):
        # not the main thread / Windows: no handler
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, replica.drain)
    loop.run_until_complete(done)
    _flush()
    if replica.in_flight:  # the server is gone: nobody is waiting for these results
        os._exit(EXIT_OK)
    if replica.pool is not None:
        replica.pool.shutdown(wait=False)
    loop.close()
    return EXIT_OK


def rss_kb() -> int:
    """Resident memory of this process in KiB (the peak on systems without /proc)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak // 1024 if sys.platform == "darwin" else peak
        except Exception:
            return 0


try:
    _PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
except (AttributeError, ValueError, OSError):
    _PAGE_KB = 4


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind != "asyncio":
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            if kind == "uvloop":
                raise
    return asyncio.new_event_loop()


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the thread that spawned it dies (the socket EOF covers
    the rest)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _line_buffered() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


HELLO_TIMEOUT_S = 10.0  # a connection must send its Hello within this
HELLO_MAX = 4096  # and a short one: a longer first frame is refused from its length prefix


class Refused(Exception):
    """A connection to the listening socket did not open with the replica's secret."""


def _read_secret(rest: list[bytes] | None = None) -> bytes:
    """The first line of stdin (the launcher's pipe, closed after): never in argv or environ.
    ``rest``: gets what follows it (the TLS certificate and key), up to 64 KiB."""
    try:
        line = sys.stdin.buffer.readline(1024)
        if rest is not None:
            rest.append(sys.stdin.buffer.read(65536))
    except (OSError, ValueError, AttributeError):
        line = b""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stdin.close()
    with contextlib.suppress(OSError):  # the pipe itself: fd 0 is /dev/null from here on
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    secret = line.strip()
    if len(secret) < 16:
        raise OSError("no secret (at least 16 bytes) on the first line of stdin")
    return secret


def hello(conn: socket.socket, secret: bytes) -> float:
    """Check a new connection's first frame (blocking, bounded in time and size): the skew of
    our clock against the server's when it is a Hello with ``secret``, else Refused."""
    conn.settimeout(HELLO_TIMEOUT_S)
    try:
        msg = recv_frame(conn, HELLO_MAX)
    except (OSError, ProtocolError) as exc:
        raise Refused(f"no Hello ({type(exc).__name__})") from None
    received = time.monotonic()
    if type(msg) is not Hello:
        raise Refused("its first frame is not a Hello")
    if not hmac.compare_digest(msg.secret, secret):
        raise Refused("wrong secret")
    conn.settimeout(None)
    return received - msg.clock if msg.clock else 0.0


def accept(listener: socket.socket, secret: bytes) -> tuple[socket.socket, float]:
    """The first connection that opens with the secret (and the clock skew it gives); the others
    are closed as they come. The listening socket is closed once one is in."""
    try:
        while True:
            conn, peer = listener.accept()
            try:
                skew = hello(conn, secret)
            except Refused as exc:
                conn.close()
                print(f"modelport worker: refused a connection from {peer}: {exc}", file=sys.stderr)
                continue
            return conn, skew
    finally:
        listener.close()


def _tls_context(pem: bytes) -> Any:
    """This start's certificate and key (PEM) as a TLS 1.3 server context. The ssl module loads
    a key only from a file: a private one in TMPDIR (the sandbox's own temp dir), removed at
    once, before the model is imported."""
    import ssl
    import tempfile

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    fd, path = tempfile.mkstemp(prefix=".tls-")
    try:
        os.write(fd, pem)
        os.close(fd)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
    return ctx


class _FirstFrame(asyncio.Protocol):
    """The first frame of a TLS connection (its Hello)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.reader = FrameReader(HELLO_MAX)
        self.first: asyncio.Future[Any] = loop.create_future()

    def itself(self) -> _FirstFrame:
        return self

    def data_received(self, data: bytes) -> None:
        if self.first.done():
            return
        try:
            msgs = self.reader.feed(data)
        except ProtocolError as exc:
            self.first.set_exception(Refused(f"no Hello ({type(exc).__name__})"))
            return
        if msgs:
            self.first.set_result(msgs[0])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.first.done():
            self.first.set_exception(Refused("closed before its Hello"))


async def accept_tls(listener: socket.socket, secret: bytes, ctx: Any) -> tuple[Any, float]:
    """As ``accept``, each connection TLS first (a handshake and a Hello within
    HELLO_TIMEOUT_S): the transport of the first one with the secret, and the clock skew."""
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    try:
        while True:
            conn, peer = await loop.sock_accept(listener)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            proto, transport = _FirstFrame(loop), None
            try:
                opened = loop.connect_accepted_socket(
                    proto.itself, conn, ssl=ctx, ssl_handshake_timeout=HELLO_TIMEOUT_S
                )
                transport, _ = await asyncio.wait_for(opened, HELLO_TIMEOUT_S)
                msg = await asyncio.wait_for(proto.first, HELLO_TIMEOUT_S)
                received = time.monotonic()
                if type(msg) is not Hello:
                    raise Refused("its first frame is not a Hello")
                if not hmac.compare_digest(msg.secret, secret):
                    raise Refused("wrong secret")
            except (Refused, OSError, TimeoutError, ProtocolError) as exc:
                if transport is not None:
                    transport.abort()
                conn.close()
                why = str(exc) or type(exc).__name__
                print(f"modelport worker: refused a connection from {peer}: {why}", file=sys.stderr)
                continue
            return transport, received - msg.clock if msg.clock else 0.0
    finally:
        listener.close()


def _connect_tls(args: argparse.Namespace) -> tuple[asyncio.AbstractEventLoop, Any, float]:
    rest: list[bytes] = []
    secret = _read_secret(rest)
    ctx = _tls_context(rest[0] if rest else b"")
    loop = _new_loop(args.loop)
    asyncio.set_event_loop(loop)
    listener = socket.socket(fileno=args.listen_fd)
    transport, skew = loop.run_until_complete(accept_tls(listener, secret, ctx))
    return loop, transport, skew


def _connect(args: argparse.Namespace) -> tuple[socket.socket, float]:
    if args.listen_fd is not None:
        secret = _read_secret()
        listener = socket.socket(fileno=args.listen_fd)
        listener.setblocking(True)
        conn, skew = accept(listener, secret)
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, skew
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(args.socket)
        except OSError:
            sock.close()
            raise
    sock.setblocking(True)
    return sock, 0.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m modelport.runtime.worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--project", required=True, help="the build's project folder")
    p.add_argument("--entry", required=True, help="path/to/file.py:function")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="the server's Unix socket to connect to")
    where.add_argument("--fd", type=int, help="an inherited, connected socket's file descriptor")
    where.add_argument(
        "--listen-fd",
        type=int,
        help="an inherited, listening TCP socket: serve the first connection with the secret "
        "read from stdin",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="with --listen-fd: TLS 1.3 with the certificate and key that follow the secret",
    )
    p.add_argument(
        "--max-concurrency", type=int, default=1, help="calls served at once (default 1)"
    )
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    p.add_argument(
        "--busy-poll-us",
        type=int,
        default=0,
        help="poll this long for the next call instead of sleeping (0: never)",
    )
    p.add_argument(
        "--max-call-bytes",
        type=int,
        default=MAX_FRAME,
        help="the longest Call frame the server sends (its body limit and a margin)",
    )
    p.add_argument(
        "--max-result-bytes",
        type=int,
        default=0,
        help="the server's response cap: a longer answer is a model.error (0: none)",
    )
    return p


# Limits set before the model is imported, hard as well as soft so that it cannot raise them:
# open files, processes of this user (not enforced for root), and no core dumps of its memory.
LIMITS = {"RLIMIT_NOFILE": 4096, "RLIMIT_NPROC": 4096, "RLIMIT_CORE": 0}


def _limit_resources() -> None:
    try:
        import resource
    except ImportError:  # not on this platform
        return
    for name, wanted in LIMITS.items():
        kind = getattr(resource, name, None)
        if kind is None:
            continue
        try:
            _, hard = resource.getrlimit(kind)
            value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError) as exc:
            print(f"modelport worker: cannot set {name}: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _line_buffered()
    _die_with_parent()
    _limit_resources()
    link = None
    try:
        if args.tls and args.listen_fd is not None:
            loop, transport, skew = _connect_tls(args)
            link, sock = (loop, transport), None
        else:
            sock, skew = _connect(args)
    except (OSError, ValueError) as exc:
        print(f"modelport worker: cannot connect to the server: {exc}", file=sys.stderr)
        return EXIT_CONNECT

    def send(msg: Any) -> None:
        if link is None:
            send_frame(sock, msg)  # type: ignore[arg-type]
        else:
            link[1].write(encode_frame(msg))

    r = is_r_entry(args.entry)
    try:
        if r:  # an R function: its R process starts, sources the file and says it is ready
            invoker: Any = RFunction(args.project, args.entry, max(0, args.max_result_bytes))
        else:
            invoker = Invoker(
                analyze(load_entry(args.project, args.entry)), max(0, args.max_result_bytes)
            )
    except (Exception, SystemExit) as exc:
        if not r:
            traceback.print_exc()
        _flush()
        with contextlib.suppress(OSError):
            send(Boot(str(exc) if r else error_text(exc)))
        if link is not None:  # the loop sends it, then the close
            link[1].close()
            with contextlib.suppress(Exception):
                link[0].run_until_complete(asyncio.sleep(0.5))
        return EXIT_BOOT
    gc.collect()
    gc.freeze()  # the model's objects (weights) need not be scanned by every collection
    send(Ready(os.getpid(), invoker.sig.form, invoker.sig.is_async))
    code = serve(
        sock,  # type: ignore[arg-type]
        invoker,
        1 if r else max(1, args.max_concurrency),
        args.loop,
        max(0, args.busy_poll_us) / 1e6,
        max(1, args.max_call_bytes),
        skew,
        link,
    )
    if r:
        invoker.close()  # drained: R ends once its input closes
    return code


if __name__ == "__main__":
    sys.exit(main())
