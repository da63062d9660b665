"""The server's own log: readable text by default, JSON lines with --log-format json."""

from __future__ import annotations

import logging
import sys

import msgspec

from modelport.clock import iso


class JsonLines(logging.Formatter):
    _encode = msgspec.json.Encoder().encode
    _skip = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        from datetime import UTC, datetime

        line = {
            "t": iso(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return self._encode(line).decode()


def configure(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
