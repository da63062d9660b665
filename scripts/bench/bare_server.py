"""The bare baseline: uvloop + httptools + msgspec doing the model's work in-process, nothing else.

python bare_server.py PORT adder|iris
"""

from __future__ import annotations

import asyncio
import sys

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


def main() -> None:
    port, kind = int(sys.argv[1]), sys.argv[2]
    Http.work = staticmethod({"adder": adder, "iris": iris}[kind]())
    uvloop.install()
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(Http, "127.0.0.1", port))
    print("ready", flush=True)
    loop.run_until_complete(server.serve_forever())


if __name__ == "__main__":
    main()
