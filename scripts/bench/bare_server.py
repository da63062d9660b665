"""The bare baselines: uvloop + httptools + msgspec doing the model's work, nothing else.

python bare_server.py PORT adder|iris [--pipe]

In-process by default. With --pipe, the floor of modelport's shape: the work runs in a child
process (a blocking loop: read a length-prefixed body from a socketpair, do the work, write the
answer back), the server hands each body to it and writes the answer when it is back — the same
four hand-offs as a prediction through a replica (client → server → child → server → client),
with no routing, auth, balancing, timeouts, metrics or busy polling.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
from collections import deque

import httptools
import msgspec
import uvloop


class AddArgs(msgspec.Struct):
    a: float
    b: float = 0.0


class IrisArgs(msgspec.Struct):
    features: list[list[float]]


def adder():
    decode = msgspec.json.Decoder(AddArgs).decode

    def work(body: bytes) -> bytes:
        args = decode(body)
        return msgspec.json.encode(args.a + args.b)

    return work


def iris():
    import pathlib
    import pickle

    root = pathlib.Path(__file__).resolve().parents[2] / "examples" / "iris"
    saved = pickle.loads((root / "model.pkl").read_bytes())
    model, names = saved["model"], [str(n) for n in saved["names"]]
    decode = msgspec.json.Decoder(IrisArgs).decode

    def work(body: bytes) -> bytes:
        probabilities = model.predict_proba(decode(body).features)
        best = probabilities.argmax(axis=1)
        return msgspec.json.encode(
            {"species": [names[i] for i in best], "probability": probabilities.max(axis=1).tolist()}
        )

    return work


class Http(asyncio.Protocol):
    work = None

    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.body = []

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        out = self.work(b"".join(self.body))
        self.body = []
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(out)).encode() + b"\r\n\r\n" + out
        )


def child(sock: socket.socket, work) -> None:
    """The --pipe child: length-prefixed bodies in, answers out, until the socket closes."""
    buf = b""
    while True:
        while len(buf) < 4 or len(buf) < 4 + struct.unpack_from("!I", buf)[0]:
            data = sock.recv(65536)
            if not data:
                return
            buf += data
        n = struct.unpack_from("!I", buf)[0]
        body, buf = buf[4 : 4 + n], buf[4 + n :]
        out = work(body)
        sock.sendall(struct.pack("!I", len(out)) + out)


class Link(asyncio.Protocol):
    """The server's end of the --pipe child's socketpair: answers in the order of the bodies."""

    def __init__(self):
        self.buf, self.waiting = b"", deque()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        while len(self.buf) >= 4:
            n = struct.unpack_from("!I", self.buf)[0]
            if len(self.buf) < 4 + n:
                break
            out, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
            self.waiting.popleft()(out)


class PipeHttp(Http):
    link: Link | None = None

    def on_message_complete(self):
        body = b"".join(self.body)
        self.body = []
        self.link.waiting.append(self.reply)
        self.link.transport.write(struct.pack("!I", len(body)) + body)

    def reply(self, out: bytes) -> None:
        if self.transport.is_closing():  # the client left (wrk's end): uvloop would raise
            return
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(out)).encode() + b"\r\n\r\n" + out
        )


def main() -> None:
    port, kind = int(sys.argv[1]), sys.argv[2]
    work = {"adder": adder, "iris": iris}[kind]()
    Http.work = staticmethod(work)
    protocol = Http
    if "--pipe" in sys.argv[3:]:
        ours, theirs = socket.socketpair()
        if os.fork() == 0:
            ours.close()
            child(theirs, work)
            os._exit(0)
        theirs.close()
        protocol = PipeHttp
    uvloop.install()
    loop = asyncio.new_event_loop()
    if protocol is PipeHttp:
        _, PipeHttp.link = loop.run_until_complete(loop.create_unix_connection(Link, sock=ours))
    server = loop.run_until_complete(loop.create_server(protocol, "127.0.0.1", port))
    print("ready", flush=True)
    loop.run_until_complete(server.serve_forever())


if __name__ == "__main__":
    main()
